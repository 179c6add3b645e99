"""Box arithmetic shared by the RPN and the ROI heads: coder, matching, balanced sampling.

Boxes are ``x1,y1,x2,y2`` absolute pixels, float tensors, everywhere. Every function here is a
batched tensor op on the boxes' device: no Python loop over anchors, proposals or boxes, and no
host-device synchronisation (sampling keeps a fixed number of slots and a validity mask rather
than indexing with data-dependent sizes).
"""
from __future__ import annotations

import math

import torch
from torchvision.ops import batched_nms as _tv_batched_nms
from torchvision.ops import box_iou, nms

__all__ = ["BoxCoder", "box_iou", "batched_nms", "clip_boxes", "match_boxes", "balanced_sample", "remove_small_boxes_mask",
           "sizes_tensor"]

# the largest log-scale change of a box side that decoding allows (as Detectron, torchvision)
BBOX_XFORM_CLIP = math.log(1000.0 / 16)


class BoxCoder:
    """Encodes boxes as deltas ``(dx, dy, dw, dh)`` relative to reference boxes, and back.

    ``weights`` multiply the deltas (BBOX_REG_WEIGHTS: 1,1,1,1 for the RPN, 10,10,5,5 for the
    Fast R-CNN head). Encoding and decoding are done in fp32 whatever the input dtype.
    """

    def __init__(self, weights=(1.0, 1.0, 1.0, 1.0), clip: float = BBOX_XFORM_CLIP):
        self.weights = tuple(float(w) for w in weights)
        self.clip = clip

    def encode(self, gt: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """gt, ref: (..., 4) boxes → (..., 4) deltas."""
        gt, ref = gt.float(), ref.float()
        wx, wy, ww, wh = self.weights
        rw = ref[..., 2] - ref[..., 0]
        rh = ref[..., 3] - ref[..., 1]
        rx = ref[..., 0] + 0.5 * rw
        ry = ref[..., 1] + 0.5 * rh
        gw = gt[..., 2] - gt[..., 0]
        gh = gt[..., 3] - gt[..., 1]
        gx = gt[..., 0] + 0.5 * gw
        gy = gt[..., 1] + 0.5 * gh
        return torch.stack([wx * (gx - rx) / rw, wy * (gy - ry) / rh,
                            ww * torch.log(gw / rw), wh * torch.log(gh / rh)], dim=-1)

    def decode(self, deltas: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """deltas: (..., 4k) (k boxes per reference, e.g. one per class); ref: (..., 4) → (..., 4k)."""
        deltas = deltas.float()
        ref = ref.float()
        shape = deltas.shape
        d = deltas.reshape(*shape[:-1], shape[-1] // 4, 4)
        wx, wy, ww, wh = self.weights
        w = (ref[..., 2] - ref[..., 0]).unsqueeze(-1)
        h = (ref[..., 3] - ref[..., 1]).unsqueeze(-1)
        cx = ref[..., 0].unsqueeze(-1) + 0.5 * w
        cy = ref[..., 1].unsqueeze(-1) + 0.5 * h
        dx = d[..., 0] / wx
        dy = d[..., 1] / wy
        dw = torch.clamp(d[..., 2] / ww, max=self.clip)
        dh = torch.clamp(d[..., 3] / wh, max=self.clip)
        pcx = dx * w + cx
        pcy = dy * h + cy
        pw = torch.exp(dw) * w
        ph = torch.exp(dh) * h
        # (c - 0.5 * w) with the half computed first, as torchvision, so decoded boxes agree bitwise
        hw = torch.tensor(0.5, dtype=pcx.dtype, device=pcx.device) * pw
        hh = torch.tensor(0.5, dtype=pcy.dtype, device=pcy.device) * ph
        out = torch.stack([pcx - hw, pcy - hh, pcx + hw, pcy + hh], dim=-1)
        return out.reshape(shape)


def clip_boxes(boxes: torch.Tensor, hw: torch.Tensor | tuple) -> torch.Tensor:
    """Clip (..., 4k) boxes to [0, w] x [0, h]. ``hw`` is (h, w) or a tensor (..., 2) broadcastable."""
    shape = boxes.shape
    b = boxes.reshape(*shape[:-1], shape[-1] // 4, 4)
    if isinstance(hw, torch.Tensor):
        h = hw[..., 0].to(b.dtype).reshape(*hw.shape[:-1], 1)
        w = hw[..., 1].to(b.dtype).reshape(*hw.shape[:-1], 1)
        zero = torch.zeros((), dtype=b.dtype, device=b.device)
        x = torch.minimum(torch.maximum(b[..., 0::2], zero), w.unsqueeze(-1))
        y = torch.minimum(torch.maximum(b[..., 1::2], zero), h.unsqueeze(-1))
    else:
        h, w = hw
        x = b[..., 0::2].clamp(min=0, max=w)
        y = b[..., 1::2].clamp(min=0, max=h)
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], dim=-1).reshape(shape)


def sizes_tensor(image_sizes, device) -> torch.Tensor:
    """(N, 2) int64 tensor of the images' (h, w): ``torch.as_tensor``, or, for the symbolic sizes that
    ``export()`` traces (which ``as_tensor`` would turn into constants), one scalar tensor each."""
    if any(isinstance(v, torch.SymInt) for hw in image_sizes for v in hw):
        return torch.stack([torch.stack([torch.scalar_tensor(v, dtype=torch.int64, device=device) for v in hw])
                            for hw in image_sizes])
    return torch.as_tensor(image_sizes, device=device)


def remove_small_boxes_mask(boxes: torch.Tensor, min_size: float) -> torch.Tensor:
    """Mask of boxes whose sides are both >= min_size (torchvision's rule)."""
    ws = boxes[..., 2] - boxes[..., 0]
    hs = boxes[..., 3] - boxes[..., 1]
    return (ws >= min_size) & (hs >= min_size)


def match_boxes(iou: torch.Tensor, fg_thresh: float, bg_thresh: float, allow_low_quality: bool):
    """Match predictions to ground truth.

    iou: (P, K) IoU of P predictions with K ground-truth boxes (K may be 0).
    Returns ``matched`` (P,) index of the best GT (0 where K == 0) and ``label`` (P,) int8:
    1 foreground (IoU >= fg_thresh), 0 background (IoU < bg_thresh), -1 ignored (between).
    With ``allow_low_quality``, each GT's best predictions (ties included, IoU > 0) are
    foreground too, keeping their own argmax match (the RPN rule of Faster R-CNN).
    """
    P, K = iou.shape
    if K == 0:
        return (torch.zeros(P, dtype=torch.long, device=iou.device),
                torch.zeros(P, dtype=torch.int8, device=iou.device))
    vals, matched = iou.max(dim=1)
    label = torch.full((P,), -1, dtype=torch.int8, device=iou.device)
    label = torch.where(vals < bg_thresh, torch.zeros_like(label), label)
    label = torch.where(vals >= fg_thresh, torch.ones_like(label), label)
    if allow_low_quality:
        best_per_gt = iou.max(dim=0).values  # (K,)
        is_best = ((iou == best_per_gt[None, :]) & (best_per_gt[None, :] > 0)).any(dim=1)
        label = torch.where(is_best, torch.ones_like(label), label)
    return matched, label


def balanced_sample(label: torch.Tensor, batch_size: int, fg_fraction: float,
                    generator: torch.Generator | None = None):
    """Sample up to ``batch_size`` entries with at most ``int(batch_size * fg_fraction)`` foreground.

    label: (P,) int8 with 1 fg, 0 bg, -1 ignore.
    Returns ``(idx, is_fg, valid)``, each (min(batch_size, P),): the sampled indices, foreground
    first (so every foreground sample lies in the first ``int(batch_size * fg_fraction)`` slots),
    whether the slot is foreground, and whether it holds a real sample at all (there may be too
    few candidates). The number of slots is fixed, so no host synchronisation is needed; invalid
    slots carry weight 0 in the losses.
    """
    P = label.shape[0]
    k = min(batch_size, P)
    k_fg = min(int(batch_size * fg_fraction), P)
    rand = torch.rand(P, device=label.device, generator=generator)
    neg = torch.full_like(rand, -1.0)
    fg_val, fg_idx = torch.where(label == 1, rand, neg).topk(k_fg)
    # keys: chosen foreground 2 + u, background u, the rest -1; one top-k picks the batch
    key = torch.where(label == 0, rand, neg)
    key = key.scatter(0, fg_idx, torch.where(fg_val >= 0, fg_val + 2.0, key.gather(0, fg_idx)))
    val, idx = key.topk(k)
    return idx, val >= 2.0, val >= 0


def batched_nms(boxes: torch.Tensor, scores: torch.Tensor, idxs: torch.Tensor, iou_threshold: float) -> torch.Tensor:
    """NMS within each ``idxs`` group; indices of kept boxes by decreasing score.

    In eager mode this is ``torchvision.ops.batched_nms`` (so results equal torchvision's). While
    tracing for export it always runs the coordinate-offset form (one NMS, no branch on the
    data-dependent box count) and gives its result in the order torchvision's class-by-class form
    would where torchvision would use that (exact score ties differ otherwise; random heads tie a
    lot). It runs NMS with two more boxes, each in a group of its own, which it then drops:
    torchvision's shape function for ``nms`` declares at least 2 kept boxes, which an exported
    program asserts at run time (an image with 0 or 1 detections would fail).
    """
    if not torch.compiler.is_compiling():
        return _tv_batched_nms(boxes, scores, idxs, iou_threshold)
    n = boxes.shape[0]
    extra_idx = torch.cat([idxs, idxs.new_zeros(1)]).max() + torch.arange(1, 3, device=idxs.device).to(idxs)
    idxs = torch.cat([idxs, extra_idx])
    boxes = torch.cat([boxes, boxes.new_tensor([[0.0, 0.0, 1.0, 1.0]]).expand(2, 4)])
    scores = torch.cat([scores, scores.new_zeros(2)])
    # the max over boxes and one 0 keeps empty inputs valid without a data-dependent branch; the
    # offsets put every group (the two extra boxes' too) in a region of its own: they overlap nothing
    offsets = idxs.to(boxes) * (torch.cat([boxes.flatten(), boxes.new_zeros(1)]).max() + 1)
    keep = nms(boxes + offsets[:, None], scores, iou_threshold)
    keep = keep[keep < n]
    # torchvision's class-by-class form (more than 4000 numbers on the CPU, 100000 elsewhere) orders
    # what it kept by a sort of their scores in index order; that order too, chosen by its rule
    by_index = keep.sort().values
    per_class = by_index[scores[by_index].sort(descending=True)[1]]
    large = torch.scalar_tensor(n, dtype=torch.int64, device=keep.device) * 4 > (
        4000 if boxes.device.type == "cpu" else 100_000)
    return torch.where(large, per_class, keep)
