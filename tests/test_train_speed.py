"""Training-speed levers change nothing but float rounding (issue 23, training part).

- ``nn.norm.fold_frozen_bn``: each FrozenBatchNorm2d applied inside the convolution before it
  (``conv(x, w * scale, shift)``), in training too: features and gradients of a ResNet equal the
  plain model's within the plain model's own fp32 rounding (both measured against a float64
  evaluation of the same model), for frozen and for trainable gamma/beta; parameters, buffers and
  state-dict keys stay as they were; ``unfold_frozen_bn`` restores the plain modules; a deep copy
  keeps each convolution paired with its own norm; inference folding (``fuse_conv_norm``) of a
  folded model gives the plain model's fused weights bit for bit.
- ``engine.trainer.build_optimizer(fused=True)``: fused SGD on the CPU, the loop's update up to float rounding.
"""
import copy
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from gluon_rcnn.backbone.resnet import ResNet
from gluon_rcnn.engine.trainer import build_optimizer
from gluon_rcnn.nn.fuse import fuse_conv_norm
from gluon_rcnn.nn.norm import FrozenBatchNorm2d, FrozenBNConv2d, fold_frozen_bn, unfold_frozen_bn

EPS32 = torch.finfo(torch.float32).eps


def _resnet18(freeze_affine: bool, seed: int = 0) -> ResNet:
    """ResNet-18 with FrozenBN of random statistics and affine (nothing frozen: every conv trains)."""
    torch.manual_seed(seed)
    net = ResNet((2, 2, 2, 2), norm="FreezeBN", freeze_at=0, zero_init_residual=False, freeze_affine=freeze_affine,
                 floor_stride2=False, stride_1x1=False)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, FrozenBatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) * 0.5 + 0.25)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return net.train()


def _features_and_grads(net: nn.Module, x: torch.Tensor, upstream: dict) -> dict:
    """Every output feature map and every parameter's gradient of sum(feature * upstream)."""
    net.zero_grad(set_to_none=True)
    feats = net(x)
    sum((feats[k] * upstream[k].to(feats[k].dtype)).sum() for k in feats).backward()
    out = {f"feature {k}": v.detach() for k, v in feats.items()}
    out.update({f"grad {n}": p.grad for n, p in net.named_parameters()})
    return out


@pytest.mark.parametrize("freeze_affine", [True, False])
def test_folded_training_step_equals_plain_within_rounding(freeze_affine):
    plain = _resnet18(freeze_affine)
    folded = copy.deepcopy(plain)
    assert fold_frozen_bn(folded) == 20  # stem + 16 block norms + 3 shortcut norms
    channels_last = copy.deepcopy(plain).to(memory_format=torch.channels_last)
    torch.manual_seed(2)
    x = torch.randn(2, 3, 32, 64)
    upstream = {k: torch.randn_like(v) for k, v in plain(x).items()}
    exact = _features_and_grads(copy.deepcopy(plain).double(), x.double(), upstream)
    runs = {"plain": _features_and_grads(plain, x, upstream),
            "plain channels_last": _features_and_grads(channels_last, x.contiguous(memory_format=torch.channels_last),
                                                       upstream),
            "folded": _features_and_grads(folded, x, upstream)}
    assert all(r.keys() == exact.keys() for r in runs.values())
    assert any(k.endswith("bn1.weight") for k in exact) != freeze_affine  # trainable gamma/beta get gradients
    # error of each fp32 result against the float64 one, in ulps of the tensor's largest value
    ulps = {name: {k: float((r[k].double() - e).abs().max() / (EPS32 * e.abs().max())) for k, e in exact.items()}
            for name, r in runs.items()}
    # the fp32 rounding level of this model: the worst error of the plain model in two summation
    # orders (a bias gradient sums N*H*W terms: any order rounds it, by up to ~10 ulps here)
    level = max(max(ulps["plain"].values()), max(ulps["plain channels_last"].values()))
    worst = max(ulps["folded"].items(), key=lambda kv: kv[1])
    assert 0 < worst[1] <= 2 * level, (worst, level)  # folded: another order, the same rounding level
    assert level < 100  # and that level is fp32 rounding, not a difference of maths


