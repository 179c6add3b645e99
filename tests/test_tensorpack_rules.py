"""tensorpack's training rules that differ from torchvision's, each a rule (``RULES.*``, issues 10 and 19),
checked on hand-computed cases and against numpy re-implementations written here from the
semantics of tensorpack's examples/FasterRCNN source."""
import numpy as np
import pytest
import torch

from gluon_rcnn.builders import FPN_STRIDES, build_model, build_rpn
from gluon_rcnn.config import ConfigError, get_default_config, legacy_rule_value
from gluon_rcnn.profiles import PROFILES, RULES, get_profile, rule_names
from gluon_rcnn.rpn import RPN, AnchorGenerator, RPNHead
from gluon_rcnn.rules.anchors import CELLS, GRIDS
from gluon_rcnn.rules.matching import BORDER, LOW_QUALITY, anchors_inside
from gluon_rcnn.rules.proposals import MIN_SIZE
from gluon_rcnn.rules.rescale import RESCALE_BOXES
from gluon_rcnn.structures.boxes import BoxCoder
from gluon_rcnn.structures.image_list import ImageList

# ------------------------------------------------------------------------------------------------
# RPN
# ------------------------------------------------------------------------------------------------

SIZES, RATIOS = [32, 64, 128, 256, 512], [0.5, 1.0, 2.0]


def _torchvision_rules(cfg):
    """torchvision's rules except its anchor grid, RoIAlign and resize (what these tests were written
    against: the earlier table of torchvision's rules left those three at tensorpack's)."""
    return cfg.update_args(["RULES.PROFILE=torchvision", "RULES.ANCHOR_GRID=fixed_stride", "RULES.ROI_ALIGNED=True",
                            "RULES.RESIZE=round"])


def _generator():
    """FPN anchors with rounded cells (the counts below are computed for them) on the fixed-stride grid."""
    return AnchorGenerator([[s] for s in SIZES], RATIOS, list(FPN_STRIDES), cells=CELLS["rounded"],
                           grid=GRIDS["fixed_stride"])


def _fpn_anchors(padded_hw):
    """Our FPN anchors (P2..P6) for a batch padded to ``padded_hw`` (a multiple of 32), per level."""
    h, w = padded_hw
    shapes = [(h // s, w // s) for s in FPN_STRIDES[:4]]
    shapes.append(((shapes[-1][0] - 1) // 2 + 1, (shapes[-1][1] - 1) // 2 + 1))  # P6: max-pool k1 s2 of P5
    return _generator()(shapes, "cpu"), shapes


def _rpn(ignore_border=False, low_quality="keep_best", batch_per_im=256):
    """An RPN whose border rule is ``ignore_outside`` (``ignore_border``) or ``label_all``, and whose
    low-quality rule is ``low_quality`` (``keep_best``: torchvision's, ``best_unless_negative``: tensorpack's)."""
    return RPN(_generator(), RPNHead(8, 3), BoxCoder(), per_level=True, pre_nms_topk=(10, 10),
               post_nms_topk=(10, 10), nms_thresh=0.7, batch_per_im=batch_per_im,
               border_anchors=BORDER["ignore_outside" if ignore_border else "label_all"],
               low_quality=LOW_QUALITY[low_quality], small_proposals=MIN_SIZE["at_least"])


def _np_iou(a, b):
    """utils/np_box_ops.iou: pairwise IoU, no +1."""
    iw = np.maximum(0, np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]))
    ih = np.maximum(0, np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]))
    inter = iw * ih
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / (area_a[:, None] + area_b[None, :] - inter)


