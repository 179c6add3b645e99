"""The one preprocessing program: resize, normalise, pad, and the inverse mapping of detections.

Every path from pixels to the network goes through :class:`Preprocessor`: ``model([img])``, the
training loader (``data.loader.collate`` yields an :class:`~gluon_rcnn.structures.image_list.ImageList`
of decoded, augmented images plus the size each must be resized to), the evaluation driver used by
the trainer and by ``scripts/eval.py``, ``predict`` and ``export()``. The data side only *chooses*
sizes (:func:`scaled_size`, a random short edge) and flips/rotates; it never resamples pixels.

The program, per image::

    x = image as float in 0-1 (uint8 / 255)                         (3, H, W)
    x = (x - mean / 255) / (std / 255)                               PREPROC.PIXEL_MEAN/STD (0-255 scale)
    x = resized to (h, w) by the RULES.RESAMPLE rule                 (h, w) = scaled_size(...) or given
    batch = zero padding at the bottom/right to multiples of size_divisibility

Resampling (``RULES.RESAMPLE``, rules/resize.py) is a publisher's rule: ``float_bilinear`` normalises
first and resizes the float image with torch's bilinear (torchvision's ``GeneralizedRCNNTransform``
order, bit for bit); ``uint8_fixed_point`` resizes the uint8 image as OpenCV's
``cv2.resize(INTER_LINEAR)`` does (11-bit fixed-point weights, rounded to uint8; what tensorpack's
``CustomResize`` feeds its graph), then normalises: the two differ by up to 0.76 grey levels, which moves
detections of a model well beyond float noise. Both run on the model's device and in the main process
and give the same pixels to training, evaluation, prediction and export.

Sizes (:func:`scaled_size`): the ``RULES.RESIZE`` rule (gluon_rcnn/rules/resize.py: ``round`` or
``floor``, the installed torchvision's own arithmetic).

Inverse mapping (:meth:`Preprocessor.postprocess`): boxes from resized to original pixels by the
``RULES.RESCALE_BOXES`` rule (rules/rescale.py); mask probabilities pasted into the original image
by the ``RULES.MASK_PASTE`` rule (rules/paste.py).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F

from .structures.image_list import ImageBatch
from .rules import choose
from .rules.resize import RESIZE, torchvision_size

__all__ = ["scaled_size", "torchvision_size", "capped_max_size", "Preprocessor", "check_pixel_range",
           "PIXEL_RANGE_TOLERANCE"]


def scaled_size(h: int, w: int, short: float, max_size: float, rule="round") -> tuple[int, int]:
    """Size ``(new_h, new_w)`` after scaling the short edge to ``short`` pixels while the long edge
    stays <= ``max_size`` (``max_size <= 0``: no limit, ``round`` only), by ``rule``: a resize rule
    object of gluon_rcnn/rules/resize.py or its name (``'round'``, ``'floor'``)."""
    if isinstance(rule, str):
        rule = choose(RESIZE, rule, "RULES.RESIZE")
    return rule(h, w, short, max_size)


#: tensorpack's FPN.RESOLUTION_REQUIREMENT: the stride of P5, what MAX_SIZE rounds up to in FPN mode
FPN_SIZE_MULTIPLE = 32


def capped_max_size(max_size: float, round_up: bool = False) -> float:
    """The cap on the long edge that resizing uses: ``max_size``, or, with ``round_up``
    (``PREPROC.MAX_SIZE_ROUND_UP`` in FPN mode), rounded up to a multiple of
    :data:`FPN_SIZE_MULTIPLE` (tensorpack's finalize_configs: ``ceil(MAX_SIZE / 32) * 32``,
    1333 -> 1344). ``<= 0`` (no cap) stays."""
    m = float(max_size)
    if round_up and m > 0:
        m = math.ceil(m / FPN_SIZE_MULTIPLE) * FPN_SIZE_MULTIPLE
    return float(m)


#: how far outside 0-1 a float image's values may lie: float rounding, not a quarter of a grey level
PIXEL_RANGE_TOLERANCE = 1e-3


def check_pixel_range(images: Sequence[torch.Tensor], tolerance: float = PIXEL_RANGE_TOLERANCE) -> None:
    """Raise ValueError when a float image has values outside ``[0, 1]`` by more than ``tolerance``
    (or NaN): 0-255 floats and mean/std-normalised images (GluonCV's habit) would run and return other
    detections with no word. uint8 images are not looked at. The minima and maxima are computed where
    the images are and fetched once per batch (one host synchronisation for all of a device's images;
    none for CPU tensors on a GPU model). Skipped while tracing (``torch.compile``, ``torch.export``):
    a traced program has no values to look at."""
    floats = [(i, im) for i, im in enumerate(images) if im.is_floating_point() and im.numel()]
    if not floats or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return
    by_device: dict = {}
    for i, im in floats:
        by_device.setdefault(im.device, []).append((i, im))
    for group in by_device.values():
        lo_hi = torch.stack([torch.stack(torch.aminmax(im.detach())) for _, im in group]).float().cpu().tolist()
        for (i, _), (lo, hi) in zip(group, lo_hi):
            if lo >= -tolerance and hi <= 1 + tolerance:  # False for NaN too
                continue
            if lo != lo or hi != hi:
                guess = "it holds NaN values"
            elif lo < -0.5:
                guess = ("negative values look like a mean/std-normalised image (GluonCV's habit): pass the image "
                         "before normalisation (the model normalises with its own PREPROC.PIXEL_MEAN/STD), e.g. "
                         "x * std + mean with the std and mean (0-1 scale) that normalised it")
            elif hi > 1.5:
                guess = "they look like 0-255 values: pass the uint8 image itself, or divide by 255"
            else:
                guess = "clamp(0, 1) values that resampling (bicubic, Lanczos) pushed past the range"
            raise ValueError(f"image {i} is a float image with values in [{lo:.4g}, {hi:.4g}]; the detector takes "
                             f"uint8 RGB 0-255 or float RGB in 0-1 (within {tolerance:g}): {guess}")


class Preprocessor:
    """Resize + normalise + pad a list of images into an :class:`ImageBatch`; map detections back.

    Args:
        pixel_mean, pixel_std: per-channel RGB statistics on the 0-255 scale.
        short_edge: the test-time short edge (used when an image comes without a target size).
        max_size: the cap on the long edge.
        size_divisibility: padded height and width are multiples of it.
        resize: the size rule (``RULES.RESIZE``, rules/resize.py).
        resample: how the pixels are resized (``RULES.RESAMPLE``, rules/resize.py).
        mask_paste: how masks are pasted into the image (``RULES.MASK_PASTE``, rules/paste.py).
        rescale_boxes: how boxes go back to original pixels (``RULES.RESCALE_BOXES``, rules/rescale.py).
    """

    def __init__(self, pixel_mean: Sequence[float], pixel_std: Sequence[float], short_edge: float,
                 max_size: float, size_divisibility: int = 32, *, resize, resample, mask_paste,
                 rescale_boxes):
        if len(pixel_mean) != 3 or len(pixel_std) != 3 or min(pixel_std) <= 0:
            raise ValueError(f"pixel_mean/pixel_std must be 3 values each (std > 0), got {pixel_mean}, {pixel_std}")
        # on the 0-1 scale, in double then float32: the same float32 numbers torchvision holds
        self.mean01 = torch.tensor([float(m) / 255.0 for m in pixel_mean], dtype=torch.float64).float().view(3, 1, 1)
        self.std01 = torch.tensor([float(s) / 255.0 for s in pixel_std], dtype=torch.float64).float().view(3, 1, 1)
        self.short_edge = float(short_edge)
        self.max_size = float(max_size)
        self.size_divisibility = max(1, int(size_divisibility))
        self.resize = resize
        self.resample = resample
        self.mask_paste = mask_paste
        self.rescale_boxes = rescale_boxes

    def target_size(self, h: int, w: int, short: float | None = None) -> tuple[int, int]:
        """(h, w) an ``h x w`` image is resized to, with short edge ``short`` (default the test one)."""
        return self.resize(h, w, self.short_edge if short is None else short, self.max_size)

    def __call__(self, images: Sequence[torch.Tensor], sizes: Sequence[tuple[int, int] | None] | None = None,
                 device=None, image_ids=None) -> ImageBatch:
        """images: N tensors (3, H_i, W_i), uint8 0-255 or float 0-1 RGB, any sizes (a float image
        outside 0-1 is a ValueError saying what to pass: :func:`check_pixel_range`).
        sizes: the (h, w) each is resized to (None entries: :meth:`target_size`).
        Returns ``ImageBatch(tensor (N, 3, Hp, Wp) float32 normalised with zero padding,
        image_sizes=(h, w) resized, original_sizes=(H_i, W_i))`` on ``device`` (default: the
        first image's)."""
        if len(images) == 0:
            raise ValueError("preprocessing needs at least one image")
        if sizes is not None and len(sizes) != len(images):
            raise ValueError(f"{len(sizes)} sizes for {len(images)} images")
        device = torch.device(device) if device is not None else images[0].device
        mean, std = self.mean01.to(device), self.std01.to(device)
        for i, im in enumerate(images):
            if not isinstance(im, torch.Tensor) or im.dim() != 3 or im.shape[0] != 3:
                raise ValueError(f"image {i} must be a (3, H, W) tensor, got "
                                 f"{tuple(im.shape) if isinstance(im, torch.Tensor) else type(im).__name__}")
            if im.dtype != torch.uint8 and not im.is_floating_point():
                raise ValueError(f"image {i} has dtype {im.dtype}; pass uint8 0-255 or float RGB in 0-1")
        check_pixel_range(images)
        resized, out_sizes, originals = [], [], []
        for i, im in enumerate(images):
            h, w = int(im.shape[1]), int(im.shape[2])
            if h == 0 or w == 0:
                raise ValueError(f"image {i} is empty ({h}x{w})")
            size = sizes[i] if sizes is not None else None
            nh, nw = (int(size[0]), int(size[1])) if size is not None else self.target_size(h, w)
            resized.append(self.normalize_resize(im.to(device, non_blocking=True), (nh, nw), mean, std,
                                                 resize=(nh, nw) != (h, w)))
            out_sizes.append((nh, nw))
            originals.append((h, w))
        d = self.size_divisibility
        hp = -(-max(s[0] for s in out_sizes) // d) * d
        wp = -(-max(s[1] for s in out_sizes) // d) * d
        batch = torch.zeros((len(resized), 3, hp, wp), dtype=torch.float32, device=device)
        for i, x in enumerate(resized):
            batch[i, :, :x.shape[1], :x.shape[2]].copy_(x)
        return ImageBatch(batch, out_sizes, originals, list(image_ids) if image_ids is not None else [])

    def normalize_resize(self, im: torch.Tensor, size, mean=None, std=None, resize: bool = True) -> torch.Tensor:
        """One (3, H, W) uint8 or float 0-1 image → float32, normalised and resized to ``size`` (h, w) by the
        ``resample`` rule (``resize=False``: left as is; both rules are the identity at scale 1). The step
        every path shares: :meth:`__call__` per image and the exported program (``GeneralizedRCNN.export``)."""
        mean = self.mean01.to(im.device) if mean is None else mean
        std = self.std01.to(im.device) if std is None else std

        def normalize(x):
            return (x - mean) / std

        if not resize:
            return normalize(im.float().div_(255.0) if im.dtype == torch.uint8 else im.to(torch.float32))
        return self.resample(im, size, normalize)

    def postprocess(self, results: Sequence[dict], image_sizes, original_sizes) -> list[dict]:
        """Detections in resized-image pixels → original pixels (the ``rescale_boxes`` rule), and
        ``mask_probs`` (N, M, M) pasted into (N, 1, H, W) ``masks`` (the ``mask_paste`` rule)."""
        out = []
        for r, (h, w), (oh, ow) in zip(results, image_sizes, original_sizes):
            boxes = self.rescale_boxes(r["boxes"], (h, w), (oh, ow))
            d = {"boxes": boxes, "scores": r["scores"], "labels": r["labels"], "class_probs": r["class_probs"]}
            if "mask_probs" in r:
                d["masks"] = self.mask_paste(r["mask_probs"], boxes, (oh, ow))
            out.append(d)
        return out

    def __repr__(self) -> str:
        return (f"Preprocessor(mean={[round(float(v) * 255, 3) for v in self.mean01.flatten()]}, "
                f"std={[round(float(v) * 255, 3) for v in self.std01.flatten()]}, short_edge={self.short_edge:g}, "
                f"max_size={self.max_size:g}, size_divisibility={self.size_divisibility}, resize={self.resize!r}, "
                f"resample={self.resample!r}, "
                f"mask_paste={self.mask_paste!r}, rescale_boxes={self.rescale_boxes!r})")
