"""Feature Pyramid Network: res2..res5 → P2..P6, as torchvision's FeaturePyramidNetwork +
LastLevelMaxPool (and tensorpack's ``fpn_model`` with ``FPN.NORM='GN'``).

Input: a dict (or sequence) of ``L`` feature maps, finest first, e.g.
``{'res2': (N, C2, H/4, W/4), ..., 'res5': (N, C5, H/32, W/32)}``.
Output: ``{'p2': (N, D, H/4, W/4), ..., 'p5': (N, D, H/32, W/32), 'p6': (N, D, H/64, W/64)}``
with ``D = out_channels``; level ``k`` of the output has the size of level ``k`` of the input.

Computation (per level, coarsest first): ``inner = inner_blocks[i](C_i)`` (1x1) plus the
nearest-neighbour upsampling of the coarser ``inner`` to this level's size;
``P_i = layer_blocks[i](inner)`` (3x3); ``P6 = max_pool2d(P5, kernel 1, stride 2)``, or with
``top_block='conv'`` ``P6 = top_conv(inner_5)``, a 3x3 stride-2 conv (pad 1) on the coarsest
lateral output (GluonCV's ``FPNFeatureExpander(use_p6=True, p6_conv=True)``: ``P6_conv1`` on ``y``,
the 1x1 lateral of C5, before ``P5_conv1``).

Parameter names: ``inner_blocks.{i}`` and ``layer_blocks.{i}`` are each a small Sequential whose
conv is ``.0`` (``inner_blocks.{i}.0.weight``/``.bias``); with ``norm='GN'`` the conv has no bias
(unless ``gn_conv_bias=True``: ``.0.bias`` too, as in tensorpack's ``fpn_model``, whose convs keep
``use_bias=True`` before ``GroupNorm``) and ``.1`` is its ``GroupNorm(32)``. With torchvision's rules
(``top_block='maxpool'``, ``gn_conv_bias=False``) this is exactly torchvision's current layout (its ``Conv2dNormActivation``), so ``backbone.fpn.*`` of
torchvision's detection checkpoints loads unchanged; the older flat names ``inner_blocks.{i}.weight`` are accepted on load too.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from ..nn.hybrid import HybridBlock
from ..nn.norm import get_norm

__all__ = ["FPN"]


def _conv_norm(cin: int, cout: int, k: int, norm: str, gn_conv_bias: bool) -> nn.Sequential:
    use_norm = norm not in (None, "", "None")
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, padding=k // 2, bias=not use_norm or bool(gn_conv_bias))]
    if use_norm:
        layers.append(get_norm(norm, cout))
    return nn.Sequential(*layers)


class FPN(HybridBlock):
    """Top-down feature pyramid with lateral connections (see the module docstring).

    Args:
        in_channels_list: channels of the input levels, finest first (e.g. [256, 512, 1024, 2048]).
        out_channels: channels ``D`` of every output level.
        norm: ``'None'`` (convs with bias) or ``'GN'`` (conv without bias + GroupNorm(32)).
        top_block: ``RULES.P6`` (keyword-only, no default): ``'maxpool'`` adds one coarser level by
            stride-2 subsampling of the last (P6, used only by the RPN; torchvision, tensorpack,
            detectron2), ``'conv'`` adds it by a 3x3 stride-2 conv of the coarsest lateral
            (``top_conv.weight``/``.bias``, GluonCV); ``None`` adds nothing (no rule's choice).
        gn_conv_bias: ``RULES.GN_CONV_BIAS`` (keyword-only, no default): with ``norm='GN'``, give the
            convs a bias too (``True``: tensorpack's ``fpn_model``); ``False`` (torchvision,
            detectron2) drops it, as GN's own shift makes it redundant. No effect without GN.
        first_level: number of the finest output level (outputs are ``p{first_level}``, ...).

    Attributes:
        out_channels: ``D``. out_names: output keys, finest first.
    """

    def __init__(self, in_channels_list: Sequence[int], out_channels: int = 256, norm: str = "None", *,
                 top_block: str | None, gn_conv_bias: bool, first_level: int = 2):
        super().__init__()
        if norm not in (None, "", "None", "GN"):
            raise ValueError(f"FPN norm must be 'None' or 'GN', got {norm!r}")
        if top_block not in (None, "maxpool", "conv"):
            raise ValueError(f"FPN top_block must be 'maxpool', 'conv' or None, got {top_block!r}")
        if not in_channels_list or any(c <= 0 for c in in_channels_list):
            raise ValueError(f"FPN in_channels_list must be positive channel counts, got {list(in_channels_list)}")
        self.inner_blocks = nn.ModuleList(_conv_norm(c, out_channels, 1, norm, gn_conv_bias) for c in in_channels_list)
        self.layer_blocks = nn.ModuleList(_conv_norm(out_channels, out_channels, 3, norm, gn_conv_bias)
                                          for _ in in_channels_list)
        self.top_block = top_block
        if top_block == "conv":
            self.top_conv = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        self.out_channels = out_channels
        n = len(in_channels_list) + (1 if top_block else 0)
        self.out_names = tuple(f"p{first_level + i}" for i in range(n))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_uniform_(m.weight, a=1)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # accept the flat names of old torchvision checkpoints (inner_blocks.{i}.weight)
        for block in ("inner_blocks", "layer_blocks"):
            for i in range(len(self.inner_blocks)):
                for t in ("weight", "bias"):
                    old, new = f"{prefix}{block}.{i}.{t}", f"{prefix}{block}.{i}.0.{t}"
                    if old in state_dict and new not in state_dict:
                        state_dict[new] = state_dict.pop(old)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def forward(self, features: Mapping[str, Tensor] | Sequence[Tensor]) -> dict[str, Tensor]:
        """``features``: finest-first dict or sequence of ``(N, C_i, H_i, W_i)``.
        Returns ``{'p2': (N, D, H_0, W_0), ..., 'p6': (N, D, ceil(H_last/2), ceil(W_last/2))}``."""
        xs = list(features.values()) if isinstance(features, Mapping) else list(features)
        if len(xs) != len(self.inner_blocks):
            raise ValueError(f"FPN built for {len(self.inner_blocks)} levels got {len(xs)}")
        last_inner = self.inner_blocks[-1](xs[-1])
        top = self.top_conv(last_inner) if self.top_block == "conv" else None
        results = [self.layer_blocks[-1](last_inner)]
        for i in range(len(xs) - 2, -1, -1):
            lateral = self.inner_blocks[i](xs[i])
            # 2x nearest upsampling cropped to the lateral's size (GluonCV's UpSampling + slice_like;
            # the same as interpolating to that size when it is exactly 2x, i.e. padded input)
            h, w = lateral.shape[-2:]
            if 2 * last_inner.shape[-2] >= h and 2 * last_inner.shape[-1] >= w:
                top_down = F.interpolate(last_inner, scale_factor=2.0, mode="nearest")[..., :h, :w]
            else:
                top_down = F.interpolate(last_inner, size=(h, w), mode="nearest")
            last_inner = lateral + top_down
            results.insert(0, self.layer_blocks[i](last_inner))
        if self.top_block == "maxpool":
            results.append(F.max_pool2d(results[-1], kernel_size=1, stride=2, padding=0))
        elif top is not None:
            results.append(top)
        return dict(zip(self.out_names, results))
