"""How a predicted M x M mask is pasted into the original image
(:func:`~gluon_rcnn.structures.masks.paste_masks_in_image`).

- ``"integer_box"`` (``MaskPaste(accurate=False)``): mask padded by one cell, box widened accordingly and
  truncated to integer pixels, bilinear resize with ``align_corners=False``.
- ``"subpixel"`` (``MaskPaste(accurate=True)``): the box keeps its sub-pixel coordinates; each image pixel
  centre samples the (zero-padded) mask bilinearly.
"""
from __future__ import annotations

import torch

from ..structures.masks import paste_masks_in_image

__all__ = ["MaskPaste", "MASK_PASTE"]


class MaskPaste:
    """``accurate=False``: ``"integer_box"``; ``accurate=True``: ``"subpixel"``."""

    def __init__(self, accurate: bool):
        self.accurate = bool(accurate)
        self.name = "subpixel" if self.accurate else "integer_box"

    def __call__(self, mask_probs: torch.Tensor, boxes: torch.Tensor, image_hw) -> torch.Tensor:
        return paste_masks_in_image(mask_probs, boxes, image_hw, accurate=self.accurate)

    def __repr__(self) -> str:
        return f"MaskPaste(accurate={self.accurate})"


MASK_PASTE = {"integer_box": MaskPaste(accurate=False), "subpixel": MaskPaste(accurate=True)}
