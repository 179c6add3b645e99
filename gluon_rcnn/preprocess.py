"""The one preprocessing program: resize, normalise, pad, and the inverse mapping of detections.

Every path from pixels to the network goes through :class:`Preprocessor`: ``model([img])``, the
training loader (``data.loader.collate`` yields an :class:`~gluon_rcnn.structures.image_list.ImageList`
of decoded, augmented images plus the size each must be resized to), the evaluation driver used by
the trainer and by ``scripts/eval.py``, ``predict`` and ``export()``. The data side only *chooses*
sizes (:func:`scaled_size`, a random short edge) and flips/rotates; it never resamples pixels.

The program, per image (torchvision's ``GeneralizedRCNNTransform`` order, so a model converted from
torchvision sees the same numbers)::

    x = image as float in 0-1 (uint8 / 255)                         (3, H, W)
    x = (x - mean / 255) / (std / 255)                               PREPROC.PIXEL_MEAN/STD (0-255 scale)
    x = bilinear resize to (h, w), align_corners=False, no antialias (h, w) = scaled_size(...) or given
    batch = zero padding at the bottom/right to multiples of size_divisibility

Why torch's bilinear on float rather than OpenCV on uint8 (measured, docs/architecture.md): it is
the only way to reproduce torchvision exactly (cv2's fixed-point uint8 resize differs by up to 0.011
after normalisation), it runs on the model's device (GPU) or in the main process at ~ms per image on
the CPU, and it gives the same pixels to training, evaluation, prediction and export.

Sizes (:func:`scaled_size`): ``rounding='round'`` is tensorpack's rule (scale the short edge to
``short``, cap the long edge at ``max_size``, round to the nearest integer);
``rounding='torchvision'`` is the rule of the *installed* torchvision, obtained by asking
torchvision's own resize function for the output shape of a shape-only ("meta") tensor, so it
follows whatever torchvision the registry serves (0.29.1 computes the scale in double precision,
older releases in float32: a 480x640 image becomes 800 rows in one and 799 in the other).

Inverse mapping (:meth:`Preprocessor.postprocess`): boxes from resized to original pixels by the
exact per-axis factors ``(W/w, H/h)``; mask probabilities pasted into the original image.
"""
from __future__ import annotations

import math
from functools import lru_cache
from typing import Sequence

import torch
import torch.nn.functional as F

from .structures.image_list import ImageBatch
from .structures.masks import paste_masks_in_image

__all__ = ["RESIZE_RULES", "scaled_size", "torchvision_size", "capped_max_size", "Preprocessor"]

RESIZE_RULES = ("round", "torchvision")


def _check_size_args(h: int, w: int, short: float) -> None:
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {h}x{w}")
    if short <= 0:
        raise ValueError(f"short edge size must be positive, got {short}")


@lru_cache(maxsize=65536)
def torchvision_size(h: int, w: int, short: float, max_size: float) -> tuple[int, int]:
    """The (h, w) that the installed torchvision's ``GeneralizedRCNNTransform`` resizes an
    ``h x w`` image to (``min_size=short``, ``max_size``), asked of torchvision itself on a
    shape-only tensor (no pixels are touched)."""
    _check_size_args(h, w, short)
    if max_size <= 0:
        raise ValueError(f"the torchvision resize rule needs a max_size > 0, got {max_size}")
    try:
        from torchvision.models.detection.transform import _resize_image_and_masks
        out, _ = _resize_image_and_masks(torch.empty((3, int(h), int(w)), device="meta"), short, max_size)
        nh, nw = int(out.shape[-2]), int(out.shape[-1])
    except ZeroDivisionError:  # torchvision's rule gives a side of 0 pixels
        nh, nw = 0, 0
    except (ImportError, TypeError, RuntimeError, NotImplementedError):  # pragma: no cover - API moved
        # torchvision >= 0.21's rule: a double-precision scale, sides floored by interpolate
        scale = min(float(short) / min(h, w), float(max_size) / max(h, w))
        nh, nw = math.floor(h * scale), math.floor(w * scale)
    if nh < 1 or nw < 1:
        raise ValueError(f"a {h}x{w} image resized by torchvision's rule (short edge {short:g}, max size "
                         f"{max_size:g}) would have a side of 0 pixels: its aspect ratio is too extreme")
    return nh, nw


