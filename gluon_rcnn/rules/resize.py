"""Test/train resize rules: the (h, w) an image is scaled to (short edge ``short``, long edge at most
``max_size``).

- ``"round"`` (:class:`RoundResize`): scale = short / min(h, w), capped so the long edge stays <=
  ``max_size`` (``<= 0``: no cap), sides rounded to the nearest integer (``int(x + 0.5)``).
- ``"floor"`` (:class:`InstalledTorchvisionResize`): the rule of the *installed* torchvision's
  ``GeneralizedRCNNTransform``, obtained by asking torchvision's own resize function for the output
  shape of a shape-only ("meta") tensor, so it follows whatever torchvision the registry serves
  (0.29 computes the scale in double precision and floors the sides; releases before 0.21 computed
  it in float32: a 480x640 image becomes 800 rows in one and 799 in the other). Needs ``max_size > 0``.
"""
from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["RoundResize", "InstalledTorchvisionResize", "torchvision_size", "RESIZE", "FloatBilinear",
           "Uint8FixedPointBilinear", "Uint8PilBilinear", "OpenCVBicubic", "cv2_linear_uint8",
           "RESAMPLE"]


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
        nh, nw = _torchvision_formula(h, w, short, max_size)
    if nh < 1 or nw < 1:
        raise ValueError(f"a {h}x{w} image resized by torchvision's rule (short edge {short:g}, max size "
                         f"{max_size:g}) would have a side of 0 pixels: its aspect ratio is too extreme")
    return nh, nw


def _torchvision_formula(h, w, short: float, max_size: float):
    """torchvision >= 0.21's rule: a double-precision scale, sides floored by interpolate
    (``floor(float(side) * scale)``: ``sym_int`` truncates, the same for these positive numbers, and
    is what an exported program can store); on Python ints or torch.export's symbolic sizes."""
    scale = torch.sym_min(short / torch.sym_min(h, w), max_size / torch.sym_max(h, w))
    return torch.sym_int(torch.sym_float(h) * scale), torch.sym_int(torch.sym_float(w) * scale)


class RoundResize:
    name = "round"
    needs_max_size = False

    def __call__(self, h: int, w: int, short: float, max_size: float) -> tuple[int, int]:
        _check_size_args(h, w, short)
        # torch.sym_* are min/max/int/if-else on Python numbers and symbolic on torch.export's
        # symbolic sizes (export() traces this for any image size)
        scale = short / torch.sym_min(h, w)
        if max_size and max_size > 0:
            longest = torch.sym_max(h, w)
            scale = torch.sym_ite(longest * scale > max_size, max_size / longest, scale)
        return torch.sym_max(1, torch.sym_int(h * scale + 0.5)), torch.sym_max(1, torch.sym_int(w * scale + 0.5))

    def __repr__(self) -> str:
        return "RoundResize()"


class InstalledTorchvisionResize:
    name = "floor"
    needs_max_size = True

    def __call__(self, h: int, w: int, short: float, max_size: float) -> tuple[int, int]:
        _check_size_args(h, w, short)
        if isinstance(h, torch.SymInt) or isinstance(w, torch.SymInt):  # traced by export(): the formula
            return _torchvision_formula(h, w, float(short), float(max_size))
        return torchvision_size(int(h), int(w), float(short), float(max_size))

    def __repr__(self) -> str:
        return "InstalledTorchvisionResize()"


RESIZE = {"round": RoundResize(), "floor": InstalledTorchvisionResize()}


# ------------------------------------------------------------------------------------------------
# resampling: how the pixels are resized (RULES.RESAMPLE)
# ------------------------------------------------------------------------------------------------

def _to_float01(im: torch.Tensor) -> torch.Tensor:
    return im.float().div_(255.0) if im.dtype == torch.uint8 else im.to(torch.float32)


class FloatBilinear:
    """Normalise the float image, then resize it bilinearly (``F.interpolate``, half-pixel centres,
    ``align_corners=False``, no antialias): torchvision's ``GeneralizedRCNNTransform`` order, so a
    torchvision model sees the same numbers bit for bit."""

    name = "float_bilinear"

    def __call__(self, im: torch.Tensor, size, normalize) -> torch.Tensor:
        x = normalize(_to_float01(im))
        return F.interpolate(x[None], size=tuple(size), mode="bilinear", align_corners=False)[0]

    def __repr__(self) -> str:
        return "FloatBilinear()"


