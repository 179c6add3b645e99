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

import torch

__all__ = ["RoundResize", "InstalledTorchvisionResize", "torchvision_size", "RESIZE"]


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
