"""tensorpack's backbone rules (issues 10 and 19): RULES.FREEZE_AFFINE, RULES.ZERO_INIT_RESIDUAL,
RULES.FLOOR_STRIDE2, and the refusal of ImageNet weights whose norm kind differs from the model's (small, CPU).

tensorpack: examples/FasterRCNN/modeling/backbone.py (``backbone_scope``, ``freeze_affine_getter``,
``get_norm(zero_init=...)``, ``resnet_bottleneck``) and config.py (``BACKBONE.FREEZE_AFFINE``).
"""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from gluon_rcnn.backbone import ResNet, load_pretrained, make_res5_stage
from gluon_rcnn.backbone.resnet import BasicBlock, Bottleneck
from gluon_rcnn.builders import build_backbone, build_res5_stage
from gluon_rcnn.config import ConfigError, get_default_config
from gluon_rcnn.nn import FrozenBatchNorm2d, get_norm
from gluon_rcnn.profiles import rule_names

R18, R50 = [2, 2, 2, 2], [3, 4, 6, 3]
#: torchvision's ResNet rules (its profile's), the base each test below changes one rule of
TV = dict(zero_init_residual=False, freeze_affine=True, floor_stride2=False, stride_1x1=False)


def _torchvision_rules(cfg):
    """torchvision's rules except its anchor grid, RoIAlign and resize (what these tests were written
    against: the earlier table of torchvision's rules left those three at tensorpack's)."""
    return cfg.update_args(["RULES.PROFILE=torchvision", "RULES.ANCHOR_GRID=fixed_stride", "RULES.ROI_ALIGNED=True",
                            "RULES.RESIZE=round"])


def _cfg(*overrides):
    """torchvision's rules as the base (the defaults are tensorpack's), then ``overrides``."""
    cfg = _torchvision_rules(get_default_config().clone())
    cfg.update_args(list(overrides))
    return cfg.finalize()


def _norm_params(module: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in module.named_parameters()
            if isinstance(module.get_submodule(n.rsplit(".", 1)[0]), FrozenBatchNorm2d)]


# --------------------------------------------------------------------------------------------
# 1. FREEZE_AFFINE
# --------------------------------------------------------------------------------------------

def test_torchvision_rules_keep_the_torchvision_behaviour():
    assert rule_names(get_default_config())["FREEZE_AFFINE"] is False  # tensorpack's defaults
    assert rule_names(get_default_config())["ZERO_INIT_RESIDUAL"] is True
    cfg = rule_names(_torchvision_rules(get_default_config().clone()))
    assert cfg["FREEZE_AFFINE"] is True and cfg["ZERO_INIT_RESIDUAL"] is False
    bn = get_norm("FreezeBN", 4)
    assert list(bn.parameters()) == [] and set(dict(bn.named_buffers())) == {
        "weight", "bias", "running_mean", "running_var"}
    body = build_backbone(_cfg("MODE_FPN=True")).body
    assert _norm_params(body) == []  # FreezeBN: nothing of a norm is trained
    assert all(torch.all(b.last_norm().weight == 1) for b in body.modules() if isinstance(b, Bottleneck))


