"""Masks: polygon rasterisation inside RoIs (training targets) and pasting into images (inference).

Both are batched tensor ops on the model's device. Training never builds whole-image bitmaps:
each instance outline travels as a padded set of edges and is rasterised only inside each
positive RoI, at the mask head's resolution.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["rasterize_polygons_in_boxes", "paste_masks_in_image"]


def rasterize_polygons_in_boxes(edges: torch.Tensor, boxes: torch.Tensor, M: int) -> torch.Tensor:
    """Rasterise instance outlines inside boxes.

    edges: (R, E, 4) float, the outline of the instance matched to each RoI as edges
        ``x1,y1,x2,y2`` in image pixels (several closed polygons may share the set; zero-padded
        edges never cross a scan line and so add nothing).
    boxes: (R, 4) RoIs in the same pixels.
    Returns (R, M, M) float {0,1}: cell (i, j) is 1 when the centre of that cell of the RoI's
    M x M grid lies inside the outline (even-odd rule; a half-open rule on edge end points so
    a vertex on a scan line is counted once).
    """
    R = boxes.shape[0]
    if R == 0:
        return boxes.new_zeros((0, M, M))
    edges = edges.float()
    boxes = boxes.float()
    steps = (torch.arange(M, device=boxes.device, dtype=torch.float32) + 0.5) / M
    x1, y1, x2, y2 = boxes.unbind(-1)
    ys = y1[:, None] + steps[None, :] * (y2 - y1)[:, None]  # (R, M) row centres
    xs = x1[:, None] + steps[None, :] * (x2 - x1)[:, None]  # (R, M) column centres
    xa, ya, xb, yb = (edges[..., k].unsqueeze(1) for k in range(4))  # (R, 1, E)
    py = ys.unsqueeze(-1)  # (R, M, 1)
    crosses = (ya > py) != (yb > py)  # (R, M, E)
    dy = torch.where(crosses, yb - ya, torch.ones_like(yb - ya))
    xint = xa + (py - ya) * (xb - xa) / dy
    xint = torch.where(crosses, xint, torch.full_like(xint, float("inf")))
    xint, _ = xint.sort(dim=-1)
    # number of crossings to the left of each column centre; odd = inside
    left = torch.searchsorted(xint.contiguous(), xs.unsqueeze(1).expand(R, M, M).contiguous())
    return (left % 2 == 1).float()


def _interp_matrix(dst: torch.Tensor, start: torch.Tensor, size: torch.Tensor, Mp: int) -> torch.Tensor:
    """(N, L, Mp) weights of bilinear resizing (align_corners=False) from Mp source pixels to
    ``size`` destination pixels placed at ``start``, evaluated at destination pixels ``dst``."""
    src = ((dst[None] - start[:, None].float() + 0.5) * (Mp / size[:, None]) - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=Mp - 1)
    i1 = (i0 + 1).clamp(max=Mp - 1)
    lam = src - i0.float()
    w = src.new_zeros((*src.shape, Mp))
    w.scatter_add_(2, i0.unsqueeze(-1), (1 - lam).unsqueeze(-1))
    w.scatter_add_(2, i1.unsqueeze(-1), lam.unsqueeze(-1))
    return w


def _hat_matrix(centres: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, M: int) -> torch.Tensor:
    """(N, L, M) weights of linear interpolation, with zeros beyond the border, of M cells spread
    over ``[lo, hi]`` (one row per box), evaluated at the continuous coordinates ``centres`` (L,).

    A point maps to ``u = (c - lo) / (hi - lo) * M`` cells; cell ``j``'s value sits at ``j + 0.5``
    and weighs ``max(0, 1 - |u - (j + 0.5)|)``: bilinear interpolation between cell centres, fading
    to 0 at half a cell outside the outer centres (the one-cell zero border) and 0 beyond."""
    u = (centres[None] - lo[:, None]) / (hi - lo).clamp(min=1e-6)[:, None] * M  # (N, L); empty box: 0
    j = torch.arange(M, device=centres.device, dtype=torch.float32) + 0.5
    return (1.0 - (u.unsqueeze(-1) - j).abs()).clamp(min=0)


def paste_masks_in_image(masks: torch.Tensor, boxes: torch.Tensor, image_hw: tuple[int, int],
                         padding: int = 1, accurate: bool = False) -> torch.Tensor:
    """Paste per-box soft masks into the full image, batched on the masks' device.

    masks: (N, M, M) probabilities predicted inside each box; boxes: (N, 4) in image pixels.
    Returns (N, 1, H, W) float probabilities (0 outside each box).

    ``accurate=False`` (default): what torchvision's ``paste_masks_in_image`` gives (mask padded
    by one pixel, box widened accordingly and truncated to integer pixels, bilinear resize with
    ``align_corners=False``), but for all masks at once: bilinear resizing is separable, so each
    pasted mask is ``Wy @ mask @ Wx^T`` with small interpolation matrices, instead of one
    ``F.interpolate`` and one copy per mask.

    ``accurate=True``: tensorpack's ``MRCNN.ACCURATE_PASTE`` (``eval.py:_paste_mask``): the box
    keeps its sub-pixel coordinates; image pixel ``(y, x)`` (centre ``(y + 0.5, x + 0.5)``) samples
    the mask, padded with one zero cell, bilinearly at ``((y + 0.5 - y1) / (y2 - y1) * M,
    (x + 0.5 - x1) / (x2 - x1) * M)`` cells (cell centres at ``i + 0.5``), 0 beyond half a cell
    outside the mask (``padding`` unused). tensorpack then keeps ``>= 0.5``; this returns the
    probabilities. Separable too, so batched and traceable (no data-dependent shapes).
    """
    H, W = image_hw
    N = masks.shape[0]
    if N == 0:
        return masks.new_zeros((0, 1, H, W), dtype=torch.float32)
    if accurate:
        M = masks.shape[-1]
        boxes = boxes.float()
        xs = torch.arange(W, device=masks.device, dtype=torch.float32) + 0.5
        ys = torch.arange(H, device=masks.device, dtype=torch.float32) + 0.5
        wx = _hat_matrix(xs, boxes[:, 0], boxes[:, 2], M)  # (N, W, M)
        wy = _hat_matrix(ys, boxes[:, 1], boxes[:, 3], M)  # (N, H, M)
        return torch.bmm(torch.bmm(wy, masks.float()), wx.transpose(1, 2)).unsqueeze(1)
    M = masks.shape[-1]
    masks = F.pad(masks.float(), (padding,) * 4)
    Mp = M + 2 * padding
    scale = Mp / M
    boxes = boxes.float()
    w_half = (boxes[:, 2] - boxes[:, 0]) * 0.5 * scale
    h_half = (boxes[:, 3] - boxes[:, 1]) * 0.5 * scale
    cx = (boxes[:, 2] + boxes[:, 0]) * 0.5
    cy = (boxes[:, 3] + boxes[:, 1]) * 0.5
    ib = torch.stack([cx - w_half, cy - h_half, cx + w_half, cy + h_half], dim=1).to(torch.int64)
    bw = (ib[:, 2] - ib[:, 0] + 1).clamp(min=1).float()
    bh = (ib[:, 3] - ib[:, 1] + 1).clamp(min=1).float()
    xs = torch.arange(W, device=masks.device, dtype=torch.float32)
    ys = torch.arange(H, device=masks.device, dtype=torch.float32)
    wx = _interp_matrix(xs, ib[:, 0], bw, Mp)  # (N, W, Mp)
    wy = _interp_matrix(ys, ib[:, 1], bh, Mp)  # (N, H, Mp)
    # zero the rows/columns outside the (integer) box
    wx = wx * ((xs[None] >= ib[:, 0:1]) & (xs[None] <= ib[:, 2:3])).unsqueeze(-1)
    wy = wy * ((ys[None] >= ib[:, 1:2]) & (ys[None] <= ib[:, 3:4])).unsqueeze(-1)
    return torch.bmm(torch.bmm(wy, masks), wx.transpose(1, 2)).unsqueeze(1)
