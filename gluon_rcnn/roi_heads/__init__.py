"""ROI heads: proposal sampling, box head (one stage, or a Cascade R-CNN of several), mask head,
their losses, and the inference post-processing.

In:  features (list of (N, C, H_l, W_l)), proposals ``list[(P_i, 4)]`` in resized-image pixels,
     image sizes, and in training the targets (boxes, labels, polygons).
Out: training: dict of losses; inference: ``list[dict(boxes, scores, labels[, mask_probs])]``
     per image, still in resized-image pixels (the detector maps them back).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import box_iou

from ..structures.boxes import (BBOX_XFORM_CLIP, BoxCoder, balanced_sample, batched_nms, clip_boxes, match_boxes,
                                remove_small_boxes_mask)
from ..structures.masks import (crop_and_resize_rle, edges_to_polygons, polygons_to_rle_ends,
                                rasterize_polygons_in_boxes)
from ..nn.precision import float32_region
from .box_head import FastRCNNPredictor
from .pooler import ROIPooler

__all__ = ["ROIHeads", "Res5Head", "BoxStage", "SampledRoIs", "mask_loss"]


def _scale_grad(x: torch.Tensor, s: float) -> torch.Tensor:
    """Identity forward, gradient multiplied by ``s`` (Cascade R-CNN shares features across stages)."""
    return x.detach() + (x - x.detach()) * s if s != 1 else x  # exactly x in the forward pass, also in bf16


def _rois(boxes: list[torch.Tensor]) -> torch.Tensor:
    """list of (P_i, 4) → (sum P_i, 5) with the batch index first, as torchvision.ops.roi_align wants."""
    idx = torch.cat([torch.full((b.shape[0], 1), i, dtype=b.dtype, device=b.device) for i, b in enumerate(boxes)])
    return torch.cat([idx, torch.cat(boxes)], dim=1)


def mask_loss(logits: torch.Tensor, target: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mask R-CNN's loss: per RoI the mean binary cross-entropy of its class's (R, M, M) logits
    against the (R, M, M) target, averaged over the RoIs with weight 1 (``weight`` 0 for slots
    that do not count). ``labels`` in 1..C pick the channel of ``logits`` (R, C, M, M)."""
    M = logits.shape[-1]
    sel = logits.gather(1, (labels - 1).clamp(min=0).view(-1, 1, 1, 1).expand(-1, 1, M, M)).squeeze(1).float()
    bce = F.binary_cross_entropy_with_logits(sel, target, reduction="none").mean(dim=(1, 2))
    # the 0-weighted sum keeps every mask parameter in the graph when a batch has no positive
    return (bce * weight).sum() / weight.sum().clamp(min=1) + 0.0 * logits.sum()


class Res5Head(nn.Module):
    """C4 box head: res5 stage on 14x14 RoI features, then global average pooling.
    In (R, 1024, 14, 14); ``forward_features`` gives (R, 2048, 7, 7), ``forward`` (R, 2048)."""

    def __init__(self, res5: nn.Module, out_channels: int):
        super().__init__()
        self.res5 = res5
        self.out_dim = out_channels

    def forward_features(self, x):
        return self.res5(x)

    def forward(self, x):
        return self.res5(x).mean(dim=(2, 3))


class BoxStage(nn.Module):
    """One box stage: a feature ``head`` (pooled RoIs → vectors), its class/box predictor, and the
    box coder of its regression targets (Cascade R-CNN has several, with growing weights)."""

    def __init__(self, head: nn.Module, num_classes: int, agnostic: bool, reg_weights, clip: float = BBOX_XFORM_CLIP):
        """num_classes includes the background; agnostic: one box for every class (cascade);
        clip: the coder's cap on decoded dw, dh (FRCNN.BBOX_DECODE_CLAMP)."""
        super().__init__()
        self.head = head
        self.predictor = FastRCNNPredictor(head.out_dim, num_classes, agnostic)
        self.agnostic = agnostic
        self.coder = BoxCoder(reg_weights, clip)


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