def test_frozen_bn_with_trainable_affine_hand_computed():
    bn = FrozenBatchNorm2d(2, eps=0.0, freeze_affine=False)
    with torch.no_grad():
        bn.running_mean.copy_(torch.tensor([1.0, -2.0]))
        bn.running_var.copy_(torch.tensor([4.0, 0.25]))  # std 2 and 0.5
        bn.weight.copy_(torch.tensor([2.0, 1.0]))
        bn.bias.copy_(torch.tensor([0.5, 0.0]))
    assert [n for n, _ in bn.named_parameters()] == ["weight", "bias"]
    assert all(p.requires_grad for p in bn.parameters())
    assert set(dict(bn.named_buffers())) == {"running_mean", "running_var"}
    assert list(bn.state_dict()) == ["weight", "bias", "running_mean", "running_var"]  # keys as torchvision's

    x = torch.tensor([[[[3.0, 5.0]], [[-1.0, 0.0]]]])  # (1, 2, 1, 2)
    bn.train()  # the mode does not matter: the statistics are the frozen ones
    y = bn(x)
    # ch0: (3-1)/2*2+0.5 = 2.5, (5-1)/2*2+0.5 = 4.5; ch1: (-1+2)/0.5*1+0 = 2, (0+2)/0.5 = 4
    torch.testing.assert_close(y, torch.tensor([[[[2.5, 4.5]], [[2.0, 4.0]]]]))

    opt = torch.optim.SGD(bn.parameters(), lr=0.1)
    y.sum().backward()
    # d/dweight = sum of x_hat = [1+2, 2+4]; d/dbias = number of pixels = [2, 2]
    torch.testing.assert_close(bn.weight.grad, torch.tensor([3.0, 6.0]))
    torch.testing.assert_close(bn.bias.grad, torch.tensor([2.0, 2.0]))
    opt.step()
    torch.testing.assert_close(bn.weight.detach(), torch.tensor([1.7, 0.4]))
    torch.testing.assert_close(bn.bias.detach(), torch.tensor([0.3, -0.2]))
    torch.testing.assert_close(bn.running_mean, torch.tensor([1.0, -2.0]))
    torch.testing.assert_close(bn.running_var, torch.tensor([4.0, 0.25]))
    # and the output is still the frozen-statistics formula with the new gamma/beta
    torch.testing.assert_close(bn(x).detach(), (x - bn.running_mean.view(1, -1, 1, 1))
                               / bn.running_var.sqrt().view(1, -1, 1, 1) * bn.weight.detach().view(1, -1, 1, 1)
                               + bn.bias.detach().view(1, -1, 1, 1))

    # freezing a stage (FREEZE_AT) makes it fully frozen again, values kept
    frozen = FrozenBatchNorm2d.convert_frozen_batchnorm(nn.Sequential(bn))[0]
    assert frozen.freeze_affine and list(frozen.parameters()) == []
    torch.testing.assert_close(frozen(x), bn(x).detach())


@pytest.mark.parametrize("variant", ["v1b", "v1d"])
def test_freeze_affine_false_in_resnet_mirrors_tensorpack_scopes(variant):
    """tensorpack's backbone_scope: FREEZE_AT stages are freeze_variables (everything fixed); the
    other stages (and the C4 head, resnet_conv5) keep gamma/beta trainable unless FREEZE_AFFINE;
    with FreezeBN every BatchNorm runs with training=False (moving statistics, never updated)."""
    torch.manual_seed(0)
    net = ResNet(R18, variant=variant, norm="FreezeBN", freeze_at=2, **dict(TV, freeze_affine=False)).train()
    frozen_parts = [net.conv1, net.bn1, net.layer1]
    for part in frozen_parts:
        assert all(not p.requires_grad for p in part.parameters())
        assert all(m.freeze_affine for m in part.modules() if isinstance(m, FrozenBatchNorm2d))
    for layer in (net.layer2, net.layer3, net.layer4):
        bns = [m for m in layer.modules() if isinstance(m, FrozenBatchNorm2d)]
        assert bns and all(not m.freeze_affine and m.weight.requires_grad and m.bias.requires_grad for m in bns)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())

    watched = {"layer1.0.bn1": net.layer1[0].bn1, "layer2.0.bn1": net.layer2[0].bn1,
               "layer3.1.bn2": net.layer3[1].bn2, "layer2.0.down": net.layer2[0].downsample[-1]}
    before = {k: {t: getattr(m, t).detach().clone() for t in ("weight", "bias", "running_mean", "running_var")}
              for k, m in watched.items()}
    opt = torch.optim.SGD([p for p in net.parameters() if p.requires_grad], lr=0.1)
    out = net(torch.randn(2, 3, 64, 64))
    sum((v ** 2).mean() for v in out.values()).backward()
    opt.step()
    for k, m in watched.items():
        for t in ("running_mean", "running_var"):
            torch.testing.assert_close(getattr(m, t), before[k][t])
        changed = not torch.equal(m.weight.detach(), before[k]["weight"]) and \
            not torch.equal(m.bias.detach(), before[k]["bias"])
        assert changed == (k != "layer1.0.bn1"), k

    # the C4 head's res5 follows the trunk (never frozen)
    res5 = net.make_res5_stage()
    assert all(not m.freeze_affine and m.weight.requires_grad for m in res5.modules()
               if isinstance(m, FrozenBatchNorm2d))


