"""Which FPN level a RoI is pooled from (:class:`~gluon_rcnn.roi_heads.pooler.ROIPooler`).

Both choices are eq. 1 of the FPN paper, ``k = floor(4 + log2(sqrt(area) / 224))``, computed in
float32 on the (R, 5) ``batch_idx, x1, y1, x2, y2`` RoIs; the pooler clamps ``k`` to its levels.

- ``"sqrt_area"`` (:class:`SqrtArea`): ``area = (x2 - x1) * (y2 - y1)``, the 1e-6 added after the
  log: ``floor(4 + log2(sqrt(area) / 224) + 1e-6)``.
- ``"sqrt_area_plus_one"`` (:class:`SqrtAreaPlusOne`): ``area = (x2 - x1 + 1) * (y2 - y1 + 1)``,
  the 1e-6 added inside the log: ``floor(4 + log2(sqrt(area) / 224 + 1e-6))``.
"""
from __future__ import annotations

import torch

__all__ = ["SqrtArea", "SqrtAreaPlusOne", "CHOICES"]


class SqrtArea:
    name = "sqrt_area"

    def __call__(self, rois: torch.Tensor) -> torch.Tensor:
        """(R, 5) float RoIs → (R,) float level, before clamping."""
        area = (rois[:, 3] - rois[:, 1]) * (rois[:, 4] - rois[:, 2])
        return torch.floor(4 + torch.log2(torch.sqrt(area.float()) / 224) + 1e-6)

    def __repr__(self) -> str:
        return "SqrtArea()"


class SqrtAreaPlusOne:
    name = "sqrt_area_plus_one"

    def __call__(self, rois: torch.Tensor) -> torch.Tensor:
        """(R, 5) float RoIs → (R,) float level, before clamping."""
        area = (rois[:, 3] - rois[:, 1] + 1) * (rois[:, 4] - rois[:, 2] + 1)
        return torch.floor(4 + torch.log2(torch.sqrt(area) / 224 + 1e-6))

    def __repr__(self) -> str:
        return "SqrtAreaPlusOne()"


CHOICES = {"sqrt_area": SqrtArea(), "sqrt_area_plus_one": SqrtAreaPlusOne()}
