"""Tests of gluon_rcnn.backbone: ResNet v1b/v1d, FPN, build_backbone (small inputs, CPU)."""
from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
import torchvision
from torch import nn
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from gluon_rcnn.backbone import FPN, Backbone, ResNet, load_pretrained, make_res5_stage
from gluon_rcnn.builders import build_backbone, build_res5_stage
from gluon_rcnn.config import get_default_config
from gluon_rcnn.nn import FrozenBatchNorm2d, SyncBatchNorm2d

R18, R50, R101 = [2, 2, 2, 2], [3, 4, 6, 3], [3, 4, 23, 3]
#: the rules of torchvision's profile, which these tests compare with: the ResNet's, the res5 stage's, the FPN's
TV = dict(zero_init_residual=False, freeze_affine=True, floor_stride2=False, stride_1x1=False)
TV_RES5 = dict(zero_init_residual=False, freeze_affine=True, stride_1x1=False)
TV_FPN = dict(top_block="maxpool", gn_conv_bias=False)


def _shapes(out):
    return {k: tuple(v.shape) for k, v in out.items()}


def _randomize_bn(model: nn.Module) -> None:
    """Non-trivial BN statistics, so that a wrong norm mapping cannot go unnoticed."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


def _tv_trunk(tv: nn.Module, x: torch.Tensor) -> dict:
    x = tv.maxpool(tv.relu(tv.bn1(tv.conv1(x))))
    out = {}
    for i, name in enumerate(["res2", "res3", "res4", "res5"]):
        x = getattr(tv, f"layer{i + 1}")(x)
        out[name] = x
    return out


# --------------------------------------------------------------------------------------------
# ResNet
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("depth,channels", [(R18, [64, 128, 256, 512]), (R50, [256, 512, 1024, 2048])])
@pytest.mark.parametrize("variant", ["v1b", "v1d"])
def test_resnet_shapes_and_strides(depth, channels, variant):
    torch.manual_seed(0)
    net = ResNet(depth, variant=variant, **TV).eval()
    out = net(torch.randn(2, 3, 64, 96))
    assert list(out) == ["res2", "res3", "res4", "res5"]
    assert net.feature_strides == {"res2": 4, "res3": 8, "res4": 16, "res5": 32}
    assert net.feature_channels == dict(zip(out, channels))
    for (name, t), c in zip(out.items(), channels):
        s = net.feature_strides[name]
        assert tuple(t.shape) == (2, c, 64 // s, 96 // s)
    blocks = [type(b).__name__ for b in net.layer1]
    assert set(blocks) == {"BasicBlock" if depth == R18 else "Bottleneck"}


def test_resnet101_shapes():
    net = ResNet(R101, **TV).eval()
    assert len(net.layer3) == 23
    with torch.no_grad():
        out = net(torch.randn(1, 3, 32, 32))
    assert _shapes(out) == {"res2": (1, 256, 8, 8), "res3": (1, 512, 4, 4), "res4": (1, 1024, 2, 2),
                            "res5": (1, 2048, 1, 1)}


def test_v1b_loads_torchvision_resnet50_and_matches_its_trunk():
    torch.manual_seed(0)
    tv = torchvision.models.resnet50()
    _randomize_bn(tv)
    tv.eval()
    state = {k: v for k, v in tv.state_dict().items() if not k.startswith("fc.")}
    net = ResNet(R50, variant="v1b", norm="FreezeBN", freeze_at=2, **TV)
    net.load_state_dict(state, strict=True)
    tv_frozen = torchvision.models.resnet50(norm_layer=torchvision.ops.FrozenBatchNorm2d)
    tv_frozen.load_state_dict(tv.state_dict())
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ours, ref, ref_frozen = net(x), _tv_trunk(tv, x), _tv_trunk(tv_frozen, x)
    for k in ref:
        # same arithmetic as torchvision's frozen-BN trunk ...
        torch.testing.assert_close(ours[k], ref_frozen[k])
        # ... and equal to its eval-mode BN trunk up to float rounding (activations reach ~1e3
        # with random weights, so the tolerance is relative to the largest value)
        scale = ref[k].abs().max().item()
        torch.testing.assert_close(ours[k], ref[k], rtol=0, atol=1e-5 * scale)
    # and our own state dict goes back into torchvision's model
    tv2 = torchvision.models.resnet50()
    result = tv2.load_state_dict(net.state_dict(), strict=False)
    assert set(result.missing_keys) <= {k for k in tv2.state_dict() if k.startswith("fc.") or
                                        k.endswith("num_batches_tracked")}
    assert result.unexpected_keys == []


def test_load_pretrained_from_file(tmp_path):
    torch.manual_seed(0)
    tv = torchvision.models.resnet18()
    _randomize_bn(tv)
    path = tmp_path / "resnet18.pth"
    torch.save(tv.state_dict(), path)
    net = ResNet(R18, **TV)
    missing, unexpected = load_pretrained(net, str(path))
    assert missing == [] and unexpected == []  # fc.* skipped, num_batches_tracked absorbed
    torch.testing.assert_close(net.layer3[1].bn2.running_var, tv.layer3[1].bn2.running_var)
    torch.testing.assert_close(net.conv1.weight, tv.conv1.weight)
    # a C4 trunk has no layer4: those tensors are reported unused, not an error ...
    c4 = ResNet(R18, out_features=("res4",), **TV)
    _, unexpected = load_pretrained(c4, str(path))
    assert unexpected and all(k.startswith("layer4.") for k in unexpected)
    with pytest.raises(RuntimeError, match="unexpected keys"):
        load_pretrained(c4, str(path), strict=True)
    # ... they go into the C4 head's res5 stage instead
    res5 = make_res5_stage(R18, **TV_RES5)
    assert load_pretrained(res5, str(path), prefix="layer4.") == ([], [])
    tv.eval()
    x = torch.randn(2, 256, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(res5(x), tv.layer4(x), rtol=1e-4, atol=1e-4)
    # a checkpoint wrapped under 'state_dict' is unwrapped
    torch.save({"state_dict": tv.state_dict()}, tmp_path / "wrapped.pth")
    assert load_pretrained(ResNet(R18, **TV), str(tmp_path / "wrapped.pth")) == ([], [])


def test_load_pretrained_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        load_pretrained(ResNet(R18, **TV), str(tmp_path / "nope.pth"))
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_pretrained(ResNet(R50, **TV), str(tmp_path / "r18.pth"))
    partial = {k: v for k, v in torchvision.models.resnet18().state_dict().items() if not k.startswith("layer2.")}
    torch.save(partial, tmp_path / "partial.pth")
    with pytest.warns(UserWarning, match="not in the file"):
        missing, _ = load_pretrained(ResNet(R18, **TV), str(tmp_path / "partial.pth"))
    assert missing and all(k.startswith("layer2.") for k in missing)


def test_v1d_deep_stem_and_avgpool_shortcut():
    net = ResNet(R50, variant="v1d", stem_width=32, norm="BN", freeze_at=0, **TV)
    stem = net.conv1
    assert isinstance(stem, nn.Sequential) and len(stem) == 7
    convs = [stem[i] for i in (0, 3, 6)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [
        (3, 32, (3, 3), (2, 2)), (32, 32, (3, 3), (1, 1)), (32, 64, (3, 3), (1, 1))]
    assert isinstance(stem[1], nn.BatchNorm2d) and isinstance(stem[4], nn.BatchNorm2d)
    assert net.bn1.num_features == 64
    # stride-1 stage: no pooling; stride-2 stages: avg-pool then a stride-1 1x1 conv
    assert isinstance(net.layer1[0].downsample[0], nn.Identity)
    for layer in (net.layer2, net.layer3, net.layer4):
        pool, conv, norm = layer[0].downsample
        assert isinstance(pool, nn.AvgPool2d) and pool.kernel_size == 2 and pool.stride == 2
        assert pool.ceil_mode and not pool.count_include_pad
        assert conv.kernel_size == (1, 1) and conv.stride == (1, 1)
        assert isinstance(norm, nn.BatchNorm2d)
        assert layer[0].conv2.stride == (2, 2) and layer[0].conv1.stride == (1, 1)  # stride on the 3x3
    # the shortcut's average pooling: on an odd map, the border cell averages only real pixels
    x = torch.arange(9.0).reshape(1, 1, 3, 3)
    pooled = net.layer2[0].downsample[0](x)
    assert pooled.tolist() == [[[[2.0, 3.5], [6.5, 8.0]]]]
    # odd feature sizes still line up between the 3x3 path and the pooled shortcut
    net.eval()
    with torch.no_grad():
        out = net(torch.randn(1, 3, 72, 104))
    assert _shapes(out)["res5"] == (1, 2048, 3, 4)
    names = list(net.state_dict())
    assert "conv1.6.weight" in names and "layer2.0.downsample.1.weight" in names
    assert "layer2.0.downsample.2.running_mean" in names


@pytest.mark.parametrize("norm", ["BN", "GN", "FreezeBN"])
def test_freeze_at(norm):
    def trainable(net, prefix):
        return [p.requires_grad for n, p in net.named_parameters() if n.startswith(prefix)]

    for freeze_at in (0, 1, 2):
        net = ResNet(R18, norm=norm, freeze_at=freeze_at, **TV)
        stem, res2, res3 = trainable(net, "conv1") + trainable(net, "bn1"), trainable(net, "layer1."), \
            trainable(net, "layer2.")
        assert all(stem) == (freeze_at < 1) and not any(stem) == (freeze_at >= 1)
        assert all(res2) == (freeze_at < 2) and not any(res2) == (freeze_at >= 2)
        assert res3 and all(res3)
        if norm == "BN":
            # frozen stages hold frozen statistics too, so train mode cannot change their output
            assert isinstance(net.bn1, FrozenBatchNorm2d) == (freeze_at >= 1)
            assert isinstance(net.layer1[0].bn1, FrozenBatchNorm2d) == (freeze_at >= 2)
            assert isinstance(net.layer2[0].bn1, nn.BatchNorm2d)
    if norm == "FreezeBN":
        assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules())


def test_freeze_at_2_backward_leaves_frozen_parts_untouched():
    torch.manual_seed(0)
    net = ResNet(R18, norm="BN", freeze_at=2, **TV).train()
    before = net.layer1[0].bn1.running_mean.clone()
    out = net(torch.randn(2, 3, 64, 64))
    sum(v.sum() for v in out.values()).backward()
    assert net.conv1.weight.grad is None and net.layer1[0].conv1.weight.grad is None
    assert net.layer2[0].conv1.weight.grad is not None
    torch.testing.assert_close(net.layer1[0].bn1.running_mean, before)


def test_c4_trunk_and_res5_head_stage():
    net = ResNet(R50, out_features=("res4",), **TV)
    assert not hasattr(net, "layer4") and net.num_stages == 3
    assert net.feature_channels == {"res4": 1024} and net.feature_strides == {"res4": 16}
    with torch.no_grad():
        out = net.eval()(torch.randn(1, 3, 64, 64))
    assert _shapes(out) == {"res4": (1, 1024, 4, 4)}
    res5 = make_res5_stage(R50, variant="v1d", norm="FreezeBN", **TV_RES5)
    assert len(res5) == 3 and type(res5[0]).__name__ == "Bottleneck"
    assert isinstance(res5[0].downsample[0], nn.AvgPool2d) and res5[0].conv2.stride == (2, 2)
    with torch.no_grad():
        assert tuple(res5(torch.randn(2, 1024, 14, 14)).shape) == (2, 2048, 7, 7)
    same = net.make_res5_stage()
    assert list(same.state_dict()) == list(make_res5_stage(R50, **TV_RES5).state_dict())
    r18 = make_res5_stage(R18, **TV_RES5)
    with torch.no_grad():
        assert tuple(r18(torch.randn(2, 256, 14, 14)).shape) == (2, 512, 7, 7)
    with pytest.raises(ValueError, match="stages"):
        ResNet(R50, out_features=("res5",), stages=3, **TV)


def test_init_and_zero_init_residual():
    torch.manual_seed(0)
    net = ResNet(R18, norm="BN", freeze_at=0, **TV)
    w = net.layer2[0].conv1.weight
    fan_out = w.shape[0] * w.shape[2] * w.shape[3]
    assert abs(w.std().item() - (2.0 / fan_out) ** 0.5) < 0.2 * (2.0 / fan_out) ** 0.5
    assert torch.all(net.layer2[0].bn2.weight == 1) and torch.all(net.layer2[0].bn2.bias == 0)
    zero = ResNet(R50, norm="BN", freeze_at=0, **dict(TV, zero_init_residual=True)).eval()
    assert torch.all(zero.layer3[2].bn3.weight == 0) and torch.all(zero.layer3[2].bn1.weight == 1)
    # a block without a projection is then the identity followed by relu
    x = torch.rand(1, 1024, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(zero.layer3[2](x), x)


def test_syncbn_and_channels_last():
    net = ResNet(R18, norm="SyncBN", freeze_at=1, **TV)
    assert isinstance(net.layer1[0].bn1, SyncBatchNorm2d) and isinstance(net.bn1, FrozenBatchNorm2d)
    torch.manual_seed(0)
    net = ResNet(R18, variant="v1d", **TV).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = net(x)
        net = net.to(memory_format=torch.channels_last)
        out = net(x.to(memory_format=torch.channels_last))
    for k in ref:
        assert out[k].is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(out[k], ref[k], rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------------------------
# FPN
# --------------------------------------------------------------------------------------------
def _features(channels=(16, 32, 64, 128), size=32, n=2):
    g = torch.Generator().manual_seed(3)
    return OrderedDict((f"res{i + 2}", torch.randn(n, c, size // 2 ** i, size // 2 ** i, generator=g))
                       for i, c in enumerate(channels))


def test_fpn_equals_torchvision():
    torch.manual_seed(0)
    chans = [16, 32, 64, 128]
    tv = FeaturePyramidNetwork(chans, 32, extra_blocks=LastLevelMaxPool())
    with torch.no_grad():  # torchvision initialises biases to 0: make them matter
        for p in tv.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    ours = FPN(chans, 32, norm="None", **TV_FPN)
    ours.load_state_dict(tv.state_dict(), strict=True)  # same names: inner_blocks.{i}.0.*
    feats = _features(chans)
    ref = tv(feats)
    out = ours(feats)
    assert list(out) == ["p2", "p3", "p4", "p5", "p6"]
    for mine, theirs in zip(out.values(), ref.values()):
        torch.testing.assert_close(mine, theirs)
    assert _shapes(out)["p6"] == (2, 32, 2, 2)
    # odd sizes (nearest upsampling to the lateral's size) match too
    odd = OrderedDict((k, v[..., : v.shape[-2] - 1, :]) for k, v in _features(chans, size=40).items())
    for mine, theirs in zip(ours(odd).values(), tv(odd).values()):
        torch.testing.assert_close(mine, theirs)
    # flat names of old torchvision checkpoints load as well
    flat = {k.replace(".0.", "."): v for k, v in tv.state_dict().items()}
    again = FPN(chans, 32, **TV_FPN)
    again.load_state_dict(flat, strict=True)
    torch.testing.assert_close(again(feats)["p3"], ref["res3"])


def test_fpn_init_as_torchvision():
    torch.manual_seed(0)
    ours = FPN([64, 128], 64, **TV_FPN)
    w = ours.layer_blocks[0][0].weight
    bound = (3.0 / (64 * 9)) ** 0.5  # kaiming_uniform a=1: sqrt(6 / ((1 + a^2) * fan_in))
    assert w.abs().max().item() <= bound and w.abs().max().item() > 0.9 * bound
    assert torch.all(ours.inner_blocks[1][0].bias == 0)


def test_gn_fpn_builds_and_matches_torchvision_gn():
    torch.manual_seed(0)
    chans = [64, 128, 256, 512]
    ours = FPN(chans, 64, norm="GN", **TV_FPN)
    names = set(ours.state_dict())
    assert "inner_blocks.0.0.weight" in names and "inner_blocks.0.0.bias" not in names
    assert "layer_blocks.3.1.weight" in names and "layer_blocks.3.1.bias" in names
    assert isinstance(ours.layer_blocks[2][1], nn.GroupNorm) and ours.layer_blocks[2][1].num_groups == 32
    tv = FeaturePyramidNetwork(chans, 64, extra_blocks=LastLevelMaxPool(),
                               norm_layer=lambda c: nn.GroupNorm(32, c))
    tv.load_state_dict(ours.state_dict(), strict=True)
    feats = _features(chans, size=16)
    for mine, theirs in zip(ours(feats).values(), tv(feats).values()):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="FPN norm"):
        FPN(chans, 64, norm="BN", **TV_FPN)


# --------------------------------------------------------------------------------------------
# build_backbone
# --------------------------------------------------------------------------------------------
def _cfg(**overrides):
    cfg = get_default_config()
    cfg.update_args(["BACKBONE.RESNET_NUM_BLOCKS=[2,2,2,2]"] + [f"{k}={v!r}" for k, v in overrides.items()])
    return cfg.finalize()


def test_build_backbone_fpn_and_c4():
    cfg = _cfg(**{"FPN.NUM_CHANNEL": 64})
    net = build_backbone(cfg).eval()
    assert isinstance(net, Backbone) and net.out_channels == 64
    assert net.strides == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    with torch.no_grad():
        out = net(torch.randn(1, 3, 64, 96))
    assert _shapes(out) == {f"p{k}": (1, 64, -(-64 // 2 ** k), -(-96 // 2 ** k)) for k in range(2, 7)}
    assert "body.layer4.1.conv2.weight" in net.state_dict() and "fpn.inner_blocks.3.0.weight" in net.state_dict()
    with pytest.raises(ValueError, match="multiple of 32"):
        net(torch.randn(1, 3, 64, 80))

    c4 = build_backbone(_cfg(MODE_FPN=False, **{"BACKBONE.VARIANT": "v1d", "BACKBONE.NORM": "GN"})).eval()
    assert c4.fpn is None and c4.out_channels == 256 and c4.strides == {"res4": 16}
    assert isinstance(c4.body.conv1, nn.Sequential) and isinstance(c4.body.layer2[0].bn1, nn.GroupNorm)
    with torch.no_grad():
        assert _shapes(c4(torch.randn(1, 3, 64, 64))) == {"res4": (1, 256, 4, 4)}
    head = build_res5_stage(_cfg(MODE_FPN=False, **{"BACKBONE.VARIANT": "v1d", "BACKBONE.NORM": "GN"}))
    assert isinstance(head[0].bn1, nn.GroupNorm) and isinstance(head[0].downsample[0], nn.AvgPool2d)


def test_build_backbone_gn_fpn_freeze_and_weights(tmp_path):
    tv = torchvision.models.resnet18()
    _randomize_bn(tv)
    torch.save(tv.state_dict(), tmp_path / "r18.pth")
    cfg = _cfg(**{"FPN.NORM": "GN", "BACKBONE.FREEZE_AT": 1, "BACKBONE.WEIGHTS": str(tmp_path / "r18.pth")})
    net = build_backbone(cfg)
    assert isinstance(net.fpn.inner_blocks[0][1], nn.GroupNorm)
    torch.testing.assert_close(net.body.layer1[0].conv1.weight, tv.layer1[0].conv1.weight)
    assert not net.body.conv1.weight.requires_grad and net.body.layer1[0].conv1.weight.requires_grad
    head = build_res5_stage(_cfg(MODE_FPN=False, **{"BACKBONE.WEIGHTS": str(tmp_path / "r18.pth")}))
    torch.testing.assert_close(head[1].conv2.weight, tv.layer4[1].conv2.weight)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_backbone(_cfg(**{"BACKBONE.WEIGHTS": str(tmp_path / "missing.pth")}))


def test_backbone_hybridize_and_export(tmp_path):
    torch.manual_seed(0)
    net = build_backbone(_cfg(**{"FPN.NUM_CHANNEL": 32})).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        ref = net(x)
        net.hybridize(backend="aot_eager")
        out = net(x)
    for k in ref:
        torch.testing.assert_close(out[k], ref[k], rtol=1e-4, atol=1e-4)
    net.export(str(tmp_path / "backbone.pt2"), x)
    loaded = torch.export.load(str(tmp_path / "backbone.pt2")).module()
    with torch.no_grad():
        got = loaded(x)
    assert list(got) == list(ref)
    for k in ref:
        torch.testing.assert_close(got[k], ref[k], rtol=1e-4, atol=1e-4)