#: cv2's INTER_RESIZE_COEF_BITS: bilinear weights are 11-bit fixed point
_COEF_BITS = 11
_COEF_SCALE = 1 << _COEF_BITS


def _cv2_linear_taps(dst: int, src: int, clamp_weights: bool, device):
    """OpenCV's ``resize`` (imgproc/resize.cpp, ``resize`` + ``HResizeLinear``/``VResizeLinear``) taps of
    INTER_LINEAR on one axis: source index pairs and their fixed-point weights. ``scale = 1 / (dst / src)``
    in double, ``f = float((d + 0.5) * scale - 0.5)``, ``s = floor(f)``, weights ``round((1 - f') * 2048)``
    and ``2048 - that``; along x (``clamp_weights``) a tap left of 0 or past the last pixel gets weight
    (2048, 0) on the edge pixel, along y only the row indices are clamped (the weights stay)."""
    scale = 1.0 / (dst / src)
    f = ((torch.arange(dst, dtype=torch.float64, device=device) + 0.5) * scale - 0.5).float()
    s = torch.floor(f)
    f = f - s
    s = s.long()
    if clamp_weights:
        out_lo, out_hi = s < 0, s >= src - 1
        f = torch.where(out_lo | out_hi, torch.zeros_like(f), f)
        s = torch.where(out_lo, torch.zeros_like(s), torch.where(out_hi, torch.full_like(s, src - 1), s))
    w0 = torch.round((1.0 - f) * _COEF_SCALE).to(torch.int32)  # saturate_cast<short>: round half to even
    return s.clamp(0, src - 1), (s + 1).clamp(0, src - 1), w0, _COEF_SCALE - w0


def cv2_linear_uint8(im: torch.Tensor, size) -> torch.Tensor:
    """``cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR)`` of a (C, H, W) uint8 image, bit for bit,
    in torch (any device, traceable): a horizontal pass with 11-bit weights in int32, then the vertical pass
    as OpenCV's SIMD kernel ``VResizeLinearVec_32s8u`` computes it,
    ``(((S0 >> 4) * b0 >> 16) + ((S1 >> 4) * b1 >> 16) + 2) >> 2``, saturated to uint8.
    Checked equal to the installed OpenCV over random images and sizes (tests/test_resample.py)."""
    h, w = im.shape[-2], im.shape[-1]  # ints, or torch.export's symbolic sizes
    nh, nw = size[0], size[1]
    x0, x1, a0, a1 = _cv2_linear_taps(nw, w, True, im.device)
    y0, y1, b0, b1 = _cv2_linear_taps(nh, h, False, im.device)
    t = im.to(torch.int32)
    rows = t[:, :, x0] * a0 + t[:, :, x1] * a1                      # (C, H, nw), <= 255 * 2048
    s0 = (rows[:, y0] >> 4) * b0[:, None]
    s1 = (rows[:, y1] >> 4) * b1[:, None]
    return (((s0 >> 16) + (s1 >> 16) + 2) >> 2).clamp_(0, 255).to(torch.uint8)


def _opencv_or_torch(im: torch.Tensor, size) -> torch.Tensor:
    """:func:`cv2_linear_uint8`'s pixels: from OpenCV itself for an eager CPU image (~100x faster), else
    (GPU, ``torch.compile`` / ``torch.export`` tracing) from the torch transcription."""
    symbolic = any(isinstance(v, torch.SymInt) for v in (*im.shape, *size))
    if im.device.type != "cpu" or symbolic or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return cv2_linear_uint8(im, size)  # the identity at scale 1, like OpenCV
    if tuple(im.shape[-2:]) == (size[0], size[1]):
        return im
    import cv2
    hwc = im.permute(1, 2, 0).contiguous().numpy()
    out = cv2.resize(hwc, (int(size[1]), int(size[0])), interpolation=cv2.INTER_LINEAR)
    return torch.from_numpy(out.reshape(int(size[0]), int(size[1]), -1)).permute(2, 0, 1)


