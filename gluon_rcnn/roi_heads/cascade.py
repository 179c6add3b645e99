"""Cascade R-CNN: several box stages on FPN features, each refining the previous stage's boxes
and trained on them, re-matched at a higher IoU."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..structures.boxes import clip_boxes
from .base import BoxStage, ROIHeads
from .inference import rois_with_batch_index
from .losses import box_loss
from .pooler import ROIPooler
from .sampling import matched_gt_boxes, rematch, slot_rois
from .standard import PooledMaskFeatures

__all__ = ["CascadeROIHeads"]


def _scale_grad(x: torch.Tensor, s: float) -> torch.Tensor:
    """Identity forward, gradient multiplied by ``s`` (the stages share the pooled features)."""
    return x.detach() + (x - x.detach()) * s if s != 1 else x  # exactly x in the forward pass, also in bf16


class CascadeROIHeads(PooledMaskFeatures, ROIHeads):
    """Box stages ``stages`` (two or more) with foreground IoUs ``stage_ious``; the gradient into
    the pooled features is divided by the number of stages. Stage k+1 reads stage k's decoded boxes,
    clipped to the image; the losses are ``frcnn_cls_s{k}``, ``frcnn_box_s{k}``; at inference the
    class probabilities are the stages' mean and the boxes the last stage's. The mask head reads
    ``mask_pooler``'s features (as :class:`~gluon_rcnn.roi_heads.standard.StandardROIHeads`), trains
    on the first stage's sample and predicts on the final boxes. The other arguments as
    :class:`~gluon_rcnn.roi_heads.base.ROIHeads`."""

    def __init__(self, box_pooler: ROIPooler, stages: list[BoxStage], stage_ious: list[float], *, num_classes: int,
                 batch_per_im: int = 512, fg_ratio: float = 0.25, smooth_l1_beta: float = 0.0,
                 score_thresh: float = 0.05, nms_thresh: float = 0.5, detections_per_img: int = 100,
                 min_box_size: float = 0.0, mask_head: nn.Module | None = None, mask_pooler: ROIPooler | None = None,
                 mask_resolution: int = 28, mask_targets, detections, fp32_box_head: bool = False):
        if len(stages) < 2:
            raise ValueError(f"a cascade needs two box stages or more, got {len(stages)}: use StandardROIHeads")
        super().__init__(
            box_pooler, stages, stage_ious, num_classes=num_classes, batch_per_im=batch_per_im, fg_ratio=fg_ratio,
            smooth_l1_beta=smooth_l1_beta, score_thresh=score_thresh, nms_thresh=nms_thresh,
            detections_per_img=detections_per_img, min_box_size=min_box_size, mask_head=mask_head,
            mask_resolution=mask_resolution, mask_targets=mask_targets, detections=detections,
            fp32_box_head=fp32_box_head)
        self._set_mask_pooler(mask_pooler)

    def _box_losses(self, features, s, targets, image_sizes):
        N, S = s.labels.shape
        rois, gt_idx, labels, fg = s.rois, s.gt_idx, s.labels, s.fg
        valid = s.valid.reshape(-1)
        hw = torch.as_tensor(image_sizes, device=rois.device)
        n = len(self.stages)
        losses = {}
        for k, stage in enumerate(self.stages):
            flat = rois.reshape(-1, 4)
            logits, deltas = stage(_scale_grad(self.box_pooler(features, slot_rois(rois)), 1.0 / n))
            cls, box = box_loss(stage, logits, deltas, flat, matched_gt_boxes(targets, gt_idx, rois),
                                labels.reshape(-1), fg.reshape(-1), valid, self.smooth_l1_beta)
            losses[f"frcnn_cls_s{k + 1}"] = cls
            losses[f"frcnn_box_s{k + 1}"] = box
            if k + 1 < n:  # the next stage refines this stage's boxes
                with torch.no_grad():
                    rois = clip_boxes(stage.coder.decode(deltas.detach(), flat).view(N, S, 4), hw[:, None, :])
                    gt_idx, labels, fg = rematch(rois, targets, self.stage_ious[k + 1])
                    # refined boxes that collapsed to zero area are dropped, as tensorpack does
                    area = (rois[..., 2] - rois[..., 0]) * (rois[..., 3] - rois[..., 1])
                    valid = valid & (area.reshape(-1) > 0)
        return losses, None

    def _predict_boxes(self, features, proposals, per_roi_hw, box_region):
        boxes = torch.cat(proposals)
        rois5 = rois_with_batch_index(proposals)
        probs_sum = 0
        for k, stage in enumerate(self.stages):
            with box_region():
                logits, deltas = stage(self.box_pooler(features, rois5))
            probs_sum = probs_sum + F.softmax(logits.float(), dim=-1)
            decoded = stage.coder.decode(deltas, boxes)
            if k + 1 < len(self.stages):  # a later stage reads clipped boxes
                boxes = clip_boxes(decoded, per_roi_hw)
                rois5 = torch.cat([rois5[:, :1], boxes], 1)
        return decoded, probs_sum / len(self.stages)
