"""ROI heads on FPN features with one box stage: Faster R-CNN, and Mask R-CNN whose mask head
pools its own RoI features."""
from __future__ import annotations

from torch import nn

from .base import BoxStage, OneStage, ROIHeads
from .pooler import ROIPooler

__all__ = ["StandardROIHeads", "PooledMaskFeatures"]


class PooledMaskFeatures:
    """For ROI heads on FPN features (standard and cascade): the mask head reads its own RoIAlign
    of the features, ``mask_pooler``, given exactly when there is a mask head."""

    def _set_mask_pooler(self, mask_pooler: ROIPooler | None) -> None:
        if (self.mask_head is None) != (mask_pooler is None):
            raise ValueError("a mask head needs its mask_pooler, and a mask_pooler a mask head: mask_head="
                             f"{type(self.mask_head).__name__}, mask_pooler={type(mask_pooler).__name__}")
        self.mask_pooler = mask_pooler

    def _mask_features(self, features, rois5):
        return self.mask_pooler(features, rois5)

    def _mask_train_features(self, features, rois5, box_features, keep):
        return self.mask_pooler(features, rois5)


class StandardROIHeads(PooledMaskFeatures, OneStage, ROIHeads):
    """One box stage; the optional mask head reads ``mask_pooler``'s RoIAlign of the features.

    Args: ``box_pooler``, ``box_stage`` (a :class:`~gluon_rcnn.roi_heads.base.BoxStage`), ``fg_iou``
    (the proposals' foreground IoU), ``mask_pooler`` (with a mask head), the rest as
    :class:`~gluon_rcnn.roi_heads.base.ROIHeads`.
    """

    def __init__(self, box_pooler: ROIPooler, box_stage: BoxStage, *, fg_iou: float, num_classes: int,
                 batch_per_im: int = 512, fg_ratio: float = 0.25, smooth_l1_beta: float = 0.0,
                 score_thresh: float = 0.05, nms_thresh: float = 0.5, detections_per_img: int = 100,
                 min_box_size: float = 0.0, mask_head: nn.Module | None = None, mask_pooler: ROIPooler | None = None,
                 mask_resolution: int = 28, mask_targets, detections, fp32_box_head: bool = False):
        super().__init__(box_pooler, [box_stage], [fg_iou], num_classes=num_classes, batch_per_im=batch_per_im,
                         fg_ratio=fg_ratio, smooth_l1_beta=smooth_l1_beta, score_thresh=score_thresh,
                         nms_thresh=nms_thresh, detections_per_img=detections_per_img, min_box_size=min_box_size,
                         mask_head=mask_head, mask_resolution=mask_resolution, mask_targets=mask_targets,
                         detections=detections, fp32_box_head=fp32_box_head)
        self._set_mask_pooler(mask_pooler)