def _tensorpack_anchor_labels(anchors, gt, shape=None, pos=0.7, neg=0.3):
    """tensorpack's labelling, before its subsampling: data.py ``get_multilevel_rpn_anchor_input``
    keeps the anchors of all levels inside ``shape`` (common.py ``filter_boxes_inside_shape``:
    x1 >= 0, y1 >= 0, x2 <= w, y2 <= h; ``shape`` is the augmented image's, before padding), labels
    them in ``get_anchor_labels`` and gives -1 to the others. ``shape=None``: no filter."""
    anchors, gt = np.asarray(anchors, np.float32), np.asarray(gt, np.float32)
    if shape is None:
        inside_ind = np.arange(len(anchors))
    else:
        h, w = shape
        inside_ind = np.where((anchors[:, 0] >= 0) & (anchors[:, 1] >= 0) & (anchors[:, 2] <= w)
                              & (anchors[:, 3] <= h))[0]
    a = anchors[inside_ind]
    labels = -np.ones(len(a), np.int32)
    if len(gt) == 0:
        labels[:] = 0
    else:
        ious = _np_iou(a, gt)
        max_per_anchor = ious.max(axis=1)
        max_per_gt = ious.max(axis=0, keepdims=True)
        with_max_iou_per_gt = np.where(ious == max_per_gt)[0]  # ties included, no IoU > 0 test
        # "the order of setting neg/pos labels matter"
        labels[with_max_iou_per_gt] = 1
        labels[max_per_anchor >= pos] = 1
        labels[max_per_anchor < neg] = 0
    out = -np.ones(len(anchors), np.int32)
    out[inside_ind] = labels
    return out


def _inside_count_by_hand(size, ratio, stride, grid_hw, image_hw):
    """Anchors of one (size, ratio) lying inside the image: centres ``k*stride`` (k < grid) with the
    rounded half sides as the cell anchor (rules.anchors.RoundedCells) at least that far from each edge."""
    hr = np.sqrt(np.float32(ratio))
    half_w = np.round(np.float32(size) / hr / 2)
    half_h = np.round(np.float32(size) * hr / 2)
    (gh, gw), (h, w) = grid_hw, image_hw
    nx = sum(1 for k in range(gw) if k * stride - half_w >= 0 and k * stride + half_w <= w)
    ny = sum(1 for k in range(gh) if k * stride - half_h >= 0 and k * stride + half_h <= h)
    return nx * ny


def test_rpn_fraction_of_fpn_anchors_inside_800x1067():
    """An 800x1067 image (padded to 800x1088): the share of each level's anchors entirely inside.
    Large anchors sit on a coarse grid starting at the corner (centre 0 is always out) and need half
    their side of margin on every edge: of P6's 13x17 grid, 512x512 anchors fit at x in 256..768 (9
    centres) and y in 256..512 (5): 45; 724x362 at 6x7 = 42; 362x724 at 11x1 = 11 — 98 of 663."""
    image_hw = (800, 1067)
    anchors, shapes = _fpn_anchors((800, 1088))
    assert shapes == [(200, 272), (100, 136), (50, 68), (25, 34), (13, 17)]
    measured = []
    for lvl, (a, grid, stride, size) in enumerate(zip(anchors, shapes, FPN_STRIDES, SIZES)):
        inside = anchors_inside(a, image_hw)
        per_ratio = inside.view(-1, len(RATIOS)).sum(0).tolist()
        assert per_ratio == [_inside_count_by_hand(size, r, stride, grid, image_hw) for r in RATIOS], lvl
        measured.append((int(inside.sum()), a.shape[0]))
    assert measured == [(149425, 163200), (34700, 40800), (7436, 10200), (1300, 2550), (98, 663)]
    fractions = [round(100 * k / n, 1) for k, n in measured]
    assert fractions == [91.6, 85.0, 72.9, 51.0, 14.8]  # the "51 % of P5, 15 % of P6"
    # P6 per ratio (h/w = 0.5, 1, 2): 42, 45, 11, as in the docstring
    assert anchors_inside(anchors[4], image_hw).view(-1, 3).sum(0).tolist() == [42, 45, 11]


