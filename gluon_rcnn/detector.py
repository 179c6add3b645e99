"""GeneralizedRCNN: the one detector. Faster/Mask/Cascade, C4/FPN, any norm: the same pipe,
assembled from the config.

    images → backbone (+FPN) → RPN → ROI heads (box [cascade] [mask]) → detections

In eval mode ``model(images)`` takes a list of 3xHxW float tensors (RGB, 0-1, any sizes) or an
:class:`ImageBatch`, and returns one dict per image with ``boxes`` (N,4) x1,y1,x2,y2 in that
image's original pixels, ``scores`` (N,), ``labels`` (N,) in 1..C, and for mask models ``masks``
(N,1,H,W) float probabilities in the original image size. In train mode ``model(images,
targets)`` returns a dict of scalar fp32 losses.
"""
from __future__ import annotations

import torch
from torch import nn

from .backbone.build import build_backbone, build_res5_stage, res4_channels
from .nn.hybrid import HybridBlock
from .roi_heads import ROIHeads
from .rpn import RPN
from .structures.image_list import ImageBatch
from .structures.masks import paste_masks_in_image

__all__ = ["GeneralizedRCNN", "build_model"]


def _resize_to_batch(*args, **kwargs):
    from .data.transforms import resize_to_batch  # the one torch resize, shared with the data side
    return resize_to_batch(*args, **kwargs)


