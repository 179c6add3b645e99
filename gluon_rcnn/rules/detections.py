"""Test time: the final detections' clipping and NMS (the ROI heads' post-processing). Boxes a
cascade stage hands to the next are clipped whatever the choice.

- ``"clip_then_nms"`` (:class:`ClipThenNMS`): the final per-class boxes are clipped to the image
  before the score threshold and NMS; NMS is torchvision's ``batched_nms``, which runs one NMS on
  boxes shifted by ``label * (max coordinate + 1)`` below 1000 candidates on the CPU (25000 on a GPU)
  and one NMS per class above (the same set in exact arithmetic; in float32 the shifts, ~1e5 px, move
  IoUs near 0.5 by up to ~1e-3 for 20 px boxes).
- ``"clip_then_per_class_nms"`` (``ClipThenNMS(per_class=True)``): the same clipping, then NMS class
  by class on the boxes' own coordinates, whatever the count (tensorpack at 02c38f26,
  model_frcnn.py ``fastrcnn_predictions``: ``tf.map_fn`` over the classes, score > thresh, at most
  ``RESULTS_PER_IM`` per class, then the best ``RESULTS_PER_IM`` of their union; a class's cap
  never changes that union's best ``RESULTS_PER_IM``). An exported program (``export()``) runs the
  shifted form instead (no data-dependent loop).
- ``"nms_then_clip"`` (:class:`NMSThenClip`): NMS (torchvision's ``batched_nms``) on the unclipped
  boxes; the mask head reads the kept boxes unclipped, and they are clipped after it.
"""
from __future__ import annotations

import torch
from torchvision.ops import nms as _nms

from ..structures.boxes import batched_nms, clip_boxes

__all__ = ["ClipThenNMS", "NMSThenClip", "per_class_nms", "CHOICES"]


def per_class_nms(boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS within each label on the boxes' own coordinates; indices of the kept boxes by decreasing
    score (exported programs: :func:`~gluon_rcnn.structures.boxes.batched_nms`)."""
    if torch.compiler.is_compiling():
        return batched_nms(boxes, scores, labels, iou_threshold)
    keep = torch.zeros(scores.shape[0], dtype=torch.bool, device=scores.device)
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).squeeze(1)
        keep[idx[_nms(boxes[idx], scores[idx], iou_threshold)]] = True
    idx = torch.nonzero(keep).squeeze(1)
    return idx[scores[idx].sort(descending=True, stable=True)[1]]


class ClipThenNMS:
    def __init__(self, per_class: bool = False):
        self.per_class = bool(per_class)
        self.name = "clip_then_per_class_nms" if self.per_class else "clip_then_nms"

    def before_nms(self, boxes: torch.Tensor, hw: torch.Tensor) -> torch.Tensor:
        """Decoded (R, 4k) boxes, with each RoI's image ``hw`` (R, 2) → the boxes NMS reads."""
        return clip_boxes(boxes, hw)

    def nms(self, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float):
        """(K, 4) boxes, (K,) scores and labels → indices of the kept ones by decreasing score."""
        if self.per_class:
            return per_class_nms(boxes, scores, labels, iou_threshold)
        return batched_nms(boxes, scores, labels, iou_threshold)

    def after_masks(self, boxes: torch.Tensor, hw: torch.Tensor) -> torch.Tensor:
        """One image's kept (K, 4) boxes, after the mask head read them → the detections' boxes;
        ``hw``: that image's (2,) size."""
        return boxes

    def __repr__(self) -> str:
        return "ClipThenNMS(per_class=True)" if self.per_class else "ClipThenNMS()"


class NMSThenClip:
    name = "nms_then_clip"

    def before_nms(self, boxes: torch.Tensor, hw: torch.Tensor) -> torch.Tensor:
        return boxes

    def nms(self, boxes: torch.Tensor, scores: torch.Tensor, labels: torch.Tensor, iou_threshold: float):
        return batched_nms(boxes, scores, labels, iou_threshold)

    def after_masks(self, boxes: torch.Tensor, hw: torch.Tensor) -> torch.Tensor:
        return clip_boxes(boxes, hw.expand(len(boxes), 2))

    def __repr__(self) -> str:
        return "NMSThenClip()"


CHOICES = {"clip_then_nms": ClipThenNMS(), "clip_then_per_class_nms": ClipThenNMS(per_class=True),
           "nms_then_clip": NMSThenClip()}
