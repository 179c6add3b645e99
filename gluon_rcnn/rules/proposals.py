"""RPN proposals: which clipped proposals are too small to reach NMS (``RULES.PROPOSAL_MIN_SIZE``,
with the size ``RPN.MIN_SIZE`` = m). :class:`~gluon_rcnn.rpn.RPN` takes one.

- ``"at_least"`` (``MinSizeFilter(strict=False)``): keep width >= m and height >= m (torchvision's
  ``remove_small_boxes``). At m = 0 every proposal is kept, boxes of zero width or height after
  clipping included: what tensorpack computes since 2c6af2d1 (modeling/model_rpn.py
  ``generate_rpn_proposals`` filters only ``if cfg.RPN.MIN_SIZE > 0``, its default being 0).
- ``"above"`` (``MinSizeFilter(strict=True)``): keep width > m and height > m (tensorpack at 02c38f26,
  model_rpn.py ``generate_rpn_proposals``: ``tf.reduce_all(wbhb > cfg.RPN.MIN_SIZE)``; detectron2's
  ``Boxes.nonempty(threshold)`` in ``find_top_rpn_proposals``): at m = 0, proposals of zero width or
  height are removed before NMS.
"""
from __future__ import annotations

import torch

__all__ = ["MinSizeFilter", "MIN_SIZE"]


class MinSizeFilter:
    """``keep(boxes, m)``: the bool mask of (..., 4) x1,y1,x2,y2 boxes whose sides are ``>= m``
    (``strict=False``) or ``> m`` (``strict=True``)."""

    def __init__(self, strict: bool):
        self.strict = bool(strict)
        self.name = "above" if self.strict else "at_least"

    def keep(self, boxes: torch.Tensor, min_size: float) -> torch.Tensor:
        ws = boxes[..., 2] - boxes[..., 0]
        hs = boxes[..., 3] - boxes[..., 1]
        if self.strict:
            return (ws > min_size) & (hs > min_size)
        return (ws >= min_size) & (hs >= min_size)

    def __repr__(self) -> str:
        return f"MinSizeFilter(strict={self.strict})"


MIN_SIZE = {"at_least": MinSizeFilter(strict=False), "above": MinSizeFilter(strict=True)}
