"""Tensorpack's GN heads, GN FPN convs and warm-up, each a rule (``RULES.*``, issues 10 and 19).

tensorpack (examples/FasterRCNN):
* ``model_frcnn.fastrcnn_Xconv1fc_head`` / ``model_mrcnn.maskrcnn_upXconv_head`` with norm 'GN':
  ``Conv2D(..., activation=tf.nn.relu)`` (``use_bias`` left at its default True: bias_add, then
  the activation) followed by ``GroupNorm`` (32 groups, eps 1e-5, gamma 1 / beta 0):
  conv + bias → ReLU → GN. ``RULES.GN_HEAD_ORDER='conv_relu_gn'``.
* ``model_fpn.fpn_model`` with ``FPN.NORM='GN'``: ``argscope(Conv2D, use_bias=True,
  activation=tf.identity)``, then ``GroupNorm`` on the lateral and on the 3x3 outputs: convs with
  bias. ``RULES.GN_CONV_BIAS=True``.
* ``train.py``: warm-up ``[(0, WARMUP_INIT_LR * min(8/NUM_GPUS, 1)), (WARMUP, BASE_LR)]`` in
  steps, whatever the number of GPUs (config.py: "This is not affected by #GPUs"); the optimiser
  uses ``lr/8`` on gradients summed over the GPUs. ``RULES.WARMUP_SCALES_WITH_BATCH=False``.

Every expected value here is computed by hand (explicit loops / sums), not by the modules tested.
"""
from __future__ import annotations

import pytest
import torch

from gluon_rcnn import model_zoo
from gluon_rcnn.backbone.fpn import FPN
from gluon_rcnn.builders import build_model
from gluon_rcnn.config import get_default_config, schedule_steps
from gluon_rcnn.engine.trainer import WarmupStepLR
from gluon_rcnn.profiles import rule_names
from gluon_rcnn.roi_heads.box_head import FastRCNNConvFCHead
from gluon_rcnn.roi_heads.mask_head import MaskRCNNUpConvHead
from gluon_rcnn.rules.init import TorchDefault

FC_INIT = TorchDefault()  # the fc init plays no part in these tests


def _torchvision_rules(cfg):
    """torchvision's rules except its anchor grid, RoIAlign and resize (what these tests were written
    against: the earlier table of torchvision's rules left those three at tensorpack's)."""
    return cfg.update_args(["RULES.PROFILE=torchvision", "RULES.ANCHOR_GRID=fixed_stride", "RULES.ROI_ALIGNED=True",
                            "RULES.RESIZE=round"])


# ---------------------------------------------------------------------------------------------
# hand computations
# ---------------------------------------------------------------------------------------------
def conv_by_hand(x, w, b=None):
    """Stride-1 'same' convolution, NCHW, as explicit sums over the kernel window."""
    n, c, h, wd = x.shape
    o, _, k, _ = w.shape
    p = k // 2
    xp = torch.zeros(n, c, h + 2 * p, wd + 2 * p, dtype=x.dtype)
    xp[:, :, p:p + h, p:p + wd] = x
    out = torch.zeros(n, o, h, wd, dtype=x.dtype)
    for dy in range(k):
        for dx in range(k):
            patch = xp[:, :, dy:dy + h, dx:dx + wd]                     # (n, c, h, w)
            out += (patch[:, None] * w[None, :, :, dy, dx, None, None]).sum(2)
    if b is not None:
        out += b.reshape(1, -1, 1, 1)
    return out


