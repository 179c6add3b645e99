"""RoIAlign over one level (C4) or several FPN levels, each RoI pooled from its level."""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn
from torchvision.ops import roi_align

from ..nn import roi_align as gather

__all__ = ["ROIPooler"]

_POOL: dict[int, ThreadPoolExecutor] = {}


def _threads() -> ThreadPoolExecutor:
    n = torch.get_num_threads()
    if n not in _POOL:
        _POOL[n] = ThreadPoolExecutor(n, thread_name_prefix="roi_align")
    return _POOL[n]


def _roi_align_cpu_parallel(feat, rois, size, scale, ratio, aligned):
    """torchvision's CPU roi_align runs on one core; RoIs are independent, so chunks of them run
    in threads (the op releases the GIL). The result is bitwise the same as one call."""
    n = torch.get_num_threads()
    if n <= 1 or rois.shape[0] < 64 or (torch.is_grad_enabled() and feat.requires_grad):
        return roi_align(feat, rois, size, scale, ratio, aligned)
    parts = rois.chunk(n)
    outs = list(_threads().map(lambda r: roi_align(feat, r, size, scale, ratio, aligned), parts))
    return torch.cat(outs)


class ROIPooler(nn.Module):
    """features: list of (N, C, H_l, W_l) with strides ``strides``; rois: (R, 5) ``batch_idx,x1,y1,x2,y2``.
    Returns (R, C, S, S). With several levels, each RoI is pooled from the level ``level_mapper(rois)``
    (a rule of :mod:`gluon_rcnn.rules.levels`: eq. 1 of the FPN paper, ``k = 4`` for a 224 x 224
    RoI) clamped to the levels at hand; with one level ``level_mapper`` is None.

    ``aligned``: ``RULES.ROI_ALIGNED``, keyword-only with no default: RoIAlign with the half-pixel
    offset (``True``: tensorpack, detectron2's ROIAlignV2) or without (``False``: torchvision's
    ``MultiScaleRoIAlign``, GluonCV).

    ``kernel``: how RoIAlign is computed, not what: ``'torchvision'`` (the default: torchvision's
    op, bitwise what torchvision's models compute) or ``'gather'`` (:mod:`gluon_rcnn.nn.roi_align`:
    one compiled kernel vectorised over channels, the same arithmetic up to summation order; reads
    bf16 maps without casting them and returns fp32; inference only, so with autograd on the
    features torchvision's op runs). ``optimize_for_inference`` picks ``'gather'``.
    """

    KERNELS = ("torchvision", "gather")

    def __init__(self, output_size: int, strides: list[int], sampling_ratio: int = 2, *, aligned: bool,
                 level_mapper):
        super().__init__()
        if (level_mapper is None) != (len(strides) == 1):
            raise ValueError(f"level_mapper (a rule of gluon_rcnn.rules.levels) is needed with several levels, and "
                             f"only then: strides={list(strides)}, level_mapper={level_mapper!r}")
        self.level_mapper = level_mapper
        self.output_size = output_size
        self.scales = [1.0 / s for s in strides]
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.k_min = int(round(math.log2(strides[0])))
        self.k_max = int(round(math.log2(strides[-1])))
        self.kernel = "torchvision"

    def set_kernel(self, kernel: str) -> "ROIPooler":
        """Choose how RoIAlign is computed (see the class docstring); returns ``self``."""
        if kernel not in self.KERNELS:
            raise ValueError(f"ROIPooler kernel must be one of {self.KERNELS}, got {kernel!r}")
        self.kernel = kernel
        return self

    def _gather_ok(self, feat) -> bool:
        return (self.kernel == "gather" and not torch.compiler.is_compiling()
                and not (torch.is_grad_enabled() and feat.requires_grad) and gather.supported(feat, self.sampling_ratio))

    def pools_float32(self, features: list[torch.Tensor]) -> bool:
        """Whether pooling ``features`` returns float32 whatever their dtype (the gather kernel)."""
        return self._gather_ok(features[0])

    def _align(self, feat, rois, scale):
        if self._gather_ok(feat):  # any float dtype in, fp32 out, no cast of the map
            return gather.roi_align_gather(feat, rois, self.output_size, scale, self.sampling_ratio, self.aligned)
        # boxes stay fp32 (bf16 would round a 1000 px coordinate to a multiple of 8); low-precision
        # features (autocast or not) are pooled in fp32: torchvision registers roi_align's autocast for
        # CUDA only, and its CPU kernel wants features and boxes of one dtype
        if feat.dtype != torch.float32:
            return self._align(feat.float(), rois, scale).to(feat.dtype)
        if feat.device.type == "cpu" and not torch.compiler.is_compiling():  # threads are an eager-mode trick
            return _roi_align_cpu_parallel(feat, rois, self.output_size, scale, self.sampling_ratio, self.aligned)
        return roi_align(feat, rois, self.output_size, scale, self.sampling_ratio, self.aligned)

    def forward(self, features: list[torch.Tensor], rois: torch.Tensor) -> torch.Tensor:
        rois = rois.float()
        if len(features) == 1:
            return self._align(features[0], rois, self.scales[0])
        lvl = self.level_mapper(rois).clamp(self.k_min, self.k_max).to(torch.int64) - self.k_min
        C = features[0].shape[1]
        dtype = torch.float32 if self.pools_float32(features) else features[0].dtype
        out = rois.new_zeros((rois.shape[0], C, self.output_size, self.output_size), dtype=dtype)
        for l, (feat, scale) in enumerate(zip(features, self.scales)):
            idx = torch.where(lvl == l)[0]
            pooled = self._align(feat, rois[idx], scale)
            out.index_copy_(0, idx, pooled.to(out.dtype))
        return out