def test_freeze_affine_from_the_config():
    body = build_backbone(_cfg("MODE_FPN=True", "RULES.FREEZE_AFFINE=False")).body
    names = {n for n, _ in _norm_params(body)}
    assert "layer2.0.bn1.weight" in names and "layer4.2.bn3.bias" in names
    assert not any(n.startswith(("bn1.", "layer1.")) for n in names)  # FREEZE_AT=2
    c4 = _cfg("RULES.FREEZE_AFFINE=False")
    assert len(_norm_params(build_res5_stage(c4))) == 2 * 10  # 3 blocks x 3 norms + the shortcut's
    # a checkpoint of either setting loads into the other: same state-dict keys
    default = build_backbone(_cfg("MODE_FPN=True")).body
    assert list(default.state_dict()) == list(body.state_dict())
    default.load_state_dict(body.state_dict())
    # norms other than FreezeBN train their affine anyway (tensorpack's FREEZE_AFFINE=False for them)
    gn = build_backbone(_cfg("MODE_FPN=True", "BACKBONE.NORM='GN'", "BACKBONE.FREEZE_AT=0")).body
    assert gn.layer2[0].bn1.weight.requires_grad
    # and the optimiser of the trainer takes the new parameters without weight decay (tensorpack
    # decays only '.*/W', the conv kernels)
    from gluon_rcnn.engine.trainer import build_optimizer
    opt = build_optimizer(body, c4)
    no_decay = {id(p) for g in opt.param_groups if g["weight_decay"] == 0.0 for p in g["params"]}
    assert id(body.layer2[0].bn1.weight) in no_decay


def test_finalize_checks_the_rules():
    for key in ("FREEZE_AFFINE", "ZERO_INIT_RESIDUAL"):
        cfg = get_default_config()
        cfg.RULES[key] = 1
        with pytest.raises(ConfigError, match=f"RULES.{key}=1 must be True or False"):
            cfg.finalize()
        with pytest.raises(ConfigError, match=f"RULES.{key}"):
            get_default_config().update_args([f"RULES.{key}=3"]).finalize()
        # the key it replaced names it
        with pytest.raises(ConfigError, match=f"RULES.{key}=True"):
            get_default_config().update_args([f"BACKBONE.{key}=True"])
    # GN/SyncBN configs keep working with the default (their affine is always trained)
    _cfg("BACKBONE.NORM='GN'")
    _cfg("BACKBONE.NORM='SyncBN'", "RULES.FREEZE_AFFINE=False")


# --------------------------------------------------------------------------------------------
# 2. ZERO_INIT_RESIDUAL
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("depth,norm", [(R18, "FreezeBN"), (R50, "FreezeBN"), (R50, "BN"), (R50, "GN"),
                                        (R18, "None")])
