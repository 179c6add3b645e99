"""The ROI heads by kind: constructor checks, ``replace`` (how optimize_for_inference sets the
box head's precision), the always-present ``class_probs``, and the detections rule's order of
clipping, NMS and the mask head."""
from __future__ import annotations

import pytest
import torch

from gluon_rcnn.roi_heads import BoxStage, CascadeROIHeads, Res5Head, Res5ROIHeads, StandardROIHeads
from gluon_rcnn.roi_heads.box_head import FastRCNN2FCHead
from gluon_rcnn.roi_heads.mask_head import MaskRCNNUpConvHead
from gluon_rcnn.roi_heads.pooler import ROIPooler
from gluon_rcnn.rules.detections import ClipThenNMS, NMSThenClip
from gluon_rcnn.rules.init import TorchDefault
from gluon_rcnn.rules.mask_targets import PolygonBins
from gluon_rcnn.structures.boxes import BBOX_XFORM_CLIP

C = 3  # classes + background


def _stage(agnostic=False):
    head = FastRCNN2FCHead(4, 7, 16, fc_init=TorchDefault(), avg_pool=False)
    return BoxStage(head, C, agnostic, [10.0, 10.0, 5.0, 5.0], clip=BBOX_XFORM_CLIP)


def _pool(size=7):
    return ROIPooler(size, [4], 2, aligned=True, level_mapper=None)


def _mask_head(cin, num_convs):
    return MaskRCNNUpConvHead(cin, C - 1, 8, num_convs=num_convs, gn_order="conv_gn_relu")


def _standard(detections=ClipThenNMS(), mask=True):
    torch.manual_seed(0)
    return StandardROIHeads(_pool(), _stage(), fg_iou=0.5, num_classes=C,
                            score_thresh=0.0, mask_head=_mask_head(4, 1) if mask else None,
                            mask_pooler=_pool() if mask else None,
                            mask_resolution=14, mask_targets=PolygonBins() if mask else None,
                            detections=detections).eval()


def _cascade():
    torch.manual_seed(0)
    return CascadeROIHeads(_pool(), [_stage(True), _stage(True)], [0.5, 0.6],
                           num_classes=C, score_thresh=0.0, mask_targets=None, detections=ClipThenNMS()).eval()


def _res5():
    torch.manual_seed(0)
    res5 = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3, stride=2, padding=1), torch.nn.ReLU())
    stage = BoxStage(Res5Head(res5, 8), C, False, [10.0, 10.0, 5.0, 5.0], clip=BBOX_XFORM_CLIP)
    return Res5ROIHeads(_pool(14), stage, fg_iou=0.5, num_classes=C,
                        score_thresh=0.0, mask_head=_mask_head(8, 0),
                        mask_targets=PolygonBins(), detections=ClipThenNMS()).eval()


def _inputs(n=30):
    g = torch.Generator().manual_seed(3)
    feats = [torch.randn(2, 4, 16, 20, generator=g)]
    props = []
    for _ in range(2):
        xy = torch.rand(n, 2, generator=g) * torch.tensor([70.0, 55.0])
        props.append(torch.cat([xy, xy + 5 + torch.rand(n, 2, generator=g) * 30], 1))
    return feats, props, [(64, 80), (60, 76)]


@pytest.mark.parametrize("make", [_standard, _cascade, _res5])
def test_class_probs_always_in_the_output(make):
    heads = make()
    feats, props, sizes = _inputs()
    with torch.no_grad():
        out = heads(feats, props, sizes)
    for r in out:
        K = len(r["scores"])
        assert K > 0 and r["class_probs"].shape == (K, C)
        # the detection's score is its class's entry of its RoI's softmax row
        assert torch.equal(r["class_probs"][torch.arange(K), r["labels"]], r["scores"])
        torch.testing.assert_close(r["class_probs"].sum(1), torch.ones(K))
        assert ("mask_probs" in r) == heads.mask_on


@pytest.mark.parametrize("make", [_standard, _cascade, _res5])
def test_replace_shares_every_submodule(make):
    heads = make()
    heads.score_thresh = 0.25  # a value set after construction is carried over too
    new = heads.replace(fp32_box_head=True)
    assert type(new) is type(heads) and new.fp32_box_head and not heads.fp32_box_head and not new.training
    assert new.score_thresh == 0.25 and new.stage_ious == heads.stage_ious
    assert new.detections is heads.detections and new.mask_targets is heads.mask_targets
    assert dict(new.named_modules()).keys() == dict(heads.named_modules()).keys()
    for (name, a), (_, b) in zip(heads.named_modules(), new.named_modules()):
        assert name in ("", "stages") or a is b, name  # the heads and their stage list are new containers
    assert all(p is q for p, q in zip(heads.parameters(), new.parameters()))
    feats, props, sizes = _inputs()
    with torch.no_grad():
        a, b = heads(feats, props, sizes), new(feats, props, sizes)  # outside autocast: the same
    for x, y in zip(a, b):
        assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
    with pytest.raises(TypeError, match="no constructor argument"):
        heads.replace(clip_before_nms=True)


