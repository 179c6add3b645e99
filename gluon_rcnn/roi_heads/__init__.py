"""ROI heads: proposal sampling, box head (one stage, or a Cascade R-CNN of several), mask head,
their losses, and the inference post-processing; one class per kind.

    StandardROIHeads  FPN features, one box stage; the mask head pools its own RoI features
    CascadeROIHeads   FPN features, several box stages, each refining the previous one's boxes
    Res5ROIHeads      C4: the box head owns res5; the mask head reads its res5 features

Their common base (base.py: :class:`ROIHeads`, :class:`BoxStage`) and the shared parts:
sampling.py (matching and sampling, :class:`SampledRoIs`), losses.py (box and mask losses),
inference.py (score threshold, per-class NMS, top-k). The publisher rules they apply are objects
given to their constructors (``gluon_rcnn.rules``: levels, init, mask_targets, detections).

In:  features (list of (N, C, H_l, W_l)), proposals ``list[(P_i, 4)]`` in resized-image pixels,
     image sizes, and in training the targets (boxes, labels, polygons).
Out: training: dict of losses; inference: ``list[dict(boxes, scores, labels, class_probs[,
     mask_probs])]`` per image, still in resized-image pixels (the detector maps them back).
"""
from .base import BoxStage, ROIHeads
from .cascade import CascadeROIHeads
from .inference import rois_with_batch_index
from .losses import mask_loss
from .res5 import Res5Head, Res5ROIHeads
from .sampling import SampledRoIs
from .standard import StandardROIHeads

__all__ = ["ROIHeads", "StandardROIHeads", "CascadeROIHeads", "Res5ROIHeads", "Res5Head", "BoxStage", "SampledRoIs",
           "mask_loss", "rois_with_batch_index"]
