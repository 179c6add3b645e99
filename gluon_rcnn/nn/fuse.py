"""Inference-time folding of a norm layer into the convolution before it.

A frozen (or eval-mode) batch norm is an affine map per channel, so ``norm(conv(x))`` equals a
single convolution with rescaled weights and a bias: one pass over the activation instead of
two. Only pairs known to run back to back are folded: ``convN`` followed by ``normN``/``bnN`` in
the same block (the ResNet convention), and adjacent ``Conv2d`` → norm inside an
``nn.Sequential``. GroupNorm depends on the activations and is never folded.
"""
from __future__ import annotations

import torch
from torch import nn

from .norm import FrozenBatchNorm2d, conv_norm_pairs

__all__ = ["fuse_conv_norm"]


def _foldable(norm: nn.Module) -> bool:
    if isinstance(norm, FrozenBatchNorm2d):
        return True
    return isinstance(norm, nn.BatchNorm2d) and not norm.training and norm.track_running_stats


@torch.no_grad()
def _fold(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d:
    scale = norm.weight * (norm.running_var + norm.eps).rsqrt() if norm.weight is not None \
        else (norm.running_var + norm.eps).rsqrt()
    shift = (norm.bias if norm.bias is not None else 0) - norm.running_mean * scale
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
                      conv.dilation, conv.groups, bias=True, padding_mode=conv.padding_mode,
                      device=conv.weight.device, dtype=conv.weight.dtype)
    fused.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1).to(conv.weight.dtype))
    bias = conv.bias if conv.bias is not None else torch.zeros_like(scale)
    fused.bias.copy_((bias * scale + shift).to(conv.weight.dtype))
    fused.weight.requires_grad_(False)
    fused.bias.requires_grad_(False)
    return fused


def fuse_conv_norm(module: nn.Module) -> int:
    """Fold foldable norms into their convolutions, in place; returns the number folded.

    Call on a model in eval mode for inference only: the fused convolutions are not meant to be
    trained (and frozen BN statistics are baked into them).
    """
    count = 0
    for parent, conv_name, conv, norm_name, norm in conv_norm_pairs(module, _foldable):
        setattr(parent, conv_name, _fold(conv, norm))
        setattr(parent, norm_name, nn.Identity())
        count += 1
    return count
