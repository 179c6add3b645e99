"""Masks: polygon rasterisation inside RoIs (training targets) and pasting into images (inference).

Both are batched tensor ops on the model's device. Training never builds whole-image bitmaps:
each instance outline travels as a padded set of edges and is rasterised only inside each
positive RoI, at the mask head's resolution ('polygon' targets), or, for tensorpack's targets, by
pycocotools over the whole image but kept as its run-length encoding, which the bilinear crop
(tensorpack's ``crop_and_resize``) reads directly.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["rasterize_polygons_in_boxes", "paste_masks_in_image", "edges_to_polygons", "polygons_to_bitmap",
           "crop_and_resize_bitmaps", "polygons_to_rle_ends", "crop_and_resize_rle", "rle_problem", "polygons_problem"]


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


def edges_to_polygons(edges) -> list:
    """The polygons of one instance back from its edges (``data.transforms.polygons_to_edges``).

    edges: (E, 4) ``xa, ya, xb, yb`` (array or tensor; all-zero padding rows are dropped). Each
    polygon's edges are consecutive, edge ``k`` starting at vertex ``k``, and its last edge closes it
    (ends where the polygon's first edge starts). Returns a list of float64 (2n,) arrays
    ``[x0, y0, x1, y1, ...]`` (polygons of fewer than 3 vertices are left out: they cover no area).
    """
    import numpy as np

    e = edges.detach().cpu().numpy() if torch.is_tensor(edges) else np.asarray(edges)
    e = e.reshape(-1, 4).astype(np.float64)
    e = e[np.any(e != 0, axis=1)]
    polys, start = [], 0
    for k in range(len(e)):
        closes = e[k, 2] == e[start, 0] and e[k, 3] == e[start, 1]
        # a polygon that passes through its first vertex again goes on when the next edge continues it
        if closes and (k + 1 == len(e) or not (e[k + 1, 0] == e[k, 2] and e[k + 1, 1] == e[k, 3])):
            if k + 1 - start >= 3:
                polys.append(e[start:k + 1, :2].reshape(-1))
            start = k + 1
    if start < len(e) and len(e) - start >= 3:  # an unclosed tail (not from polygons_to_edges)
        polys.append(e[start:, :2].reshape(-1))
    return polys


def polygons_to_bitmap(polygons, height: int, width: int):
    """uint8 (height, width) bitmap of the union of ``polygons`` (flat ``[x0, y0, ...]`` arrays in
    pixels), rasterised by pycocotools as tensorpack's ``common.polygons_to_mask`` does
    (``frPyObjects`` + ``merge`` + ``decode``). No polygon: all zeros."""
    import numpy as np
    from pycocotools import mask as mask_utils

    polys = [np.asarray(p, dtype=np.float64).reshape(-1).tolist() for p in polygons]
    polys = [p for p in polys if len(p) >= 6]
    if not polys:
        return np.zeros((height, width), dtype=np.uint8)
    rle = mask_utils.merge(mask_utils.frPyObjects(polys, int(height), int(width)))
    return np.ascontiguousarray(mask_utils.decode(rle))


def _rle_string_to_counts(s: bytes):
    """pycocotools' compressed RLE string (maskApi.c ``rleToString``: 5-bit groups + 48, bit 0x20
    continues a number, 0x10 of its last group is the sign; counts after the second are deltas to
    the count two before) back to the run lengths, vectorised."""
    import numpy as np

    c = np.frombuffer(s, dtype=np.uint8).astype(np.int64) - 48
    if c.size == 0:
        return np.zeros(0, dtype=np.int64)
    end = (c & 0x20) == 0
    grp = np.concatenate([[0], np.cumsum(end)[:-1]])
    starts = np.flatnonzero(np.concatenate([[True], end[:-1]]))
    pos = np.arange(c.size) - starts[grp]
    x = np.zeros(int(end.sum()), dtype=np.int64)
    np.add.at(x, grp, (c & 0x1F) << (5 * pos))
    neg = (c[end] & 0x10) != 0
    x[neg] -= np.int64(1) << (5 * (pos[end][neg] + 1))
    cnt = x.copy()
    if cnt.size > 3:  # cnts[i] = x[i] + cnts[i-2] for i > 2
        cnt[3::2] = np.cumsum(x[3::2]) + cnt[1]
    if cnt.size > 4:
        cnt[4::2] = np.cumsum(x[4::2]) + cnt[2]
    return cnt


def polygons_to_rle_ends(polygons, height: int, width: int):
    """The bitmap of :func:`polygons_to_bitmap` (the same pycocotools rasterisation) as the ends of
    its runs: int64 cumulative run lengths over the column-major (Fortran) pixel order, runs
    alternating 0, 1, 0, ... from a run of zeros; pixel ``(y, x)`` is 1 iff the number of ends
    ``<= x * height + y`` is odd. A few hundred numbers instead of ``height * width`` bytes."""
    import numpy as np
    from pycocotools import mask as mask_utils

    polys = [np.asarray(p, dtype=np.float64).reshape(-1).tolist() for p in polygons]
    polys = [p for p in polys if len(p) >= 6]
    if not polys:
        return np.array([int(height) * int(width)], dtype=np.int64)
    rle = mask_utils.merge(mask_utils.frPyObjects(polys, int(height), int(width)))
    counts = rle["counts"]
    counts = _rle_string_to_counts(counts.encode() if isinstance(counts, str) else counts)
    return np.cumsum(counts)


def _crop_and_resize(lookup, heights, widths, boxes: torch.Tensor, M: int) -> torch.Tensor:
    """The sampling of :func:`crop_and_resize_bitmaps`; ``lookup(rows (R, M), cols (R, M))`` gives
    the (R, M, M) float values of each box's bitmap at those pixels."""
    R = boxes.shape[0]
    if R == 0:
        return torch.zeros((0, M, M), dtype=torch.float32, device=boxes.device)
    b = boxes.detach().double()
    steps = torch.arange(M, device=boxes.device, dtype=torch.float64) + 0.5
    xs = b[:, 0:1] + steps[None] * ((b[:, 2] - b[:, 0]) / M)[:, None] - 0.5  # (R, M)
    ys = b[:, 1:2] + steps[None] * ((b[:, 3] - b[:, 1]) / M)[:, None] - 0.5
    H = heights.to(boxes.device).long()[:, None]
    W = widths.to(boxes.device).long()[:, None]
    vx = (xs >= 0) & (xs <= (W - 1).double())
    vy = (ys >= 0) & (ys <= (H - 1).double())
    x0f, y0f = xs.floor(), ys.floor()
    lx, ly = (xs - x0f).float(), (ys - y0f).float()
    x0 = torch.minimum(x0f.long().clamp(min=0), W - 1)
    y0 = torch.minimum(y0f.long().clamp(min=0), H - 1)
    x1 = torch.minimum(xs.ceil().long().clamp(min=0), W - 1)
    y1 = torch.minimum(ys.ceil().long().clamp(min=0), H - 1)
    lxr, lyr = lx[:, None, :], ly[:, :, None]
    tl, tr, bl, br = lookup(y0, x0), lookup(y0, x1), lookup(y1, x0), lookup(y1, x1)
    top = tl + (tr - tl) * lxr
    bottom = bl + (br - bl) * lxr
    out = top + (bottom - top) * lyr
    return out * (vy[:, :, None] & vx[:, None, :]).float()


