"""tensorpack's anchors, box-decode clamp and MAX_SIZE rounding, each a rule (``RULES.*``, issues 10 and 19),
checked on hand-computed cases and against a numpy re-implementation written here from the semantics
of tensorpack's examples/FasterRCNN/modeling/model_rpn.py get_all_anchors, model_box.py
decode_bbox_target and config.py finalize_configs."""
import math

import numpy as np
import pytest
import torch

from gluon_rcnn.builders import (FPN_STRIDES, bbox_decode_clamp, build_preprocessor, build_roi_heads, build_rpn,
                                 max_size)
from gluon_rcnn.config import ConfigError, get_default_config
from gluon_rcnn.data.transforms import TrainTransform
from gluon_rcnn.profiles import PROFILES, rule_names
from gluon_rcnn.rpn import AnchorGenerator
from gluon_rcnn.rules.anchors import CELLS, GRIDS
from gluon_rcnn.structures.boxes import BBOX_XFORM_CLIP, BoxCoder

SIZES, RATIOS = [32, 64, 128, 256, 512], [0.5, 1.0, 2.0]


def _torchvision_rules(cfg):
    """torchvision's rules except its anchor grid, RoIAlign and resize (what these tests were written
    against): the cases below need round-to-nearest sizes and the fixed-stride grid."""
    return cfg.update_args(["RULES.PROFILE=torchvision", "RULES.ANCHOR_GRID=fixed_stride", "RULES.ROI_ALIGNED=True",
                            "RULES.RESIZE=round"])


def _generator(sizes, strides, cells):
    return AnchorGenerator(sizes, RATIOS, strides, cells=CELLS[cells], grid=GRIDS["fixed_stride"])


def _tp_get_all_anchors(stride, sizes, ratios, max_size):
    """tensorpack's get_all_anchors: FSxFSxAx4 float32, A in size-major, ratio-minor order; cell
    anchors ``[-w, -h, w, h] * 0.5`` with ``w = sqrt(sz*sz/ratio)``, ``h = ratio*w`` (float64, no
    rounding), centred on ``(x*stride, y*stride)``, FS = ceil(max_size / stride)."""
    cell = []
    for sz in sizes:
        for ratio in ratios:
            w = np.sqrt(sz * sz / ratio)
            h = ratio * w
            cell.append([-w, -h, w, h])
    cell = np.asarray(cell) * 0.5
    fs = int(np.ceil(max_size / stride))
    shifts = (np.arange(0, fs) * stride).astype("float32")
    sx, sy = np.meshgrid(shifts, shifts)
    sx, sy = sx.flatten(), sy.flatten()
    shifts = np.vstack((sx, sy, sx, sy)).transpose()
    a = cell.reshape((1, -1, 4)) + shifts.reshape((1, -1, 4)).transpose((1, 0, 2))
    return a.reshape((fs, fs, -1, 4)).astype("float32")


# ------------------------------------------------------------------------------------------------
# anchors: RULES.ANCHOR_CELLS
# ------------------------------------------------------------------------------------------------

def test_cell_anchors_hand_computed_both_settings():
    # size 32: ratio 0.5 (h/w) -> w = sqrt(2048) = 45.2548, h = 22.6274; ratio 2 the transpose
    half_w, half_h = math.sqrt(2048) / 2, math.sqrt(512) / 2  # 22.627417, 11.3137085
    rounded = _generator([[32]], [16], "rounded")
    exact = _generator([[32]], [16], "exact")
    assert rounded.cells.name == "rounded" and exact.cells.name == "exact"
    assert rounded.cell_anchors[0].tolist() == [[-23, -11, 23, 11], [-16, -16, 16, 16], [-11, -23, 11, 23]]
    want = [[-half_w, -half_h, half_w, half_h], [-16, -16, 16, 16], [-half_h, -half_w, half_h, half_w]]
    torch.testing.assert_close(exact.cell_anchors[0], torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-12)
    # a 2x3 grid at stride 16: location-major, x fastest; location (y=16, x=32) is the 6th
    r = rounded([(2, 3)], "cpu")[0].view(2, 3, 3, 4)
    e = exact([(2, 3)], "cpu")[0].view(2, 3, 3, 4)
    assert r.dtype == e.dtype == torch.float32 and r.shape == e.shape == (2, 3, 3, 4)
    assert r[1, 2, 0].tolist() == [32 - 23, 16 - 11, 32 + 23, 16 + 11]
    torch.testing.assert_close(e[1, 2, 0], torch.tensor([32 - half_w, 16 - half_h, 32 + half_w, 16 + half_h]),
                               rtol=0, atol=1e-5)
    assert e[0, 1, 1].tolist() == [0, -16, 32, 16]  # ratio 1: integers either way
    assert 0 < (r - e).abs().max() <= 0.5


