"""Training losses of the ROI heads: Fast R-CNN's classification and box regression (one box
stage), and Mask R-CNN's mask loss. Each is averaged over the slots that count."""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["box_loss", "mask_loss"]


def box_loss(stage, logits, deltas, rois, gt_boxes, labels, fg, valid, smooth_l1_beta: float):
    """``(cls, box)`` losses of one box ``stage`` (its coder encodes the targets; class-agnostic or
    not) on R RoIs: ``logits`` (R, C+1), ``deltas`` (R, 4) or (R, 4(C+1)), ``rois`` and their
    ``gt_boxes`` (R, 4), ``labels`` (R,) 0..C, ``fg`` and ``valid`` (R,) bool. Both are sums over
    the valid RoIs divided by their count; the box loss counts foreground RoIs only; beta 0 is L1."""
    R = logits.shape[0]
    fg = fg & valid  # padding slots (and, in later cascade stages, degenerate boxes) never count
    w = valid.float()
    denom = w.sum().clamp(min=1)
    cls = (F.cross_entropy(logits.float(), labels, reduction="none") * w).sum() / denom
    if stage.agnostic:
        d = deltas.float()
    else:
        d = deltas.float().view(R, -1, 4).gather(1, labels.view(R, 1, 1).expand(R, 1, 4)).squeeze(1)
    t = stage.coder.encode(gt_boxes, rois)
    t = torch.where(fg[:, None], t, torch.zeros_like(t))  # background targets may be inf/NaN-free anyway
    beta = smooth_l1_beta
    l = F.smooth_l1_loss(d, t, beta=beta, reduction="none") if beta > 0 else (d - t).abs()
    box = (l.sum(-1) * fg.float()).sum() / denom
    return cls, box


def mask_loss(logits: torch.Tensor, target: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mask R-CNN's loss: per RoI the mean binary cross-entropy of its class's (R, M, M) logits
    against the (R, M, M) target, averaged over the RoIs with weight 1 (``weight`` 0 for slots
    that do not count). ``labels`` in 1..C pick the channel of ``logits`` (R, C, M, M)."""
    M = logits.shape[-1]
    sel = logits.gather(1, (labels - 1).clamp(min=0).view(-1, 1, 1, 1).expand(-1, 1, M, M)).squeeze(1).float()
    bce = F.binary_cross_entropy_with_logits(sel, target, reduction="none").mean(dim=(1, 2))
    # the 0-weighted sum keeps every mask parameter in the graph when a batch has no positive
    return (bce * weight).sum() / weight.sum().clamp(min=1) + 0.0 * logits.sum()