def test_fold_keeps_parameters_state_dict_and_unfolds():
    net = _resnet18(freeze_affine=False)
    keys = list(net.state_dict())
    before = {k: v.clone() for k, v in net.state_dict().items()}
    params = list(net.parameters())
    n = fold_frozen_bn(net)
    assert n == 20 and fold_frozen_bn(net) == n  # a second call folds the same pairs again, nothing more
    assert isinstance(net.conv1, FrozenBNConv2d) and net.bn1.folded
    assert isinstance(net.layer2[0].downsample[0], FrozenBNConv2d) and net.layer2[0].downsample[1].folded
    assert list(net.state_dict()) == keys and list(net.parameters()) == params
    assert all(torch.equal(v, before[k]) for k, v in net.state_dict().items())
    twin = copy.deepcopy(net)  # each copied convolution applies the copied norm, not the original's
    assert twin.layer1[0].conv1.__dict__["_frozen_bn"] is twin.layer1[0].bn1
    assert unfold_frozen_bn(net) == 20
    assert not any(isinstance(m, FrozenBNConv2d) or getattr(m, "folded", False) for m in net.modules())
    assert type(net.conv1) is nn.Conv2d and list(net.state_dict()) == keys


@torch.no_grad()
def test_inference_fusion_of_a_folded_model_is_the_plain_fusion():
    plain = _resnet18(freeze_affine=True).eval()
    folded = copy.deepcopy(plain)
    fold_frozen_bn(folded)
    assert fuse_conv_norm(plain) == fuse_conv_norm(folded) == 20
    for (n, a), (m, b) in zip(plain.state_dict().items(), folded.state_dict().items()):
        assert n == m and torch.equal(a, b), n
    assert not any(isinstance(m, FrozenBNConv2d) for m in folded.modules())


def test_build_optimizer_fused_on_request_and_within_rounding_of_the_loop():
    """The default is the per-parameter loop; ``fused=True`` gives PyTorch's fused kernel, whose update
    differs from the loop's by float rounding only (it contracts multiply-adds): over 10 steps with a
    changing learning rate and gradient clipping, each parameter within 10 steps x 4 roundings x
    2^-24 of its magnitude plus that of its largest update."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.Conv2d(8, 4, 1))
    cfg = SimpleNamespace(TRAIN=SimpleNamespace(WEIGHT_DECAY=1e-4, BASE_LR=0.02, MOMENTUM=0.9))
    assert not build_optimizer(copy.deepcopy(net), cfg).defaults.get("fused")
    twin = copy.deepcopy(net)
    opt = build_optimizer(net, cfg, fused=True)
    assert opt.defaults["fused"] is True
    loop = build_optimizer(twin, cfg)
    assert [len(g["params"]) for g in opt.param_groups] == [len(g["params"]) for g in loop.param_groups]
    start = [p.detach().clone() for p in twin.parameters()]
    steps = 10
    for step in range(steps):
        x = torch.randn(2, 3, 9, 9)
        for m, o in ((net, opt), (twin, loop)):
            for g in o.param_groups:
                g["lr"] = 0.02 * (step + 1) / steps
            o.zero_grad()
            m(x).square().mean().backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 0.5)
            o.step()
    for (n, a), b, s0 in zip(net.named_parameters(), twin.parameters(), start):
        bound = steps * 4 * 2.0 ** -24 * (b.abs() + (b - s0).abs().max())
        assert bool(((a - b).abs() <= bound).all()), n


def test_optimize_for_training_on_a_detector_keeps_its_state_and_trains():
    from gluon_rcnn import get_model
    net = get_model("faster_rcnn_fpn_resnet18_v1b_coco", overrides=["BACKBONE.NORM=FreezeBN", "FPN.NORM=None",
                                                                    "PREPROC.TRAIN_SHORT_EDGE_SIZE=[96,96]",
                                                                    "PREPROC.MAX_SIZE=128"])
    state = {k: v.clone() for k, v in net.state_dict().items()}
    n_frozen = sum(isinstance(m, FrozenBatchNorm2d) for m in net.backbone.modules())
    assert net.optimize_for_training() is net and net.channels_last
    assert sum(isinstance(m, FrozenBNConv2d) for m in net.modules()) == n_frozen == 20
    assert list(net.state_dict()) == list(state)
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert net.backbone.body.layer2[0].conv1.weight.is_contiguous(memory_format=torch.channels_last)
    net.train()
    torch.manual_seed(0)
    img = torch.rand(3, 96, 128)
    losses = net([img], [{"boxes": torch.tensor([[10.0, 20.0, 60.0, 80.0]]), "labels": torch.tensor([1])}])
    total = sum(losses.values())
    total.backward()
    # (the residual branches start at zero: RULES.ZERO_INIT_RESIDUAL; the shortcut conv learns)
    assert torch.isfinite(total) and net.backbone.body.layer2[0].downsample[0].weight.grad.abs().sum() > 0
