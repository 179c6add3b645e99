"""What every kind of ROI heads shares: the box stage, the sampling, the one-stage box path, the
mask loss and prediction, and the test-time post-processing. The kinds
(:class:`~gluon_rcnn.roi_heads.standard.StandardROIHeads`,
:class:`~gluon_rcnn.roi_heads.cascade.CascadeROIHeads`,
:class:`~gluon_rcnn.roi_heads.res5.Res5ROIHeads`) say where the mask head's features come from and
how many box stages run.
"""
from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.hybrid import HybridBlock
from ..nn.precision import float32_region
from ..structures.boxes import BoxCoder, sizes_tensor
from .box_head import FastRCNNPredictor
from .inference import rois_with_batch_index, select_detections
from .losses import box_loss, mask_loss
from .pooler import ROIPooler
from .sampling import SampledRoIs, matched_gt_boxes, sample_rois, slot_rois

__all__ = ["BoxStage", "ROIHeads"]


class BoxStage(nn.Module):
    """One box stage: a feature ``head`` (pooled RoIs → vectors), its class/box predictor, and the
    box coder of its regression targets (Cascade R-CNN has several, with growing weights).
    ``stage(x)``: pooled RoIs → ``(logits (R, C+1), deltas (R, 4) or (R, 4(C+1)))``."""

    def __init__(self, head: nn.Module, num_classes: int, agnostic: bool, reg_weights, *, clip: float):
        """num_classes includes the background; agnostic: one box for every class (cascade);
        clip: the coder's cap on decoded dw, dh, the value of ``RULES.DECODE_CLAMP`` (keyword-only,
        no default): ``rules.decode_clamp.value(max_size)``, e.g. ``BBOX_XFORM_CLIP`` = log(1000/16)
        for torchvision's ``'log_1000_over_16'``."""
        super().__init__()
        self.head = head
        self.predictor = FastRCNNPredictor(head.out_dim, num_classes, agnostic)
        self.agnostic = agnostic
        self.coder = BoxCoder(reg_weights, clip)

    def forward(self, x):
        return self.predictor(self.head(x))


