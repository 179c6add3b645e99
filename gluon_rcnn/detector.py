"""GeneralizedRCNN: the one detector. Faster/Mask/Cascade, C4/FPN, any norm: the same pipe of
explicit components (``gluon_rcnn.builders.build_model(cfg)`` assembles them from a config).

    images → preprocessor → backbone (+FPN) → RPN → ROI heads (box [cascade] [mask]) → detections

In eval mode ``model(images)`` takes a list of (3, H, W) tensors (uint8, or float RGB in 0-1, any
sizes), an :class:`ImageList` (what the data loader yields) or an already preprocessed
:class:`ImageBatch`, and returns one dict per image with ``boxes`` (N,4) x1,y1,x2,y2 in that image's
original pixels, ``scores`` (N,), ``labels`` (N,) in 1..C, and for mask models ``masks`` (N,1,H,W)
float probabilities in the original image size. In train mode ``model(images, targets)`` returns a
dict of scalar fp32 losses.
"""
from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from .nn.hybrid import HybridBlock
from .preprocess import Preprocessor
from .roi_heads import ROIHeads
from .rpn import RPN
from .structures.image_list import ImageBatch, ImageList

__all__ = ["GeneralizedRCNN", "validate_targets"]

#: the smallest image side an exported program takes by default
EXPORT_MIN_SIDE = 32


