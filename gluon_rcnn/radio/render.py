"""Renderings as ClaRAN made them: D1 (radio), D3 (radio contours on infrared), D4 (hull-masked infrared)."""
from __future__ import annotations

from typing import Iterable, Sequence

import cv2
import numpy as np

from .fits import estimate_noise
from .labels import Component, RadioSource, contour_levels

def _gray3(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2))


def render_d1(radio: np.ndarray, noise: float | None = None, clip_sigma: float = 1.0,
              floor: float | None = None) -> np.ndarray:
    """D1: the radio image alone, as a uint8 (H, W, 3) grey RGB image.

    The exact stretch, with ``f = floor`` (default ``clip_sigma * noise``, noise from
    :func:`estimate_noise` unless given)::

        v = max(radio, f)                # clip at the noise floor (NaN blanks count as 0)
        y = log10(v / f)                 # log stretch, 0 at the floor
        out = round(255 * (y - min y) / (max y - min y))

    When ``f`` is not positive (a clipped background gives zero noise), ``f`` is the smallest
    positive pixel value. An image with nothing above the floor renders black.
    """
    x = np.nan_to_num(np.asarray(radio, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    if floor is None:
        sigma = estimate_noise(x) if noise is None else float(noise)
        floor = clip_sigma * sigma if np.isfinite(sigma) else 0.0
    if not floor > 0:
        pos = x[x > 0]
        if pos.size == 0:
            return np.zeros(x.shape + (3,), np.uint8)
        floor = float(pos.min())
    y = np.log10(np.maximum(x, floor) / floor)
    lo, hi = float(y.min()), float(y.max())
    if hi <= lo:
        return np.zeros(x.shape + (3,), np.uint8)
    out = np.round(255.0 * (y - lo) / (hi - lo)).astype(np.uint8)
    return _gray3(out)


def stretch_ir(ir: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.5),
               mask: np.ndarray | None = None) -> np.ndarray:
    """Infrared image to uint8 (H, W): clip between two percentiles of its finite pixels, then
    ``255 * sqrt((v - lo) / (hi - lo))``. NaN blanks (e.g. outside a reprojected footprint) and
    pixels outside ``mask`` are 0."""
    v = np.asarray(ir, dtype=np.float64)
    finite = np.isfinite(v)
    out = np.zeros(v.shape, np.uint8)
    if finite.any():
        lo, hi = np.percentile(v[finite], percentiles)
        if hi > lo:
            s = np.clip((np.where(finite, v, lo) - lo) / (hi - lo), 0.0, 1.0)
            out = np.round(255.0 * np.sqrt(s)).astype(np.uint8)
    out[~finite] = 0
    if mask is not None:
        out[~mask] = 0
    return out


def _level_colour(k: int, n: int) -> tuple[int, int, int]:
    """RGB colour of contour level k of n: green (lowest) to red (highest)."""
    t = k / max(1, n - 1)
    return (int(round(255 * t)), int(round(255 * (1 - t))), 0)


def _draw_contours(rgb: np.ndarray, radio: np.ndarray, levels: Iterable[float], thickness: int = 1) -> np.ndarray:
    x = np.nan_to_num(np.asarray(radio, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    levels = list(levels)
    for k, lev in enumerate(levels):
        m = (x > lev).astype(np.uint8)
        if not m.any():
            continue
        contours, _ = cv2.findContours(m, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(rgb, contours, -1, _level_colour(k, len(levels)), thickness)
    return rgb


def _radio_levels(radio, levels, noise, sigma_level, contour_factor):
    if levels is not None:
        return list(levels)
    x = np.nan_to_num(np.asarray(radio, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    sigma = estimate_noise(radio) if noise is None else float(noise)
    if np.isfinite(sigma) and sigma > 0:
        base = sigma_level * sigma
    else:  # clipped background: the lowest contour is the data's own clip, as in derive_sources
        bg = float(np.median(x))
        above = x[x > bg]
        if above.size == 0:
            return []
        base = bg + 0.5 * float(above.min() - bg)
    return list(contour_levels(float(x.max()), base, contour_factor))


def render_d3(radio: np.ndarray, ir: np.ndarray, levels: Sequence[float] | None = None,
              noise: float | None = None, sigma_level: float = 4.0, contour_factor: float = 2.0,
              ir_percentiles: tuple[float, float] = (1.0, 99.5), ir_mask: np.ndarray | None = None) -> np.ndarray:
    """D3: radio contours drawn over the infrared image, uint8 (H, W, 3) RGB.

    ``ir`` must already be on the radio pixel grid (see :func:`reproject_to`). The infrared is
    stretched by :func:`stretch_ir` (grey); the radio contours are the label-derivation levels
    ``sigma_level * noise * contour_factor**k`` (or ``levels``), one pixel wide, coloured from green
    (lowest) to red (highest). ``ir_mask`` (H, W bool): infrared pixels outside it are 0 (D4).
    """
    radio = np.asarray(radio)
    ir = np.asarray(ir)
    if ir.shape != radio.shape:
        raise ValueError(f"infrared image {ir.shape} is not on the radio grid {radio.shape}: reproject it first")
    rgb = _gray3(stretch_ir(ir, ir_percentiles, mask=ir_mask))
    return _draw_contours(rgb, radio, _radio_levels(radio, levels, noise, sigma_level, contour_factor))


def _hull_mask(shape, groups: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    out = np.zeros(shape, np.uint8)
    for masks in groups:
        union = np.zeros(shape, bool)
        for m in masks:
            union |= np.asarray(m, dtype=bool)
        pts = np.argwhere(union)[:, ::-1].astype(np.int32)
        if len(pts) == 0:
            continue
        cv2.fillConvexPoly(out, cv2.convexHull(pts), 1)
    return out.astype(bool)


def render_d4(radio: np.ndarray, ir: np.ndarray, components, **kwargs) -> np.ndarray:
    """D4: D3 with the infrared set to 0 outside the convex hull of the source's components.

    components: the source's component masks ((H, W) bool arrays, or :class:`Component`s, or a
    :class:`RadioSource`), or a list of sources (lists of masks), in which case the infrared is
    kept inside the union of each source's own hull. Other keywords as :func:`render_d3`.
    """
    groups = _as_mask_groups(components)
    hull = _hull_mask(np.asarray(radio).shape, groups)
    return render_d3(radio, ir, ir_mask=hull, **kwargs)


def _as_mask_groups(components) -> list[list[np.ndarray]]:
    def masks_of(obj):
        if isinstance(obj, RadioSource):
            return obj.masks
        if isinstance(obj, Component):
            return [obj.mask]
        if isinstance(obj, np.ndarray) and obj.ndim == 2:
            return [obj]
        return None

    single = masks_of(components)
    if single is not None:
        return [single]
    items = list(components)
    if all(isinstance(c, (Component, np.ndarray)) for c in items):
        return [[m for c in items for m in masks_of(c)]]
    groups = []
    for item in items:
        ms = masks_of(item)
        groups.append(ms if ms is not None else [m for c in item for m in masks_of(c)])
    return groups


def reproject_to(ir_data: np.ndarray, ir_wcs, radio_wcs, shape: tuple[int, int]) -> np.ndarray:
    """The infrared image on the radio pixel grid ``shape`` (float32, NaN where not covered).

    Unchanged (a float32 copy) when the two WCS and shapes already agree; otherwise
    ``reproject.reproject_interp`` (bilinear) from ``ir_wcs`` to ``radio_wcs``.
    """
    shape = tuple(int(s) for s in shape)
    ir_data = np.asarray(ir_data, dtype=np.float32)
    if ir_data.shape == shape and ir_wcs.wcs.compare(radio_wcs.wcs, tolerance=1e-10):
        return ir_data.copy()
    from reproject import reproject_interp

    out = reproject_interp((ir_data, ir_wcs), radio_wcs, shape_out=shape, return_footprint=False)
    return np.asarray(out, dtype=np.float32)


