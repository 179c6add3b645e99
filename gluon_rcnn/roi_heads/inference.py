"""Test time: the final detections from every RoI's per-class boxes and class probabilities
(score threshold, small boxes out, per-class NMS by the ``DETECTIONS`` rule's ``nms``, the best
``detections_per_img``)."""
from __future__ import annotations

import torch

from ..structures.boxes import remove_small_boxes_mask

__all__ = ["rois_with_batch_index", "select_detections"]


def rois_with_batch_index(boxes: list[torch.Tensor]) -> torch.Tensor:
    """list of (P_i, 4) → (sum P_i, 5) with the batch index first, as torchvision.ops.roi_align wants."""
    idx = torch.cat([torch.full((b.shape[0], 1), i, dtype=b.dtype, device=b.device) for i, b in enumerate(boxes)])
    return torch.cat([idx, torch.cat(boxes)], dim=1)


def select_detections(boxes: torch.Tensor, probs: torch.Tensor, counts: list[int], *, score_thresh: float,
                      nms_thresh: float, detections_per_img: int, min_box_size: float, nms) -> list[dict]:
    """``boxes``: (R, 4 (C+1)) per-class boxes, or (R, 4) one box for every class; ``probs``:
    (R, C+1) softmax rows, background first; ``counts``: RoIs per image. Per image, every
    (RoI, foreground class) pair scoring above ``score_thresh`` whose box is at least
    ``min_box_size`` on both sides, NMS per class at ``nms_thresh`` (``nms(boxes, scores, labels, iou)``
    → kept indices by decreasing score: the ``DETECTIONS`` rule's, rules/detections.py), the best
    ``detections_per_img``:
    ``dict(boxes (K, 4), scores (K,), labels (K,) in 1..C, class_probs (K, C+1))``, ``class_probs``
    the full softmax row of the RoI each detection came from."""
    C = probs.shape[1]
    if boxes.shape[-1] == 4:  # class-agnostic: the same box for every class
        boxes = boxes[:, None, :].expand(-1, C, 4)
    boxes = boxes.reshape(-1, C, 4)
    results = []
    for b, p in zip(boxes.split(counts), probs.split(counts)):
        rows = p
        labels = torch.arange(C, device=b.device).view(1, -1).expand_as(p)
        roi = torch.arange(p.shape[0], device=b.device).view(-1, 1).expand(-1, C - 1).reshape(-1)
        b, p, labels = b[:, 1:].reshape(-1, 4), p[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
        keep = (p > score_thresh) & remove_small_boxes_mask(b, min_box_size)
        b, p, labels, roi = b[keep], p[keep], labels[keep], roi[keep]
        keep = nms(b, p, labels, nms_thresh)[:detections_per_img]
        results.append({"boxes": b[keep], "scores": p[keep], "labels": labels[keep], "class_probs": rows[roi[keep]]})
    return results
