"""Anchor rules: the cell anchors of one location (shape and quantisation) and the grid they are
shifted over. :class:`~gluon_rcnn.rpn.AnchorGenerator` takes one of each.

Cells, per level ``(stride, sizes, ratios)`` → ``(A, 4)`` x1,y1,x2,y2 around location (0, 0),
ratio-major and size-minor (ratio = h / w):

- ``"exact"`` (:class:`ExactCells`): un-quantised, ``w = sqrt(size**2 / ratio)``, ``h = ratio * w``,
  centred on 0, in float64 (size 32, ratio 1: ``[-16, -16, 16, 16]``).
- ``"rounded"`` (:class:`RoundedCells`): the same computed as ``w = size / sqrt(ratio)`` in float32
  and rounded to integers.
- ``"legacy"`` (:class:`QuantizedWindowCells`): Detectron-1's legacy anchors (py-faster-rcnn's
  ``generate_anchors``): a ``(0, 0, stride-1, stride-1)`` window, ``w = round(sqrt(stride**2 /
  ratio))``, ``h = round(w * ratio)`` (half to even), both scaled by ``size / stride``, corners
  ``ctr -/+ (w - 1) / 2`` with ``ctr = (stride - 1) / 2`` (size 32 at stride 16: ``[-8, -8, 23, 23]``).
- ``"legacy_end_plus_one"``: the same with ``x2, y2 += 1`` (tensorpack's code at 02c38f26, data.py
  ``get_all_anchors``, which ClaRAN v0.2 is built on: ``W = size/stride * round(sqrt(stride**2 /
  ratio))`` centred on ``stride / 2``; size 32 at stride 4 → ``[-14, -14, 18, 18]``).

Grid, where level ``l``'s anchors sit (``shifts``):

- ``"fixed_stride"`` (:class:`FixedStrideGrid`): every ``stride_l`` pixels.
- ``"stride_from_size"`` (:class:`StrideFromSizeGrid`): every ``padded_size // feature_size``
  pixels per axis (differs for P6 when the padded size is not a multiple of 64).

Order, ``ANCHOR_ORDER``: how a publisher's RPN head lays out one location's anchors in its channels,
which matters where one level has several sizes and ratios (C4). The model's own order is always
ratio-major (as the cells above); an importer permutes a checkpoint's RPN channels by
:meth:`AnchorOrder.perm`:

- ``"ratio_major"``: anchor ``a = ratio_idx * num_sizes + size_idx`` (py-faster-rcnn's
  ``generate_anchors``: tensorpack at 02c38f26, data.py ``get_all_anchors``; torchvision; GluonCV).
- ``"size_major"``: ``a = size_idx * num_ratios + ratio_idx`` (tensorpack since 141ab53c,
  modeling/model_rpn.py ``get_all_anchors``: ``for sz in sizes: for ratio in ratios``; detectron2's
  ``DefaultAnchorGenerator``).

Exact and quantised-window cells are shifted in float64 on the CPU, then cast to float32 (as numpy
computes them); rounded cells are shifted in float32 on the features' device.
"""
from __future__ import annotations

import torch

__all__ = ["ExactCells", "RoundedCells", "QuantizedWindowCells", "FixedStrideGrid", "StrideFromSizeGrid",
           "AnchorOrder", "CELLS", "GRIDS", "ORDERS"]


class ExactCells:
    """Un-quantised cells in float64 (``w = sqrt(size**2 / ratio)``, ``h = ratio * w``)."""

    name = "exact"
    shift_dtype = torch.float64

    def __call__(self, stride: int, sizes, ratios) -> torch.Tensor:
        sizes = torch.as_tensor(sizes, dtype=torch.float64)
        ratios = torch.as_tensor(ratios, dtype=torch.float64)
        ws = torch.sqrt(sizes[None, :] * sizes[None, :] / ratios[:, None])
        hs = ratios[:, None] * ws
        return torch.stack([-ws.reshape(-1), -hs.reshape(-1), ws.reshape(-1), hs.reshape(-1)], dim=1) * 0.5

    def __repr__(self) -> str:
        return "ExactCells()"