def test_zero_init_residual_makes_every_block_relu_of_its_shortcut(depth, norm):
    torch.manual_seed(0)
    net = ResNet(depth, norm=norm, freeze_at=0, variant="v1d", **dict(TV, zero_init_residual=True)).eval()
    blocks = [m for m in net.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    assert len(blocks) == sum(depth)
    for b in blocks:
        if norm == "None":  # tensorpack: conv3 with constant_initializer() when there is no norm
            assert torch.all(b.last_conv().weight == 0) and torch.all(b.last_conv().bias == 0)
        else:
            assert torch.all(b.last_norm().weight == 0) and torch.all(b.last_norm().bias == 0)
            assert torch.all(b.bn1.weight == 1)  # only the last norm
            if b.downsample is not None:
                assert torch.all(b.downsample[-1].weight == 1)  # tensorpack: shortcut zero_init=False
        x = torch.randn(2, b.conv1.in_channels, 8, 8)
        with torch.no_grad():
            shortcut = x if b.downsample is None else b.downsample(x)
            torch.testing.assert_close(b(x), torch.relu(shortcut))
    # without it: nothing zero
    plain = ResNet(depth, norm=norm, freeze_at=0, variant="v1d", **TV)
    assert not any(torch.all(b.last_conv().weight == 0) for b in plain.modules() if isinstance(b, (BasicBlock,
                                                                                                   Bottleneck)))


def test_zero_init_residual_is_overwritten_by_imagenet_weights(tmp_path):
    """Order of operations in build_backbone: construct (init, zero gamma, freeze), then load."""
    tv = torchvision.models.resnet18()
    with torch.no_grad():
        for m in tv.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
    path = tmp_path / "r18.pth"
    torch.save(tv.state_dict(), path)
    blocks = "BACKBONE.RESNET_NUM_BLOCKS=[2,2,2,2]"
    scratch = build_backbone(_cfg("MODE_FPN=True", blocks, "RULES.ZERO_INIT_RESIDUAL=True")).body
    assert torch.all(scratch.layer3[1].bn2.weight == 0) and torch.all(scratch.layer1[0].bn2.weight == 0)
    loaded = build_backbone(_cfg("MODE_FPN=True", blocks, "RULES.ZERO_INIT_RESIDUAL=True",
                                 f"BACKBONE.WEIGHTS='{path}'")).body
    for name in ("layer1.0.bn2", "layer3.1.bn2", "layer4.1.bn2"):
        torch.testing.assert_close(loaded.get_submodule(name).weight, tv.get_submodule(name).weight)
    # the C4 head's res5: zero-initialised too, overwritten by layer4.* of the file
    c4 = _cfg(blocks, "RULES.ZERO_INIT_RESIDUAL=True")
    assert torch.all(build_res5_stage(c4)[1].bn2.weight == 0)
    c4 = _cfg(blocks, "RULES.ZERO_INIT_RESIDUAL=True", f"BACKBONE.WEIGHTS='{path}'")
    torch.testing.assert_close(build_res5_stage(c4)[1].bn2.weight, tv.layer4[1].bn2.weight)
    trunk = ResNet(R50, out_features=("res4",), **dict(TV, zero_init_residual=True))
    assert torch.all(trunk.make_res5_stage()[0].bn3.weight == 0)


# --------------------------------------------------------------------------------------------
# 3. norm kind of the ImageNet weights
# --------------------------------------------------------------------------------------------

def test_gn_model_refuses_bn_weights(tmp_path):
    path = tmp_path / "resnet18_bn.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    net = ResNet(R18, norm="GN", freeze_at=0, **TV)
    before = net.layer2[0].bn1.weight.detach().clone()
    with pytest.raises(ValueError, match=r"(?s)BatchNorm weights.*GroupNorm.*GroupNorm-pretrained ImageNet weights"
                                         r".*ImageNet-R50-GroupNorm32-AlignPadding\.npz"):
        load_pretrained(net, str(path))
    torch.testing.assert_close(net.layer2[0].bn1.weight, before)  # nothing copied
    res5 = make_res5_stage(R18, norm="GN", zero_init_residual=False, freeze_affine=True, stride_1x1=False)
    with pytest.raises(ValueError, match="GroupNorm-pretrained"):
        load_pretrained(res5, str(path), prefix="layer4.")
    with pytest.raises(ValueError, match="GroupNorm-pretrained"):
        build_backbone(_cfg("MODE_FPN=True", "BACKBONE.RESNET_NUM_BLOCKS=[2,2,2,2]", "BACKBONE.NORM='GN'",
                            f"BACKBONE.WEIGHTS='{path}'"))


@pytest.mark.parametrize("norm", ["FreezeBN", "BN", "SyncBN"])
def test_bn_model_refuses_gn_weights(tmp_path, norm):
    path = tmp_path / "resnet18_gn.pth"
    torch.save(ResNet(R18, norm="GN", freeze_at=0, **TV).state_dict(), path)
    with pytest.raises(ValueError, match=r"(?s)no BatchNorm statistics.*GroupNorm weights.*BACKBONE.NORM='GN'"):
        load_pretrained(ResNet(R18, norm=norm, **TV), str(path))


def test_matching_norm_kinds_still_load(tmp_path):
    torch.manual_seed(0)
    gn = ResNet(R18, norm="GN", freeze_at=0, **TV)
    with torch.no_grad():
        gn.layer3[0].bn2.weight.uniform_(0.5, 1.5)
    torch.save(gn.state_dict(), tmp_path / "gn.pth")
    other = ResNet(R18, norm="GN", freeze_at=0, **TV)
    assert load_pretrained(other, str(tmp_path / "gn.pth")) == ([], [])
    torch.testing.assert_close(other.layer3[0].bn2.weight, gn.layer3[0].bn2.weight)
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "bn.pth")
    for norm in ("FreezeBN", "BN"):
        assert load_pretrained(ResNet(R18, norm=norm, **TV), str(tmp_path / "bn.pth")) == ([], [])
    # FREEZE_AFFINE=False: the file's gamma/beta go into the trainable parameters
    net = ResNet(R18, **dict(TV, freeze_affine=False))
    assert load_pretrained(net, str(tmp_path / "bn.pth")) == ([], [])
    assert isinstance(net.layer2[0].bn1.weight, nn.Parameter)


