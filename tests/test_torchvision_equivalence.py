"""gluon_rcnn's converted model gives torchvision's results, stage by stage, on real images."""
import cv2
import pytest
import torch
import torchvision

from conftest import COCO128, need
from gluon_rcnn.convert import from_torchvision
from gluon_rcnn.structures.image_list import ImageBatch


def _images(n=2):
    files = sorted((need(COCO128) / "train2017").glob("*.jpg"))[:n]
    return [torch.from_numpy(cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB)).permute(2, 0, 1).float() / 255
            for f in files]


def _build(builder, spread_scores: bool):
    torch.manual_seed(0)
    tv = builder(weights=None, weights_backbone=None, min_size=320, max_size=512).eval()
    if spread_scores:
        # random init gives ~1/91 for every class; a wider classifier gives real score spread so the
        # default 0.05 threshold, NMS and the top-100 cut all act
        with torch.no_grad():
            tv.roi_heads.box_predictor.cls_score.weight.mul_(40)
    else:
        tv.roi_heads.score_thresh = 0.0
    return tv


@pytest.mark.parametrize("arch,spread", [("mask", True), ("mask", False), ("faster", True)])
@torch.no_grad()
def test_equivalent_to_torchvision(arch, spread):
    builder = (torchvision.models.detection.maskrcnn_resnet50_fpn if arch == "mask"
               else torchvision.models.detection.fasterrcnn_resnet50_fpn)
    tv = _build(builder, spread)
    ours = from_torchvision(tv)
    assert ours.cfg.TEST.RESULT_SCORE_THRESH == tv.roi_heads.score_thresh
    assert ours.cfg.MODE_MASK == (arch == "mask")
    imgs = _images()
    originals = [tuple(i.shape[-2:]) for i in imgs]
    il, _ = tv.transform(imgs)  # resize and normalise once, the same way, for both
    batch = ImageBatch(il.tensors, [tuple(s) for s in il.image_sizes], originals)

    # (a) backbone + FPN features
    f_tv_dict = tv.backbone(il.tensors)
    f_tv = list(f_tv_dict.values())
    f_ours = ours.features(il.tensors)
    assert len(f_tv) == len(f_ours) == 5
    for a, b in zip(f_tv, f_ours):
        torch.testing.assert_close(b, a, rtol=0, atol=1e-4)

    # (b) RPN proposals
    p_tv, _ = tv.rpn(il, f_tv_dict)
    p_ours, _ = ours.rpn(f_ours, batch.image_sizes, None, tuple(il.tensors.shape[-2:]))
    for a, b in zip(p_tv, p_ours):
        assert a.shape == b.shape and a.shape[0] > 0
        torch.testing.assert_close(b, a, rtol=0, atol=1e-3)

    # (c) final detections in original image coordinates
    d_tv, _ = tv.roi_heads(f_tv_dict, p_tv, il.image_sizes)
    d_tv = tv.transform.postprocess(d_tv, il.image_sizes, originals)
    d_ours = ours(batch)
    total = 0
    for a, b, (oh, ow) in zip(d_tv, d_ours, originals):
        assert a["boxes"].shape == b["boxes"].shape
        total += a["boxes"].shape[0]
        # same detections up to the order of tied scores: sort both by (score, label, box)
        ka = torch.argsort(a["scores"] * 1e4 + a["labels"], stable=True)
        kb = torch.argsort(b["scores"] * 1e4 + b["labels"], stable=True)
        torch.testing.assert_close(b["scores"][kb], a["scores"][ka], rtol=0, atol=1e-5)
        assert torch.equal(b["labels"][kb], a["labels"][ka])
        torch.testing.assert_close(b["boxes"][kb], a["boxes"][ka], rtol=0, atol=1e-3)
        if b["boxes"].numel():
            assert b["boxes"][:, 2].max() <= ow + 1e-3 and b["boxes"][:, 3].max() <= oh + 1e-3
        if arch == "mask":
            assert b["masks"].shape == a["masks"].shape
            torch.testing.assert_close(b["masks"][kb], a["masks"][ka], rtol=0, atol=1e-4)
            assert torch.equal(b["masks"][kb] > 0.5, a["masks"][ka] > 0.5) or \
                ((b["masks"][kb] > 0.5) != (a["masks"][ka] > 0.5)).float().mean() < 1e-5
    assert total > 0, "no detections to compare: the test would prove nothing"


@torch.no_grad()
def test_preprocess_matches_torchvision_transform():
    """Our own resize + normalise of raw images equals torchvision's transform."""
    tv = _build(torchvision.models.detection.fasterrcnn_resnet50_fpn, True)
    ours = from_torchvision(tv)
    imgs = _images()
    il, _ = tv.transform(imgs)
    batch = ours.preprocess(imgs)
    assert [tuple(s) for s in il.image_sizes] == batch.image_sizes
    torch.testing.assert_close(batch.tensor, il.tensors, rtol=0, atol=1e-4)


def test_converter_refuses_other_models():
    with pytest.raises(TypeError):
        from_torchvision(torch.nn.Linear(2, 2))