class GeneralizedRCNN(HybridBlock):
    _channels_last = False  # set by optimize_for_inference(); CUDA inputs are always channels_last

    def __init__(self, cfg, classes=None):
        super().__init__()
        self.cfg = cfg
        n = cfg.DATA.NUM_CATEGORY
        names = list(classes or cfg.DATA.CLASS_NAMES or [f"class_{i}" for i in range(1, n + 1)])
        if len(names) != n:
            raise ValueError(f"{len(names)} class names for DATA.NUM_CATEGORY={n}")
        self.classes = tuple(names)
        self.backbone = build_backbone(cfg)
        strides = list(self.backbone.strides.values())
        self.feature_names = list(self.backbone.strides.keys())
        self.rpn = RPN(cfg, self.backbone.out_channels)
        # C4: the box head owns res5, which doubles res4's width
        res5 = None if cfg.MODE_FPN else (lambda: (build_res5_stage(cfg), 2 * res4_channels(cfg)))
        self.roi_heads = ROIHeads(cfg, self.backbone.out_channels, strides, res5)
        p = cfg.PREPROC
        self.register_buffer("pixel_mean", torch.tensor(p.PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(p.PIXEL_STD).view(1, 3, 1, 1), persistent=False)

    # ------------------------------------------------------------------------------------------
    def _hybrid_children(self):
        return ["backbone", "rpn.head"]

    def preprocess(self, images) -> ImageBatch:
        """A list of float 0-1 images → normalised padded batch; an ImageBatch → normalised on device."""
        dev = self.pixel_mean.device
        if isinstance(images, ImageBatch):
            batch = images.to(dev, non_blocking=True)
            if batch.normalized:
                return batch
            x = (batch.tensor.float() - self.pixel_mean) / self.pixel_std
            # the loader padded with 0 before normalising: make the padding 0 after it, as for lists
            for i, (h, w) in enumerate(batch.image_sizes):
                x[i, :, h:, :] = 0
                x[i, :, :, w:] = 0
            return ImageBatch(x, batch.image_sizes, batch.original_sizes, True, batch.image_ids)
        if isinstance(images, torch.Tensor) and images.dim() == 3:
            images = [images]
        p = self.cfg.PREPROC
        # lists are resized deterministically (the loader does the random multi-scale choice)
        size = p.TRAIN_SHORT_EDGE_SIZE[1] if self.training else p.TEST_SHORT_EDGE_SIZE
        return _resize_to_batch([im.to(dev) for im in images], size, p.MAX_SIZE, p.PIXEL_MEAN, p.PIXEL_STD,
                                p.SIZE_DIVISIBILITY, p.RESIZE_ROUNDING)

    def _check_targets(self, targets) -> None:
        """Say what is wrong with training targets, and in which image. Checked where the targets
        still live on the CPU (as the loader makes them), so no device synchronisation is added."""
        C = self.cfg.DATA.NUM_CATEGORY
        for i, t in enumerate(targets):
            for key in ("boxes", "labels") + (("polygons",) if self.cfg.MODE_MASK else ()):
                if key not in t:
                    raise ValueError(f"target {i} has no {key!r} (keys: {sorted(t)})")
            b, l = t["boxes"], t["labels"]
            if b.dim() != 2 or b.shape[-1] != 4 or l.shape != b.shape[:1]:
                raise ValueError(f"target {i}: boxes must be (K,4) and labels (K,), got {tuple(b.shape)} "
                                 f"and {tuple(l.shape)}")
            if b.device.type == "cpu" and b.numel():
                if not bool(((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all()):
                    raise ValueError(f"target {i}: every box needs x2 > x1 and y2 > y1")
                if not bool(((l >= 1) & (l <= C)).all()):
                    raise ValueError(f"target {i}: labels must be in 1..{C} (0 is the background), got "
                                     f"{sorted(set(l.tolist()))}")

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.backbone(x)
        return [feats[k] for k in self.feature_names]

    def forward(self, images, targets=None):
        if self.training:
            if targets is None:
                raise ValueError("training mode needs targets; call model.eval() for inference")
            self._check_targets(targets)
        batch = self.preprocess(images)
        if self.training and not isinstance(images, ImageBatch):
            targets = _rescale_targets(targets, batch.original_sizes, batch.image_sizes)
        x = batch.tensor
        if x.is_cuda or self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        feats = self.features(x)
        if self.training:
            targets = [{k: v.to(x.device, non_blocking=True) for k, v in t.items()} for t in targets]
            proposals, rpn_losses = self.rpn(feats, batch.image_sizes, targets, tuple(x.shape[-2:]))
            losses = dict(rpn_losses)
            losses.update(self.roi_heads(feats, proposals, batch.image_sizes, targets))
            return {k: v.float() for k, v in losses.items()}
        proposals, _ = self.rpn(feats, batch.image_sizes, None, tuple(x.shape[-2:]))
        results = self.roi_heads(feats, proposals, batch.image_sizes)
        return self.postprocess(results, batch.image_sizes, batch.original_sizes)

    def fuse(self) -> "GeneralizedRCNN":
        """Inference only: fold the backbone's frozen/eval batch norms into their convolutions
        (one pass over each activation instead of two). Outputs change only by float rounding."""
        if self.training:
            raise RuntimeError("fuse() is for inference: call .eval() first")
        from .nn.fuse import fuse_conv_norm
        fuse_conv_norm(self.backbone)
        if not self.cfg.MODE_FPN:
            fuse_conv_norm(self.roi_heads)  # C4: the res5 head
        return self

    def optimize_for_inference(self) -> "GeneralizedRCNN":
        """Inference speed-ups that change results only by float rounding (so not bitwise equal to
        the eager model, unlike the default path): eval mode, norms folded into convolutions
        (:meth:`fuse`), and channels_last weights and inputs (~20 % faster convolutions on CPUs,
        tensor-core friendly on GPUs)."""
        self.eval()
        self.fuse()
        self.to(memory_format=torch.channels_last)
        self._channels_last = True
        return self

    def export(self, path: str, example_image: torch.Tensor, **kwargs):
        """Write the whole detector (resize, normalise, backbone, RPN with NMS, heads, mask paste)
        as a ``torch.export`` program for images of ``example_image``'s size.

        The file loads with ``torch.export.load(path).module()`` and needs only torch and
        torchvision (for the nms/roi_align ops): ``module(image)`` returns
        ``(boxes, scores, labels[, masks])`` like ``net([image])[0]``.
        """
        if self.training:
            raise RuntimeError("export() traces inference: call .eval() first")
        return HybridBlock.export(_ExportView(self).eval(), path, (example_image,), **kwargs)

    def postprocess(self, results, image_sizes, original_sizes):
        """Boxes from resized to original pixels; mask probabilities pasted into the original image."""
        out = []
        for r, (h, w), (oh, ow) in zip(results, image_sizes, original_sizes):
            ratio = torch.tensor([ow / w, oh / h, ow / w, oh / h], device=r["boxes"].device)
            boxes = r["boxes"] * ratio
            d = {"boxes": boxes, "scores": r["scores"], "labels": r["labels"]}
            if "mask_probs" in r:
                d["masks"] = paste_masks_in_image(r["mask_probs"], boxes, (oh, ow))
            out.append(d)
        return out


def _rescale_targets(targets, original_sizes, image_sizes):
    """Targets given in original pixels (list input) → the resized image's pixels."""
    out = []
    for t, (oh, ow), (h, w) in zip(targets, original_sizes, image_sizes):
        t = dict(t)
        s = torch.tensor([w / ow, h / oh, w / ow, h / oh])
        t["boxes"] = t["boxes"] * s.to(t["boxes"].device)
        if "polygons" in t:
            t["polygons"] = t["polygons"] * s.to(t["polygons"].device)
        out.append(t)
    return out


class _ExportView(HybridBlock):
    """The detector as a function of one image tensor (3,H,W float RGB 0-1) → a tuple of tensors
    (boxes, scores, labels[, masks]) in that image's pixels: what ``export`` traces."""

    def __init__(self, model: GeneralizedRCNN):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor):
        r = self.model([image])[0]
        out = (r["boxes"], r["scores"], r["labels"])
        return out + (r["masks"],) if "masks" in r else out


def build_model(cfg, classes=None) -> GeneralizedRCNN:
    """The detector for a finalised config (``cfg.finalize()`` is called if it was not)."""
    if not cfg.TRAIN.LR_SCHEDULE_STEPS:
        cfg.finalize()
    return GeneralizedRCNN(cfg, classes)