def test_training_only_rules_do_not_change_the_architecture():
    """Neither rule changes the parameters (names, shapes): the zoo takes them from a checkpoint's config."""
    from gluon_rcnn.zoo_check import signature
    base = _cfg("MODE_FPN=True", "RULES.FREEZE_AFFINE=True", "RULES.ZERO_INIT_RESIDUAL=False")
    for other in (_cfg("MODE_FPN=True", "RULES.FREEZE_AFFINE=False", "RULES.ZERO_INIT_RESIDUAL=False"),
                  _cfg("MODE_FPN=True", "RULES.FREEZE_AFFINE=True", "RULES.ZERO_INIT_RESIDUAL=True")):
        assert signature(other) == signature(base)


def test_inference_fusion_folds_trainable_affine_frozen_bn():
    from gluon_rcnn.nn.fuse import fuse_conv_norm
    torch.manual_seed(0)
    net = ResNet(R18, **dict(TV, freeze_affine=False)).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, FrozenBatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.running_var.uniform_(0.5, 1.5)
        x = torch.randn(1, 3, 64, 64)
        ref = net(x)
        assert fuse_conv_norm(net) > 0
        out = net(x)
    # fused (conv weight * scale, bias = shift) vs unfused: the same values rounded differently (measured
    # on an Intel Xeon: up to 1.8e-5 on values up to 22, ~7 float32 ulps of the largest, i.e. at most 0.09
    # of this tolerance, which scales with |value| through rtol)
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------
# RULES.FLOOR_STRIDE2 and C4's unpadded input (PREPROC.SIZE_DIVISIBILITY=0)
# --------------------------------------------------------------------------------------------

def _tensorpack_c4_trunk(body, x):
    """tensorpack's resnet_c4_backbone with TF_PAD_MODE=False written out with explicit pads (backbone.py:
    tf.pad(maybe_reverse_pad(2, 3)) + VALID 7x7/2; pad [1, 0] + VALID max-pool; in stride-2 bottlenecks pad
    [1, 0] + VALID 3x3/2 and the shortcut's input cropped by one row/column (``l[:, :, :-1, :-1]``))."""
    F = torch.nn.functional
    x = F.conv2d(F.pad(x, (3, 2, 3, 2)), body.conv1.weight, stride=2)
    x = F.max_pool2d(F.pad(body.relu(body.bn1(x)), (1, 0, 1, 0)), 3, 2)  # >= 0 after ReLU: zero pad = -inf pad
    for i in range(body.num_stages):
        for j, blk in enumerate(getattr(body, f"layer{i + 1}")):
            stride2 = i > 0 and j == 0
            y = blk.relu(blk.bn1(blk.conv1(x)))
            c2 = blk.conv2
            y = F.conv2d(F.pad(y, (1, 0, 1, 0)), c2.weight, stride=2) if stride2 else c2(y)
            y = blk.bn3(blk.conv3(blk.relu(blk.bn2(y))))
            if blk.downsample is not None:
                sc = blk.downsample(x[..., :-1, :-1] if stride2 else x)
            else:
                sc = x
            x = blk.relu(y + sc)
    return x