class RoundedCells:
    """Cells ``w = size / sqrt(ratio)``, ``h = size * sqrt(ratio)`` in float32, rounded to integers."""

    name = "rounded"
    shift_dtype = torch.float32

    def __call__(self, stride: int, sizes, ratios) -> torch.Tensor:
        scales = torch.as_tensor(sizes, dtype=torch.float32)
        ratios = torch.as_tensor(ratios, dtype=torch.float32)
        h_ratios = torch.sqrt(ratios)
        w_ratios = 1 / h_ratios
        ws = (w_ratios[:, None] * scales[None, :]).view(-1)
        hs = (h_ratios[:, None] * scales[None, :]).view(-1)
        return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()

    def __repr__(self) -> str:
        return "RoundedCells()"


class QuantizedWindowCells:
    """py-faster-rcnn's quantised cells from a ``stride x stride`` window (Detectron-1 legacy), with
    ``end_offset`` added to x2 and y2 (0: Detectron-1, GluonCV; 1: tensorpack 2018-2019, ClaRAN)."""

    shift_dtype = torch.float64

    def __init__(self, end_offset: float = 0.0):
        self.end_offset = float(end_offset)
        self.name = "legacy" if self.end_offset == 0 else "legacy_end_plus_one"

    def __call__(self, stride: int, sizes, ratios) -> torch.Tensor:
        sizes = torch.as_tensor(sizes, dtype=torch.float64)
        ratios = torch.as_tensor(ratios, dtype=torch.float64)
        base = float(stride)                  # the window (0, 0, stride-1, stride-1): w = h = stride
        ctr = 0.5 * (base - 1)
        ws = torch.round(torch.sqrt(base * base / ratios))
        hs = torch.round(ws * ratios)
        scales = sizes / base
        ws = (ws[:, None] * scales[None, :]).reshape(-1)
        hs = (hs[:, None] * scales[None, :]).reshape(-1)
        e = self.end_offset
        return torch.stack([ctr - 0.5 * (ws - 1), ctr - 0.5 * (hs - 1),
                            ctr + 0.5 * (ws - 1) + e, ctr + 0.5 * (hs - 1) + e], 1)

    def __repr__(self) -> str:
        return f"QuantizedWindowCells(end_offset={self.end_offset:g})"


class FixedStrideGrid:
    """Level ``l``'s anchors every ``stride_l`` pixels."""

    name = "fixed_stride"
    needs_image_shape = False

    def steps(self, stride: int, feature_hw, image_shape) -> tuple[int, int]:
        return stride, stride

    def __repr__(self) -> str:
        return "FixedStrideGrid()"


class StrideFromSizeGrid:
    """Level ``l``'s anchors every ``padded_size // feature_size`` pixels, per axis."""

    name = "stride_from_size"
    needs_image_shape = True

    def steps(self, stride: int, feature_hw, image_shape) -> tuple[int, int]:
        if image_shape is None:
            raise ValueError("the stride_from_size anchor grid needs the padded batch's (H, W)")
        return image_shape[0] // feature_hw[0], image_shape[1] // feature_hw[1]

    def __repr__(self) -> str:
        return "StrideFromSizeGrid()"


class AnchorOrder:
    """A publisher's order of one location's anchors in its RPN head channels: ratio-major (ours) or
    size-major."""

    def __init__(self, ratio_major: bool):
        self.ratio_major = bool(ratio_major)
        self.name = "ratio_major" if self.ratio_major else "size_major"

    def perm(self, num_sizes: int, num_ratios: int) -> torch.Tensor:
        """(S*R,) int64: ``perm[o]`` = the publisher's channel of our (ratio-major) anchor ``o``."""
        o = torch.arange(num_sizes * num_ratios)
        if self.ratio_major:
            return o
        return (o % num_sizes) * num_ratios + o // num_sizes

    def __repr__(self) -> str:
        return f"AnchorOrder(ratio_major={self.ratio_major})"


CELLS = {"exact": ExactCells(), "rounded": RoundedCells(), "legacy": QuantizedWindowCells(0.0),
         "legacy_end_plus_one": QuantizedWindowCells(1.0)}
GRIDS = {"fixed_stride": FixedStrideGrid(), "stride_from_size": StrideFromSizeGrid()}
ORDERS = {"ratio_major": AnchorOrder(True), "size_major": AnchorOrder(False)}
