"""Tests of gluon_rcnn.nn: HybridBlock (hybridize/export) and the norm layers (incl. 2-process SyncBN)."""
from __future__ import annotations

import copy
import os
import pickle
import subprocess
import sys
import warnings

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torchvision
from torch import nn

from gluon_rcnn.nn import FrozenBatchNorm2d, HybridBlock, SyncBatchNorm2d, get_norm


# --------------------------------------------------------------------------------------------
# norm layers
# --------------------------------------------------------------------------------------------
def _random_bn(c: int) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-1, 1)
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2.0)
        bn.num_batches_tracked.fill_(7)
    return bn


def test_frozen_bn_matches_eval_bn_and_torchvision_keys():
    torch.manual_seed(0)
    bn = _random_bn(8).eval()
    frozen = FrozenBatchNorm2d(8)
    frozen.load_state_dict(bn.state_dict())  # strict: num_batches_tracked must be dropped, not refused
    x = torch.randn(2, 8, 5, 6)
    torch.testing.assert_close(frozen(x), bn(x), rtol=1e-5, atol=1e-5)
    tv = torchvision.ops.FrozenBatchNorm2d(8)
    assert list(frozen.state_dict().keys()) == list(tv.state_dict().keys())
    tv.load_state_dict(frozen.state_dict())
    torch.testing.assert_close(frozen(x), tv(x))
    assert not any(True for _ in frozen.parameters())
    y = frozen(x.to(memory_format=torch.channels_last))
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_convert_frozen_batchnorm_keeps_statistics():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), _random_bn(8), nn.ReLU())
    x = torch.randn(2, 3, 9, 9)
    ref = net.eval()(x)
    net = FrozenBatchNorm2d.convert_frozen_batchnorm(net.train())
    assert isinstance(net[1], FrozenBatchNorm2d)
    torch.testing.assert_close(net(x), ref, rtol=1e-5, atol=1e-5)


def test_get_norm_names():
    assert isinstance(get_norm("FreezeBN", 64), FrozenBatchNorm2d)
    bn = get_norm("BN", 64)
    assert type(bn) is nn.BatchNorm2d and bn.eps == 1e-5
    assert isinstance(get_norm("SyncBN", 64), SyncBatchNorm2d)
    gn = get_norm("GN", 64)
    assert isinstance(gn, nn.GroupNorm) and gn.num_groups == 32 and gn.num_channels == 64
    assert get_norm("GN", 64, gn_groups=16).num_groups == 16
    assert isinstance(get_norm("None", 64), nn.Identity)
    with pytest.raises(ValueError, match="divisible"):
        get_norm("GN", 48)
    with pytest.raises(ValueError, match="unknown norm"):
        get_norm("LayerNorm", 64)


def _sync_copy(bn: nn.BatchNorm2d) -> SyncBatchNorm2d:
    """A SyncBatchNorm2d holding a copy of ``bn``'s parameters and statistics, in its mode."""
    sync = SyncBatchNorm2d(bn.num_features, bn.eps, bn.momentum)
    sync.load_state_dict(copy.deepcopy(bn.state_dict()))
    return sync.train(bn.training)


def test_syncbn_without_process_group_is_batchnorm():
    assert not dist.is_initialized()
    torch.manual_seed(0)
    ref = _random_bn(6).train()
    sync = _sync_copy(ref)
    assert isinstance(sync, SyncBatchNorm2d)
    x = torch.randn(4, 6, 5, 5) * 3 + 2
    torch.testing.assert_close(sync(x), ref(x))
    torch.testing.assert_close(sync.running_mean, ref.running_mean)
    torch.testing.assert_close(sync.running_var, ref.running_var)
    assert int(sync.num_batches_tracked) == int(ref.num_batches_tracked) == 8