class GeneralizedRCNN(HybridBlock):
    """Args:
        backbone: images (N, 3, Hp, Wp) → feature maps (``backbone.strides``: name → stride).
        rpn: features → proposals (+ losses).
        roi_heads: features + proposals → detections (+ losses).
        preprocessor: the one resize/normalise/pad program, and the inverse mapping of detections.
        classes: names of labels 1..C (``net.classes[i]`` names label ``i + 1``).
        train_short_edge: the short edge a plain list of images is resized to in training mode
            (the loader chooses random sizes itself and passes them in an ImageList).
        channels_last: weights converted to, and inputs given in, channels_last memory format (CUDA
            inputs always are); :meth:`optimize_for_inference` turns it on.
        autocast_dtype: inference runs under ``torch.autocast`` of this dtype (None: not);
            ``optimize_for_inference('bf16')`` sets bfloat16.

    ``gluon_rcnn.builders.build_model(cfg)`` assembles one from a config and records the config,
    read-only, as ``model.config``; nothing here reads it.
    """

    def __init__(self, backbone: nn.Module, rpn: RPN, roi_heads: ROIHeads, preprocessor: Preprocessor,
                 classes, *, train_short_edge: float | None = None, channels_last: bool = False,
                 autocast_dtype: torch.dtype | None = None):
        super().__init__()
        self.classes = tuple(classes)
        if len(self.classes) + 1 != roi_heads.num_classes:
            raise ValueError(f"{len(self.classes)} class names for a box head with {roi_heads.num_classes - 1} "
                             "foreground classes")
        self.backbone = backbone
        self.feature_names = list(backbone.strides.keys())
        self.rpn = rpn
        self.roi_heads = roi_heads
        self.preprocessor = preprocessor
        self.train_short_edge = float(train_short_edge) if train_short_edge else preprocessor.short_edge
        self.config = None  # the read-only config the builder used (None for hand-assembled models)
        self._set_inference_format(channels_last, autocast_dtype)

    @property
    def cfg(self):
        """Alias of ``config`` (read-only: build another model to change it)."""
        return self.config

    @property
    def num_classes(self) -> int:
        """Foreground classes C (labels 1..C)."""
        return len(self.classes)

    # ------------------------------------------------------------------------------------------
    def _hybrid_children(self):
        # the static parts: backbone (+FPN), RPN head, and the box stage(s) and mask head that
        # roi_heads names; proposal selection, sampling, RoIAlign and NMS stay eager
        return ["backbone", "rpn.head", "roi_heads"]

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def preprocess(self, images) -> ImageBatch:
        """Model input of any accepted form → a normalised padded :class:`ImageBatch` on the model's
        device, through :attr:`preprocessor` (the one program that resizes pixels).

        - an :class:`ImageList` (what the loader yields): each image resized to its given size
          (training: the data side's random size) or, where that is None, to the test size;
        - a list of (3, H, W) tensors (uint8, or float RGB in 0-1), or one such tensor: resized to the
          test size (in training mode: the largest training short edge);
        - an :class:`ImageBatch`: taken as already preprocessed (moved to the device)."""
        dev = self._device()
        if isinstance(images, ImageBatch):
            return images.to(dev, non_blocking=True)
        if isinstance(images, ImageList):
            if self.training and any(s is None for s in images.sizes):
                raise ValueError("in training every image of an ImageList needs the size it is resized to (the "
                                 "targets are in those pixels): build the dataset with data.transforms.TrainTransform, "
                                 "or pass a plain list of images with targets in their own pixels")
            return self.preprocessor(images.images, images.sizes, device=dev, image_ids=images.image_ids)
        if isinstance(images, torch.Tensor) and images.dim() == 3:
            images = [images]
        if not isinstance(images, (list, tuple)) or not all(isinstance(i, torch.Tensor) for i in images):
            raise TypeError(f"the detector takes a list of (3, H, W) image tensors, an ImageList or an ImageBatch, "
                            f"got {type(images).__name__}")
        sizes = None
        if self.training:  # a plain list in training: deterministic largest size (the loader randomises)
            sizes = [self.preprocessor.target_size(int(i.shape[-2]), int(i.shape[-1]), self.train_short_edge)
                     for i in images]
        return self.preprocessor(list(images), sizes, device=dev)

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = self.backbone(x)
        return [feats[k] for k in self.feature_names]

    def forward(self, images, targets=None):
        if self.training:
            if targets is None:
                raise ValueError("training mode needs targets; call model.eval() for inference")
            validate_targets(targets, self.num_classes, self.roi_heads.mask_on)
        batch = self.preprocess(images)
        if self.training and not isinstance(images, (ImageBatch, ImageList)):
            targets = _rescale_targets(targets, batch.original_sizes, batch.image_sizes)
        x = batch.tensor
        if x.is_cuda or self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if self.training:
            feats = self.features(x)
            targets = [{k: v.to(x.device, non_blocking=True) for k, v in t.items()} for t in targets]
            proposals, rpn_losses = self.rpn(feats, batch.image_sizes, targets, tuple(x.shape[-2:]))
            losses = dict(rpn_losses)
            losses.update(self.roi_heads(feats, proposals, batch.image_sizes, targets))
            return {k: v.float() for k, v in losses.items()}
        with self._infer_autocast(x.device.type):  # optimize_for_inference(precision='bf16')
            feats = self.features(x)
            proposals, _ = self.rpn(feats, batch.image_sizes, None, tuple(x.shape[-2:]))
            results = self.roi_heads(feats, proposals, batch.image_sizes)
        return self.postprocess(results, batch.image_sizes, batch.original_sizes)

    def _infer_autocast(self, device_type: str):
        """The autocast region of :meth:`optimize_for_inference`'s precision (a no-op for fp32)."""
        if self.autocast_dtype is None or self.training or torch.is_autocast_enabled(device_type):
            return contextlib.nullcontext()
        return torch.autocast(device_type, dtype=self.autocast_dtype)

    def _set_inference_format(self, channels_last: bool, autocast_dtype: torch.dtype | None) -> None:
        """The memory format of the inputs (and weights: converted) and the autocast dtype of inference."""
        if channels_last:
            self.to(memory_format=torch.channels_last)
        self.channels_last = bool(channels_last)
        self.autocast_dtype = autocast_dtype

    def fuse(self) -> "GeneralizedRCNN":
        """Inference only: fold the backbone's frozen/eval batch norms into their convolutions
        (one pass over each activation instead of two). Outputs change only by float rounding."""
        if self.training:
            raise RuntimeError("fuse() is for inference: call .eval() first")
        from .nn.fuse import fuse_conv_norm
        fuse_conv_norm(self.backbone)
        fuse_conv_norm(self.roi_heads)  # C4: the res5 head (the FPN heads have no batch norm)
        return self

    def optimize_for_training(self, fold_norms: bool = True, channels_last: bool = True) -> "GeneralizedRCNN":
        """A faster training step that learns what the plain model learns up to float rounding; in
        place, returns ``self``; parameters, buffers and state-dict keys unchanged.

        - ``fold_norms``: every frozen batch norm is applied inside the convolution before it
          (:func:`gluon_rcnn.nn.norm.fold_frozen_bn`: ``conv(x, w * scale, shift)``, recomputed each
          call, so the weights and a trainable gamma/beta still learn): one elementwise pass fewer
          forward and backward per norm;
        - ``channels_last``: weights and the input batch in channels_last memory format (the format
          oneDNN's convolutions work in on the CPU).

        Speed: docs/benchmarks.md ("Training levers"); features and gradients within fp32 rounding
        of the plain model's: tests/test_train_speed.py."""
        from .nn.norm import fold_frozen_bn
        if fold_norms:
            fold_frozen_bn(self)
        if channels_last:
            self._set_inference_format(True, self.autocast_dtype)
        return self

    def optimize_for_inference(self, precision: str = "fp32", fp32_box_head: bool = True,
                               roi_align: str = "gather") -> "GeneralizedRCNN":
        """Inference speed-ups: eval mode, norms folded into convolutions (:meth:`fuse`), and
        channels_last weights and inputs (~20 % faster convolutions on CPUs, tensor-core friendly on
        GPUs). With ``precision='fp32'`` results change only by float rounding (so not bitwise equal to
        the eager model, unlike the default path).

        ``precision='bf16'``: inference runs under ``torch.autocast(dtype=bfloat16)`` (oneDNN's AVX-512
        BF16 kernels on a CPU that has them, tensor cores on a GPU): trunk, FPN, RPN head and mask head
        in bfloat16, while the box head (every cascade stage, on float32 features), the layers whose
        outputs become pixels or rank detections (RPN objectness and deltas, class logits, box deltas,
        mask logits), RoIAlign, box decoding, NMS and the mask paste stay float32. Detections change
        beyond rounding; the accuracy cost measured on trained models is in docs/benchmarks.md.
        ``fp32_box_head=False`` leaves the box head to autocast too: 10-15 % faster on the CPU (Mask
        R-CNN R50-FPN at COCO size; ~20 % on R-18 survey tiles), with bf16 rounding in the features that
        score and place every detection (accuracy of both in docs/benchmarks.md). The box head rule
        also holds when the model then runs under an outer autocast (an evaluation with ``--amp``). The
        ROI heads are rebuilt with ``fp32_box_head`` (``roi_heads.replace``: the same submodules).

        ``roi_align='gather'`` (the default here) pools with :mod:`gluon_rcnn.nn.roi_align`: one
        compiled kernel over channels-last maps, bf16 maps read without a cast (8x faster than
        torchvision's op on 1000 RoIs on a 2-core CPU; the same arithmetic up to summation order);
        ``'torchvision'`` keeps torchvision's op. The mask head computes only each detection's class
        channel (``MaskRCNNUpConvHead.forward(x, labels)``)."""
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be 'fp32' or 'bf16', got {precision!r}")
        from .roi_heads.pooler import ROIPooler
        if roi_align not in ROIPooler.KERNELS:
            raise ValueError(f"roi_align must be one of {ROIPooler.KERNELS}, got {roi_align!r}")
        self.eval()
        for m in self.modules():
            if isinstance(m, ROIPooler):
                m.set_kernel(roi_align)
        if self.roi_heads.mask_head is not None:  # only the detected class's mask channel is computed
            self.roi_heads.mask_head.selected_logits = True
        self.roi_heads = self.roi_heads.replace(fp32_box_head=bool(fp32_box_head))
        self.fuse()
        self._set_inference_format(True, torch.bfloat16 if precision == "bf16" else None)
        return self

    def export(self, path: str, example_image: torch.Tensor, *, min_side: int = EXPORT_MIN_SIDE,
               max_side: int | None = None, strict: bool = False) -> "torch.export.ExportedProgram":
        """Write the whole detector (resize, normalise, backbone, RPN with NMS, heads, mask paste)
        as a ``torch.export`` program to ``path`` and return it.

        The program takes one (3, H, W) image of ``example_image``'s dtype (uint8 0-255, or float
        RGB in 0-1) and any H and W in ``[min_side, max_side]`` (default 32 and
        :meth:`export_max_side`: 4 x the preprocessing's max size); the example's size is just an
        example. One dtype per program, because ``torch.export`` fixes its inputs' dtypes: export
        twice for both (a few seconds each), or give a float program ``image.float() / 255``, which
        is exactly what the model does with uint8. The file loads with
        ``torch.export.load(path).module()`` and needs only torch and torchvision (for the nms and
        roi_align ops). ``module(image)`` returns what ``net([image])[0]`` does, a dict of tensors:
        ``boxes`` (N, 4) x1,y1,x2,y2 in the image's pixels, ``scores`` (N,), ``labels`` (N,) in
        1..C, ``class_probs`` (N, C+1) and, for mask models, ``masks`` (N, 1, H, W) probabilities;
        N, the number of detections, varies from image to image (0 included). The results equal the
        eager model's bitwise (tests/test_export.py). The program does not check the pixel range
        (a traced program has no values to look at): give it what the model takes.
        """
        if self.training:
            raise RuntimeError("export() traces inference: call .eval() first")
        if self.autocast_dtype is not None:  # found by review: the file was written but did not load
            raise RuntimeError("export() of a model under optimize_for_inference('bf16'): torch.export writes "
                               "its autocast regions but cannot load them back (SpecViolationError: "
                               "wrap_with_autocast ... is missing val field); export the model in fp32 "
                               "(optimize_for_inference('fp32') or not optimised)")
        if not isinstance(example_image, torch.Tensor) or example_image.dim() != 3 or example_image.shape[0] != 3:
            raise ValueError("export() needs an example image, a (3, H, W) tensor, got "
                             f"{tuple(example_image.shape) if isinstance(example_image, torch.Tensor) else example_image!r}")
        if example_image.dtype != torch.uint8 and not example_image.is_floating_point():
            raise ValueError(f"the example image has dtype {example_image.dtype}; the program takes the example's "
                             "dtype: uint8 (0-255) or float RGB in 0-1")
        max_side = self.export_max_side() if max_side is None else int(max_side)
        if not 2 <= min_side <= max_side:  # torch.export specialises sizes 0 and 1
            raise ValueError(f"export() needs 2 <= min_side <= max_side, got {min_side} and {max_side}")
        h, w = example_image.shape[1:]
        if not (min_side <= h <= max_side and min_side <= w <= max_side):
            raise ValueError(f"the example image is {h}x{w}; its sides must lie in [{min_side}, {max_side}] "
                             "(min_side/max_side)")
        dims = {1: torch.export.Dim("H", min=min_side, max=max_side),
                2: torch.export.Dim("W", min=min_side, max=max_side)}
        return HybridBlock.export(_ExportView(self).eval(), path, (example_image,),
                                  dynamic_shapes={"image": dims}, strict=strict)

    def export_max_side(self) -> int:
        """The default largest image side of :meth:`export`'s program: 4 x the preprocessing's max
        size (or test short edge, where the long edge has no cap). Larger images would be resized
        down anyway; the bound keeps the program's shape arithmetic finite."""
        pre = self.preprocessor
        return 4 * math.ceil(pre.max_size if pre.max_size > 0 else pre.short_edge)

    def postprocess(self, results, image_sizes, original_sizes):
        """Boxes from resized to original pixels; mask probabilities pasted into the original image."""
        return self.preprocessor.postprocess(results, image_sizes, original_sizes)