def crop_and_resize_rle(ends: torch.Tensor, ids: torch.Tensor, heights: torch.Tensor, widths: torch.Tensor,
                        boxes: torch.Tensor, M: int) -> torch.Tensor:
    """:func:`crop_and_resize_bitmaps` of bitmaps given as run ends (:func:`polygons_to_rle_ends`).

    ends: (B, L) int64, each bitmap's run ends, right-padded with a value past its last pixel.
    ids: (R,) the bitmap of each box; heights, widths: (R,) its size; boxes: (R, 4); returns (R, M, M).
    """
    e = ends.to(boxes.device)[ids.to(boxes.device)]  # (R, L)
    Hc = heights.to(boxes.device).long()[:, None, None]

    def lookup(yy, xx):
        q = (xx[:, None, :] * Hc + yy[:, :, None]).reshape(len(e), -1)  # column-major index
        return (torch.searchsorted(e, q, right=True) % 2).float().view(len(e), yy.shape[1], xx.shape[1])

    return _crop_and_resize(lookup, heights, widths, boxes, M)


def crop_and_resize_bitmaps(flat: torch.Tensor, offsets: torch.Tensor, heights: torch.Tensor,
                            widths: torch.Tensor, boxes: torch.Tensor, M: int) -> torch.Tensor:
    """tensorpack's ``model_box.crop_and_resize(..., pad_border=False)`` of full-image bitmaps.

    flat: the bitmaps, each flattened row-major and concatenated (any dtype; read as float).
    offsets, heights, widths: (R,) for each box, where its bitmap starts in ``flat`` and its size.
    boxes: (R, 4) ``x1, y1, x2, y2`` in pixels (tensorpack's floating-point box convention).
    Returns float32 (R, M, M): output ``(i, j)`` samples the bitmap bilinearly at pixel coordinates
    ``(y1 + (i + 0.5) * h / M - 0.5, x1 + (j + 0.5) * w / M - 0.5)`` (pixel ``(r, c)``'s value sits at
    ``(r, c)``), i.e. ``tf.image.crop_and_resize`` of the box that tensorpack's
    ``transform_fpcoor_for_tf`` makes; a sample outside ``[0, H-1] x [0, W-1]`` is 0 (TF's
    ``extrapolation_value``). The sample coordinates are computed in float64.
    """
    base = offsets.to(boxes.device).long()[:, None, None]
    Wr = widths.to(boxes.device).long()[:, None, None]

    def lookup(yy, xx):  # (R, M) rows, (R, M) columns -> (R, M, M)
        return flat[base + yy[:, :, None] * Wr + xx[:, None, :]].float()

    return _crop_and_resize(lookup, heights, widths, boxes, M)


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

    ``accurate=True``: tensorpack's ``MRCNN.ACCURATE_PASTE`` (``RULES.MASK_PASTE='subpixel'``) (``eval.py:_paste_mask``): the box
    keeps its sub-pixel coordinates; image pixel ``(y, x)`` (centre ``(y + 0.5, x + 0.5)``) samples
    the mask, padded with one zero cell, bilinearly at ``((y + 0.5 - y1) / (y2 - y1) * M,
    (x + 0.5 - x1) / (x2 - x1) * M)`` cells (cell centres at ``i + 0.5``), 0 beyond half a cell
    outside the mask (``padding`` unused). tensorpack then keeps ``>= 0.5``; this returns the
    probabilities. Separable too, so batched and traceable (no data-dependent shapes).
    """
    H, W = image_hw
    N = masks.shape[0]
    if not torch.compiler.is_compiling() and N == 0:  # traced by export(): N is not known; the rest handles 0
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


# ---------------------------------------------------------------------------------------------
# validation of annotated masks (data.coco checks every segmentation with these)
# ---------------------------------------------------------------------------------------------
def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def rle_problem(rle: dict, height: int, width: int, allow_empty: bool = True) -> str | None:
    """What is wrong with the COCO RLE ``rle`` as a mask of an ``height x width`` image, or None.

    Its ``size`` must be ``[height, width]`` and its run lengths (``counts``: a list, uncompressed
    RLE, or pycocotools' compressed string, read as pycocotools' ``rleFrString`` reads it) must be
    non-negative and add up to ``height * width``; with ``allow_empty=False`` at least one pixel
    must be set. pycocotools itself checks none of this (a wrong size decodes to a mask of another
    shape; counts that do not cover the image leave pixels undefined)."""
    size = rle.get("size")
    if not (isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_count(v) for v in size)):
        return f"RLE 'size' must be [height, width] (two integers), got {size!r}"
    if [size[0], size[1]] != [int(height), int(width)]:
        return (f"RLE size {[size[0], size[1]]} is not the image's [height, width] {[int(height), int(width)]} "
                "(RLE masks must be given at the image's own size)")
    counts = rle.get("counts")
    if isinstance(counts, list):
        if not all(_is_count(c) for c in counts):
            return "uncompressed RLE 'counts' must be non-negative integers"
        total, ones = sum(counts), sum(counts[1::2])
    elif isinstance(counts, (str, bytes)):
        import numpy as np

        try:
            raw = counts.encode("ascii") if isinstance(counts, str) else bytes(counts)
        except UnicodeEncodeError:
            raw = b"\x00"  # not ASCII: rejected below
        codes = np.frombuffer(raw, dtype=np.uint8)
        if codes.size and (codes.min() < 48 or codes.max() > 48 + 63):
            return "compressed RLE 'counts' is not a pycocotools RLE string (characters outside '0'..'o')"
        c = _rle_string_to_counts(raw)
        if (c < 0).any():
            return "compressed RLE 'counts' decodes to negative run lengths (not a pycocotools RLE string)"
        total, ones = int(c.sum()), int(c[1::2].sum())
    else:
        return f"RLE 'counts' must be a list of run lengths or a compressed string, got {type(counts).__name__}"
    if total != int(height) * int(width):
        return (f"RLE counts cover {total} pixels, not height * width = {int(height)} * {int(width)} = "
                f"{int(height) * int(width)}")
    if not allow_empty and ones == 0:
        return "the RLE mask is empty (no pixel set)"
    return None


def polygons_problem(polygons, allow_empty: bool = True) -> str | None:
    """What is wrong with a COCO polygon segmentation (a list of flat ``[x0, y0, x1, y1, ...]``
    lists), or None: each polygon needs at least 3 points; with ``allow_empty=False`` there must be a
    polygon and they must enclose some area (points all on a line, or repeated, enclose none)."""
    import numpy as np

    for k, p in enumerate(polygons):
        if len(p) < 6:
            return f"polygon {k} has {len(p) // 2} point(s) {list(p)}; a polygon needs at least 3"
    if allow_empty:
        return None
    if not polygons:
        return "the segmentation is an empty list of polygons (the mask is empty)"
    area = 0.0
    for p in polygons:
        q = np.asarray(p, dtype=np.float64)
        x, y = q[0::2], q[1::2]
        area += abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))) / 2
    if area <= 1e-6:
        return "the polygons enclose no area (their points lie on a line): the mask is empty"
    return None