def scaled_size(h: int, w: int, short: float, max_size: float, rounding: str = "round") -> tuple[int, int]:
    """Size ``(new_h, new_w)`` after scaling the short edge to ``short`` pixels while the long edge
    stays <= ``max_size`` (``max_size <= 0``: no limit; only with ``'round'``).

    rounding: ``'round'`` (tensorpack: nearest integer) or ``'torchvision'`` (the installed
    torchvision's own rule, see :func:`torchvision_size`)."""
    _check_size_args(h, w, short)
    if rounding == "torchvision":
        return torchvision_size(int(h), int(w), float(short), float(max_size))
    if rounding != "round":
        raise ValueError(f"rounding must be one of {RESIZE_RULES}, got {rounding!r}")
    scale = short / min(h, w)
    if max_size and max_size > 0 and max(h, w) * scale > max_size:
        scale = max_size / max(h, w)
    return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))


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


class Preprocessor:
    """Resize + normalise + pad a list of images into an :class:`ImageBatch`; map detections back.

    Args:
        pixel_mean, pixel_std: per-channel RGB statistics on the 0-255 scale.
        short_edge: the test-time short edge (used when an image comes without a target size).
        max_size: the cap on the long edge.
        size_divisibility: padded height and width are multiples of it.
        rounding: the size rule, one of :data:`RESIZE_RULES`.
        accurate_paste: paste masks with the boxes' sub-pixel coordinates (tensorpack's
            ``MRCNN.ACCURATE_PASTE``) instead of torchvision's integer boxes; see
            :func:`~gluon_rcnn.structures.masks.paste_masks_in_image`.
    """

    def __init__(self, pixel_mean: Sequence[float], pixel_std: Sequence[float], short_edge: float,
                 max_size: float, size_divisibility: int = 32, rounding: str = "round",
                 accurate_paste: bool = False, rescale_boxes: str = "torchvision"):
        if rounding not in RESIZE_RULES:
            raise ValueError(f"rounding must be one of {RESIZE_RULES}, got {rounding!r}")
        if len(pixel_mean) != 3 or len(pixel_std) != 3 or min(pixel_std) <= 0:
            raise ValueError(f"pixel_mean/pixel_std must be 3 values each (std > 0), got {pixel_mean}, {pixel_std}")
        # on the 0-1 scale, in double then float32: the same float32 numbers torchvision holds
        self.mean01 = torch.tensor([float(m) / 255.0 for m in pixel_mean], dtype=torch.float64).float().view(3, 1, 1)
        self.std01 = torch.tensor([float(s) / 255.0 for s in pixel_std], dtype=torch.float64).float().view(3, 1, 1)
        self.short_edge = float(short_edge)
        self.max_size = float(max_size)
        self.size_divisibility = max(1, int(size_divisibility))
        self.rounding = rounding
        self.accurate_paste = bool(accurate_paste)
        if rescale_boxes not in ("torchvision", "tensorpack"):
            raise ValueError(f"rescale_boxes must be 'torchvision' or 'tensorpack', got {rescale_boxes!r}")
        self.rescale_boxes = rescale_boxes

    def target_size(self, h: int, w: int, short: float | None = None) -> tuple[int, int]:
        """(h, w) an ``h x w`` image is resized to, with short edge ``short`` (default the test one)."""
        return scaled_size(h, w, self.short_edge if short is None else short, self.max_size, self.rounding)

    def __call__(self, images: Sequence[torch.Tensor], sizes: Sequence[tuple[int, int] | None] | None = None,
                 device=None, image_ids=None) -> ImageBatch:
        """images: N tensors (3, H_i, W_i), uint8 0-255 or float 0-1 RGB, any sizes.
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
        resized, out_sizes, originals = [], [], []
        for i, im in enumerate(images):
            if not isinstance(im, torch.Tensor) or im.dim() != 3 or im.shape[0] != 3:
                raise ValueError(f"image {i} must be a (3, H, W) tensor, got "
                                 f"{tuple(im.shape) if isinstance(im, torch.Tensor) else type(im).__name__}")
            h, w = int(im.shape[1]), int(im.shape[2])
            if h == 0 or w == 0:
                raise ValueError(f"image {i} is empty ({h}x{w})")
            if im.dtype == torch.uint8:
                x = im.to(device, non_blocking=True).float().div_(255.0)
            elif im.is_floating_point():
                x = im.to(device=device, dtype=torch.float32)
            else:
                raise ValueError(f"image {i} has dtype {im.dtype}; pass uint8 0-255 or float RGB in 0-1")
            size = sizes[i] if sizes is not None else None
            nh, nw = (int(size[0]), int(size[1])) if size is not None else self.target_size(h, w)
            x = (x - mean) / std
            if (nh, nw) != (h, w):
                x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
            resized.append(x)
            out_sizes.append((nh, nw))
            originals.append((h, w))
        d = self.size_divisibility
        hp = -(-max(s[0] for s in out_sizes) // d) * d
        wp = -(-max(s[1] for s in out_sizes) // d) * d
        batch = torch.zeros((len(resized), 3, hp, wp), dtype=torch.float32, device=device)
        for i, x in enumerate(resized):
            batch[i, :, :x.shape[1], :x.shape[2]].copy_(x)
        return ImageBatch(batch, out_sizes, originals, list(image_ids) if image_ids is not None else [])

    def postprocess(self, results: Sequence[dict], image_sizes, original_sizes) -> list[dict]:
        """Detections in resized-image pixels → original pixels, and ``mask_probs`` (N, M, M) pasted
        into (N, 1, H, W) ``masks``. Boxes: ``rescale_boxes='torchvision'`` scales each axis by its
        ratio ``(W/w, H/h)``; ``'tensorpack'`` divides by one scale ``sqrt(h/H * w/W)`` and clips to
        the original image (tensorpack's eval.py ``predict_image``)."""
        out = []
        for r, (h, w), (oh, ow) in zip(results, image_sizes, original_sizes):
            if self.rescale_boxes == "tensorpack":
                scale = math.sqrt(h * 1.0 / oh * w / ow)  # float64, as numpy computes it
                boxes = r["boxes"] / scale
                # tensorpack's clip_boxes clamps x1, y1 >= 0 and x2 <= W, y2 <= H; a box at the right/bottom
                # border (x1 = x2 = w, clipped so in the graph) would come out with x1 = w/scale > W > x2, a
                # negative width: every coordinate is clamped into the image (differs only for such boxes)
                boxes = torch.stack([boxes[:, 0].clamp(0, ow), boxes[:, 1].clamp(0, oh),
                                     boxes[:, 2].clamp(0, ow), boxes[:, 3].clamp(0, oh)], 1)
            else:
                ratio = torch.tensor([ow / w, oh / h, ow / w, oh / h], device=r["boxes"].device)
                boxes = r["boxes"] * ratio
            d = {"boxes": boxes, "scores": r["scores"], "labels": r["labels"]}
            if "class_probs" in r:  # opt-in ROIHeads.return_class_probs
                d["class_probs"] = r["class_probs"]
            if "mask_probs" in r:
                d["masks"] = paste_masks_in_image(r["mask_probs"], boxes, (oh, ow), accurate=self.accurate_paste)
            out.append(d)
        return out

    def __repr__(self) -> str:
        return (f"Preprocessor(mean={[round(float(v) * 255, 3) for v in self.mean01.flatten()]}, "
                f"std={[round(float(v) * 255, 3) for v in self.std01.flatten()]}, short_edge={self.short_edge:g}, "
                f"max_size={self.max_size:g}, size_divisibility={self.size_divisibility}, rounding={self.rounding!r}"
                + (", accurate_paste=True)" if self.accurate_paste else ")"))
