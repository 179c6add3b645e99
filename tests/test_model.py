"""The detector end to end on tiny inputs: every architecture trains a step and infers, plus the
edge cases (few proposals, no proposals, degenerate boxes, bad targets) and bf16."""
import math

import pytest
import torch

from gluon_rcnn.config import ConfigError, get_default_config
from gluon_rcnn.builders import build_model
from gluon_rcnn.structures.boxes import BoxCoder, balanced_sample, match_boxes
from gluon_rcnn.structures.image_list import ImageList
from gluon_rcnn.structures.masks import rasterize_polygons_in_boxes

SMALL = ["BACKBONE.RESNET_NUM_BLOCKS=[2,2,2,2]", "DATA.NUM_CATEGORY=3", "FPN.NUM_CHANNEL=32",
         "FPN.FRCNN_FC_HEAD_DIM=64", "FPN.FRCNN_CONV_HEAD_DIM=32", "MRCNN.HEAD_DIM=32", "RPN.HEAD_DIM=64",
         "PREPROC.TRAIN_SHORT_EDGE_SIZE=[96,96]", "PREPROC.TEST_SHORT_EDGE_SIZE=96", "PREPROC.MAX_SIZE=160",
         "FRCNN.BATCH_PER_IM=64", "RPN.TRAIN_PER_LEVEL_NMS_TOPK=200", "RPN.TEST_PER_LEVEL_NMS_TOPK=100"]
VARIANTS = {
    "faster_fpn": [],
    "mask_fpn": ["MODE_MASK=True"],
    "cascade_mask_fpn": ["MODE_MASK=True", "FPN.CASCADE=True"],
    "mask_c4": ["MODE_FPN=False", "MODE_MASK=True"],
    "gn_heads_v1d": ["MODE_MASK=True", "BACKBONE.NORM=GN", "FPN.NORM=GN", "BACKBONE.VARIANT=v1d",
                     "FPN.FRCNN_HEAD_FUNC=fastrcnn_4conv1fc_gn_head", "FPN.MRCNN_HEAD_FUNC=maskrcnn_up4conv_gn_head"],
}


def _cfg(extra):
    c = get_default_config()
    c.update_args(SMALL + extra)
    return c.finalize()


def _targets():
    square = torch.tensor([[10, 10, 50, 10], [50, 10, 50, 60], [50, 60, 10, 60], [10, 60, 10, 10.]])
    tri = torch.tensor([[60, 40, 120, 40], [120, 40, 90, 90], [90, 90, 60, 40], [0, 0, 0, 0.]])
    return [{"boxes": torch.tensor([[10, 10, 50, 60.], [60, 40, 120, 90]]), "labels": torch.tensor([1, 3]),
             "polygons": torch.stack([square, tri])},
            {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "polygons": torch.zeros(0, 1, 4)}]


def _batch():
    """Two decoded images (192x256, 160x240) that the loader asked to be resized to 96x128 and 80x120
    (the targets above are in those resized pixels)."""
    g = torch.Generator().manual_seed(0)
    imgs = [(torch.rand(3, h, w, generator=g) * 255).to(torch.uint8) for h, w in [(192, 256), (160, 240)]]
    return ImageList(imgs, [(96, 128), (80, 120)], [(192, 256), (160, 240)])


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_train_step_and_inference(name):
    torch.manual_seed(0)
    cfg = _cfg(VARIANTS[name])
    m = build_model(cfg).train()
    losses = m(_batch(), _targets())
    expected = {"rpn_cls", "rpn_box"} | ({"frcnn_cls_s1", "frcnn_box_s3"} if cfg.FPN.CASCADE else {"frcnn_cls", "frcnn_box"})
    assert expected <= set(losses) and (("mask" in losses) == cfg.MODE_MASK)
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values())
    total = sum(losses.values())
    total.backward()
    assert all(p.grad is not None for n, p in m.named_parameters() if p.requires_grad and "roi_heads" in n)
    m.eval()
    cfg.TEST.RESULT_SCORE_THRESH = 0.0
    with torch.no_grad():
        out = m([torch.rand(3, 150, 200), torch.rand(3, 64, 90)])
    for o, (h, w) in zip(out, [(150, 200), (64, 90)]):
        assert o["boxes"].shape[0] > 0 and o["boxes"].shape[0] == o["scores"].shape[0] == o["labels"].shape[0]
        assert float(o["boxes"][:, 2].max()) <= w and float(o["boxes"][:, 3].max()) <= h
        assert int(o["labels"].min()) >= 1 and int(o["labels"].max()) <= 3
        if cfg.MODE_MASK:
            assert o["masks"].shape == (o["boxes"].shape[0], 1, h, w)
            assert 0 <= float(o["masks"].min()) and float(o["masks"].max()) <= 1