def test_optimize_for_inference_rebuilds_the_heads():
    from gluon_rcnn import get_model

    net = get_model("faster_rcnn_fpn_resnet18_v1b_coco", overrides=["PREPROC.TEST_SHORT_EDGE_SIZE=64"])
    old = net.roi_heads
    assert not old.fp32_box_head and not net.channels_last and net.autocast_dtype is None
    keys = net.state_dict().keys()
    net.optimize_for_inference("bf16", fp32_box_head=True)
    assert net.roi_heads is not old and net.roi_heads.fp32_box_head and net.roi_heads.stages[0] is old.stages[0]
    assert net.channels_last and net.autocast_dtype is torch.bfloat16 and net.state_dict().keys() == keys
    net.optimize_for_inference("fp32", fp32_box_head=False)
    assert not net.roi_heads.fp32_box_head and net.autocast_dtype is None


@pytest.mark.parametrize("detections", [ClipThenNMS(), NMSThenClip()])
def test_detections_rule_orders_clip_nms_and_the_mask_head(detections):
    """Zero box deltas: the detections are the proposals. Some cross the border: with clip_then_nms
    the mask head reads them clipped; with nms_then_clip unclipped, and the boxes are clipped after."""
    heads = _standard(detections)
    torch.nn.init.zeros_(heads.box_stage.predictor.bbox_pred.weight)
    feats, props, sizes = _inputs()
    props = [torch.cat([p, torch.tensor([[60.0, 40.0, 95.0, 70.0]])]) for p in props]  # beyond both images
    seen = []
    heads.mask_pooler.register_forward_pre_hook(lambda m, args: seen.append(args[1].clone()))
    with torch.no_grad():
        out = heads(feats, props, sizes)
    rois = seen[0]
    beyond = torch.zeros(len(rois), dtype=torch.bool)
    for i, (h, w) in enumerate(sizes):
        mine = rois[:, 0] == i
        beyond |= mine & ((rois[:, 3] > w) | (rois[:, 4] > h))
        r = out[i]
        assert (r["boxes"][:, 2] <= w).all() and (r["boxes"][:, 3] <= h).all()  # clipped in the end either way
    assert bool(beyond.any()) == isinstance(detections, NMSThenClip)


def test_constructor_checks():
    pool = _pool()
    mh = _mask_head(4, 1)
    with pytest.raises(ValueError, match="mask_targets"):
        StandardROIHeads(pool, _stage(), fg_iou=0.5, num_classes=C, mask_head=mh, mask_pooler=pool,
                         mask_targets=None, detections=ClipThenNMS())
    with pytest.raises(ValueError, match="mask_pooler"):
        StandardROIHeads(pool, _stage(), fg_iou=0.5, num_classes=C, mask_head=mh, mask_targets=PolygonBins(),
                         detections=ClipThenNMS())
    with pytest.raises(ValueError, match="detections"):
        StandardROIHeads(pool, _stage(), fg_iou=0.5, num_classes=C, mask_targets=None, detections=None)
    with pytest.raises(TypeError, match="detections"):
        StandardROIHeads(pool, _stage(), fg_iou=0.5, num_classes=C, mask_targets=None)  # no default
    with pytest.raises(ValueError, match="two box stages"):
        CascadeROIHeads(pool, [_stage(True)], [0.5], num_classes=C, mask_targets=None, detections=ClipThenNMS())
    with pytest.raises(TypeError, match="Res5Head"):
        Res5ROIHeads(pool, _stage(), fg_iou=0.5, num_classes=C, mask_targets=None, detections=ClipThenNMS())


def test_class_probs_reach_the_detector_output_and_the_survey_detector():
    import numpy as np

    from gluon_rcnn import get_model

    net = get_model("faster_rcnn_fpn_resnet18_v1b_coco",
                    overrides=["PREPROC.TEST_SHORT_EDGE_SIZE=64", "TEST.RESULT_SCORE_THRESH=0.0"]).eval()
    img = (torch.rand(60, 80, 3, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    with torch.no_grad():
        r = net([img.permute(2, 0, 1).float() / 255])[0]
    K = len(r["scores"])
    assert K > 0 and r["class_probs"].shape == (K, 81)
    assert torch.equal(r["class_probs"][torch.arange(K), r["labels"]], r["scores"])
    for extra in ("astropy", "scipy", "reproject"):
        pytest.importorskip(extra, reason="gluon_rcnn.radio needs the radio extra")
    from gluon_rcnn.radio.survey import ModelDetector

    d = ModelDetector(net, score_thresh=0.0)([img.numpy()])[0]
    assert d["class_probs"].shape == (len(d["scores"]), 81) and len(d["scores"]) == K
    assert np.array_equal(d["class_probs"][np.arange(K), d["labels"]], d["scores"])