@pytest.mark.parametrize("hw", [(67, 45), (64, 64), (33, 50), (97, 101)])
def test_floor_stride2_is_tensorpacks_align_padding(hw):
    torch.manual_seed(0)
    body = ResNet(R50, norm="FreezeBN", out_features=("res4",), **dict(TV, floor_stride2=True)).eval()
    with torch.no_grad():
        for m in body.modules():  # non-trivial frozen statistics
            if isinstance(m, FrozenBatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.8, 1.5)
        x = torch.randn(1, 3, *hw)
        ours = body(x)["res4"]
        ceil = ResNet(R50, norm="FreezeBN", out_features=("res4",), **TV)
        ceil.load_state_dict(body.state_dict())
        plain = ceil.eval()(x)["res4"]
        body64, x64 = body.double(), x.double()
        ours64, ref64 = body64(x64)["res4"], _tensorpack_c4_trunk(body64, x64)
    h, w = hw
    for _ in range(4):
        h, w = h // 2, w // 2
    assert tuple(ours.shape[-2:]) == (h, w) == tuple(ref64.shape[-2:])  # floor(n/2) at every stride 2
    # Both sides compute one function written two ways (PyTorch's padded convs vs explicit F.pad +
    # unpadded convs), so they differ only by rounding: for the two input layouts the CPU's conv kernels
    # may sum the same products in another order. In float32 that rounding is not small against a fixed
    # atol: res4 comes out of ~40 chained convolutions whose dot products have up to 2304 terms and its
    # values reach ~30, so a few float32 ulps of the largest value (eps 1.2e-7) are already ~1e-5
    # (measured on an Intel Xeon: up to 2.2e-5 between float32 and float64, 1.5e-5 between the two
    # float32 sides, where a fixed atol=1e-5 failed on 1 element of 36,864). The rule is therefore
    # compared in float64, against a generous estimate of the rounding of such a chain,
    # n_convs * K_max * eps64 * max|value| (43 convs, K_max 2304: under 1e-9 here), while a wrong padding
    # rule moves values by O(1) (measured: the stem padded (2, 3) instead of (3, 2) moves res4 by 2 to 4).
    convs = [m for m in body64.modules() if isinstance(m, nn.Conv2d)]
    k_max = max(c.weight[0].numel() for c in convs)
    tol = len(convs) * k_max * torch.finfo(torch.float64).eps * ref64.abs().max().item()
    assert tol < 1e-6  # far below any difference a padding rule makes
    torch.testing.assert_close(ours64, ref64, rtol=0, atol=tol)
    if hw == (64, 64):  # even sizes: both rules agree exactly
        assert torch.equal(plain, ours)
    else:  # odd sizes: PyTorch's symmetric padding gives more rows/columns and other border values
        assert plain.shape != ours.shape or not torch.allclose(plain, ours, atol=1e-4)


def test_size_divisibility_follows_the_architecture():
    from gluon_rcnn.builders import build_preprocessor, size_divisibility
    c4 = _cfg("MODE_FPN=False", "RULES.FLOOR_STRIDE2=True")
    fpn = _cfg("MODE_FPN=True")
    assert get_default_config().PREPROC.SIZE_DIVISIBILITY == 0
    assert size_divisibility(c4) == 1 and size_divisibility(fpn) == 32
    assert build_preprocessor(c4).size_divisibility == 1 and build_backbone(c4).size_divisibility == 1
    assert build_backbone(fpn).size_divisibility == 32
    assert size_divisibility(_cfg("MODE_FPN=False", "PREPROC.SIZE_DIVISIBILITY=16")) == 16
    assert build_backbone(_cfg("MODE_FPN=True", "PREPROC.SIZE_DIVISIBILITY=1")).size_divisibility == 1
    for bad in ("PREPROC.SIZE_DIVISIBILITY=-1", "PREPROC.SIZE_DIVISIBILITY=True"):
        with pytest.raises(ConfigError, match="SIZE_DIVISIBILITY"):
            _cfg("MODE_FPN=True", bad)
    assert rule_names(get_default_config())["FLOOR_STRIDE2"] is True
    assert build_backbone(_cfg("MODE_FPN=False")).body.floor_stride2 is False  # torchvision column