def test_cascade_with_fewer_candidates_than_slots():
    """Padding slots must never count as foreground in the later cascade stages."""
    torch.manual_seed(0)
    cfg = _cfg(["FPN.CASCADE=True", "FRCNN.BATCH_PER_IM=512"])
    m = build_model(cfg).train()
    feats = m.features(m.preprocess(_batch()).tensor)
    props = [torch.tensor([[12, 11, 49, 58.], [0, 0, 5, 5], [70, 40, 110, 80]]), torch.zeros(0, 4)]
    losses = m.roi_heads(feats, props, [(96, 128), (80, 120)], _targets())
    for k in ("frcnn_box_s1", "frcnn_box_s2", "frcnn_box_s3"):
        assert float(losses[k]) < 5, losses


def test_inference_without_any_proposal():
    cfg = _cfg(["MODE_MASK=True"])
    m = build_model(cfg).eval()
    feats = m.features(m.preprocess([torch.rand(3, 96, 128)]).tensor)
    out = m.roi_heads(feats, [torch.zeros(0, 4)], [(96, 128)])
    assert out[0]["boxes"].shape == (0, 4) and out[0]["mask_probs"].shape[0] == 0


def test_bad_targets_are_named():
    m = build_model(_cfg(["MODE_MASK=True"])).train()
    t = _targets()
    t[0]["labels"] = torch.tensor([0, 3])
    with pytest.raises(ValueError, match="target 0: labels must be in 1..3"):
        m(_batch(), t)
    t = _targets()
    t[0]["boxes"][1] = torch.tensor([60, 40, 60, 90.])
    with pytest.raises(ValueError, match="x2 > x1"):
        m(_batch(), t)
    t = _targets()
    del t[1]["polygons"]
    with pytest.raises(ValueError, match="target 1 has no 'polygons'"):
        m(_batch(), t)
    with pytest.raises(ValueError, match="needs targets"):
        m(_batch())