def test_unrounded_anchors_equal_tensorpack_fpn():
    """Each FPN level (one size per level): our un-quantised anchors are tensorpack's, bitwise."""
    h, w = 800, 1088  # a padded batch; tensorpack's table covers ceil(MAX_SIZE/stride)^2 cells
    shapes = [(math.ceil(h / s), math.ceil(w / s)) for s in FPN_STRIDES]
    ours = _generator([[s] for s in SIZES], list(FPN_STRIDES), "exact")(shapes, "cpu")
    rounded = _generator([[s] for s in SIZES], list(FPN_STRIDES), "rounded")(shapes, "cpu")
    for (fh, fw), stride, size, a, r in zip(shapes, FPN_STRIDES, SIZES, ours, rounded):
        tp = _tp_get_all_anchors(stride, (size,), RATIOS, 1344)[:fh, :fw].reshape(-1, 4)
        np.testing.assert_array_equal(a.numpy(), tp)
        assert 0 < np.abs(r.numpy() - tp).max() <= 0.5  # rounding moves sides by at most half a pixel


def test_unrounded_anchors_equal_tensorpack_c4():
    """C4 (15 anchors per location): the same anchors; tensorpack orders them size-major, we keep
    torchvision's ratio-major order (the RPN head's channel layout)."""
    fh, fw = 5, 7
    ours = _generator([SIZES], [16], "exact")([(fh, fw)], "cpu")[0].view(fh, fw, 15, 4)
    tp = _tp_get_all_anchors(16, SIZES, RATIOS, 1333)[:fh, :fw]
    perm = [s * len(RATIOS) + r for r in range(len(RATIOS)) for s in range(len(SIZES))]  # ours[r*5+s] = tp[s*3+r]
    np.testing.assert_array_equal(ours.numpy(), tp[:, :, perm])


def test_anchor_cells_rule_builder_and_zoo():
    d = get_default_config()
    assert d.RULES.ANCHOR_CELLS is None and rule_names(d)["ANCHOR_CELLS"] == "exact"  # tensorpack's un-quantised
    assert PROFILES["tensorpack"].choices["ANCHOR_CELLS"] == "exact"
    assert build_rpn(d.clone().finalize(), 16).anchor_generator.cells is CELLS["exact"]
    cfg = _torchvision_rules(get_default_config().clone())
    assert rule_names(cfg)["ANCHOR_CELLS"] == "rounded"
    assert build_rpn(cfg.clone().finalize(), 16).anchor_generator.cells is CELLS["rounded"]
    cfg.update_args(["RULES.ANCHOR_CELLS=exact"])
    assert build_rpn(cfg.finalize(), 16).anchor_generator.cells is CELLS["exact"]
    with pytest.raises(ConfigError, match="RULES.ANCHOR_CELLS"):
        get_default_config().update_args(["RULES.ANCHOR_CELLS=1"]).finalize()
    with pytest.raises(ConfigError, match="RULES.ANCHOR_CELLS='rounded'"):  # the key it replaced says so
        get_default_config().update_args(["RPN.ANCHOR_ROUNDING=True"])
    # none of these rules changes the parameters (names, shapes): the zoo takes them from a checkpoint's
    # config with its weights (the anchors its RPN's deltas were trained against, the clamp, MAX_SIZE)
    from gluon_rcnn.zoo_check import signature
    base = signature(get_default_config().clone().finalize())
    for deviation in ("RULES.ANCHOR_CELLS=rounded", "RULES.DECODE_CLAMP=log_1000_over_16",
                      "RULES.MAX_SIZE_ROUND_UP=False"):
        assert signature(get_default_config().clone().update_args([deviation]).finalize()) == base, deviation


# ------------------------------------------------------------------------------------------------
# decode clamp: RULES.DECODE_CLAMP
# ------------------------------------------------------------------------------------------------

def _cfg(*args):
    """torchvision's rules as the base (the defaults are tensorpack's; see _torchvision_rules), then ``args``."""
    return _torchvision_rules(get_default_config().clone()).update_args(list(args)).finalize()


def test_decode_clamp_values():
    assert BBOX_XFORM_CLIP == math.log(1000 / 16)                         # 4.1352
    assert bbox_decode_clamp(_cfg()) == math.log(1000 / 16)
    assert bbox_decode_clamp(_cfg("RULES.DECODE_CLAMP=log_max_size_over_16")) == math.log(1333 / 16)  # 4.4226
    assert bbox_decode_clamp(_cfg("RULES.DECODE_CLAMP=log_max_size_over_16", "MODE_FPN=True")) == math.log(1333 / 16)
    # tensorpack reads MAX_SIZE after finalize_configs rounded it (FPN): log(1344/16) = 4.4308
    assert bbox_decode_clamp(_cfg("RULES.DECODE_CLAMP=log_max_size_over_16", "MODE_FPN=True",
                                  "RULES.MAX_SIZE_ROUND_UP=True")) == math.log(1344 / 16)
    assert bbox_decode_clamp(_cfg("MODE_FPN=True", "RULES.MAX_SIZE_ROUND_UP=True")) == math.log(1000 / 16)
    with pytest.raises(ConfigError, match="RULES.DECODE_CLAMP"):
        _cfg("RULES.DECODE_CLAMP=detectron")
    with pytest.raises(ConfigError, match="MAX_SIZE"):
        _cfg("RULES.DECODE_CLAMP=log_max_size_over_16", "PREPROC.MAX_SIZE=0")


