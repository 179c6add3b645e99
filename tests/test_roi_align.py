"""The gather RoIAlign (gluon_rcnn/nn/roi_align.py) against torchvision's op, and its use by ROIPooler
and optimize_for_inference.

Tolerance: an output bin is (sum over its 4 r^2 terms w_k v_k) / r^2 with w_k >= 0 and sum w_k <= r^2
(r = sampling ratio); positions and weights are torchvision's bit for bit, only the order of the sum
differs, so the two results are each within (4 r^2) eps max|v| of the exact value (eps = 2^-24 per
rounding, doubled for safety: 2^-23): |ours - torchvision| <= 2 * 4 r^2 * 2^-23 * max|v|."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import roi_align

from gluon_rcnn.nn import roi_align as gather
from gluon_rcnn.roi_heads.pooler import ROIPooler
from gluon_rcnn.rules.levels import SqrtArea


def _bound(ratio: int, feat: torch.Tensor) -> float:
    return 2 * 4 * ratio * ratio * 2.0 ** -23 * float(feat.float().abs().max())


def _rois(n: int, images: int, h: int, w: int, stride: float, gen: torch.Generator) -> torch.Tensor:
    """RoIs in image pixels, some reaching past the map (to -20 px and 1.2x the size), some tiny."""
    xy = torch.rand(n, 2, generator=gen) * torch.tensor([w * stride * 1.2, h * stride * 1.2]) - 20
    wh = torch.rand(n, 2, generator=gen) * torch.tensor([w * stride, h * stride]) * 0.4
    wh[::7] *= 0.01
    idx = torch.randint(0, images, (n, 1), generator=gen).float()
    return torch.cat([idx, xy, xy + wh], 1)


@pytest.mark.parametrize("aligned", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gather_equals_torchvision_over_ratios_sizes_and_counts(aligned, dtype):
    gen = torch.Generator().manual_seed(0 if aligned else 1)
    checked = 0
    for ratio in (1, 2, 3):
        for size in (7, 14):
            for h, w, stride in ((37, 53, 4.0), (19, 11, 16.0), (2, 3, 32.0)):
                feat = (torch.randn(2, 24, h, w, generator=gen) * 3).to(dtype)
                feat = feat.contiguous(memory_format=torch.channels_last)
                for n in (0, 1, 2, 37, 200):
                    rois = _rois(n, 2, h, w, stride, gen)
                    ref = roi_align(feat.float(), rois, size, 1 / stride, ratio, aligned)
                    got = gather.roi_align_gather(feat, rois, size, 1 / stride, ratio, aligned)
                    assert got.dtype == torch.float32 and got.shape == ref.shape
                    if n:
                        err = float((got - ref).abs().max())
                        assert err <= _bound(ratio, feat), (ratio, size, h, w, n, err)
                        checked += n
    assert checked > 0


def test_gather_takes_contiguous_maps_too():
    gen = torch.Generator().manual_seed(2)
    feat = torch.randn(1, 8, 20, 30, generator=gen)
    rois = _rois(50, 1, 20, 30, 8.0, gen)
    ref = roi_align(feat, rois, 7, 1 / 8, 2, False)
    assert float((gather.roi_align_gather(feat, rois, 7, 1 / 8, 2, False) - ref).abs().max()) <= _bound(2, feat)


def test_gather_compiles_once_for_every_count_and_map_size():
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(3)
    feat = torch.randn(1, 16, 25, 31, generator=gen).contiguous(memory_format=torch.channels_last)
    gather.roi_align_gather(feat, _rois(5, 1, 25, 31, 4.0, gen), 7, 0.25, 2, True)  # warm-up
    gather.roi_align_gather(torch.randn(2, 16, 9, 14).contiguous(memory_format=torch.channels_last),
                            _rois(9, 2, 9, 14, 4.0, gen), 7, 0.25, 2, True)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for n, (h, w) in zip((1, 2, 3, 64, 1000, 17), ((25, 31), (40, 12), (8, 8), (100, 63), (25, 31), (3, 70))):
            f = torch.randn(2, 16, h, w, generator=gen).contiguous(memory_format=torch.channels_last)
            rois = _rois(n, 2, h, w, 4.0, gen)
            got = gather.roi_align_gather(f, rois, 7, 0.25, 2, True)
            assert float((got - roi_align(f, rois, 7, 0.25, 2, True)).abs().max()) <= _bound(2, f)


def test_gather_refuses_what_it_cannot_do():
    f = torch.randn(1, 4, 8, 8)
    assert not gather.supported(f, 0)  # adaptive sampling ratio
    with pytest.raises(ValueError, match="sampling_ratio"):
        gather.roi_align_gather(f, torch.zeros(1, 5), 7, 1.0, 0, True)


def _pooler(kernel: str) -> ROIPooler:
    return ROIPooler(7, [4, 8, 16, 32], 2, aligned=False, level_mapper=SqrtArea()).set_kernel(kernel)


def test_pooler_gather_reads_bf16_maps_into_fp32_and_leaves_training_to_torchvision():
    gen = torch.Generator().manual_seed(4)
    maps32 = [torch.randn(2, 32, 64 // s, 96 // s, generator=gen).contiguous(memory_format=torch.channels_last)
              for s in (1, 2, 4, 8)]
    maps = [m.bfloat16() for m in maps32]
    rois = _rois(300, 2, 64, 96, 4.0, gen)
    ref = _pooler("torchvision")(maps, rois)  # casts each bf16 map, pools in fp32, returns bf16
    got = _pooler("gather")(maps, rois)
    assert ref.dtype == torch.bfloat16 and got.dtype == torch.float32
    exact = _pooler("torchvision")([m.float() for m in maps], rois)
    assert float((got - exact).abs().max()) <= _bound(2, maps[0])
    assert torch.equal(got.bfloat16(), ref) or float((got.bfloat16().float() - ref.float()).abs().max()) <= \
        2.0 ** -7 * float(exact.abs().max())  # one bf16 rounding step apart at most
    # with autograd on the features: torchvision's op, gradients flow
    feats = [m.clone().requires_grad_(True) for m in maps32]
    out = _pooler("gather")(feats, rois)
    out.sum().backward()
    assert out.dtype == torch.float32 and all(f.grad is not None for f in feats)
    assert torch.equal(out.detach(), _pooler("torchvision")(maps32, rois))
    with pytest.raises(ValueError, match="kernel"):
        _pooler("fast")


@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16 autocast"])
def test_mask_head_selected_channel_equals_the_full_logits_gathered(autocast):
    """``mask_head(x, labels)`` (what an optimized model calls) = ``mask_head(x)`` at channel labels-1,
    float32 in both; a 1x1 conv over C channels and a per-RoI dot product differ by summation order
    only: each within C eps sum|w f| (+ eps |b|) of the exact float64 value."""
    from gluon_rcnn.roi_heads.mask_head import MaskRCNNUpConvHead
    torch.manual_seed(5)
    head = MaskRCNNUpConvHead(32, 7, dim=48, num_convs=2, gn_order="conv_gn_relu").eval()
    torch.nn.init.normal_(head.predictor.weight, std=0.05)
    torch.nn.init.normal_(head.predictor.bias, std=0.5)
    head = head.to(memory_format=torch.channels_last)
    for n in (1, 9, 40):
        x = torch.randn(n, 32, 14, 14).contiguous(memory_format=torch.channels_last)
        labels = torch.randint(1, 8, (n,))
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            full = head(x)
            sel = head(x, labels)
            f = head.relu(head.deconv(head.convs(x))).float()
        assert full.dtype == sel.dtype == torch.float32 and sel.shape == (n, 28, 28)
        ref = full[torch.arange(n), labels - 1]
        w = head.predictor.weight[labels - 1, :, 0, 0].double()
        exact = torch.einsum("rchw,rc->rhw", f.double(), w) + head.predictor.bias[labels - 1].double().view(-1, 1, 1)
        scale = torch.einsum("rchw,rc->rhw", f.double().abs(), w.abs()) + head.predictor.bias[labels - 1].double().abs().view(-1, 1, 1)
        bound = 48 * 2.0 ** -24 * scale + 1e-30
        assert bool(((sel.double() - exact).abs() <= bound).all()) and bool(((ref.double() - exact).abs() <= bound).all())


def test_optimize_for_inference_picks_the_kernels_and_can_keep_torchvision():
    from gluon_rcnn.builders import build_model
    from gluon_rcnn.config import get_default_config
    c = get_default_config()
    c.update_args(["BACKBONE.RESNET_NUM_BLOCKS=[2,2,2,2]", "DATA.NUM_CATEGORY=3", "FPN.NUM_CHANNEL=16",
                   "FPN.FRCNN_FC_HEAD_DIM=32", "MRCNN.HEAD_DIM=16", "RPN.HEAD_DIM=16", "MODE_MASK=True"])
    net = build_model(c.finalize()).eval()
    poolers = [m for m in net.modules() if isinstance(m, ROIPooler)]
    assert len(poolers) == 2 and all(p.kernel == "torchvision" for p in poolers)
    assert not net.roi_heads.mask_head.selected_logits  # the default path: torchvision's arithmetic
    net.optimize_for_inference("fp32")
    assert all(p.kernel == "gather" for p in poolers) and net.roi_heads.mask_head.selected_logits
    net.optimize_for_inference("fp32", roi_align="torchvision")
    assert all(p.kernel == "torchvision" for p in poolers)
    with pytest.raises(ValueError, match="roi_align"):
        net.optimize_for_inference("fp32", roi_align="cuda")
    with torch.no_grad():  # the gather kernel and the selected mask channel, end to end
        net.optimize_for_inference("bf16")
        net.roi_heads.score_thresh = 0.0
        out = net([torch.rand(3, 90, 120)])[0]
    assert out["masks"].dtype == torch.float32 and out["masks"].shape[0] == out["boxes"].shape[0] > 0