def test_rpn_border_anchors_never_sampled_with_ignore_outside():
    """Two images of different sizes in one padded batch: each image's own size decides. With the
    ``ignore_outside`` rule no anchor crossing its image's border is sampled, neither positive nor
    negative, and every inside anchor not ignored is; with ``label_all`` the sample does take
    crossing anchors."""
    anchors = torch.cat(_fpn_anchors((800, 1088))[0])
    sizes = [(800, 1067), (600, 900)]
    targets = [{"boxes": torch.tensor([[0., 0., 60, 80], [1000, 700, 1067, 800], [300, 200, 700, 600]])},
               {"boxes": torch.tensor([[850., 10, 900, 70], [100, 100, 150, 130]])}]
    torch.manual_seed(0)
    everything = anchors.shape[0]  # sample every labelled anchor
    on = _rpn(ignore_border=True, batch_per_im=everything).sample_anchors(anchors, targets, image_sizes=sizes)
    off = _rpn(ignore_border=False, batch_per_im=everything).sample_anchors(anchors, targets, image_sizes=sizes)
    for i, hw in enumerate(sizes):
        inside = anchors_inside(anchors, hw)
        taken = on.index[i][on.valid[i]]
        assert bool(inside[taken].all()), "an anchor crossing the border was sampled"
        assert bool(inside[on.index[i][on.fg[i]]].all())
        assert int(on.fg[i].sum()) > 0
        # all inside anchors that are not ignored were taken (every anchor sampled here)
        lab = _rpn(ignore_border=True).label_anchors(anchors, targets[i]["boxes"], hw)[1]
        assert int(on.valid[i].sum()) == int((lab >= 0).sum()) == int(((lab >= 0) & inside).sum())
        assert int((~inside[off.index[i][off.valid[i]]]).sum()) > 0  # label_all: crossing anchors sampled
    # the second image is smaller than the batch: the padded area's anchors are out for it only
    assert int(anchors_inside(anchors, sizes[1]).sum()) < int(anchors_inside(anchors, sizes[0]).sum())
    with pytest.raises(ValueError, match="needs the image size"):
        _rpn(ignore_border=True).sample_anchors(anchors, targets)


def test_rpn_12x12_box_positives_torchvision_vs_tensorpack():
    """A 12x12 GT at (100,100) in a 256x256 image, FPN anchors. No anchor reaches IoU 0.3: the best
    are the 46x22 (ratio 0.5) and 22x46 (ratio 2) P2 anchors containing the box, IoU
    144/1012 = 0.142 (a 32x32 anchor gives 144/1024). A 46x22 anchor contains it for centres x in
    92..120 (8) and y in 104, 108 (2): 16 ties, and 16 for 22x46. torchvision's rule (keep_best):
    these 32 are positive; tensorpack's (best_unless_negative): 'IoU < 0.3 -> negative' comes last,
    0 positives."""
    anchors = torch.cat(_fpn_anchors((256, 256))[0])
    gt = torch.tensor([[100., 100, 112, 112]])
    counts = {}
    for rule in ("keep_best", "best_unless_negative"):
        for border in (False, True):
            matched, lab = _rpn(border, rule).label_anchors(anchors, gt, (256, 256))
            counts[rule, border] = int((lab == 1).sum())
    assert counts == {("keep_best", False): 32, ("keep_best", True): 32,
                      ("best_unless_negative", False): 0, ("best_unless_negative", True): 0}
    pos = _rpn().label_anchors(anchors, gt)[1] == 1
    a = anchors[pos]
    assert sorted({(float(x[2] - x[0]), float(x[3] - x[1])) for x in a}) == [(22.0, 46.0), (46.0, 22.0)]
    iou = 144 / (46 * 22)
    assert torch.allclose(torch.from_numpy(_np_iou(a.numpy(), gt.numpy())).float(), torch.tensor(iou))
    # the numpy re-implementation of tensorpack agrees, with and without the border filter
    for border in (False, True):
        ours = _rpn(border, "best_unless_negative").label_anchors(anchors, gt, (256, 256))[1]
        ref = _tensorpack_anchor_labels(anchors.numpy(), gt.numpy(), (256, 256) if border else None)
        assert np.array_equal(ours.numpy(), ref)
        assert int((ref == 1).sum()) == 0