class ROIHeads(HybridBlock):
    """Common base of the ROI heads: box stage(s), the optional mask head, sampling, losses and
    post-processing. Build one of its kinds.

    In:  features (list of (N, C, H_l, W_l)), proposals ``list[(P_i, 4)]`` in resized-image pixels,
         image sizes, and in training the targets (boxes, labels, polygons).
    Out: training: dict of losses; inference: ``list[dict(boxes, scores, labels, class_probs[,
         mask_probs])]`` per image, still in resized-image pixels (the detector maps them back);
         ``class_probs`` (K, C+1): the softmax row (background first) of the RoI each detection
         came from.

    Args (the kinds pass them on; each constructor argument of a kind is readable as the attribute
    of its name, which :meth:`replace` relies on):
        box_pooler: RoIAlign over the feature levels for the box head.
        stages: the :class:`BoxStage` (s); stage_ious: the foreground IoU of each.
        num_classes: foreground classes + 1.
        batch_per_im, fg_ratio: RoIs sampled per image and the foreground share at most.
        smooth_l1_beta: of the box loss (0 = L1).
        score_thresh, nms_thresh, detections_per_img, min_box_size: test-time post-processing.
        mask_head: predicts (R, C, M, M) mask logits, or None (no masks).
        mask_resolution: side M of the mask head's output.
        mask_targets: the mask head's training targets (``gluon_rcnn.rules.mask_targets``); None
            exactly when there is no mask head.
        detections: the test-time clipping and NMS of the final boxes (``gluon_rcnn.rules.detections``).
        fp32_box_head: at inference under autocast, the box stages run in float32 on float32
            features (``GeneralizedRCNN.optimize_for_inference`` builds its heads with it); False
            leaves them to autocast (an evaluation under ``--amp``).
    """

    def __init__(self, box_pooler: ROIPooler, stages: list[BoxStage], stage_ious: list[float], *, num_classes: int,
                 batch_per_im: int, fg_ratio: float, smooth_l1_beta: float, score_thresh: float, nms_thresh: float,
                 detections_per_img: int, min_box_size: float, mask_head: nn.Module | None, mask_resolution: int,
                 mask_targets, detections, fp32_box_head: bool):
        super().__init__()
        if len(stages) != len(stage_ious) or not stages:
            raise ValueError(f"{len(stages)} box stages but {len(stage_ious)} stage IoUs")
        if (mask_head is None) != (mask_targets is None):
            raise ValueError("mask_targets (a rule of gluon_rcnn.rules.mask_targets) is needed with a mask head, "
                             f"and only with one: mask_head={type(mask_head).__name__}, mask_targets={mask_targets!r}")
        if detections is None:
            raise ValueError("detections: a rule of gluon_rcnn.rules.detections, got None")
        self.box_pooler = box_pooler
        self.stages = nn.ModuleList(stages)
        self.stage_ious = [float(v) for v in stage_ious]
        self.num_classes = int(num_classes)
        self.batch_per_im = int(batch_per_im)
        self.fg_ratio = float(fg_ratio)
        self.smooth_l1_beta = float(smooth_l1_beta)
        self.score_thresh = float(score_thresh)
        self.nms_thresh = float(nms_thresh)
        self.detections_per_img = int(detections_per_img)
        self.min_box_size = float(min_box_size)
        self.mask_head = mask_head
        self.mask_resolution = int(mask_resolution)
        self.mask_targets = mask_targets
        self.detections = detections
        self.fp32_box_head = bool(fp32_box_head)

    @property
    def mask_on(self) -> bool:
        return self.mask_head is not None

    def _hybrid_children(self):
        """What ``hybridize()`` compiles: every box stage (head + predictor: pooled RoIs (R, C, S, S)
        → logits, deltas) and the mask head, static but for the RoI count R; the sampling, RoIAlign,
        decoding and NMS stay eager."""
        return [f"stages.{k}" for k in range(len(self.stages))] + (["mask_head"] if self.mask_on else [])

    def _hybrid_count_dims(self):
        return {name: 0 for name in self._hybrid_children()}  # any RoI count, 0 and 1 included

    def replace(self, **changes) -> "ROIHeads":
        """Heads of the same kind with the constructor arguments ``changes`` and every other one
        (submodules included, so the parameters are shared) read from this object:
        ``dataclasses.replace`` for heads. In the same train/eval mode."""
        params = [n for n in inspect.signature(type(self).__init__).parameters if n != "self"]
        unknown = sorted(set(changes) - set(params))
        if unknown:
            raise TypeError(f"{type(self).__name__} has no constructor argument {unknown}; it has {params}")
        args = {n: changes[n] if n in changes else getattr(self, n) for n in params}
        return type(self)(**args).train(self.training)

    # ------------------------------------------------------------------------- what kinds change
    def _box_stage(self, stage: BoxStage, x: torch.Tensor):
        """Pooled RoIs through one box stage → ``(logits, deltas, features for the mask head or None)``."""
        logits, deltas = stage(x)
        return logits, deltas, None

    def _mask_features(self, features, rois5: torch.Tensor) -> torch.Tensor:
        """The mask head's input for (R, 5) RoIs at inference."""
        raise NotImplementedError

    def _mask_train_features(self, features, rois5: torch.Tensor, box_features, keep) -> torch.Tensor:
        """The mask head's input in training: for the (R, 5) RoIs of the foreground slots, ``keep``
        of them (an index, or None for all); ``box_features``: what :meth:`_box_losses` returned
        for those slots."""
        raise NotImplementedError

    def _box_losses(self, features, s: SampledRoIs, targets, image_sizes):
        """The box losses on the sample ``s`` → ``(losses, box features of the first
        s.num_fg_slots slots of each image, or None)``. One stage here; a cascade has several."""
        stage = self.stages[0]
        logits, deltas, fmap = self._box_stage(stage, self.box_pooler(features, slot_rois(s.rois)))
        cls, box = box_loss(stage, logits, deltas, s.rois.reshape(-1, 4), matched_gt_boxes(targets, s.gt_idx, s.rois),
                            s.labels.reshape(-1), s.fg.reshape(-1), s.valid.reshape(-1), self.smooth_l1_beta)
        if fmap is not None:
            N, S = s.labels.shape
            fmap = fmap.view(N, S, *fmap.shape[1:])[:, :s.num_fg_slots].reshape(-1, *fmap.shape[1:])
        return {"frcnn_cls": cls, "frcnn_box": box}, fmap

    def _predict_boxes(self, features, proposals, per_roi_hw, box_region):
        """Inference: ``(boxes, probs)``: the last stage's decoded boxes (R, 4(C+1)) or (R, 4),
        not clipped, and the (R, C+1) class probabilities. One stage here."""
        stage = self.stages[0]
        with box_region():
            logits, deltas, _ = self._box_stage(stage, self.box_pooler(features, rois_with_batch_index(proposals)))
        return stage.coder.decode(deltas, torch.cat(proposals)), F.softmax(logits.float(), dim=-1)

    # ------------------------------------------------------------------------------------ public
    def sample(self, proposals, targets) -> SampledRoIs:
        """The first stage's training sample (:func:`~gluon_rcnn.roi_heads.sampling.sample_rois`)."""
        return sample_rois(proposals, targets, self.stage_ious[0], self.batch_per_im, self.fg_ratio)

    def box_outputs(self, features, rois5: torch.Tensor, stage: int = 0):
        """``(logits, deltas)`` of box stage ``stage`` on (R, 5) RoIs (for comparisons with other
        implementations)."""
        return self._box_stage(self.stages[stage], self.box_pooler(features, rois5))[:2]

    def mask_logits(self, features, rois5: torch.Tensor) -> torch.Tensor:
        """(R, C, M, M) mask logits on (R, 5) RoIs."""
        return self.mask_head(self._mask_features(features, rois5))

    def forward(self, features, proposals, image_sizes, targets=None):
        if self.training:
            return self._forward_train(features, proposals, image_sizes, targets)
        return self._forward_test(features, proposals, image_sizes)

    # ------------------------------------------------------------------------------------- train
    def _forward_train(self, features, proposals, image_sizes, targets):
        s = self.sample(proposals, targets)
        if not s.rois.is_cuda:  # free on the CPU; on a GPU the checks would cost host syncs each step
            s.check()
        losses, box_features = self._box_losses(features, s, targets, image_sizes)
        if self.mask_head is not None:
            losses["mask"] = self._mask_loss(features, s, targets, image_sizes, box_features)
        return losses

    def _mask_loss(self, features, s: SampledRoIs, targets, image_sizes, box_features):
        """On the foreground slots of the first-stage sample (they all lie in its first
        ``num_fg_slots`` slots), with the targets of the ``mask_targets`` rule."""
        N = s.labels.shape[0]
        K = s.num_fg_slots
        rois, lab, gt = s.rois[:, :K].reshape(-1, 4), s.labels[:, :K].reshape(-1), s.gt_idx[:, :K].reshape(-1)
        fg = s.fg[:, :K].reshape(-1)
        w = fg.float()
        bi = torch.arange(N, device=rois.device, dtype=rois.dtype).repeat_interleave(K)[:, None]
        keep = None
        if not rois.is_cuda:
            # on the CPU compute dominates: run the head on the real positives only. On a GPU the
            # fixed slots stay, which avoids a device-to-host sync for the count.
            keep = torch.nonzero(w > 0).squeeze(1)
            rois, lab, gt, fg, w, bi = rois[keep], lab[keep], gt[keep], fg[keep], w[keep], bi[keep]
        logits = self.mask_head(self._mask_train_features(features, torch.cat([bi, rois], 1), box_features, keep))
        target = self.mask_targets(targets, image_sizes, bi.reshape(-1).long(), gt, fg, rois, logits.shape[-1])
        return mask_loss(logits, target, lab, w)

    # --------------------------------------------------------------------------------- inference
    @torch.no_grad()
    def _forward_test(self, features, proposals, image_sizes):
        hw = sizes_tensor(image_sizes, proposals[0].device)
        per_roi_hw = torch.cat([hw[i].expand(p.shape[0], 2) for i, p in enumerate(proposals)])
        # fp32_box_head (optimize_for_inference('bf16')): the box stages run in float32 on float32
        # features (they rank and place every detection; a cascade feeds each stage's boxes to the
        # next, compounding bf16's rounding: docs/benchmarks.md); the mask head stays bf16 (measured
        # no different)
        # (the gather RoIAlign reads bf16 maps into fp32 itself: the same numbers without the cast)
        features, box_region = float32_region(features, enabled=self.fp32_box_head,
                                              cast=not self.box_pooler.pools_float32(features))
        boxes, probs = self._predict_boxes(features, proposals, per_roi_hw, box_region)
        results = select_detections(self.detections.before_nms(boxes, per_roi_hw), probs,
                                    [p.shape[0] for p in proposals], score_thresh=self.score_thresh,
                                    nms_thresh=self.nms_thresh, detections_per_img=self.detections_per_img,
                                    min_box_size=self.min_box_size, nms=self.detections.nms)
        if self.mask_head is not None:
            self._predict_masks(features, results)
        for r, size in zip(results, hw):
            r["boxes"] = self.detections.after_masks(r["boxes"], size)
        return results

    def _predict_masks(self, features, results):
        boxes = [r["boxes"] for r in results]
        # (traced by export(): the general path, which handles no boxes; the count is not known)
        if not torch.compiler.is_compiling() and sum(b.shape[0] for b in boxes) == 0:
            for r in results:
                r["mask_probs"] = r["boxes"].new_zeros((0, self.mask_resolution, self.mask_resolution))
            return
        labels = torch.cat([r["labels"] for r in results])
        if self.mask_head.selected_logits:  # optimize_for_inference: only the detected class's channel
            x = self._mask_features(features, rois_with_batch_index(boxes))
            probs = self.mask_head(x, labels).sigmoid()
        else:
            logits = self.mask_logits(features, rois_with_batch_index(boxes))
            M = logits.shape[-1]
            probs = logits.gather(1, (labels - 1).view(-1, 1, 1, 1).expand(-1, 1, M, M)).squeeze(1).float().sigmoid()
        for r, m in zip(results, probs.split([b.shape[0] for b in boxes])):
            r["mask_probs"] = m


class OneStage:
    """Heads of one box stage (standard, Res5): that stage and its foreground IoU by name."""

    @property
    def box_stage(self) -> BoxStage:
        return self.stages[0]

    @property
    def fg_iou(self) -> float:
        return self.stage_ious[0]
