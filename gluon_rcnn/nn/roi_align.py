"""RoIAlign as one fused gather: torchvision's ``roi_align`` arithmetic, vectorised over channels.

torchvision's CPU ``roi_align`` walks RoI by RoI, channel by channel, on one core, and wants
features and boxes of one dtype, so a bf16 model casts every feature map to fp32 first. Here the
sample positions and bilinear weights of every RoI are computed exactly as torchvision computes
them (same float32 expressions, same order), and the pooling is one compiled kernel
(``torch.compile``, inductor): for each output bin, the sum over its ``sampling_ratio**2``
samples of the 4 weighted neighbours, read from channels-last features (each neighbour is a
contiguous row of C values), converted to fp32 and accumulated in fp32.

- **Same numbers up to summation order.** Positions and weights are bitwise torchvision's; the
  sum of the 4 x ``sampling_ratio**2`` products runs in a different order, so outputs differ by
  float rounding (a few ulp of the largest neighbour, tests/test_roi_align.py).
- **Any feature dtype in, fp32 out**: bf16 maps are read as they are (an upcast is exact, so the
  result is that of fp32 maps) and no map is cast.
- **Inference only**: no backward is defined for the packed kernel; with autograd on features
  that need a gradient, callers use torchvision's op (:class:`~gluon_rcnn.roi_heads.ROIPooler`
  does).
- **Limits**: a fixed ``sampling_ratio > 0`` (adaptive sampling has a per-RoI sample count);
  fewer than 2**24 feature positions (indices travel exactly as float32). Outside them,
  :func:`supported` is False and callers use torchvision's op.
- **One graph for every RoI count** (the count is marked unbacked); sizes are dynamic. If the
  backend cannot compile (no C++ compiler), it warns once and runs the same expression eagerly.
"""
from __future__ import annotations

import warnings

import torch

__all__ = ["roi_align_gather", "supported"]

_EXACT_INDEX = 1 << 24  # float32 holds every integer below this exactly


def supported(feat: torch.Tensor, sampling_ratio: int) -> bool:
    """Whether :func:`roi_align_gather` takes these features and sampling ratio."""
    n, _, h, w = feat.shape
    return sampling_ratio > 0 and n * h * w < _EXACT_INDEX and feat.device.type == "cpu"


def _axis(start: torch.Tensor, bin_size: torch.Tensor, n: int, size: int, ratio: int):
    """Per RoI, the ``size * ratio`` sample positions along one axis and their two neighbours:
    ``(index (R, size, ratio, 2) float, weight (R, size, ratio, 2))``, as torchvision's
    ``pre_calc_for_bilinear_interpolate`` (roi_align_kernel.cpp) computes them; a sample outside
    ``[-1, n]`` gets weight 0."""
    p = torch.arange(size, dtype=torch.float32, device=start.device).view(1, size, 1)
    i = torch.arange(ratio, dtype=torch.float32, device=start.device).view(1, 1, ratio)
    b = bin_size.view(-1, 1, 1)
    y = (start.view(-1, 1, 1) + p * b) + (i + 0.5) * b / ratio  # yy = roi_start + ph*bin + (iy+.5)*bin/grid
    inside = (y >= -1.0) & (y <= n)
    y = y.clamp(min=0)
    low = y.floor()
    top = low >= n - 1
    low = torch.where(top, torch.full_like(low, n - 1), low)
    y = torch.where(top, low, y)
    high = torch.where(top, low, low + 1)
    frac = y - low
    index = torch.stack([low, high], -1)
    weight = torch.stack([1.0 - frac, frac], -1) * inside.unsqueeze(-1)
    return index, weight


