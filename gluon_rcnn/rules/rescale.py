"""How detections go from resized-image pixels back to the original image (``(h, w)`` resized,
``(H, W)`` original).

- ``"per_axis"`` (:class:`PerAxisRescale`): each axis by its own ratio ``(W / w, H / h)``, no clip.
- ``"mean_scale_clipped"`` (:class:`MeanScaleClippedRescale`): divided by one scale
  ``sqrt(h / H * w / W)`` (float64), then every coordinate clamped into the original image. The
  two differ by up to ~0.1 px on a 480x640 image resized to 800x1067.
"""
from __future__ import annotations

import math

import torch

__all__ = ["PerAxisRescale", "MeanScaleClippedRescale", "RESCALE_BOXES"]


class PerAxisRescale:
    name = "per_axis"

    def __call__(self, boxes: torch.Tensor, resized_hw, original_hw) -> torch.Tensor:
        (h, w), (oh, ow) = resized_hw, original_hw
        ratio = [ow / w, oh / h, ow / w, oh / h]
        if isinstance(ratio[0], torch.SymFloat) or isinstance(ratio[1], torch.SymFloat):  # traced by export()
            ratio = torch.stack([torch.scalar_tensor(r, dtype=torch.float32, device=boxes.device) for r in ratio])
        else:
            ratio = torch.tensor(ratio, device=boxes.device)
        return boxes * ratio

    def __repr__(self) -> str:
        return "PerAxisRescale()"


class MeanScaleClippedRescale:
    name = "mean_scale_clipped"

    def __call__(self, boxes: torch.Tensor, resized_hw, original_hw) -> torch.Tensor:
        (h, w), (oh, ow) = resized_hw, original_hw
        scale = torch.sym_sqrt(h * 1.0 / oh * w / ow)  # float64, as numpy computes it (math.sqrt; symbolic in export())
        boxes = boxes / scale
        # clip_boxes clamps x1, y1 >= 0 and x2 <= W, y2 <= H; a box at the right/bottom border (x1 = x2 = w)
        # would come out with x1 = w/scale > W > x2, a negative width: every coordinate is clamped into the
        # image (differs only for such boxes)
        return torch.stack([boxes[:, 0].clamp(0, ow), boxes[:, 1].clamp(0, oh),
                            boxes[:, 2].clamp(0, ow), boxes[:, 3].clamp(0, oh)], 1)

    def __repr__(self) -> str:
        return "MeanScaleClippedRescale()"


RESCALE_BOXES = {"per_axis": PerAxisRescale(), "mean_scale_clipped": MeanScaleClippedRescale()}
