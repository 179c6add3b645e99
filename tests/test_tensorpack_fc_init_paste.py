"""Tensorpack's fc initialisation and accurate mask paste, each a rule (``RULES.*``, issues 10 and 19).

tensorpack (examples/FasterRCNN):
* ``modeling/model_frcnn.fastrcnn_2fc_head``: fc6, fc7 = ``FullyConnected(...,
  kernel_initializer=tfv1.variance_scaling_initializer())`` (scale 1, mode 'fan_in', truncated
  normal: sigma = sqrt(1/fan_in) / 0.87962566103423978, cut at +-2 sigma) and ``FullyConnected``'s
  default zero bias; ``fastrcnn_Xconv1fc_head``'s fc: the same. (``fastrcnn_outputs``: normal
  std 0.01 / 0.001, zero bias, which ``FastRCNNPredictor`` already does.)
  ``RULES.FC_INIT='fan_in_truncated_normal'``.
* ``eval.py:_paste_mask`` with ``MRCNN.ACCURATE_PASTE``: mask padded by one zero cell, box scaled
  by (M+2)/M about its centre, ``interp2d`` (bilinear, fill 0 outside the padded cell centres) of
  the padded mask sampled at pixel centres ``(x + 0.5 - x1') / (x2' - x1') * (M + 2)``, then
  ``>= 0.5``. ``RULES.MASK_PASTE='subpixel'``.

Every expected value here is computed by hand (explicit loops / formulas), not by the modules tested.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gluon_rcnn.builders import build_box_head, build_preprocessor
from gluon_rcnn.config import ConfigError, get_default_config
from gluon_rcnn.profiles import rule_names
from gluon_rcnn.roi_heads.box_head import FastRCNN2FCHead, FastRCNNConvFCHead
from gluon_rcnn.rules.init import FanInTruncatedNormal, TorchDefault
from gluon_rcnn.rules.paste import MASK_PASTE
from gluon_rcnn.structures.masks import paste_masks_in_image
from gluon_rcnn.zoo_check import signature


def _torchvision_rules(cfg):
    """torchvision's rules except its anchor grid, RoIAlign and resize (what these tests were written
    against: the earlier table of torchvision's rules left those three at tensorpack's)."""
    return cfg.update_args(["RULES.PROFILE=torchvision", "RULES.ANCHOR_GRID=fixed_stride", "RULES.ROI_ALIGNED=True",
                            "RULES.RESIZE=round"])


def _cfg(*overrides):
    c = _torchvision_rules(get_default_config().clone())  # torchvision base; tensorpack values set per test
    c.update_args(list(overrides))
    return c.finalize()


# ---------------------------------------------------------------- fc init


def _check_tensorpack_fc(fc: torch.nn.Linear):
    fan_in = fc.in_features
    w = fc.weight.detach().double().flatten()
    target = math.sqrt(1.0 / fan_in)                 # variance_scaling: scale / fan_in
    sigma = target / 0.87962566103423978              # TF's truncated-normal correction
    assert float(w.std()) == pytest.approx(target, rel=0.01)
    assert abs(float(w.mean())) < 0.01 * target
    assert float(w.abs().max()) <= 2 * sigma * (1 + 1e-6)      # truncated at 2 sigma ...
    assert float(w.abs().max()) > 1.98 * sigma                 # ... and reaching it
    # fraction beyond one sigma for a standard normal truncated to [-2, 2]
    p1, p2 = math.erf(1 / math.sqrt(2)), math.erf(2 / math.sqrt(2))
    assert float((w.abs() > sigma).double().mean()) == pytest.approx((p2 - p1) / p2, abs=0.005)
    assert torch.count_nonzero(fc.bias) == 0


def test_fc_init_tensorpack_2fc_head():
    torch.manual_seed(0)
    head = FastRCNN2FCHead(64, 7, 1024, fc_init=FanInTruncatedNormal(), avg_pool=False)   # fc6 fan_in 3136, fc7 1024
    _check_tensorpack_fc(head.fc6)
    _check_tensorpack_fc(head.fc7)


def test_fc_init_tensorpack_conv_head_fc():
    torch.manual_seed(0)
    head = FastRCNNConvFCHead(16, 7, conv_dim=32, fc_dim=1024, gn_order="conv_gn_relu",
                              fc_init=FanInTruncatedNormal())  # fan_in 1568
    _check_tensorpack_fc(head.fc)


def test_fc_init_torch_default_unchanged():
    # nn.Linear's default: weight and bias uniform in +-1/sqrt(fan_in), std 1/sqrt(3 fan_in)
    torch.manual_seed(0)
    head = FastRCNN2FCHead(64, 7, 1024, fc_init=TorchDefault(), avg_pool=False)
    for fc in (head.fc6, head.fc7):
        bound = 1 / math.sqrt(fc.in_features)
        w = fc.weight.detach().double()
        assert float(w.std()) == pytest.approx(bound / math.sqrt(3), rel=0.01)
        assert float(w.abs().max()) <= bound
        assert float(fc.bias.detach().abs().max()) <= bound and torch.count_nonzero(fc.bias) == fc.out_features
    # the same parameters as before the option existed (same random stream)
    torch.manual_seed(0)
    ref6 = torch.nn.Linear(64 * 49, 1024)
    assert torch.equal(head.fc6.weight, ref6.weight) and torch.equal(head.fc6.bias, ref6.bias)


def test_fc_init_rule():
    assert rule_names(get_default_config())["FC_INIT"] == "fan_in_truncated_normal"
    assert rule_names(_torchvision_rules(get_default_config().clone()))["FC_INIT"] == "torch_default"
    torch.manual_seed(0)
    head = build_box_head(_cfg("RULES.FC_INIT=fan_in_truncated_normal"), 256, 7)
    assert torch.count_nonzero(head.fc6.bias) == 0 and torch.count_nonzero(head.fc7.bias) == 0
    head = build_box_head(_cfg("RULES.FC_INIT=fan_in_truncated_normal", "FPN.FRCNN_HEAD_FUNC=fastrcnn_4conv1fc_head"),
                          256, 7)
    assert torch.count_nonzero(head.fc.bias) == 0
    head = build_box_head(_cfg(), 256, 7)
    assert torch.count_nonzero(head.fc6.bias) > 0
    with pytest.raises(ConfigError, match="RULES.FC_INIT"):
        _cfg("RULES.FC_INIT=xavier")
    with pytest.raises(TypeError, match="rules.init"):
        FastRCNN2FCHead(8, 7, 16, fc_init="xavier", avg_pool=False)
    # the init does not change the parameters (names, shapes): the zoo takes it from a checkpoint's config
    assert signature(_cfg("RULES.FC_INIT=fan_in_truncated_normal")) == signature(_cfg())


# ---------------------------------------------------------------- accurate paste


def _tensorpack_accurate_paste(box, mask, shape):
    """eval.py:_paste_mask with ACCURATE_PASTE, the probabilities before ``>= 0.5``; interp2d
    (linear, fill_value 0) written out as bilinear interpolation between the padded mask's cell
    centres ``0.5 .. M+1.5``, 0 outside them."""
    mask = np.pad(mask.astype(np.float64), [(1, 1), (1, 1)], mode="constant")
    Mp = mask.shape[0]
    s = Mp / (Mp - 2)
    box = np.asarray(box, np.float64)
    w_half, h_half = (box[2] - box[0]) * 0.5 * s, (box[3] - box[1]) * 0.5 * s
    xc, yc = (box[2] + box[0]) * 0.5, (box[3] + box[1]) * 0.5
    box = np.array([xc - w_half, yc - h_half, xc + w_half, yc + h_half])
    h, w = shape
    out = np.zeros((h, w))
    for yi in range(h):
        v = (yi + 0.5 - box[1]) / (box[3] - box[1]) * Mp
        for xi in range(w):
            u = (xi + 0.5 - box[0]) / (box[2] - box[0]) * Mp
            if not (0.5 <= u <= Mp - 0.5 and 0.5 <= v <= Mp - 0.5):
                continue  # fill_value=0.0
            # grid indices of the cell centres around (u, v)
            j0 = min(int(math.floor(u - 0.5)), Mp - 2)
            i0 = min(int(math.floor(v - 0.5)), Mp - 2)
            tx, ty = u - 0.5 - j0, v - 0.5 - i0
            out[yi, xi] = ((1 - ty) * ((1 - tx) * mask[i0, j0] + tx * mask[i0, j0 + 1])
                           + ty * ((1 - tx) * mask[i0 + 1, j0] + tx * mask[i0 + 1, j0 + 1]))
    return out


def test_accurate_paste_hand_values():
    # box 2x2 pixels at a quarter/half-pixel offset: one image pixel = one mask cell
    mask = torch.tensor([[[0.8, 0.2], [0.4, 1.0]]])
    box = torch.tensor([[1.25, 0.5, 3.25, 2.5]])
    got = paste_masks_in_image(mask, box, (4, 5), accurate=True)[0, 0]
    # x: pixel centre 1.5 -> u=0.25 (cell 0 weight .75); 2.5 -> 1.25 (.25, .75); 3.5 -> 2.25 (cell 1 .25)
    # y: 0.5 -> v=0 (cell 0 weight .5); 1.5 -> 1 (.5, .5); 2.5 -> 2 (cell 1 .5); 3.5 -> 0
    wx = torch.tensor([[0, 0], [0.75, 0], [0.25, 0.75], [0, 0.25], [0, 0]])
    wy = torch.tensor([[0.5, 0], [0.5, 0.5], [0, 0.5], [0, 0]])
    want = torch.tensor([[sum(float(wy[y, i] * mask[0, i, j] * wx[x, j]) for i in range(2) for j in range(2))
                          for x in range(5)] for y in range(4)])
    assert float(want[1, 2]) == pytest.approx(0.6)  # .5*(.8*.25+.2*.75) + .5*(.4*.25+1*.75)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    np.testing.assert_allclose(got.numpy(), _tensorpack_accurate_paste(box[0].numpy(), mask[0].numpy(), (4, 5)),
                               rtol=0, atol=1e-6)


def test_accurate_paste_matches_tensorpack_reimplementation():
    g = torch.Generator().manual_seed(0)
    N, M, H, W = 4, 28, 37, 45
    masks = torch.rand((N, M, M), generator=g)
    boxes = torch.tensor([[3.3, 4.7, 20.9, 30.15], [0.0, 0.0, 45.0, 37.0], [-5.2, 10.4, 12.6, 50.3],
                          [30.75, 2.25, 31.9, 3.1]])  # fractional, whole image, partly outside, sub-pixel
    got = paste_masks_in_image(masks, boxes, (H, W), accurate=True)
    assert got.shape == (N, 1, H, W)
    for k in range(N):
        want = _tensorpack_accurate_paste(boxes[k].numpy(), masks[k].numpy(), (H, W))
        np.testing.assert_allclose(got[k, 0].numpy(), want, rtol=0, atol=1e-5)
        # tensorpack's binary mask (>= 0.5), away from values too close to the threshold to compare
        sure = np.abs(want - 0.5) > 1e-4
        assert np.array_equal((got[k, 0].numpy() >= 0.5)[sure], (want >= 0.5)[sure])
    # the default (torchvision's integer paste) differs
    assert not torch.allclose(paste_masks_in_image(masks, boxes, (H, W)), got, atol=1e-3)


def test_mask_paste_rule_and_postprocess():
    assert rule_names(get_default_config())["MASK_PASTE"] == "subpixel"
    assert rule_names(_torchvision_rules(get_default_config().clone()))["MASK_PASTE"] == "integer_box"
    assert build_preprocessor(_cfg()).mask_paste is MASK_PASTE["integer_box"]
    pre = build_preprocessor(_cfg("RULES.MASK_PASTE=subpixel"))
    assert pre.mask_paste is MASK_PASTE["subpixel"]
    with pytest.raises(ConfigError, match="RULES.MASK_PASTE"):
        _cfg("RULES.MASK_PASTE='yes'")
    # the paste does not change the parameters: the zoo takes it from a checkpoint's config
    assert signature(_cfg("RULES.MASK_PASTE=subpixel")) == signature(_cfg())
    g = torch.Generator().manual_seed(1)
    r = {"boxes": torch.tensor([[2.5, 3.25, 10.75, 9.5]]), "scores": torch.ones(1),
         "labels": torch.ones(1, dtype=torch.long), "class_probs": torch.eye(2)[[1]],
         "mask_probs": torch.rand((1, 28, 28), generator=g)}
    out = pre.postprocess([r], [(20, 16)], [(40, 24)])[0]
    boxes = r["boxes"] * torch.tensor([24 / 16, 40 / 20, 24 / 16, 40 / 20])
    want = _tensorpack_accurate_paste(boxes[0].numpy(), r["mask_probs"][0].numpy(), (40, 24))
    np.testing.assert_allclose(out["masks"][0, 0].numpy(), want, rtol=0, atol=1e-5)


def test_accurate_paste_exports():
    class Paste(torch.nn.Module):
        def forward(self, masks, boxes):
            return paste_masks_in_image(masks, boxes, (30, 40), accurate=True)

    masks, boxes = torch.rand((3, 28, 28)), torch.tensor([[1.5, 2.25, 20.0, 25.5], [0, 0, 40, 30], [5, 5, 6, 7.5]])
    ep = torch.export.export(Paste(), (masks, boxes),
                             dynamic_shapes=({0: torch.export.Dim("n", min=1, max=1000)}, {0: torch.export.Dim("n", min=1, max=1000)}))
    torch.testing.assert_close(ep.module()(masks, boxes), Paste()(masks, boxes))
