"""RPN anchor-labelling rules (training only).

Low-quality matches, what happens to each GT's best anchors:

- ``"keep_best"`` (:class:`KeepBestMatches`): positive whatever their IoU (> 0): the Matcher's
  ``allow_low_quality_matches``, so a 12 x 12 box gets positives although no anchor reaches the
  negative threshold.
- ``"best_unless_negative"`` (:class:`BestUnlessNegative`): labelled in the order best-per-GT
  positive, ``>= fg`` positive, then ``< bg`` negative last: a best anchor stays positive only at
  IoU >= ``bg``.

Border anchors:

- ``"label_all"`` (:class:`LabelAllAnchors`): every anchor is labelled.
- ``"ignore_outside"`` (:class:`IgnoreOutsideAnchors`): anchors not entirely inside the resized,
  unpadded image (``x1 >= 0, y1 >= 0, x2 <= w, y2 <= h``) are ignored: never sampled, never a GT's
  best anchor.
"""
from __future__ import annotations

import torch

__all__ = ["KeepBestMatches", "BestUnlessNegative", "LabelAllAnchors", "IgnoreOutsideAnchors", "anchors_inside",
           "LOW_QUALITY", "BORDER"]


def anchors_inside(anchors: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """(A,) bool: anchors lying entirely in the ``(h, w)`` image, borders included."""
    h, w = image_size
    return (anchors[:, 0] >= 0) & (anchors[:, 1] >= 0) & (anchors[:, 2] <= w) & (anchors[:, 3] <= h)


class KeepBestMatches:
    name = "keep_best"

    def __call__(self, label: torch.Tensor, iou: torch.Tensor, bg_thresh: float) -> torch.Tensor:
        return label

    def __repr__(self) -> str:
        return "KeepBestMatches()"


class BestUnlessNegative:
    name = "best_unless_negative"

    def __call__(self, label: torch.Tensor, iou: torch.Tensor, bg_thresh: float) -> torch.Tensor:
        if not iou.shape[1]:
            return label
        return torch.where(iou.max(dim=1).values < bg_thresh, torch.zeros_like(label), label)

    def __repr__(self) -> str:
        return "BestUnlessNegative()"


class LabelAllAnchors:
    name = "label_all"

    def inside(self, anchors: torch.Tensor, image_size) -> torch.Tensor | None:
        return None

    def __repr__(self) -> str:
        return "LabelAllAnchors()"


class IgnoreOutsideAnchors:
    name = "ignore_outside"

    def inside(self, anchors: torch.Tensor, image_size) -> torch.Tensor:
        if image_size is None:
            raise ValueError("ignoring anchors outside the image needs the image size")
        return anchors_inside(anchors, image_size)

    def __repr__(self) -> str:
        return "IgnoreOutsideAnchors()"


LOW_QUALITY = {"keep_best": KeepBestMatches(), "best_unless_negative": BestUnlessNegative()}
BORDER = {"label_all": LabelAllAnchors(), "ignore_outside": IgnoreOutsideAnchors()}
