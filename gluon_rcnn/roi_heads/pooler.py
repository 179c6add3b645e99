"""RoIAlign over one level (C4) or several FPN levels, each RoI pooled from its level."""
from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import torch
from torch import nn
from torchvision.ops import roi_align

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
    Returns (R, C, S, S). With several levels, a RoI of area ``a`` goes to level
    ``floor(4 + log2(sqrt(a) / 224) + 1e-6)`` clamped to the levels at hand (FPN paper, eq. 1;
    ``level_rule='tensorpack'``, ``a = (x2 - x1) * (y2 - y1)``), or with ``level_rule='gluoncv'``
    ``floor(4 + log2(sqrt((x2 - x1 + 1) * (y2 - y1 + 1)) / 224 + 1e-6))`` (GluonCV's
    ``_pyramid_roi_feats``).
    """

    LEVEL_RULES = ("tensorpack", "gluoncv")

    def __init__(self, output_size: int, strides: list[int], sampling_ratio: int = 2, aligned: bool = True,
                 level_rule: str = "tensorpack"):
        super().__init__()
        if level_rule not in self.LEVEL_RULES:
            raise ValueError(f"level_rule must be one of {list(self.LEVEL_RULES)}, got {level_rule!r}")
        self.level_rule = level_rule
        self.output_size = output_size
        self.scales = [1.0 / s for s in strides]
        self.sampling_ratio = sampling_ratio
        self.aligned = aligned
        self.k_min = int(round(math.log2(strides[0])))
        self.k_max = int(round(math.log2(strides[-1])))

    def _align(self, feat, rois, scale):
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
        if self.level_rule == "gluoncv":
            area = (rois[:, 3] - rois[:, 1] + 1) * (rois[:, 4] - rois[:, 2] + 1)
            lvl = torch.floor(4 + torch.log2(torch.sqrt(area) / 224 + 1e-6))
        else:
            area = (rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])
            lvl = torch.floor(4 + torch.log2(torch.sqrt(area.float()) / 224) + 1e-6)
        lvl = lvl.clamp(self.k_min, self.k_max).to(torch.int64) - self.k_min
        C = features[0].shape[1]
        out = rois.new_zeros((rois.shape[0], C, self.output_size, self.output_size), dtype=features[0].dtype)
        for l, (feat, scale) in enumerate(zip(features, self.scales)):
            idx = torch.where(lvl == l)[0]
            pooled = self._align(feat, rois[idx], scale)
            out.index_copy_(0, idx, pooled.to(out.dtype))
        return out