class Uint8FixedPointBilinear:
    """Resize the uint8 image first, as OpenCV's ``cv2.resize(..., INTER_LINEAR)`` does on uint8 pixels
    (11-bit fixed-point weights, the result rounded to uint8: up to ~1 grey level from the exact bilinear
    value), then normalise: what tensorpack's ``CustomResize`` feeds its graph. A float 0-1 image has no
    uint8 rounding to reproduce: it is resized as :class:`FloatBilinear` does (OpenCV's float bilinear
    is the same formula)."""

    name = "uint8_fixed_point"

    def __call__(self, im: torch.Tensor, size, normalize) -> torch.Tensor:
        if im.dtype != torch.uint8:
            return FloatBilinear()(im, size, normalize)
        return normalize(_to_float01(_opencv_or_torch(im, size)))

    def __repr__(self) -> str:
        return "Uint8FixedPointBilinear()"


class Uint8PilBilinear:
    """Resize the uint8 image with Pillow's ``Image.resize(..., Image.BILINEAR)`` (a triangle filter widened
    by the scale when shrinking, i.e. antialiased; 8-bit results), then normalise: detectron2's
    ``ResizeShortestEdge`` (``ResizeTransform.apply_image`` on uint8 images). Float 0-1 images are resized
    as :class:`FloatBilinear` does (detectron2's ``F.interpolate`` branch for non-uint8 images). Pillow
    runs eagerly on the CPU: a traced program (``export()``, ``torch.compile`` of the preprocessing) cannot
    hold it, and is refused with the alternative named."""

    name = "uint8_pil_bilinear"

    def __call__(self, im: torch.Tensor, size, normalize) -> torch.Tensor:
        if im.dtype != torch.uint8:
            return FloatBilinear()(im, size, normalize)
        _refuse_tracing(self.name, im, size)
        from PIL import Image
        nh, nw = int(size[0]), int(size[1])
        if tuple(im.shape[-2:]) != (nh, nw):
            hwc = im.permute(1, 2, 0).contiguous().cpu().numpy()
            out = np.asarray(Image.fromarray(hwc).resize((nw, nh), Image.BILINEAR))
            im = torch.from_numpy(out.copy()).permute(2, 0, 1).to(im.device)
        return normalize(_to_float01(im))

    def __repr__(self) -> str:
        return "Uint8PilBilinear()"


def _refuse_tracing(rule: str, im: torch.Tensor, size) -> None:
    if (any(isinstance(v, torch.SymInt) for v in (*im.shape, *size)) or torch.compiler.is_compiling()
            or torch.jit.is_tracing()):
        raise NotImplementedError(
            f"RULES.RESAMPLE={rule!r} resizes on the CPU outside torch, which a traced program cannot hold: export "
            "this model with RULES.RESAMPLE='float_bilinear' (a few grey levels apart), or feed it images already at "
            "their size")


class OpenCVBicubic:
    """Resize with OpenCV's ``cv2.resize(..., INTER_CUBIC)`` (on the uint8 image: rounded to uint8; a float
    0-1 image in float32), then normalise: GluonCV's R-CNN test transform, whose
    ``resize_short_within(..., interp=2)`` hands 2 to MXNet's ``imresize``, which passes it to OpenCV as is, where
    2 is INTER_CUBIC (GluonCV's docstring calls 2 "area-based": that is MXNet's numbering, not OpenCV's).
    MXNet 1.9.1's bundled OpenCV and the installed one differ by at most 1 grey level on ~1.4 % of the values
    (tests/test_resample.py); float bilinear was 47 levels off. Eager CPU only, like Pillow's rule."""

    name = "opencv_bicubic"

    def __call__(self, im: torch.Tensor, size, normalize) -> torch.Tensor:
        _refuse_tracing(self.name, im, size)
        nh, nw = int(size[0]), int(size[1])
        x = im if im.dtype == torch.uint8 else im.to(torch.float32)
        if tuple(x.shape[-2:]) != (nh, nw):
            import cv2
            hwc = x.permute(1, 2, 0).contiguous().cpu().numpy()
            out = cv2.resize(hwc, (nw, nh), interpolation=cv2.INTER_CUBIC).reshape(nh, nw, -1)
            x = torch.from_numpy(out).permute(2, 0, 1).to(im.device)
        return normalize(_to_float01(x))

    def __repr__(self) -> str:
        return "OpenCVBicubic()"


RESAMPLE = {"float_bilinear": FloatBilinear(), "uint8_fixed_point": Uint8FixedPointBilinear(),
            "uint8_pil_bilinear": Uint8PilBilinear(), "opencv_bicubic": OpenCVBicubic()}
