"""Precision helpers: the few layers that must stay float32 inside a low-precision inference region.

Under ``torch.autocast`` (bf16 on a CPU with AVX-512 BF16, or on a GPU) the convolutions and fully
connected layers of the trunk and heads run in bfloat16, whose 8-bit mantissa is fine for features
but not for what is decoded into pixels: box deltas (a 0.4 % error of a 1000 px box is 4 px) and the
logits that rank detections. :func:`fp32_outputs` runs such a final layer in float32 at inference.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

__all__ = ["float32_region", "fp32_outputs"]


def fp32_outputs(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``layer(x)``, computed in float32 when inference runs under autocast (``layer`` not
    training); otherwise exactly ``layer(x)`` (training keeps autocast's own choices)."""
    if layer.training or not torch.is_autocast_enabled(x.device.type):
        return layer(x)
    with torch.autocast(x.device.type, enabled=False):
        return layer(x.float())


def float32_region(features: list[torch.Tensor], enabled: bool = True, cast: bool = True):
    """For a part of inference that runs in float32 inside an autocast region (the box head of
    ``optimize_for_inference('bf16')``): ``(features, region)`` with the feature maps cast to float32
    once (``cast=False``: left as they are, for a consumer that reads them into float32 itself, the
    gather RoIAlign) and ``region()`` a fresh context that turns autocast off. Outside autocast, or
    with ``enabled=False``, the features unchanged and ``region()`` a no-op."""
    device_type = features[0].device.type
    if not enabled or not torch.is_autocast_enabled(device_type):
        return features, contextlib.nullcontext
    region = lambda: torch.autocast(device_type, enabled=False)  # noqa: E731
    return ([f.float() for f in features] if cast else list(features)), region
