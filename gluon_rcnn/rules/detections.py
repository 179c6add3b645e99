"""Test time: the order of clipping to the image and NMS for the final detections (the ROI heads'
post-processing). Boxes a cascade stage hands to the next are clipped whatever the choice.

- ``"clip_then_nms"`` (:class:`ClipThenNMS`): the final per-class boxes are clipped to the image
  before the score threshold and NMS.
- ``"nms_then_clip"`` (:class:`NMSThenClip`): NMS on the unclipped boxes; the mask head reads the
  kept boxes unclipped, and they are clipped after it.
"""
from __future__ import annotations

import torch

from ..structures.boxes import clip_boxes

__all__ = ["ClipThenNMS", "NMSThenClip", "CHOICES"]


class ClipThenNMS:
    name = "clip_then_nms"

    def before_nms(self, boxes: torch.Tensor, hw: torch.Tensor) -> torch.Tensor:
        """Decoded (R, 4k) boxes, with each RoI's image ``hw`` (R, 2) → the boxes NMS reads."""
        return clip_boxes(boxes, hw)

    def after_masks(self, boxes: torch.Tensor, hw: torch.Tensor) -> torch.Tensor:
        """One image's kept (K, 4) boxes, after the mask head read them → the detections' boxes;
        ``hw``: that image's (2,) size."""
        return boxes

    def __repr__(self) -> str:
        return "ClipThenNMS()"


class NMSThenClip:
    name = "nms_then_clip"

    def before_nms(self, boxes: torch.Tensor, hw: torch.Tensor) -> torch.Tensor:
        return boxes

    def after_masks(self, boxes: torch.Tensor, hw: torch.Tensor) -> torch.Tensor:
        return clip_boxes(boxes, hw.expand(len(boxes), 2))

    def __repr__(self) -> str:
        return "NMSThenClip()"


CHOICES = {"clip_then_nms": ClipThenNMS(), "nms_then_clip": NMSThenClip()}