def _syncbn_worker(rank: int, world: int, init_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)  # same data and weights on every rank
        c = 5
        x_full = torch.randn(8, c, 6, 7) * 4 + 10  # an offset mean exercises the variance formula
        g_full = torch.randn(8, c, 6, 7)          # arbitrary upstream gradient
        ref = nn.BatchNorm2d(c)
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            ref.bias.uniform_(-1, 1)
        sync = _sync_copy(ref)

        # reference: one process, whole batch
        xr = x_full.clone().requires_grad_(True)
        yr = ref(xr)
        (yr * g_full).sum().backward()

        # this rank: its half
        n = x_full.shape[0] // world
        sl = slice(rank * n, (rank + 1) * n)
        xs = x_full[sl].clone().requires_grad_(True)
        ys = sync(xs)
        (ys * g_full[sl]).sum().backward()

        torch.testing.assert_close(ys, yr.detach()[sl], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(xs.grad, xr.grad[sl], rtol=1e-4, atol=1e-4)
        # parameter gradients are per-rank partial sums; DDP would all-reduce them
        gw, gb = sync.weight.grad.clone(), sync.bias.grad.clone()
        dist.all_reduce(gw)
        dist.all_reduce(gb)
        torch.testing.assert_close(gw, ref.weight.grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(gb, ref.bias.grad, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(sync.running_mean, ref.running_mean, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sync.running_var, ref.running_var, rtol=1e-5, atol=1e-5)
        assert int(sync.num_batches_tracked) == 1
        # eval mode uses the (synchronised) running statistics and no communication
        sync.eval(), ref.eval()
        torch.testing.assert_close(sync(x_full[sl]), ref(x_full[sl]), rtol=1e-5, atol=1e-5)
    finally:
        dist.destroy_process_group()


def test_syncbn_two_gloo_processes_equal_single_process_bn(tmp_path):
    mp.spawn(_syncbn_worker, args=(2, str(tmp_path / "pg_init")), nprocs=2, join=True)


# --------------------------------------------------------------------------------------------
# HybridBlock
# --------------------------------------------------------------------------------------------
class SmallConvBlock(HybridBlock):
    """conv-FrozenBN-relu-conv-relu, a dict output: (N, 3, H, W) -> {'a': (N,8,H,W), 'b': (N,4,H/2,W/2)}."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = FrozenBatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 4, 3, stride=2, padding=1)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-1, 1)
            self.bn.running_var.uniform_(0.5, 2)

    def forward(self, x):
        a = torch.relu(self.bn(self.conv1(x)))
        return {"a": a, "b": torch.relu(self.conv2(a))}


class TwoPartBlock(HybridBlock):
    """A block with a data-dependent Python step between two static towers."""

    def __init__(self):
        super().__init__()
        self.tower = SmallConvBlock()
        self.head = nn.Conv2d(4, 2, 1)

    def _hybrid_children(self):
        return ["tower", "head"]

    def forward(self, x):
        b = self.tower(x)["b"]
        keep = b.flatten(1).sum(1) > -1.0  # data-dependent selection stays eager
        return self.head(b[keep])


def _assert_dict_close(a, b, **kw):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], **kw)


def test_hybridize_inductor_equals_eager():
    """Default backend (inductor, needs gcc on CPU); on a machine where it cannot compile, the
    block must warn and fall back to aot_eager, and still give the eager result."""
    torch.manual_seed(0)
    net = SmallConvBlock().eval()
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        ref = net(x)
        net.hybridize()
        assert net.hybridized
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = net(x)
        backend = net.compiled_backends()[""]
        assert backend in ("inductor", "aot_eager")
        if backend == "aot_eager":
            assert any("falling back" in str(w.message) for w in caught)
        _assert_dict_close(out, ref, rtol=1e-4, atol=1e-4)
        net.hybridize(False)
        assert not net.hybridized and net._compiled_call_impl is None
        _assert_dict_close(net(x), ref)


def test_hybridize_aot_eager_dynamic_shapes_and_grads():
    torch.manual_seed(0)
    net = SmallConvBlock()
    eager = copy.deepcopy(net)
    net.hybridize(backend="aot_eager")
    for shape in [(2, 3, 16, 16), (1, 3, 24, 20)]:
        x = torch.randn(*shape)
        out, ref = net(x), eager(x)
        _assert_dict_close(out, ref, rtol=1e-5, atol=1e-5)
        (out["a"].sum() + out["b"].sum()).backward()
        (ref["a"].sum() + ref["b"].sum()).backward()
        torch.testing.assert_close(net.conv1.weight.grad, eager.conv1.weight.grad, rtol=1e-4, atol=1e-4)
    assert net.compiled_backends() == {"": "aot_eager"}


def _failing_backend(gm, example_inputs):
    raise RuntimeError("this backend always fails")


def test_hybridize_falls_back_to_aot_eager_when_backend_fails():
    torch.manual_seed(0)
    net = SmallConvBlock().eval()
    x = torch.randn(1, 3, 8, 8)
    ref = net(x)
    net.hybridize(backend=_failing_backend)
    with pytest.warns(RuntimeWarning, match="falling back to backend='aot_eager'"):
        out = net(x)
    _assert_dict_close(out, ref, rtol=1e-5, atol=1e-5)
    assert net.compiled_backends() == {"": "aot_eager"}


def test_hybridize_errors_of_the_model_are_not_swallowed():
    net = SmallConvBlock()
    net.hybridize(backend=_failing_backend)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a fallback would warn: make that fail
        with pytest.raises(Exception, match="channels"):
            net(torch.randn(1, 5, 8, 8))  # wrong channel count: the model's error, not the backend's
    assert net.compiled_backends() == {"": _failing_backend}  # no fallback happened


def test_hybrid_children_compile_only_named_parts_and_survive_copy():
    torch.manual_seed(0)
    net = TwoPartBlock().eval()
    x = torch.randn(3, 3, 8, 8)
    ref = net(x)
    net.hybridize(backend="aot_eager")
    assert set(net.compiled_backends()) == {"tower", "head"}  # the parent itself stays eager
    assert net._compiled_call_impl is None
    torch.testing.assert_close(net(x), ref, rtol=1e-5, atol=1e-5)
    # the compiled callables are not part of the model's state
    clone = copy.deepcopy(net)
    assert not clone.hybridized
    assert pickle.loads(pickle.dumps(net)).state_dict().keys() == net.state_dict().keys()
    assert net.state_dict().keys() == clone.state_dict().keys()
    net.hybridize(False)
    assert not net.hybridized


def test_export_round_trip_loads_without_library(tmp_path):
    torch.manual_seed(0)
    net = SmallConvBlock().eval()
    x = torch.randn(1, 3, 16, 16)
    ref = net(x)
    net.hybridize(backend="aot_eager")  # export must trace the eager code regardless
    path = str(tmp_path / "small.pt2")
    net.export(path, x)
    assert net.hybridized  # export leaves the hybrid state as it was
    loaded = torch.export.load(path).module()
    _assert_dict_close(loaded(x), ref, rtol=1e-5, atol=1e-5)
    # a fresh interpreter that never imports gluon_rcnn can run it
    torch.save(x, tmp_path / "x.pt")
    torch.save(ref, tmp_path / "ref.pt")
    code = (
        "import sys, torch\n"
        f"m = torch.export.load({path!r}).module()\n"
        f"x = torch.load({str(tmp_path / 'x.pt')!r}); ref = torch.load({str(tmp_path / 'ref.pt')!r})\n"
        "out = m(x)\n"
        "assert not any(k.startswith('gluon_rcnn') for k in sys.modules)\n"
        "for k in ref: torch.testing.assert_close(out[k], ref[k], rtol=1e-5, atol=1e-5)\n"
        "print('OK')\n")
    env = dict(os.environ, PYTHONPATH="")
    res = subprocess.run([sys.executable, "-c", code], cwd=str(tmp_path), env=env, capture_output=True,
                         text=True, timeout=300)
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-2000:]