@pytest.mark.parametrize("clip,side", [(math.log(1000 / 16), 1000.0), (math.log(1333 / 16), 1333.0),
                                       (math.log(1344 / 16), 1344.0)])
def test_decode_huge_delta(clip, side):
    """dw = dh = 10 (x e^10) on a 16x16 box centred at (8, 8) is capped: the box becomes side x side."""
    ref = torch.tensor([[0.0, 0.0, 16.0, 16.0]])
    for weights in ((1.0, 1.0, 1.0, 1.0), (10.0, 10.0, 5.0, 5.0)):
        d = torch.tensor([[0.0, 0.0, 10.0 * weights[2], 10.0 * weights[3]]])
        out = BoxCoder(weights, clip).decode(d, ref)[0]
        torch.testing.assert_close(out, torch.tensor([8 - side / 2, 8 - side / 2, 8 + side / 2, 8 + side / 2]),
                                   rtol=1e-6, atol=1e-3)
        # below the cap decoding is untouched
        small = BoxCoder(weights, clip).decode(torch.tensor([[0.0, 0.0, weights[2], 0.0]]), ref)[0]
        torch.testing.assert_close(small, torch.tensor([8 - 8 * math.e, 0.0, 8 + 8 * math.e, 16.0]))


def test_decode_clamp_reaches_every_coder():
    for args, want in [((), math.log(1000 / 16)),
                       (("RULES.DECODE_CLAMP=log_max_size_over_16", "RULES.MAX_SIZE_ROUND_UP=True"),
                        math.log(1344 / 16))]:
        cfg = _cfg("MODE_FPN=True", "FPN.CASCADE=True", "MODE_MASK=False", "FPN.FRCNN_FC_HEAD_DIM=16", *args)
        assert build_rpn(cfg, 8).box_coder.clip == want
        stages = build_roi_heads(cfg, 8).stages
        assert len(stages) == 3 and all(s.coder.clip == want for s in stages)


# ------------------------------------------------------------------------------------------------
# MAX_SIZE: RULES.MAX_SIZE_ROUND_UP
# ------------------------------------------------------------------------------------------------

def test_max_size_round_up_fpn_only():
    assert rule_names(get_default_config())["MAX_SIZE_ROUND_UP"] is True
    assert max_size(get_default_config().clone().finalize()) == 1344  # FPN default: tensorpack's 1333 -> 1344
    cases = [(("MODE_FPN=True",), 1333), (("MODE_FPN=True", "RULES.MAX_SIZE_ROUND_UP=True"), 1344),
             (("MODE_FPN=False", "RULES.MAX_SIZE_ROUND_UP=True"), 1333),
             (("MODE_FPN=True", "RULES.MAX_SIZE_ROUND_UP=True", "PREPROC.MAX_SIZE=1024"), 1024),
             (("MODE_FPN=True", "RULES.MAX_SIZE_ROUND_UP=True", "PREPROC.MAX_SIZE=1025"), 1056),
             (("MODE_FPN=True", "RULES.MAX_SIZE_ROUND_UP=True", "PREPROC.MAX_SIZE=0"), 0)]
    for args, want in cases:
        cfg = _cfg(*args)
        assert max_size(cfg) == want, args
        assert build_preprocessor(cfg).max_size == want, args      # test-time resize
        assert TrainTransform(cfg).max_size == want, args          # training resize
        assert cfg.PREPROC.MAX_SIZE == (1333 if len(args) < 3 else int(args[2].split("=")[1]))  # key kept
    # 1333 -> 1344 changes a 800x1600 image's test size (long edge capped)
    pre = build_preprocessor(_cfg("MODE_FPN=True", "RULES.MAX_SIZE_ROUND_UP=True"))
    assert pre.target_size(800, 1600) == (672, 1344)
    assert build_preprocessor(_cfg("MODE_FPN=True")).target_size(800, 1600) == (667, 1333)  # int(666.5 + 0.5)
    with pytest.raises(ConfigError, match="RULES.MAX_SIZE_ROUND_UP"):
        _cfg("RULES.MAX_SIZE_ROUND_UP=yes")
