"""C4 ROI heads: the box head owns ResNet's res5 stage; the mask head reads its res5 features."""
from __future__ import annotations

from torch import nn

from .base import BoxStage, OneStage, ROIHeads
from .pooler import ROIPooler

__all__ = ["Res5Head", "Res5ROIHeads"]


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


class Res5ROIHeads(OneStage, ROIHeads):
    """One box stage whose head is a :class:`Res5Head`; the optional mask head reads the res5
    features of its RoIs (in training those the box stage computed for the sampled slots; at
    inference the res5 stage runs again on the final boxes).

    Args: ``box_pooler`` (one level: res4), ``box_stage``, ``fg_iou``, the rest as
    :class:`~gluon_rcnn.roi_heads.base.ROIHeads`.
    """

    def __init__(self, box_pooler: ROIPooler, box_stage: BoxStage, *, fg_iou: float, num_classes: int,
                 batch_per_im: int = 512, fg_ratio: float = 0.25, smooth_l1_beta: float = 0.0,
                 score_thresh: float = 0.05, nms_thresh: float = 0.5, detections_per_img: int = 100,
                 min_box_size: float = 0.0, mask_head: nn.Module | None = None, mask_resolution: int = 14,
                 mask_targets, detections, fp32_box_head: bool = False):
        if not isinstance(box_stage.head, Res5Head):
            raise TypeError(f"Res5ROIHeads needs a box stage whose head is a Res5Head, got "
                            f"{type(box_stage.head).__name__}")
        super().__init__(box_pooler, [box_stage], [fg_iou], num_classes=num_classes, batch_per_im=batch_per_im,
                         fg_ratio=fg_ratio, smooth_l1_beta=smooth_l1_beta, score_thresh=score_thresh,
                         nms_thresh=nms_thresh, detections_per_img=detections_per_img, min_box_size=min_box_size,
                         mask_head=mask_head, mask_resolution=mask_resolution, mask_targets=mask_targets,
                         detections=detections, fp32_box_head=fp32_box_head)

    def _hybrid_children(self):
        # the box stage is called in parts (res5 features feed the mask head too): compile those
        return ["stages.0.head.res5", "stages.0.predictor"] + (["mask_head"] if self.mask_on else [])

    def _box_stage(self, stage, x):
        fmap = stage.head.forward_features(x)
        logits, deltas = stage.predictor(fmap.mean(dim=(2, 3)))
        return logits, deltas, fmap

    def _mask_features(self, features, rois5):
        return self.box_stage.head.forward_features(self.box_pooler(features, rois5))

    def _mask_train_features(self, features, rois5, box_features, keep):
        return box_features if keep is None else box_features[keep]
