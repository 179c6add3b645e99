"""How a predicted M x M mask is pasted into the original image: ``(N, M, M)`` probabilities and
``(N, 4)`` boxes in original pixels → ``(N, 1, H, W)`` probabilities, 0 outside each box (the
consumer keeps ``> 0.5``).

- ``"integer_box"`` (``MaskPaste(accurate=False)``): mask padded by one cell, box widened accordingly and
  truncated to integer pixels, bilinear resize with ``align_corners=False``
  (:func:`~gluon_rcnn.structures.masks.paste_masks_in_image`).
- ``"subpixel"`` (``MaskPaste(accurate=True)``): the box keeps its sub-pixel coordinates; each image pixel
  centre samples the (zero-padded) mask bilinearly.
- ``"rounded_box"`` (:class:`RoundedBoxPaste`): Detectron-1's paste as tensorpack had it at 02c38f26
  (eval.py ``_paste_mask``): the box rounded to the inclusive pixel window ``x0, y0 = int(box[:2] + 0.5)``,
  ``x1, y1 = max(x0, int(box[2] - 0.5)), max(y0, int(box[3] - 0.5))`` (at least 1 x 1), the M x M map
  resized to ``(x1 + 1 - x0) x (y1 + 1 - y0)`` by ``cv2.resize`` (INTER_LINEAR: half-pixel bilinear,
  edge cells repeated, no padding) and written there (what lies outside the image is cut).
"""
from __future__ import annotations

import torch

from ..structures.masks import paste_masks_in_image

__all__ = ["MaskPaste", "RoundedBoxPaste", "MASK_PASTE"]


class MaskPaste:
    """``accurate=False``: ``"integer_box"``; ``accurate=True``: ``"subpixel"``."""

    def __init__(self, accurate: bool):
        self.accurate = bool(accurate)
        self.name = "subpixel" if self.accurate else "integer_box"

    def __call__(self, mask_probs: torch.Tensor, boxes: torch.Tensor, image_hw) -> torch.Tensor:
        return paste_masks_in_image(mask_probs, boxes, image_hw, accurate=self.accurate)

    def __repr__(self) -> str:
        return f"MaskPaste(accurate={self.accurate})"


def _linear_resize_weights(pixels: torch.Tensor, start: torch.Tensor, size: torch.Tensor, M: int) -> torch.Tensor:
    """(N, L, M) weights of ``cv2.resize``'s INTER_LINEAR from M source cells to ``size`` destination
    pixels starting at ``start`` (one row per box), at the image pixels ``pixels`` (L,); rows outside
    each window are 0. As OpenCV (4.11, 5.1) computes them: in double, ``fx = (d + 0.5) / (size / M) - 0.5``,
    ``sx = floor(fx)``, weights ``1 - (fx - sx)`` and ``fx - sx`` rounded to float32; ``sx < 0`` reads
    cell 0 with weight 1, ``sx >= M - 1`` cell M - 1 with weight 1."""
    d = pixels[None].double() - start[:, None].double()                       # (N, L) destination index
    scale = 1.0 / (size[:, None].double() / M)                               # OpenCV's 1 / inv_scale_x
    fx = (d + 0.5) * scale - 0.5
    sx = torch.floor(fx)
    frac = fx - sx
    low, high = sx < 0, sx >= M - 1
    frac = torch.where(low | high, torch.zeros_like(frac), frac)
    sx = torch.where(low, torch.zeros_like(sx), torch.where(high, torch.full_like(sx, M - 1), sx)).long()
    w = torch.zeros((*frac.shape, M), dtype=torch.float32, device=frac.device)
    w.scatter_add_(2, sx.unsqueeze(-1), (1 - frac).float().unsqueeze(-1))
    w.scatter_add_(2, (sx + 1).clamp(max=M - 1).unsqueeze(-1), frac.float().unsqueeze(-1))
    inside = (d >= 0) & (d < size[:, None].double())
    return w * inside.unsqueeze(-1)


class RoundedBoxPaste:
    """``"rounded_box"``: the mask resized bilinearly (``cv2.resize``'s INTER_LINEAR) into the box
    rounded to whole pixels (module docstring). Batched: each paste is ``Wy @ (mask @ Wx^T)`` with the
    resize weights (rows first, as OpenCV interpolates)."""

    name = "rounded_box"

    @staticmethod
    def windows(boxes: torch.Tensor) -> torch.Tensor:
        """(N, 4) float32 boxes → (N, 4) int64 inclusive pixel windows ``x0, y0, x1, y1``."""
        boxes = boxes.float()
        x0y0 = (boxes[:, :2] + 0.5).to(torch.int64)       # int(): toward zero (boxes are >= 0: floor)
        x1y1 = torch.maximum((boxes[:, 2:] - 0.5).to(torch.int64), x0y0)
        return torch.cat([x0y0, x1y1], 1)

    def __call__(self, mask_probs: torch.Tensor, boxes: torch.Tensor, image_hw) -> torch.Tensor:
        H, W = image_hw
        N, M = mask_probs.shape[0], mask_probs.shape[-1]
        if not torch.compiler.is_compiling() and N == 0:
            return mask_probs.new_zeros((0, 1, H, W), dtype=torch.float32)
        win = self.windows(boxes)
        dev = mask_probs.device
        wx = _linear_resize_weights(torch.arange(W, device=dev), win[:, 0], win[:, 2] + 1 - win[:, 0], M)
        wy = _linear_resize_weights(torch.arange(H, device=dev), win[:, 1], win[:, 3] + 1 - win[:, 1], M)
        rows = torch.bmm(mask_probs.float(), wx.transpose(1, 2))               # (N, M, W): along x first
        return torch.bmm(wy, rows).unsqueeze(1)

    def __repr__(self) -> str:
        return "RoundedBoxPaste()"


MASK_PASTE = {"integer_box": MaskPaste(accurate=False), "subpixel": MaskPaste(accurate=True),
              "rounded_box": RoundedBoxPaste()}