def test_bf16_autocast_keeps_roi_coordinates_and_losses_fp32():
    torch.manual_seed(0)
    m = build_model(_cfg(["MODE_MASK=True"])).train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        losses = m(_batch(), _targets())
    assert all(v.dtype == torch.float32 and torch.isfinite(v) for v in losses.values())
    # the pooler keeps boxes in fp32: a 1000.3 px coordinate survives
    from gluon_rcnn.roi_heads.pooler import ROIPooler
    p = ROIPooler(2, [4], 1, aligned=True, level_mapper=None)
    feat = torch.arange(4 * 300 * 300, dtype=torch.float32).reshape(1, 4, 300, 300)
    rois = torch.tensor([[0, 1000.3, 600.0, 1004.3, 604.0]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        a = p([feat.bfloat16()], rois)
    b = p([feat], rois)
    assert (a.float() - b).abs().max() / b.abs().max() < 1e-2


def test_config_validation_names_the_key():
    c = get_default_config()
    with pytest.raises(ConfigError, match="FPN.NOPE"):
        c.update_args(["FPN.NOPE=1"])
    with pytest.raises(ConfigError, match="TRAIN.IMS_PER_GPU"):
        c.update_args(["TRAIN.IMS_PER_GPU=two"])
    with pytest.raises(ConfigError, match="FPN.ANCHOR_STRIDES"):  # derived from the architecture: no knob
        get_default_config().update_args(["FPN.ANCHOR_STRIDES=[8,16,32,64,128]"])
    with pytest.raises(ConfigError, match=r"CASCADE.IOUS\[0\]=0.6 disagrees with FRCNN.FG_THRESH=0.5"):
        get_default_config().update_args(["FPN.CASCADE=True", "CASCADE.IOUS=[0.6,0.6,0.7]"]).finalize()
    for removed in ("TRAIN.STEPS_PER_EPOCH=1", "RPN.CROWD_OVERLAP_THRESH=0.5", "TRAIN.LR_SCHEDULE_STEPS=[1]",
                    "RPN.ANCHOR_STRIDE=16", "TRAIN.NUM_GPUS=2"):
        with pytest.raises(ConfigError, match="unknown config key"):
            get_default_config().update_args([removed])
    with pytest.raises(ConfigError, match="BACKBONE.NORM"):
        get_default_config().update_args(["BACKBONE.NORM=LayerNorm"]).finalize()
    # overrides are literals, never code
    c = get_default_config().update_args(["DATA.BASEDIR=__import__('os').system('false')"])
    assert c.DATA.BASEDIR == "__import__('os').system('false')"


def test_schedules_rescale_with_batch():
    from gluon_rcnn.config import schedule_steps
    from gluon_rcnn.engine.trainer import WarmupStepLR
    c = get_default_config().update_args(["TRAIN.LR_SCHEDULE=3x", "TRAIN.IMS_PER_GPU=2"]).finalize()
    assert schedule_steps(c.TRAIN.LR_SCHEDULE, 16) == [210000, 250000, 270000]
    s = WarmupStepLR.from_config(c, world_size=8)
    assert s.decay_steps == [210000, 250000] and s.max_iter == 270000
    # finalize() twice derives nothing that could undo a cut schedule (--max-iter lives in the trainer)
    s = WarmupStepLR.from_config(c.finalize().finalize(), world_size=8, max_iter=220000)
    assert s.decay_steps == [210000] and s.max_iter == 220000


def test_box_coder_round_trip_and_matcher_sampler():
    coder = BoxCoder((10, 10, 5, 5))
    ref = torch.tensor([[0, 0, 10, 20.], [5, 5, 50, 40]])
    gt = torch.tensor([[1, 2, 12, 18.], [0, 10, 60, 41]])
    torch.testing.assert_close(coder.decode(coder.encode(gt, ref), ref), gt)
    iou = torch.tensor([[0.9, 0.1], [0.4, 0.2], [0.1, 0.05], [0.2, 0.25]])
    matched, label = match_boxes(iou, 0.7, 0.3, allow_low_quality=True)
    assert matched.tolist() == [0, 0, 0, 1] and label.tolist() == [1, -1, 0, 1]
    lab = torch.tensor([1] * 10 + [0] * 100 + [-1] * 5, dtype=torch.int8)
    idx, fg, valid = balanced_sample(lab, 32, 0.25)
    assert fg.sum() == 8 and valid.sum() == 32 and bool((lab[idx[fg]] == 1).all()) and bool((lab[idx[~fg]] == 0).all())
    assert bool(fg[:8].all())  # foreground first


def test_rasterize_matches_polygon_area():
    # a triangle occupying half of its box: half of the cells are inside
    edges = torch.tensor([[[0, 0, 100, 0], [100, 0, 0, 100], [0, 100, 0, 0.]]])
    m = rasterize_polygons_in_boxes(edges, torch.tensor([[0, 0, 100, 100.]]), 28)
    assert math.isclose(float(m.mean()), 0.5, abs_tol=0.03)
    assert m[0, 0, 0] == 1 and m[0, -1, -1] == 0


def test_config_is_read_once_and_the_record_is_read_only():
    """Components hold plain values; the model's config is a read-only record: writing it raises
    instead of half-changing the model (it used to: RESULTS_PER_IM changed outputs, POST_NMS_TOPK not)."""
    m = build_model(_cfg([])).eval()
    with pytest.raises(ConfigError, match="read-only"):
        m.config.TEST.RESULTS_PER_IM = 7
    with pytest.raises(ConfigError, match="read-only"):
        m.config.RPN.TEST_POST_NMS_TOPK = 5
    assert m.roi_heads.detections_per_img == 100 and m.rpn.post_topk[False] == 1000
    # a model built with other values has them; the first one is untouched
    m2 = build_model(_cfg(["TEST.RESULTS_PER_IM=7", "RPN.TEST_POST_NMS_TOPK=5"]))
    assert m2.roi_heads.detections_per_img == 7 and m2.rpn.post_topk[False] == 5
    assert m.roi_heads.detections_per_img == 100
    x = torch.rand(3, 96, 128)
    assert len(m2.eval()([x])[0]["boxes"]) <= 7
    c = m.config.clone()  # a copy is writable again
    c.TEST.RESULTS_PER_IM = 3
    for mod in m.modules():  # no module keeps the config
        assert not any(isinstance(v, dict) and "MODE_FPN" in v for k, v in vars(mod).items() if k != "config"), mod


class _ReportsCuda(torch.Tensor):
    """A CPU tensor that says it lives on a GPU (as the trainer's targets do after .to(device))."""

    @property
    def device(self):
        return torch.device("cuda", 0)


def test_targets_are_validated_on_any_device():
    """The checks used to run only when targets were on the CPU, and the trainer moves them to the
    GPU first: there they never ran."""
    from gluon_rcnn.detector import validate_targets
    t = _targets()
    on_gpu = [{k: v.as_subclass(_ReportsCuda) for k, v in x.items()} for x in t]
    bad = [dict(on_gpu[0], labels=torch.tensor([1, 4]).as_subclass(_ReportsCuda)), on_gpu[1]]
    assert bad[0]["labels"].device.type == "cuda" and bad[0]["boxes"].device.type == "cuda"
    with pytest.raises(ValueError, match=r"target 0: labels must be in 1..3"):
        validate_targets(bad, 3)
    flipped = torch.tensor([[50, 10, 10, 60.], [60, 40, 120, 90]]).as_subclass(_ReportsCuda)
    with pytest.raises(ValueError, match="x2 > x1"):
        validate_targets([dict(on_gpu[0], boxes=flipped), on_gpu[1]], 3)
    validate_targets(t, 3, need_polygons=True)  # good targets pass


@pytest.mark.parametrize("name", ["faster_fpn", "cascade_mask_fpn", "mask_c4"])
def test_sampled_rois_invariants(name):
    m = build_model(_cfg(VARIANTS[name])).train()
    props = [torch.tensor([[12, 8, 52, 58.], [0, 0, 30, 30], [61, 41, 119, 88], [5, 5, 90, 90]]), torch.zeros(0, 4)]
    s = m.roi_heads.sample(props, _targets()).check()
    assert s.rois.shape == (2, 64, 4) and s.num_fg_slots == 16
    assert int(s.fg[0].sum()) >= 2 and int(s.fg[1].sum()) == 0  # GT boxes are candidates; image 2 has none
    assert not bool(s.valid[1].any())  # no proposal and no GT: nothing counts


def test_training_imagelist_needs_sizes_and_torchvision_rule_errors():
    from gluon_rcnn.preprocess import scaled_size
    m = build_model(_cfg([])).train()
    b = _batch()
    b.sizes[1] = None  # e.g. a TestTransform dataset handed to the trainer: targets would not match
    with pytest.raises(ValueError, match="needs the size it is resized to"):
        m(b, _targets())
    with pytest.raises(ValueError, match="side of 0 pixels"):
        scaled_size(2, 5000, 800, 1333, "floor")
    with pytest.raises(ValueError, match="max_size > 0"):
        scaled_size(480, 640, 800, 0, "floor")
    with pytest.raises(ConfigError, match="PREPROC.MAX_SIZE=0"):
        get_default_config().update_args(["RULES.RESIZE=floor", "PREPROC.MAX_SIZE=0"]).finalize()


def test_read_only_config_covers_every_mutation():
    import copy
    m = build_model(_cfg([]))
    for change in (lambda c: c.TEST.update(RESULTS_PER_IM=5), lambda c: c.PREPROC.PIXEL_MEAN.__setitem__(0, 0.0),
                   lambda c: c.PREPROC.PIXEL_MEAN.append(1.0), lambda c: c.TEST.pop("RESULTS_PER_IM"),
                   lambda c: c.TEST.setdefault("NEW", 1)):
        with pytest.raises(ConfigError, match="read-only"):
            change(m.config)
    with pytest.raises(ConfigError, match="read-only"):
        copy.deepcopy(m).config.TEST.RESULTS_PER_IM = 3  # a copied model keeps a read-only record
    c = m.config.clone()
    c.PREPROC.PIXEL_MEAN[0], c.TEST.RESULTS_PER_IM = 1.0, 3  # a clone is writable, lists included
    assert m.config.PREPROC.PIXEL_MEAN[0] == 123.675 and m.config.PREPROC.PIXEL_MEAN == [123.675, 116.28, 103.53]