class ROIHeads(nn.Module):
    """Box stage(s) and the optional mask head, with sampling, losses and post-processing.

    ``fp32_box_head`` (attribute): at inference under autocast the box stages run in float32. Off by
    default (an evaluation under ``--amp`` keeps autocast's choices); ``optimize_for_inference``
    turns it on (``fp32_box_head=False`` there leaves the box head to autocast).

    Args:
        box_pooler: RoIAlign over the feature levels for the box head.
        stages: one :class:`BoxStage` (Faster/Mask R-CNN) or several (Cascade R-CNN).
        stage_ious: the foreground IoU of each stage (stage 1: the proposal sampling's).
        num_classes: foreground classes + 1.
        batch_per_im, fg_ratio: RoIs sampled per image and the foreground share at most.
        smooth_l1_beta: of the box loss (0 = L1, tensorpack).
        score_thresh, nms_thresh, detections_per_img, min_box_size: test-time post-processing.
        mask_head: predicts (R, C, M, M) mask logits, or None (no masks).
        mask_pooler: RoIAlign for the mask head (FPN); None for C4, whose mask head reads the res5
            features of the box head.
        mask_resolution: side M of the mask head's output.
        mask_targets: the mask head's training targets. ``'polygon'``: each matched instance's
            polygons rasterised at the centres of the RoI's M x M bins (binary). ``'tensorpack'``:
            tensorpack's rule: the instance's full-image bitmap of the resized image (pycocotools,
            ``H x ceil(W/8)*8`` as tensorpack's data.py packs it), bilinearly cropped to the RoI
            (``crop_and_resize`` with ``pad_border=False``): soft targets in [0, 1].
        clip_before_nms: test time. True: the final per-class boxes are clipped to the image before
            the score threshold and NMS (tensorpack, torchvision). False (GluonCV): NMS on the
            unclipped boxes, the kept ones clipped after. Cascade stages always read clipped boxes.
    """

    fp32_box_head = False

    def __init__(self, box_pooler: ROIPooler, stages: list[BoxStage], stage_ious: list[float], *,
                 num_classes: int, batch_per_im: int = 512, fg_ratio: float = 0.25, smooth_l1_beta: float = 0.0,
                 score_thresh: float = 0.05, nms_thresh: float = 0.5, detections_per_img: int = 100,
                 min_box_size: float = 0.0, mask_head: nn.Module | None = None,
                 mask_pooler: ROIPooler | None = None, mask_resolution: int = 28,
                 mask_targets: str = "polygon", clip_before_nms: bool = True):
        super().__init__()
        self.clip_before_nms = bool(clip_before_nms)
        if mask_targets not in ("polygon", "tensorpack"):
            raise ValueError(f"mask_targets={mask_targets!r}: expected 'polygon' or 'tensorpack'")
        self.mask_targets = mask_targets
        if len(stages) != len(stage_ious) or not stages:
            raise ValueError(f"{len(stages)} box stages but {len(stage_ious)} stage IoUs")
        self.box_pooler = box_pooler
        self.stages = nn.ModuleList(stages)
        self.stage_ious = [float(v) for v in stage_ious]
        self.num_classes = int(num_classes)
        self.batch_per_im = int(batch_per_im)
        self.fg_ratio = float(fg_ratio)
        self.num_fg_slots = int(self.batch_per_im * self.fg_ratio)
        self.smooth_l1_beta = float(smooth_l1_beta)
        self.score_thresh = float(score_thresh)
        self.nms_thresh = float(nms_thresh)
        self.detections_per_img = int(detections_per_img)
        self.min_box_size = float(min_box_size)
        self.mask_on = mask_head is not None
        if self.mask_on:
            self.mask_head = mask_head
            self.mask_pooler = mask_pooler
            self._mask_resolution = int(mask_resolution)

    @property
    def mask_resolution(self) -> int:
        """Side of the predicted masks (28 for FPN heads, 14 for C4)."""
        return self._mask_resolution

    @property
    def is_c4(self) -> bool:
        return isinstance(self.stages[0].head, Res5Head)

    # ----------------------------------------------------------------------------------- train
    def sample(self, proposals, targets) -> SampledRoIs:
        """Per image: proposals + GT, match (IoU >= the first stage's IoU fg, else bg), sample
        ``batch_per_im`` with ``fg_ratio`` foreground at most, as fixed-size slots."""
        S = self.batch_per_im
        thr = self.stage_ious[0]
        out = {k: [] for k in ("rois", "gt_idx", "labels", "fg", "valid")}
        for props, t in zip(proposals, targets):
            gt, gl = t["boxes"], t["labels"]
            cand = torch.cat([props, gt]) if gt.numel() else props
            dummy = cand.shape[0] == 0
            if dummy:  # no proposal and no GT: one dummy candidate, never valid
                cand = props.new_zeros((1, 4))
            iou = box_iou(cand, gt) if gt.numel() else cand.new_zeros((cand.shape[0], 0))
            matched, lab = match_boxes(iou, None, thr, thr, allow_low_quality=False)
            idx, is_fg, ok = balanced_sample(lab, S, self.fg_ratio)
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
        return SampledRoIs(**{k: torch.stack(v) for k, v in out.items()}, num_fg_slots=self.num_fg_slots)

    def _stage_targets(self, boxes, targets, thr):
        """Re-match (N, S, 4) boxes to the GT at IoU ``thr`` (cascade stages after the first)."""
        gt_idx, labels, fg = [], [], []
        for b, t in zip(boxes, targets):
            gt, gl = t["boxes"], t["labels"]
            if gt.numel() == 0:
                z = torch.zeros(b.shape[0], dtype=torch.long, device=b.device)
                gt_idx.append(z), labels.append(z), fg.append(z.bool())
                continue
            matched, lab = match_boxes(box_iou(b, gt), None, thr, thr, allow_low_quality=False)
            is_fg = lab == 1
            gt_idx.append(matched)
            labels.append(torch.where(is_fg, gl[matched], torch.zeros_like(matched)))
            fg.append(is_fg)
        return torch.stack(gt_idx), torch.stack(labels), torch.stack(fg)

    def _box_loss(self, stage, logits, deltas, rois, gt_boxes, labels, fg, valid):
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
        beta = self.smooth_l1_beta
        l = F.smooth_l1_loss(d, t, beta=beta, reduction="none") if beta > 0 else (d - t).abs()
        box = (l.sum(-1) * fg.float()).sum() / denom
        return cls, box

    def forward(self, features, proposals, image_sizes, targets=None):
        if self.training:
            return self._forward_train(features, proposals, image_sizes, targets)
        return self._forward_test(features, proposals, image_sizes)

    def _run_stage(self, stage, features, rois5, n_stages):
        x = self.box_pooler(features, rois5)
        x = _scale_grad(x, 1.0 / n_stages)
        if isinstance(stage.head, Res5Head):
            fmap = stage.head.forward_features(x)
            logits, deltas = stage.predictor(fmap.mean(dim=(2, 3)))
            return logits, deltas, fmap
        logits, deltas = stage.predictor(stage.head(x))
        return logits, deltas, None

    def _forward_train(self, features, proposals, image_sizes, targets):
        s = self.sample(proposals, targets)
        if not s.rois.is_cuda:  # free on the CPU; on a GPU the checks would cost host syncs each step
            s.check()
        N, S = s.labels.shape
        rois = s.rois  # (N, S, 4)
        batch_idx = torch.arange(N, device=rois.device, dtype=rois.dtype).repeat_interleave(S)[:, None]
        gt_idx, labels, fg = s.gt_idx, s.labels, s.fg
        valid = s.valid.reshape(-1)
        losses = {}
        hw = torch.as_tensor(image_sizes, device=rois.device)
        fmap0 = None
        for k, stage in enumerate(self.stages):
            flat = rois.reshape(-1, 4)
            logits, deltas, fmap = self._run_stage(stage, features, torch.cat([batch_idx, flat], 1), len(self.stages))
            if k == 0:
                fmap0 = fmap
            gt_boxes = torch.stack([t["boxes"][g] if t["boxes"].numel() else rois.new_zeros((S, 4))
                                    for t, g in zip(targets, gt_idx)]).reshape(-1, 4)
            cls, box = self._box_loss(stage, logits, deltas, flat, gt_boxes, labels.reshape(-1), fg.reshape(-1), valid)
            sfx = f"_s{k + 1}" if len(self.stages) > 1 else ""
            losses["frcnn_cls" + sfx] = cls
            losses["frcnn_box" + sfx] = box
            if k + 1 < len(self.stages):  # the next stage refines this stage's boxes
                with torch.no_grad():
                    rois = clip_boxes(stage.coder.decode(deltas.detach(), flat).view(N, S, 4), hw[:, None, :])
                    gt_idx, labels, fg = self._stage_targets(rois, targets, self.stage_ious[k + 1])
                    # refined boxes that collapsed to zero area are dropped, as tensorpack does
                    area = (rois[..., 2] - rois[..., 0]) * (rois[..., 3] - rois[..., 1])
                    valid = valid & (area.reshape(-1) > 0)
        if self.mask_on:
            losses["mask"] = self._mask_loss(features, s, targets, fmap0, image_sizes)
        return losses

    def _mask_loss(self, features, s, targets, fmap, image_sizes=None):
        """Foreground slots of the first-stage sample (they all lie in the first FG_RATIO share of the
        slots); targets rasterised from each matched instance's polygons inside its RoI
        (``mask_targets='polygon'``) or cropped from its full-image bitmap ('tensorpack')."""
        N, S = s.labels.shape
        K = s.num_fg_slots
        rois = s.rois[:, :K]
        fg = s.fg[:, :K]
        labels = s.labels[:, :K]
        gidx = s.gt_idx[:, :K]
        E = max(t["polygons"].shape[1] if t["polygons"].numel() else 1 for t in targets)
        edges = []
        for t, g in zip(targets, gidx):
            p = t["polygons"]
            if p.numel() == 0:
                edges.append(rois.new_zeros((K, E, 4)))
            else:
                edges.append(F.pad(p[g].float(), (0, 0, 0, E - p.shape[1])))
        edges = torch.cat(edges)
        flat_rois, lab, w = rois.reshape(-1, 4), labels.reshape(-1), fg.reshape(-1).float()
        bi = torch.arange(N, device=rois.device, dtype=rois.dtype).repeat_interleave(K)[:, None]
        if fmap is not None:  # C4: res5 features of those slots
            x = fmap.view(N, S, *fmap.shape[1:])[:, :K].reshape(N * K, *fmap.shape[1:])
        keep = None
        if not rois.is_cuda:
            # on the CPU compute dominates: run the head on the real positives only. On a GPU the
            # fixed slots stay, which avoids a device-to-host sync for the count.
            keep = torch.nonzero(w > 0).squeeze(1)
            flat_rois, lab, w, edges, bi = flat_rois[keep], lab[keep], w[keep], edges[keep], bi[keep]
            if fmap is not None:
                x = x[keep]
        if fmap is None:
            x = self.mask_pooler(features, torch.cat([bi, flat_rois], 1))
        logits = self.mask_head(x)  # (R, C, M, M)
        if self.mask_targets == "tensorpack":
            g = gidx.reshape(-1) if keep is None else gidx.reshape(-1)[keep]
            target = self._bitmap_targets(targets, image_sizes, gidx, fg, bi.reshape(-1).long(), g, flat_rois,
                                          logits.shape[-1])
        else:
            target = rasterize_polygons_in_boxes(edges, flat_rois, logits.shape[-1])
        return mask_loss(logits, target, lab, w)

    @staticmethod
    def _bitmap_targets(targets, image_sizes, gidx, fg, roi_image, roi_gt, rois, M):
        """tensorpack's mask targets: for each instance matched by a foreground slot (and only those),
        the pycocotools bitmap of its polygons over the resized image, ``H x ceil(W/8)*8`` (tensorpack's
        data.py pads the width to 8 to pack the bits: the extra columns are 0 but inside the image for
        the bilinear sampling), then tensorpack's crop at each RoI. Slots that are not foreground get
        a target of the right shape whose value does not count (their weight is 0). Rasterised on the
        CPU (pycocotools); each bitmap stays run-length encoded (``polygons_to_rle_ends``: no
        full-image buffer is decoded or copied to the device) and the crop reads it there
        (``crop_and_resize_rle``). On a GPU this costs one device-to-host copy of the matched
        indices and outlines per step."""
        device = rois.device
        R = rois.shape[0]
        if image_sizes is None:
            raise ValueError("mask_targets='tensorpack' needs the image sizes")
        fg_c, gidx_c = fg.cpu(), gidx.cpu()
        runs, sizes = [], []
        table = torch.full(gidx.shape[:1] + (max((t["polygons"].shape[0] for t in targets), default=0) + 1,), -1,
                           dtype=torch.long)
        for i, t in enumerate(targets):
            h, w = int(image_sizes[i][0]), int(image_sizes[i][1])
            w8 = int(math.ceil(w / 8.0) * 8)
            edges = t["polygons"].cpu() if t["polygons"].numel() else None
            for g in torch.unique(gidx_c[i][fg_c[i]]).tolist():
                if edges is None:
                    continue
                table[i, g] = len(sizes)
                runs.append(torch.from_numpy(polygons_to_rle_ends(edges_to_polygons(edges[g]), h, w8)))
                sizes.append((h, w8))
        if not runs:
            return rois.new_zeros((R, M, M), dtype=torch.float32)
        ends = torch.full((len(runs), max(len(r) for r in runs)), torch.iinfo(torch.int64).max, dtype=torch.long)
        for b, r in enumerate(runs):
            ends[b, :len(r)] = r
        ids = table.to(device)[roi_image, roi_gt]
        ok = ids >= 0
        ids = ids.clamp(min=0)  # non-foreground slots read bitmap 0; their targets are zeroed below
        hw = torch.tensor(sizes, dtype=torch.long).to(device)[ids]
        out = crop_and_resize_rle(ends.to(device), ids, hw[:, 0], hw[:, 1], rois, M)
        return out * ok[:, None, None].float()

    # ------------------------------------------------------------------------------- inference
    @torch.no_grad()
    def _forward_test(self, features, proposals, image_sizes):
        counts = [p.shape[0] for p in proposals]
        boxes = torch.cat(proposals)
        rois5 = _rois(proposals)
        hw = torch.as_tensor(image_sizes, device=boxes.device)
        per_roi_hw = torch.cat([hw[i].expand(p.shape[0], 2) for i, p in enumerate(proposals)])
        probs_sum = 0
        # optimize_for_inference('bf16'): the box stages run in float32 on float32 features (they rank
        # and place every detection; a cascade feeds each stage's boxes to the next, compounding bf16's
        # rounding: docs/benchmarks.md); the mask head stays bf16 (measured no different)
        features, box_region = float32_region(features, enabled=self.fp32_box_head)
        for k, stage in enumerate(self.stages):
            with box_region():
                logits, deltas, _ = self._run_stage(stage, features, rois5, 1)
            probs_sum = probs_sum + F.softmax(logits.float(), dim=-1)
            decoded = stage.coder.decode(deltas, boxes)
            if self.clip_before_nms or k + 1 < len(self.stages):
                decoded = clip_boxes(decoded, per_roi_hw)
            if k + 1 < len(self.stages):
                boxes = decoded
                rois5 = torch.cat([rois5[:, :1], boxes], 1)
        probs = probs_sum / len(self.stages)
        C = self.num_classes
        if decoded.shape[-1] == 4:  # class-agnostic: the same box for every class
            decoded = decoded[:, None, :].expand(-1, C, 4)
        decoded = decoded.reshape(-1, C, 4)
        results = []
        # opt-in (off by default, outputs unchanged): each detection's full softmax row (C+1, background
        # first) of the RoI it came from, as ``class_probs`` (K, C+1)
        want_probs = getattr(self, "return_class_probs", False)
        for b, p in zip(decoded.split(counts), probs.split(counts)):
            p_rows = p
            labels = torch.arange(C, device=b.device).view(1, -1).expand_as(p)
            b, p, labels = b[:, 1:].reshape(-1, 4), p[:, 1:].reshape(-1), labels[:, 1:].reshape(-1)
            keep = (p > self.score_thresh) & remove_small_boxes_mask(b, self.min_box_size)
            b, p, labels = b[keep], p[keep], labels[keep]
            if want_probs:
                roi = torch.arange(p_rows.shape[0], device=b.device).view(-1, 1).expand(-1, C - 1).reshape(-1)[keep]
            keep = batched_nms(b, p, labels, self.nms_thresh)[: self.detections_per_img]
            results.append({"boxes": b[keep], "scores": p[keep], "labels": labels[keep]})
            if want_probs:
                results[-1]["class_probs"] = p_rows[roi[keep]]
        if self.mask_on:
            self._predict_masks(features, results)
        if not self.clip_before_nms:  # GluonCV: the mask head reads the unclipped boxes; clipped after
            for r, size in zip(results, hw):
                r["boxes"] = clip_boxes(r["boxes"], size.expand(len(r["boxes"]), 2))
        return results

    def _predict_masks(self, features, results):
        boxes = [r["boxes"] for r in results]
        if sum(b.shape[0] for b in boxes) == 0:
            for r in results:
                r["mask_probs"] = r["boxes"].new_zeros((0, self.mask_resolution, self.mask_resolution))
            return
        rois5 = _rois(boxes)
        if not self.is_c4:
            x = self.mask_pooler(features, rois5)
        else:
            x = self.stages[0].head.forward_features(self.box_pooler(features, rois5))
        logits = self.mask_head(x)
        labels = torch.cat([r["labels"] for r in results])
        M = logits.shape[-1]
        probs = logits.gather(1, (labels - 1).view(-1, 1, 1, 1).expand(-1, 1, M, M)).squeeze(1).float().sigmoid()
        for r, m in zip(results, probs.split([b.shape[0] for b in boxes])):
            r["mask_probs"] = m