def group_norm_by_hand(x, groups, gamma, beta, eps=1e-5):
    """tensorpack's GroupNorm: moments over (channels of the group, H, W), biased variance."""
    n, c, h, w = x.shape
    g = x.reshape(n, groups, c // groups, h, w)
    mean = g.mean(dim=(2, 3, 4), keepdim=True)
    var = ((g - mean) ** 2).mean(dim=(2, 3, 4), keepdim=True)
    y = ((g - mean) / torch.sqrt(var + eps)).reshape(n, c, h, w)
    return y * gamma.reshape(1, -1, 1, 1) + beta.reshape(1, -1, 1, 1)


def _randomise(module, seed=0):
    """Non-trivial values in every parameter (biases and GN affine included), so that the order
    of bias, ReLU and GN shows in the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=p.dtype) * 0.5)
    return module


def _shapes(module, prefix=""):
    return {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# box head
# ---------------------------------------------------------------------------------------------
def test_box_head_conv_relu_gn_is_tensorpacks_order():
    head = _randomise(FastRCNNConvFCHead(4, 3, conv_dim=32, fc_dim=8, num_convs=2, norm="GN",
                                         gn_order="conv_relu_gn", fc_init=FC_INIT)).eval()
    x = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    head = head.double()
    c = head.convs
    h = x
    for i in range(2):
        conv, gn = c[3 * i], c[3 * i + 2]
        h = conv_by_hand(h, conv.weight, conv.bias).clamp_min(0)       # conv + bias, ReLU
        h = group_norm_by_hand(h, 32, gn.weight, gn.bias)               # then GN
    expect = (h.flatten(1) @ head.fc.weight.T + head.fc.bias).clamp_min(0)
    with torch.no_grad():
        got = head(x)
        torch.testing.assert_close(c(x), h, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got, expect, rtol=1e-9, atol=1e-9)
    assert (c(x) < 0).any()  # GN last: negative values survive (they cannot after a final ReLU)


def test_box_head_conv_gn_relu_is_torchvisions_order():
    head = _randomise(FastRCNNConvFCHead(4, 3, conv_dim=32, fc_dim=8, num_convs=1, norm="GN", gn_order="conv_gn_relu",
                                         fc_init=FC_INIT)).double().eval()
    x = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    conv, gn = head.convs[0], head.convs[1]
    assert conv.bias is None
    expect = group_norm_by_hand(conv_by_hand(x, conv.weight), 32, gn.weight, gn.bias).clamp_min(0)
    with torch.no_grad():
        torch.testing.assert_close(head.convs(x), expect, rtol=1e-9, atol=1e-9)


def test_box_head_parameter_names():
    """The names (and shapes) a tensorpack importer maps onto: fastrcnn/conv{k} → convs.{3k},
    fastrcnn/gn{k} → convs.{3k+2} ('conv_relu_gn') or convs.{3k+1} ('conv_gn_relu')."""
    d, fc = 256, 1024
    common = {"fc.weight": (fc, d * 49), "fc.bias": (fc,)}
    tp = {**common}
    ours = {**common}
    for k in range(4):
        tp.update({f"convs.{3 * k}.weight": (d, d, 3, 3), f"convs.{3 * k}.bias": (d,),
                   f"convs.{3 * k + 2}.weight": (d,), f"convs.{3 * k + 2}.bias": (d,)})
        ours.update({f"convs.{3 * k}.weight": (d, d, 3, 3),
                     f"convs.{3 * k + 1}.weight": (d,), f"convs.{3 * k + 1}.bias": (d,)})
    assert _shapes(FastRCNNConvFCHead(d, 7, d, fc, norm="GN", gn_order="conv_relu_gn", fc_init=FC_INIT)) == tp
    assert _shapes(FastRCNNConvFCHead(d, 7, d, fc, norm="GN", gn_order="conv_gn_relu", fc_init=FC_INIT)) == ours
    # without GN the order does not matter: conv with bias, as before
    plain = {**common, **{f"convs.{3 * k}.{t}": (d, d, 3, 3) if t == "weight" else (d,)
                          for k in range(4) for t in ("weight", "bias")}}
    assert _shapes(FastRCNNConvFCHead(d, 7, d, fc, norm="None", gn_order="conv_relu_gn", fc_init=FC_INIT)) == plain
    assert _shapes(FastRCNNConvFCHead(d, 7, d, fc, norm="None", gn_order="conv_gn_relu", fc_init=FC_INIT)) == plain
    with pytest.raises(ValueError, match="gn_order"):
        FastRCNNConvFCHead(d, 7, d, fc, norm="GN", gn_order="gn_conv_relu", fc_init=FC_INIT)


# ---------------------------------------------------------------------------------------------
# mask head
# ---------------------------------------------------------------------------------------------
def test_mask_head_conv_relu_gn_is_tensorpacks_order():
    head = _randomise(MaskRCNNUpConvHead(4, num_category=2, dim=32, num_convs=2, norm="GN",
                                         gn_order="conv_relu_gn"), seed=3).double().eval()
    x = torch.randn(2, 4, 3, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    h = x
    for i in range(2):
        conv, gn = head.convs[3 * i], head.convs[3 * i + 2]
        h = group_norm_by_hand(conv_by_hand(h, conv.weight, conv.bias).clamp_min(0), 32, gn.weight, gn.bias)
    # deconv 2x2 stride 2: output pixel (2i+a, 2j+b) = sum_c h[c,i,j] * W[c,o,a,b] + bias
    wdc, bdc = head.deconv.weight, head.deconv.bias                    # (in, out, 2, 2)
    up = torch.einsum("ncij,coab->noiajb", h, wdc).reshape(2, 32, 6, 6) + bdc.reshape(1, -1, 1, 1)
    up = up.clamp_min(0)
    expect = torch.einsum("nchw,oc->nohw", up, head.predictor.weight[:, :, 0, 0]) + \
        head.predictor.bias.reshape(1, -1, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(head.convs(x), h, rtol=1e-9, atol=1e-9)
        torch.testing.assert_close(head(x), expect, rtol=1e-9, atol=1e-9)


def test_mask_head_parameter_names():
    """maskrcnn/fcn{k} → convs.{3k}, maskrcnn/gn{k} → convs.{3k+2} ('conv_relu_gn'),
    maskrcnn/deconv → deconv, maskrcnn/conv → predictor."""
    d, cin, ncat = 256, 256, 80
    common = {"deconv.weight": (d, d, 2, 2), "deconv.bias": (d,),
              "predictor.weight": (ncat, d, 1, 1), "predictor.bias": (ncat,)}
    tp, ours = dict(common), dict(common)
    for k in range(4):
        tp.update({f"convs.{3 * k}.weight": (d, cin if k == 0 else d, 3, 3), f"convs.{3 * k}.bias": (d,),
                   f"convs.{3 * k + 2}.weight": (d,), f"convs.{3 * k + 2}.bias": (d,)})
        ours.update({f"convs.{3 * k}.weight": (d, cin if k == 0 else d, 3, 3),
                     f"convs.{3 * k + 1}.weight": (d,), f"convs.{3 * k + 1}.bias": (d,)})
    assert _shapes(MaskRCNNUpConvHead(cin, ncat, d, 4, norm="GN", gn_order="conv_relu_gn")) == tp
    assert _shapes(MaskRCNNUpConvHead(cin, ncat, d, 4, norm="GN", gn_order="conv_gn_relu")) == ours
    # C4 head (no convs): unaffected
    assert _shapes(MaskRCNNUpConvHead(2048, ncat, d, 0, gn_order="conv_relu_gn")) == \
        _shapes(MaskRCNNUpConvHead(2048, ncat, d, 0, gn_order="conv_gn_relu"))


# ---------------------------------------------------------------------------------------------
# FPN GN convs
# ---------------------------------------------------------------------------------------------
def test_fpn_gn_conv_bias_computation():
    fpn = _randomise(FPN([8, 16], out_channels=32, norm="GN", top_block="maxpool", gn_conv_bias=True), seed=5)
    fpn = fpn.double().eval()
    g = torch.Generator().manual_seed(6)
    c2 = torch.randn(1, 8, 4, 4, generator=g, dtype=torch.float64)
    c3 = torch.randn(1, 16, 2, 2, generator=g, dtype=torch.float64)

    def unit(x, seq):  # conv + bias, then GN: no activation (tensorpack: activation=tf.identity)
        return group_norm_by_hand(conv_by_hand(x, seq[0].weight, seq[0].bias), 32, seq[1].weight, seq[1].bias)

    lat3 = unit(c3, fpn.inner_blocks[1])
    lat2 = unit(c2, fpn.inner_blocks[0]) + lat3.repeat_interleave(2, 2).repeat_interleave(2, 3)
    p3, p2 = unit(lat3, fpn.layer_blocks[1]), unit(lat2, fpn.layer_blocks[0])
    with torch.no_grad():
        out = fpn({"res2": c2, "res3": c3})
    torch.testing.assert_close(out["p2"], p2, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out["p3"], p3, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(out["p4"], out["p3"][:, :, ::2, ::2], rtol=0, atol=0)


def test_fpn_parameter_names():
    """tensorpack fpn/lateral_1x1_c{i+2} → inner_blocks.{i}.0, fpn/gn_c{i+2} → inner_blocks.{i}.1,
    fpn/posthoc_3x3_p{i+2} → layer_blocks.{i}.0, fpn/gn_p{i+2} → layer_blocks.{i}.1."""
    cins, d = [256, 512, 1024, 2048], 256
    tp, ours = {}, {}
    for i, c in enumerate(cins):
        for blk, w in (("inner_blocks", (d, c, 1, 1)), ("layer_blocks", (d, d, 3, 3))):
            ours.update({f"{blk}.{i}.0.weight": w, f"{blk}.{i}.1.weight": (d,), f"{blk}.{i}.1.bias": (d,)})
            tp.update({f"{blk}.{i}.0.weight": w, f"{blk}.{i}.0.bias": (d,),
                       f"{blk}.{i}.1.weight": (d,), f"{blk}.{i}.1.bias": (d,)})
    p6 = dict(top_block="maxpool")
    assert _shapes(FPN(cins, d, norm="GN", gn_conv_bias=True, **p6)) == tp
    assert _shapes(FPN(cins, d, norm="GN", gn_conv_bias=False, **p6)) == ours
    # without GN the convs always have a bias
    assert _shapes(FPN(cins, d, norm="None", gn_conv_bias=True, **p6)) == \
        _shapes(FPN(cins, d, norm="None", gn_conv_bias=False, **p6))


# ---------------------------------------------------------------------------------------------
# rules → builders → model; the zoo's architecture check
# ---------------------------------------------------------------------------------------------
def _small_gn_cfg(*extra):
    c = _torchvision_rules(get_default_config().clone())
    c.update_args(["MODE_FPN=True", "MODE_MASK=True", "BACKBONE.RESNET_NUM_BLOCKS=[2,2,2,2]", "FPN.NORM='GN'",
                   "RULES.FREEZE_AFFINE=False",
                   "FPN.NUM_CHANNEL=32", "FPN.FRCNN_HEAD_FUNC='fastrcnn_4conv1fc_gn_head'",
                   "FPN.MRCNN_HEAD_FUNC='maskrcnn_up4conv_gn_head'", "FPN.FRCNN_CONV_HEAD_DIM=32",
                   "FPN.FRCNN_FC_HEAD_DIM=16", "MRCNN.HEAD_DIM=32", "DATA.NUM_CATEGORY=2", *extra])
    return c


def test_defaults_and_builders():
    c = rule_names(get_default_config())
    assert c["GN_HEAD_ORDER"] == "conv_relu_gn" and c["GN_CONV_BIAS"] is True  # tensorpack's defaults
    assert c["WARMUP_SCALES_WITH_BATCH"] is False
    c = rule_names(_torchvision_rules(get_default_config().clone()))
    assert c["GN_HEAD_ORDER"] == "conv_gn_relu" and c["GN_CONV_BIAS"] is False
    assert c["WARMUP_SCALES_WITH_BATCH"] is True
    ours = build_model(_small_gn_cfg()).state_dict()
    tp = build_model(_small_gn_cfg("RULES.GN_HEAD_ORDER='conv_relu_gn'", "RULES.GN_CONV_BIAS=True")).state_dict()
    added = sorted(set(tp) - set(ours))
    gone = sorted(set(ours) - set(tp))
    fpn_bias = [f"backbone.fpn.{b}.{i}.0.bias" for b in ("inner_blocks", "layer_blocks") for i in range(4)]
    head_tp = [f"roi_heads.{h}.convs.{3 * k + j}.{t}" for h in ("mask_head", "stages.0.head")
               for k in range(4) for j, t in ((0, "bias"), (2, "weight"), (2, "bias"))]
    head_ours = [f"roi_heads.{h}.convs.{3 * k + 1}.{t}" for h in ("mask_head", "stages.0.head")
                 for k in range(4) for t in ("weight", "bias")]
    assert added == sorted(fpn_bias + head_tp)
    assert gone == sorted(head_ours)


def test_architecture_differences():
    """Both GN rules change the parameters (the zoo's check names them); the warm-up rule does not."""
    a = _small_gn_cfg("RULES.GN_HEAD_ORDER='conv_gn_relu'", "RULES.GN_CONV_BIAS=False")
    b = _small_gn_cfg("RULES.GN_HEAD_ORDER='conv_relu_gn'", "RULES.GN_CONV_BIAS=True")
    assert model_zoo.architecture_differences(a, b) == [
        "RULES.GN_HEAD_ORDER: 'conv_gn_relu' vs 'conv_relu_gn'", "RULES.GN_CONV_BIAS: False vs True"]
    # the profile's choice (None in the config) is named as the choice it resolves to, never 'None'
    assert model_zoo.architecture_differences(_small_gn_cfg(), b) == [
        "RULES.GN_HEAD_ORDER: 'conv_gn_relu' vs 'conv_relu_gn'", "RULES.GN_CONV_BIAS: False vs True"]
    # compared only where used: no GN FPN, no GN head → no difference
    plain = model_zoo.get_config("faster_rcnn_fpn_resnet50_v1b_coco")
    assert rule_names(plain)["GN_HEAD_ORDER"] == "conv_relu_gn" and rule_names(plain)["GN_CONV_BIAS"] is True
    other = plain.clone()
    other.RULES.GN_HEAD_ORDER, other.RULES.GN_CONV_BIAS = "conv_gn_relu", False
    assert model_zoo.architecture_differences(plain, other) == []
    # a GN mask head alone (box head without GN) uses the order
    m = _small_gn_cfg("FPN.FRCNN_HEAD_FUNC='fastrcnn_2fc_head'", "FPN.NORM='None'")
    m2 = m.clone()
    m2.RULES.GN_HEAD_ORDER = "conv_relu_gn"
    assert model_zoo.architecture_differences(m, m2) == ["RULES.GN_HEAD_ORDER: 'conv_gn_relu' vs 'conv_relu_gn'"]
    # RULES.WARMUP_SCALES_WITH_BATCH is recipe, not architecture: the same parameters
    w = _small_gn_cfg("RULES.WARMUP_SCALES_WITH_BATCH=False")
    assert model_zoo.signature(w) == model_zoo.signature(_small_gn_cfg())
    assert model_zoo.architecture_differences(_small_gn_cfg(), w) == []


# ---------------------------------------------------------------------------------------------
# warm-up
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scales, world, iters, init", [
    # ours: WARMUP counted at batch 8 → 1000 * 8 / total; init 1e-5 * total / 8
    (True, 8, 1000, 1e-5), (True, 16, 500, 2e-5), (True, 64, 125, 8e-5),
    # tensorpack: WARMUP iterations whatever the batch; init 1e-5 * min(8/N, 1) * N/8 = 1e-5
    (False, 8, 1000, 1e-5), (False, 16, 1000, 1e-5), (False, 64, 1000, 1e-5),
    # below batch 8 both start from 1e-5 * total / 8; tensorpack counts its (accumulated) steps
    (True, 1, 8000, 1.25e-6), (False, 1, 1000, 1.25e-6),
])
def test_warmup(scales, world, iters, init):
    c = get_default_config()
    # accumulation off (its LR: tests/test_tensorpack_train_rules.py)
    c.update_args([f"RULES.WARMUP_SCALES_WITH_BATCH={scales}", "RULES.ACCUMULATE_TO_8=False"])
    s = WarmupStepLR.from_config(c.finalize(), world_size=world)
    base = 0.01 * world / 8                      # BASE_LR is scaled linearly under both settings
    assert s.warmup_iters == iters
    assert s.warmup_init_lr == pytest.approx(init, rel=1e-12)
    assert s.base_lr == pytest.approx(base, rel=1e-12)
    assert s.lr_at(0) == pytest.approx(init, rel=1e-12)
    assert s.lr_at(iters // 2) == pytest.approx(init + (base - init) * (iters // 2) / iters, rel=1e-12)
    assert s.lr_at(iters - 1) < base
    assert s.lr_at(iters) == pytest.approx(base, rel=1e-12)
    assert s.decay_steps + [s.max_iter] == schedule_steps("1x", world)  # the decay is not affected


def test_warmup_constructor_default_is_unchanged():
    old = WarmupStepLR(0.01, 1e-5, 1000, schedule_steps("1x", 64), 64)
    assert (old.warmup_iters, old.warmup_init_lr) == (125, pytest.approx(8e-5))
    tp = WarmupStepLR(0.01, 1e-5, 1000, schedule_steps("1x", 64), 64, warmup_scales_with_batch=False)
    assert (tp.warmup_iters, tp.warmup_init_lr) == (1000, pytest.approx(1e-5))
