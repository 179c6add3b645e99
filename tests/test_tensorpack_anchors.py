"""tensorpack's anchors, box-decode clamp and MAX_SIZE rounding, each behind a config key (issue 10),
checked on hand-computed cases and against a numpy re-implementation written here from the semantics
of tensorpack's examples/FasterRCNN/modeling/model_rpn.py get_all_anchors, model_box.py
decode_bbox_target and config.py finalize_configs."""
import math

import numpy as np
import pytest
import torch

from gluon_rcnn.builders import (FPN_STRIDES, bbox_decode_clamp, build_preprocessor, build_roi_heads, build_rpn,
                                 max_size)
from gluon_rcnn.config import ConfigError, apply_rules, get_default_config
from gluon_rcnn.data.transforms import TrainTransform
from gluon_rcnn.rpn import AnchorGenerator
from gluon_rcnn.structures.boxes import BBOX_XFORM_CLIP, BoxCoder

SIZES, RATIOS = [32, 64, 128, 256, 512], [0.5, 1.0, 2.0]


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
# anchors: RPN.ANCHOR_ROUNDING
# ------------------------------------------------------------------------------------------------

def test_cell_anchors_hand_computed_both_settings():
    # size 32: ratio 0.5 (h/w) -> w = sqrt(2048) = 45.2548, h = 22.6274; ratio 2 the transpose
    half_w, half_h = math.sqrt(2048) / 2, math.sqrt(512) / 2  # 22.627417, 11.3137085
    rounded = AnchorGenerator([[32]], RATIOS, [16])
    exact = AnchorGenerator([[32]], RATIOS, [16], rounding=False)
    assert rounded.rounding is True and exact.rounding is False
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
    ours = AnchorGenerator([[s] for s in SIZES], RATIOS, list(FPN_STRIDES), rounding=False)(shapes, "cpu")
    rounded = AnchorGenerator([[s] for s in SIZES], RATIOS, list(FPN_STRIDES))(shapes, "cpu")
    for (fh, fw), stride, size, a, r in zip(shapes, FPN_STRIDES, SIZES, ours, rounded):
        tp = _tp_get_all_anchors(stride, (size,), RATIOS, 1344)[:fh, :fw].reshape(-1, 4)
        np.testing.assert_array_equal(a.numpy(), tp)
        assert 0 < np.abs(r.numpy() - tp).max() <= 0.5  # rounding moves sides by at most half a pixel


def test_unrounded_anchors_equal_tensorpack_c4():
    """C4 (15 anchors per location): the same anchors; tensorpack orders them size-major, we keep
    torchvision's ratio-major order (the RPN head's channel layout)."""
    fh, fw = 5, 7
    ours = AnchorGenerator([SIZES], RATIOS, [16], rounding=False)([(fh, fw)], "cpu")[0].view(fh, fw, 15, 4)
    tp = _tp_get_all_anchors(16, SIZES, RATIOS, 1333)[:fh, :fw]
    perm = [s * len(RATIOS) + r for r in range(len(RATIOS)) for s in range(len(SIZES))]  # ours[r*5+s] = tp[s*3+r]
    np.testing.assert_array_equal(ours.numpy(), tp[:, :, perm])


def test_anchor_rounding_key_builder_and_zoo():
    assert get_default_config().RPN.ANCHOR_ROUNDING is False  # tensorpack's un-quantised anchors
    cfg = apply_rules(get_default_config().clone(), "torchvision")
    assert cfg.RPN.ANCHOR_ROUNDING is True
    assert build_rpn(cfg.clone().finalize(), 16).anchor_generator.rounding is True
    cfg.update_args(["RPN.ANCHOR_ROUNDING=False"])
    assert build_rpn(cfg.finalize(), 16).anchor_generator.rounding is False
    with pytest.raises(ConfigError, match="RPN.ANCHOR_ROUNDING"):
        get_default_config().update_args(["RPN.ANCHOR_ROUNDING=1"]).finalize()
    from gluon_rcnn import model_zoo
    # anchors are what the RPN's deltas were trained against: architecture; the clamp only caps
    # extreme decodes and MAX_SIZE is preprocessing: recipe (taken from the checkpoint)
    assert model_zoo.ARCHITECTURE_KEYS["RPN.ANCHOR_ROUNDING"] == "always"
    assert not {"FRCNN.BBOX_DECODE_CLAMP", "PREPROC.MAX_SIZE_ROUND_UP"} & set(model_zoo.ARCHITECTURE_KEYS)


