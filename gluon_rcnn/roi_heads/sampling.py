"""Training: proposals matched to the ground truth and sampled into fixed-size slots.

:func:`sample_rois` gives the first box stage's sample (:class:`SampledRoIs`); :func:`rematch`
matches a later cascade stage's refined boxes again at that stage's IoU.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torchvision.ops import box_iou

from ..structures.boxes import balanced_sample, match_boxes

__all__ = ["SampledRoIs", "sample_rois", "rematch", "matched_gt_boxes", "slot_rois"]


@dataclass
class SampledRoIs:
    """The RoIs sampled for the box (and mask) losses: ``S = batch_per_im`` slots per image.

    rois: float (N, S, 4) boxes in resized-image pixels.  gt_idx: int64 (N, S) matched GT index
    (0 where the image has no GT).  labels: int64 (N, S) class 1..C for foreground slots, 0 else.
    fg: bool (N, S) foreground.  valid: bool (N, S) slots that count (invalid ones pad images with
    fewer candidates than S).  num_fg_slots: every foreground slot lies in ``[:, :num_fg_slots]``
    (the mask loss reads only those).
    """

    rois: torch.Tensor
    gt_idx: torch.Tensor
    labels: torch.Tensor
    fg: torch.Tensor
    valid: torch.Tensor
    num_fg_slots: int

    def check(self) -> "SampledRoIs":
        """Assert the invariants (shapes; fg ⊂ valid; labels > 0 exactly on fg; fg only in the
        first ``num_fg_slots`` slots). Host syncs: run on every CPU training step, on a GPU by tests."""
        N, S = self.labels.shape
        assert self.rois.shape == (N, S, 4) and self.gt_idx.shape == self.fg.shape == self.valid.shape == (N, S)
        assert not bool((self.fg & ~self.valid).any()), "a foreground slot is not valid"
        assert torch.equal(self.labels > 0, self.fg), "labels must be > 0 exactly on foreground slots"
        assert not bool(self.fg[:, self.num_fg_slots:].any()), "foreground slot past num_fg_slots"
        return self


def sample_rois(proposals, targets, fg_iou: float, batch_per_im: int, fg_ratio: float) -> SampledRoIs:
    """Per image: proposals + GT, match (IoU >= ``fg_iou`` foreground, else background), sample
    ``batch_per_im`` with ``fg_ratio`` foreground at most, as fixed-size slots."""
    S = batch_per_im
    out = {k: [] for k in ("rois", "gt_idx", "labels", "fg", "valid")}
    for props, t in zip(proposals, targets):
        gt, gl = t["boxes"], t["labels"]
        cand = torch.cat([props, gt]) if gt.numel() else props
        dummy = cand.shape[0] == 0
        if dummy:  # no proposal and no GT: one dummy candidate, never valid
            cand = props.new_zeros((1, 4))
        iou = box_iou(cand, gt) if gt.numel() else cand.new_zeros((cand.shape[0], 0))
        matched, lab = match_boxes(iou, fg_iou, fg_iou, allow_low_quality=False)
        idx, is_fg, ok = balanced_sample(lab, S, fg_ratio)
        if dummy:
            ok = torch.zeros_like(ok)
        pad = S - idx.shape[0]
        if pad:  # fewer candidates than slots: pad with invalid slots
            idx = F.pad(idx, (0, pad))
            is_fg = F.pad(is_fg, (0, pad))
            ok = F.pad(ok, (0, pad))
        g = matched[idx]
        labels = torch.where(is_fg, gl[g], torch.zeros_like(g)) if gt.numel() else torch.zeros_like(g)
        out["rois"].append(cand[idx])
        out["gt_idx"].append(g)
        out["labels"].append(labels)
        out["fg"].append(is_fg)
        out["valid"].append(ok)
    return SampledRoIs(**{k: torch.stack(v) for k, v in out.items()}, num_fg_slots=int(S * fg_ratio))


def rematch(boxes: torch.Tensor, targets, iou: float):
    """Match (N, S, 4) boxes to the GT again at ``iou`` (cascade stages after the first):
    ``(gt_idx, labels, fg)``, each (N, S), as in :class:`SampledRoIs`."""
    gt_idx, labels, fg = [], [], []
    for b, t in zip(boxes, targets):
        gt, gl = t["boxes"], t["labels"]
        if gt.numel() == 0:
            z = torch.zeros(b.shape[0], dtype=torch.long, device=b.device)
            gt_idx.append(z), labels.append(z), fg.append(z.bool())
            continue
        matched, lab = match_boxes(box_iou(b, gt), iou, iou, allow_low_quality=False)
        is_fg = lab == 1
        gt_idx.append(matched)
        labels.append(torch.where(is_fg, gl[matched], torch.zeros_like(matched)))
        fg.append(is_fg)
    return torch.stack(gt_idx), torch.stack(labels), torch.stack(fg)


def matched_gt_boxes(targets, gt_idx: torch.Tensor, rois: torch.Tensor) -> torch.Tensor:
    """(N * S, 4) GT box of each of the (N, S) slots (zeros in an image without GT)."""
    S = gt_idx.shape[1]
    return torch.stack([t["boxes"][g] if t["boxes"].numel() else rois.new_zeros((S, 4))
                        for t, g in zip(targets, gt_idx)]).reshape(-1, 4)


def slot_rois(rois: torch.Tensor) -> torch.Tensor:
    """(N, S, 4) slots → (N * S, 5) with the batch index first, as RoIAlign wants."""
    N, S = rois.shape[:2]
    batch_idx = torch.arange(N, device=rois.device, dtype=rois.dtype).repeat_interleave(S)[:, None]
    return torch.cat([batch_idx, rois.reshape(-1, 4)], 1)