def validate_targets(targets, num_classes: int, need_polygons: bool = False) -> None:
    """Say what is wrong with training targets, and in which image, on whatever device they live
    (one host synchronisation for all the value checks of a batch)."""
    checks, what = [], []
    for i, t in enumerate(targets):
        if not isinstance(t, dict):
            raise ValueError(f"target {i} must be a dict with 'boxes' and 'labels', got {type(t).__name__}")
        for key in ("boxes", "labels") + (("polygons",) if need_polygons else ()):
            if key not in t:
                raise ValueError(f"target {i} has no {key!r} (keys: {sorted(t)})")
        b, l = t["boxes"], t["labels"]
        if b.dim() != 2 or b.shape[-1] != 4 or l.shape != b.shape[:1]:
            raise ValueError(f"target {i}: boxes must be (K,4) and labels (K,), got {tuple(b.shape)} "
                             f"and {tuple(l.shape)}")
        if b.numel():
            checks += [((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all(), ((l >= 1) & (l <= num_classes)).all()]
            what += [(i, "box"), (i, "label")]
    if not checks:
        return
    try:
        ok = torch.stack(checks).cpu().tolist()  # one host sync
    except RuntimeError:  # targets of one batch on several devices
        ok = [bool(c.cpu()) for c in checks]
    for good, (i, kind) in zip(ok, what):
        if good:
            continue
        t = targets[i]
        if kind == "box":
            raise ValueError(f"target {i}: every box needs x2 > x1 and y2 > y1")
        raise ValueError(f"target {i}: labels must be in 1..{num_classes} (0 is the background), got "
                         f"{sorted(set(t['labels'].tolist()))}")


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
    """The detector as a function of one image tensor (3, H, W) → a dict of tensors in that
    image's pixels: what ``export`` traces. The same program as ``model([image])[0]``, written so
    that H and W stay symbolic: the preprocessing of :class:`Preprocessor` for one image (resize
    even where the size does not change: bilinear at scale 1 is the identity), the network, the
    inverse mapping."""

    def __init__(self, model: GeneralizedRCNN):
        super().__init__()
        self.model = model

    def _preprocess(self, image: torch.Tensor) -> ImageBatch:
        pre = self.model.preprocessor
        h, w = image.shape[1], image.shape[2]
        nh, nw = (_opaque_size(v) for v in pre.target_size(h, w))
        x = pre.normalize_resize(image, (nh, nw))[None]
        d = pre.size_divisibility
        x = F.pad(x, (0, -(-nw // d) * d - nw, 0, -(-nh // d) * d - nh))  # zeros at the bottom/right
        return ImageBatch(x, [(nh, nw)], [(h, w)], [])

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        m = self.model
        batch = self._preprocess(image)
        x = batch.tensor
        if x.is_cuda or m.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        feats = m.features(x)
        proposals, _ = m.rpn(feats, batch.image_sizes, None, tuple(x.shape[-2:]))
        results = m.roi_heads(feats, proposals, batch.image_sizes)
        return m.postprocess(results, batch.image_sizes, batch.original_sizes)[0]


def _opaque_size(v):
    """A symbolic size computed from the input's (export(): the resize formula of H and W) → a
    fresh size symbol with the same value at run time. Downstream shapes (padding, every feature
    map) are then simple expressions of it instead of the whole resize formula, which the symbolic
    shape solver could not reason about (it would specialise the program to the example's size)."""
    if not isinstance(v, torch.SymInt):
        return v
    u = torch.scalar_tensor(v, dtype=torch.int64).item()
    torch._check(u >= 1)
    return u