@pytest.mark.parametrize("seed", range(4))
def test_rpn_tensorpack_rules_equal_numpy_get_anchor_labels(seed):
    """Random integer boxes (exact areas: IoU ties are exact in float32 on both sides), some at the
    border, some tiny, several per image: our labels with both tensorpack rules equal the numpy
    re-implementation of tensorpack's get_anchor_labels after filter_boxes_inside_shape, anchor by
    anchor (ties of each GT's max included), and positives match a GT of maximal IoU."""
    g = np.random.default_rng(seed)
    h, w = 320, 448
    anchors = torch.cat(_fpn_anchors((320, 448))[0])
    x1 = g.integers(0, w - 8, 6)
    y1 = g.integers(0, h - 8, 6)
    bw = g.choice([8, 12, 20, 60, 150, 300], 6)
    bh = g.choice([8, 12, 20, 60, 150, 300], 6)
    gt = np.stack([x1, y1, np.minimum(x1 + bw, w), np.minimum(y1 + bh, h)], 1).astype(np.float32)
    gt[0] = [0, 0, 40, 30]  # in a corner
    ref = _tensorpack_anchor_labels(anchors.numpy(), gt, (h, w))
    matched, ours = _rpn(True, "best_unless_negative").label_anchors(anchors, torch.from_numpy(gt), (h, w))
    assert np.array_equal(ours.numpy(), ref)
    assert (ref == 1).sum() > 0 and (ref == 0).sum() > 0 and (ref == -1).sum() > 0
    ious = _np_iou(anchors.numpy(), gt)
    fg = ref == 1
    assert np.array_equal(ious[fg, matched.numpy()[fg]], ious[fg].max(1))
    # no border filter: the same rule on every anchor
    ref_all = _tensorpack_anchor_labels(anchors.numpy(), gt, None)
    ours_all = _rpn(False, "best_unless_negative").label_anchors(anchors, torch.from_numpy(gt))[1].numpy()
    assert np.array_equal(ours_all, ref_all)
    # the two rules differ only on best-per-GT anchors under NEGATIVE_ANCHOR_THRESH
    tv = _rpn(False, "keep_best").label_anchors(anchors, torch.from_numpy(gt))[1].numpy()
    differ = tv != ref_all
    assert differ.any()
    assert (tv[differ] == 1).all() and (ref_all[differ] == 0).all()
    best = (ious == ious.max(0, keepdims=True)).any(1)
    assert (best[differ]).all() and (ious[differ].max(1) < 0.3).all()


def test_rpn_rules_config_and_builder():
    d = get_default_config()  # tensorpack's rules are the defaults
    assert rule_names(d)["BORDER_ANCHORS"] == "ignore_outside"
    assert rule_names(d)["LOW_QUALITY_MATCHES"] == "best_unless_negative"
    rpn = build_rpn(d.clone().finalize(), 16)
    assert rpn.border_anchors is BORDER["ignore_outside"] and rpn.low_quality is LOW_QUALITY["best_unless_negative"]
    cfg = _torchvision_rules(get_default_config().clone())
    assert rule_names(cfg)["BORDER_ANCHORS"] == "label_all" and rule_names(cfg)["LOW_QUALITY_MATCHES"] == "keep_best"
    rpn = build_rpn(cfg.clone().finalize(), 16)
    assert rpn.border_anchors is BORDER["label_all"] and rpn.low_quality is LOW_QUALITY["keep_best"]
    cfg.update_args(["RULES.BORDER_ANCHORS=ignore_outside", "RULES.LOW_QUALITY_MATCHES=best_unless_negative"])
    rpn = build_rpn(cfg.finalize(), 16)
    assert rpn.border_anchors is BORDER["ignore_outside"] and rpn.low_quality is LOW_QUALITY["best_unless_negative"]
    with pytest.raises(ConfigError, match="RULES.LOW_QUALITY_MATCHES"):
        get_default_config().update_args(["RULES.LOW_QUALITY_MATCHES=detectron"]).finalize()
    with pytest.raises(ValueError, match="LOW_QUALITY_MATCHES"):
        get_profile("tensorpack").rules(LOW_QUALITY_MATCHES="detectron")
    # the keys these rules replaced name their replacement
    with pytest.raises(ConfigError, match="RULES.LOW_QUALITY_MATCHES='keep_best'"):
        get_default_config().update_args(["RPN.LOW_QUALITY_MATCHES=torchvision"])
    with pytest.raises(ConfigError, match="RULES.BORDER_ANCHORS='label_all'"):
        get_default_config().update_args(["RPN.IGNORE_BORDER_ANCHORS=False"])
    # neither rule changes the parameters: the zoo takes them from a checkpoint's config
    from gluon_rcnn.zoo_check import signature
    assert signature(cfg) == signature(get_default_config().clone().finalize())


