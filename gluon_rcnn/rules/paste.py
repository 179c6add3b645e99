"""How a predicted M x M mask is pasted into the original image
(:func:`~gluon_rcnn.structures.masks.paste_masks_in_image`).

- ``"integer_box"`` (:class:`IntegerBoxPaste`): mask padded by one cell, box widened accordingly and
  truncated to integer pixels, bilinear resize with ``align_corners=False``.
- ``"subpixel"`` (:class:`SubPixelPaste`): the box keeps its sub-pixel coordinates; each image pixel
  centre samples the (zero-padded) mask bilinearly.
"""
from __future__ import annotations

import torch

from ..structures.masks import paste_masks_in_image

__all__ = ["IntegerBoxPaste", "SubPixelPaste", "MASK_PASTE"]


class IntegerBoxPaste:
    name = "integer_box"
    accurate = False

    def __call__(self, mask_probs: torch.Tensor, boxes: torch.Tensor, image_hw) -> torch.Tensor:
        return paste_masks_in_image(mask_probs, boxes, image_hw, accurate=False)

    def __repr__(self) -> str:
        return "IntegerBoxPaste()"


class SubPixelPaste:
    name = "subpixel"
    accurate = True

    def __call__(self, mask_probs: torch.Tensor, boxes: torch.Tensor, image_hw) -> torch.Tensor:
        return paste_masks_in_image(mask_probs, boxes, image_hw, accurate=True)

    def __repr__(self) -> str:
        return "SubPixelPaste()"


MASK_PASTE = {"integer_box": IntegerBoxPaste(), "subpixel": SubPixelPaste()}