# ------------------------------------------------------------------------------------------------
# decode clamp: FRCNN.BBOX_DECODE_CLAMP
# ------------------------------------------------------------------------------------------------

def _cfg(*args):
    """torchvision's rules as the base (the defaults are tensorpack's), then ``args``."""
    return apply_rules(get_default_config().clone(), "torchvision").update_args(list(args)).finalize()


def test_decode_clamp_values():
    assert BBOX_XFORM_CLIP == math.log(1000 / 16)                         # 4.1352
    assert bbox_decode_clamp(_cfg()) == math.log(1000 / 16)
    assert bbox_decode_clamp(_cfg("FRCNN.BBOX_DECODE_CLAMP=tensorpack")) == math.log(1333 / 16)  # 4.4226
    assert bbox_decode_clamp(_cfg("FRCNN.BBOX_DECODE_CLAMP=tensorpack", "MODE_FPN=True")) == math.log(1333 / 16)
    # tensorpack reads MAX_SIZE after finalize_configs rounded it (FPN): log(1344/16) = 4.4308
    assert bbox_decode_clamp(_cfg("FRCNN.BBOX_DECODE_CLAMP=tensorpack", "MODE_FPN=True",
                                  "PREPROC.MAX_SIZE_ROUND_UP=True")) == math.log(1344 / 16)
    assert bbox_decode_clamp(_cfg("MODE_FPN=True", "PREPROC.MAX_SIZE_ROUND_UP=True")) == math.log(1000 / 16)
    with pytest.raises(ConfigError, match="FRCNN.BBOX_DECODE_CLAMP"):
        _cfg("FRCNN.BBOX_DECODE_CLAMP=detectron")
    with pytest.raises(ConfigError, match="MAX_SIZE"):
        _cfg("FRCNN.BBOX_DECODE_CLAMP=tensorpack", "PREPROC.MAX_SIZE=0")


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
                       (("FRCNN.BBOX_DECODE_CLAMP=tensorpack", "PREPROC.MAX_SIZE_ROUND_UP=True"), math.log(1344 / 16))]:
        cfg = _cfg("MODE_FPN=True", "FPN.CASCADE=True", "MODE_MASK=False", "FPN.FRCNN_FC_HEAD_DIM=16", *args)
        assert build_rpn(cfg, 8).box_coder.clip == want
        stages = build_roi_heads(cfg, 8).stages
        assert len(stages) == 3 and all(s.coder.clip == want for s in stages)


# ------------------------------------------------------------------------------------------------
# MAX_SIZE: PREPROC.MAX_SIZE_ROUND_UP
# ------------------------------------------------------------------------------------------------

def test_max_size_round_up_fpn_only():
    assert get_default_config().PREPROC.MAX_SIZE_ROUND_UP is True
    assert max_size(get_default_config().clone().finalize()) == 1344  # FPN default: tensorpack's 1333 -> 1344
    cases = [(("MODE_FPN=True",), 1333), (("MODE_FPN=True", "PREPROC.MAX_SIZE_ROUND_UP=True"), 1344),
             (("MODE_FPN=False", "PREPROC.MAX_SIZE_ROUND_UP=True"), 1333),
             (("MODE_FPN=True", "PREPROC.MAX_SIZE_ROUND_UP=True", "PREPROC.MAX_SIZE=1024"), 1024),
             (("MODE_FPN=True", "PREPROC.MAX_SIZE_ROUND_UP=True", "PREPROC.MAX_SIZE=1025"), 1056),
             (("MODE_FPN=True", "PREPROC.MAX_SIZE_ROUND_UP=True", "PREPROC.MAX_SIZE=0"), 0)]
    for args, want in cases:
        cfg = _cfg(*args)
        assert max_size(cfg) == want, args
        assert build_preprocessor(cfg).max_size == want, args      # test-time resize
        assert TrainTransform(cfg).max_size == want, args          # training resize
        assert cfg.PREPROC.MAX_SIZE == (1333 if len(args) < 3 else int(args[2].split("=")[1]))  # key kept
    # 1333 -> 1344 changes a 800x1600 image's test size (long edge capped)
    pre = build_preprocessor(_cfg("MODE_FPN=True", "PREPROC.MAX_SIZE_ROUND_UP=True"))
    assert pre.target_size(800, 1600) == (672, 1344)
    assert build_preprocessor(_cfg("MODE_FPN=True")).target_size(800, 1600) == (667, 1333)  # int(666.5 + 0.5)
    with pytest.raises(ConfigError, match="PREPROC.MAX_SIZE_ROUND_UP"):
        _cfg("PREPROC.MAX_SIZE_ROUND_UP=yes")