def test_rpn_rules_on_train_step_uses_each_image_size(monkeypatch):
    """A training step of a small model with both tensorpack rules: finite losses, and the RPN sampled only
    anchors inside each image's resized (unpadded) size."""
    torch.manual_seed(0)
    cfg = get_default_config()
    cfg.update_args(["BACKBONE.RESNET_NUM_BLOCKS=[2,2,2,2]", "DATA.NUM_CATEGORY=3", "FPN.NUM_CHANNEL=32",
                     "FPN.FRCNN_FC_HEAD_DIM=64", "PREPROC.MAX_SIZE=160", "FRCNN.BATCH_PER_IM=64",
                     "RPN.TRAIN_PER_LEVEL_NMS_TOPK=200", "RULES.BORDER_ANCHORS=ignore_outside",
                     "RULES.LOW_QUALITY_MATCHES=best_unless_negative"])
    m = build_model(cfg).train()
    seen = []
    real = m.rpn.sample_anchors

    def spy(anchors, targets, image_sizes=None):
        s = real(anchors, targets, image_sizes=image_sizes)
        seen.append((anchors, image_sizes, s))
        return s

    monkeypatch.setattr(m.rpn, "sample_anchors", spy)
    g = torch.Generator().manual_seed(0)
    imgs = [(torch.rand(3, h, w, generator=g) * 255).to(torch.uint8) for h, w in [(192, 256), (160, 240)]]
    batch = ImageList(imgs, [(96, 128), (80, 120)], [(192, 256), (160, 240)])
    targets = [{"boxes": torch.tensor([[10, 10, 50, 60.], [60, 40, 120, 90]]), "labels": torch.tensor([1, 3])},
               {"boxes": torch.tensor([[0, 0, 70, 70.]]), "labels": torch.tensor([2])}]
    losses = m(batch, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    (anchors, sizes, s), = seen
    assert [tuple(x) for x in sizes] == [(96, 128), (80, 120)]
    for i, hw in enumerate(sizes):
        assert bool(anchors_inside(anchors, hw)[s.index[i][s.valid[i]]].all())
        assert int(s.valid[i].sum()) > 0


#: the table of tensorpack's and torchvision's rules before they became profiles (issue 19): the keys
#: of an earlier config -> (tensorpack's value, torchvision's value)
OLD_RULE_TABLE = {
    "BACKBONE.FREEZE_AFFINE": (False, True),
    "BACKBONE.ZERO_INIT_RESIDUAL": (True, False),
    "TRAIN.WARMUP_SCALES_WITH_BATCH": (False, True),
    "PREPROC.MAX_SIZE_ROUND_UP": (True, False),
    "RPN.ANCHOR_ROUNDING": (False, True),
    "RPN.IGNORE_BORDER_ANCHORS": (True, False),
    "RPN.LOW_QUALITY_MATCHES": ("tensorpack", "torchvision"),
    "FRCNN.BBOX_DECODE_CLAMP": ("tensorpack", "torchvision"),
    "FPN.FC_INIT": ("tensorpack", "torch"),
    "FPN.GN_HEAD_ORDER": ("conv_relu_gn", "conv_gn_relu"),
    "FPN.GN_CONV_BIAS": (True, False),
    "MRCNN.ACCURATE_PASTE": (True, False),
    "MRCNN.MASK_TARGETS": ("tensorpack", "polygon"),
    "TRAIN.ACCUMULATE_TO_8": (True, False),
    "TEST.RESCALE_BOXES": ("tensorpack", "torchvision"),
    "BACKBONE.FLOOR_STRIDE2": (True, False),
}


def test_defaults_are_tensorpack_and_torchvision_conversions_keep_torchvision():
    """The profiles keep the earlier table's two columns: the defaults are tensorpack's profile; the
    torchvision profile differs from it in every rule of that table (and in the anchor grid, RoIAlign's
    offset and the resize, which that table left at tensorpack's, and in the C4 RPN channel order the
    importers read, a rule added later); a torchvision model converts with the
    torchvision profile; every tp_* zoo entry names tensorpack's profile explicitly, with no deviation."""
    from gluon_rcnn.convert.torchvision import torchvision_config
    from torchvision.models.detection import maskrcnn_resnet50_fpn

    tp, tv = PROFILES["tensorpack"].choices, PROFILES["torchvision"].choices
    d = get_default_config()
    assert d.RULES.PROFILE == "tensorpack" and all(d.RULES[rule] is None for rule in RULES)
    assert rule_names(d) == dict(tp)
    for key, (tp_value, tv_value) in OLD_RULE_TABLE.items():
        rule, tp_choice = legacy_rule_value(key, tp_value)
        assert legacy_rule_value(key, tv_value) == (rule, tv[rule]), key
        assert tp_choice == tp[rule] != tv[rule], key  # each rule is a real choice
    table_rules = {legacy_rule_value(key, v[0])[0] for key, v in OLD_RULE_TABLE.items()}
    assert len(table_rules) == len(OLD_RULE_TABLE)
    assert {rule for rule in RULES if tp[rule] != tv[rule]} == table_rules | {"ANCHOR_GRID", "ROI_ALIGNED", "RESIZE",
                                                                            "ANCHOR_ORDER", "RESAMPLE"}
    converted = torchvision_config(maskrcnn_resnet50_fpn(weights=None, weights_backbone=None))
    assert converted.RULES.PROFILE == "torchvision" and rule_names(converted) == dict(tv)
    from gluon_rcnn import model_zoo
    tp_entries = [n for n in model_zoo.list_models() if n.startswith("tp_")]
    assert len(tp_entries) == 13
    for name in tp_entries:
        assert model_zoo.get_entry(name)["config"]["RULES"] == {"PROFILE": "tensorpack"}, name


def test_rescale_boxes_tensorpack_and_torchvision_hand_computed():
    """RULES.RESCALE_BOXES: tensorpack divides by one scale sqrt(h/H * w/W) and clips to the original
    image (eval.py predict_image); torchvision scales each axis by its own ratio and does not clip."""
    from gluon_rcnn.builders import build_preprocessor
    r = [{"boxes": torch.tensor([[10.0, 20.0, 1067.0, 800.0], [-2.0, 0.5, 30.0, 40.0]]),
          "scores": torch.ones(2), "labels": torch.ones(2, dtype=torch.int64), "class_probs": torch.eye(2)[[1, 1]]}]
    tp = build_preprocessor(get_default_config().clone().finalize())
    assert tp.rescale_boxes is RESCALE_BOXES["mean_scale_clipped"]
    s = (800 / 480 * 1067 / 640) ** 0.5  # 1.6669270629914597, the reference run's 'scale'
    got = tp.postprocess(r, [(800, 1067)], [(480, 640)])[0]["boxes"]
    want = torch.tensor([[10 / s, 20 / s, 640.0, 800 / s], [0.0, 0.5 / s, 30 / s, 40 / s]])  # 1067/s = 640.1: clipped
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    tv = build_preprocessor(_torchvision_rules(get_default_config().clone()).finalize())
    assert tv.rescale_boxes is RESCALE_BOXES["per_axis"]
    got = tv.postprocess(r, [(800, 1067)], [(480, 640)])[0]["boxes"]
    want = torch.tensor([[10 * 640 / 1067, 20 * 0.6, 640.0, 480.0], [-2 * 640 / 1067, 0.3, 30 * 640 / 1067, 24.0]])
    torch.testing.assert_close(got, want, rtol=0, atol=1e-4)
    # a zero-width box on the right border (x1 = x2 = w, as the graph clips it) keeps a width >= 0
    edge = [{"boxes": torch.tensor([[1067.0, 5.0, 1067.0, 9.0]]), "scores": torch.ones(1),
             "labels": torch.ones(1, dtype=torch.int64), "class_probs": torch.eye(2)[[1]]}]
    got = tp.postprocess(edge, [(800, 1067)], [(480, 640)])[0]["boxes"]
    assert torch.equal(got[0, [0, 2]], torch.tensor([640.0, 640.0]))
    with pytest.raises(ConfigError, match="RULES.RESCALE_BOXES"):
        get_default_config().update_args(["RULES.RESCALE_BOXES=detectron"]).finalize()