def _plan(rois: torch.Tensor, height: int, width: int, size: int, scale: float, ratio: int,
          aligned: bool) -> torch.Tensor:
    """(R, size, size, 4 ratio², 2) float32: flat position (batch, y, x) and weight of every term
    of every output bin."""
    off = 0.5 if aligned else 0.0
    x1 = rois[:, 1] * scale - off
    y1 = rois[:, 2] * scale - off
    rw = rois[:, 3] * scale - off - x1
    rh = rois[:, 4] * scale - off - y1
    if not aligned:  # torchvision: malformed RoIs forced to 1x1
        rw = rw.clamp(min=1.0)
        rh = rh.clamp(min=1.0)
    yi, wy = _axis(y1, rh / size, height, size, ratio)
    xi, wx = _axis(x1, rw / size, width, size, ratio)
    r = ratio
    base = rois[:, 0].view(-1, 1, 1, 1, 1, 1, 1) * height
    index = (base + yi.view(-1, size, 1, r, 2, 1, 1)) * width + xi.view(-1, 1, size, 1, 1, r, 2)
    weight = wy.view(-1, size, 1, r, 2, 1, 1) * wx.view(-1, 1, size, 1, 1, r, 2)  # w1 = hy * hx, ...
    terms = 4 * r * r
    return torch.stack([index.reshape(-1, size, size, terms), weight.reshape(-1, size, size, terms)], -1)


def _pool(flat: torch.Tensor, plan: torch.Tensor, count: float) -> torch.Tensor:
    """(R, S, S, C) fp32: per bin, the weighted sum of its terms' feature rows, over ``count``."""
    index = plan[..., 0].to(torch.int64)
    weight = plan[..., 1:2]
    out = flat[index[..., 0]].float() * weight[..., 0, :]
    for k in range(1, plan.shape[-2]):  # unrolled: one pointwise kernel, vectorised over C
        out = out + flat[index[..., k]].float() * weight[..., k, :]
    return out / count


_compiled = None
_eager_only = False


def _compiled_pool():
    global _compiled
    if _compiled is None:
        _compiled = torch.compile(_pool, dynamic=True)
    return _compiled


def roi_align_gather(feat: torch.Tensor, rois: torch.Tensor, output_size: int, spatial_scale: float,
                     sampling_ratio: int, aligned: bool) -> torch.Tensor:
    """torchvision's ``roi_align(feat, rois, output_size, spatial_scale, sampling_ratio, aligned)``
    for (N, C, H, W) features of any float dtype and (R, 5) float32 ``batch_index, x1, y1, x2, y2``
    RoIs, as (R, C, S, S) float32 (channels-last strides). See the module docstring."""
    global _eager_only
    if not supported(feat, sampling_ratio):
        raise ValueError(f"roi_align_gather takes CPU features with fewer than {_EXACT_INDEX} positions and a "
                         f"fixed sampling_ratio > 0; got {tuple(feat.shape)} on {feat.device}, sampling_ratio="
                         f"{sampling_ratio} (use torchvision.ops.roi_align)")
    n, c, h, w = feat.shape
    s = int(output_size)
    if rois.shape[0] == 0:
        return feat.new_zeros((0, c, s, s), dtype=torch.float32)
    flat = feat.permute(0, 2, 3, 1).reshape(n * h * w, c)  # a view for channels-last maps
    plan = _plan(rois.float(), h, w, s, float(spatial_scale), int(sampling_ratio), bool(aligned))
    count = float(sampling_ratio * sampling_ratio)
    if not _eager_only:
        torch._dynamo.decorators.mark_unbacked(plan, 0)
        try:
            return _compiled_pool()(flat, plan, count).permute(0, 3, 1, 2)
        except Exception as e:  # noqa: BLE001 - a missing compiler shows only here; the eager path is the same
            from .hybrid import _compile_failure_types
            if not isinstance(e, _compile_failure_types()):
                raise
            warnings.warn(f"roi_align_gather: torch.compile failed ({type(e).__name__}); pooling eagerly "
                          "(same numbers, slower)", RuntimeWarning, stacklevel=2)
            _eager_only = True
    outs = [_pool(flat, p, count) for p in plan.split(256)]  # chunks bound the temporaries
    return torch.cat(outs).permute(0, 3, 1, 2)
