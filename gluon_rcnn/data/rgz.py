"""Radio Galaxy Zoo data for ClaRAN-style detection (Wu et al. 2019, MNRAS 482, 1211).

What goes in: radio continuum images (FITS: float Jy/beam on a celestial WCS grid, e.g. FIRST
cutouts; or already-stretched PNGs), optionally an infrared image of the same field.
What comes out: uint8 RGB HxWx3 renderings on the radio pixel grid (ClaRAN's D1/D3/D4 inputs),
source labels derived from the radio image alone (class ``{components}C_{peaks}P``), and a COCO
dataset (``images/*.png`` + ``annotations/instances_{train,test}.json``) the rest of the library
trains and evaluates on.

Coordinates: boxes are ``x1, y1, x2, y2`` in the library's continuous pixel convention (pixel
``i`` spans ``[i, i + 1)``; a component covering columns 10..20 has ``x1 = 10, x2 = 21``), the
same convention as COCO's ``bbox`` and the model. Polygons use the same convention: they trace
the outer pixel edges of a component. The FITS world coordinate system counts 0-based pixel
*centres* (pixel ``i`` is centred on ``i``), hence the half-pixel offset in
:func:`pixel_boxes_to_world`.

How labels are derived (documented in detail in docs/claran.md):

* noise ``sigma = MAD / 0.6745`` over all finite pixels (:func:`estimate_noise`);
* contour levels ``L_k = sigma_level * sigma * contour_factor**k`` (RGZ: lowest contour 4 sigma,
  each next one a factor 2 up);
* components: 8-connected regions above ``L_0`` with at least ``min_pixels`` pixels;
* peaks: local maxima of each component that rise at least one contour step above their saddle
  (peak >= contour_factor x saddle, the saddle being the level where the maximum joins a higher
  one), so two maxima count separately exactly when an RGZ contour level can separate them, while
  noise wiggles on a smooth or diffuse source do not;
* sources: components linked when their bounding boxes are close (:func:`group_components`);
* class ``{n}C_{m}P`` with ``n`` components and ``m`` peaks in total; sources whose class is not one
  of :data:`RGZ_CLASSES` are reported as skipped with the reason.
"""
from __future__ import annotations

import json
import os
import re
import warnings
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np
from scipy import ndimage

__all__ = [
    "RGZ_CLASSES", "FITSError", "Component", "RadioSource", "Labelling",
    "read_fits", "estimate_noise", "contour_levels", "derive_sources", "group_components",
    "mask_to_polygons", "render_d1", "render_d3", "render_d4", "stretch_ir", "reproject_to",
    "pixel_boxes_to_world", "render_fits", "build_coco_dataset", "build_demo_dataset", "write_coco",
]

RGZ_CLASSES = ("1C_1P", "1C_2P", "1C_3P", "2C_2P", "2C_3P", "3C_3P")
"""ClaRAN's six classes; the COCO category id of ``RGZ_CLASSES[i]`` is ``i + 1``."""

MAD_TO_SIGMA = 0.6745  # MAD of a unit normal distribution
_EIGHT = np.ones((3, 3), dtype=bool)  # 8-connectivity structuring element
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


class FITSError(ValueError):
    """A file cannot be read as a FITS image; the message names the file."""


# ---------------------------------------------------------------------------------------------
# FITS reading
# ---------------------------------------------------------------------------------------------

def _sanitize_header(header) -> "fits.Header":
    """A copy of ``header`` whose cards are all printable ASCII.

    Real-world headers (SkyView's FIRST cutouts among them) carry tab characters in COMMENT and
    HISTORY cards; astropy's verifier rejects them as unprintable. Every non-printable character is
    replaced by a space; cards that cannot be parsed at all are dropped.
    """
    from astropy.io import fits

    clean = fits.Header()
    for card in header.cards:
        try:
            key, value, comment = card.keyword, card.value, card.comment
        except Exception:  # malformed card: not worth failing the whole file for
            continue
        if isinstance(value, str):
            value = _UNPRINTABLE.sub(" ", value)
        if isinstance(comment, str):
            comment = _UNPRINTABLE.sub(" ", comment)
        if key in ("COMMENT", "HISTORY", ""):
            if isinstance(value, str) or value is None:
                clean.append((key, value or ""), end=True)
            continue
        try:
            clean.append(fits.Card(key, value, comment), end=True)
        except (ValueError, TypeError):
            continue
    return clean


def _celestial_wcs(header):
    """A 2-D celestial WCS from ``header``; a plain 2-axis pixel WCS when the header has none."""
    from astropy.wcs import WCS, FITSFixedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)
        try:
            wcs = WCS(header)
        except Exception:
            return WCS(naxis=2)
        cel = wcs.celestial
        if cel.naxis == 2:
            return cel
        return wcs.sub(2) if wcs.naxis >= 2 else WCS(naxis=2)


def read_fits(path) -> tuple[np.ndarray, "WCS", "fits.Header"]:
    """Read the first 2-D image of a FITS file.

    Returns ``(data, wcs, header)``: ``data`` is a native float32 (H, W) array (degenerate axes
    such as 1x1xHxW squeezed away; for a real cube, its first plane), NaN blanks kept (integer
    images with BLANK get NaN there); ``wcs`` the 2-D celestial :class:`astropy.wcs.WCS`;
    ``header`` that HDU's header with unprintable characters replaced by spaces.

    Raises :class:`FITSError` (a ValueError) naming the file when it is not FITS or holds no
    image data (only a header, or only tables).
    """
    from astropy.io import fits

    path = str(path)
    try:
        hdul = fits.open(path, ignore_missing_end=True, memmap=False, output_verify="ignore")
    except Exception as e:  # OSError, ValueError, ... from a non-FITS or truncated file
        raise FITSError(f"{path}: cannot open as FITS ({e})") from None
    with hdul, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # VerifyWarning on unprintable commentary cards
        for hdu in hdul:
            if not getattr(hdu, "is_image", False):
                continue
            try:
                data = hdu.data
            except Exception:
                continue
            if data is None or data.ndim < 2:
                continue
            header = _sanitize_header(hdu.header)
            raw = np.asarray(data)
            arr = raw.astype(np.float32)  # native byte order, BSCALE/BZERO already applied
            if np.issubdtype(raw.dtype, np.integer) and "BLANK" in header:
                arr[raw == header["BLANK"]] = np.nan
            arr = np.squeeze(arr)
            while arr.ndim > 2:  # a genuine cube: keep the first plane
                arr = arr[0]
            if arr.ndim != 2 or min(arr.shape) < 2:
                continue
            return np.ascontiguousarray(arr), _celestial_wcs(header), header
    raise FITSError(f"{path}: no HDU with 2-D image data")


# ---------------------------------------------------------------------------------------------
# label derivation
# ---------------------------------------------------------------------------------------------

def estimate_noise(radio: np.ndarray) -> float:
    """Robust noise ``sigma = MAD / 0.6745``: the median absolute deviation about the median.

    NaNs and infinities are ignored. Returns 0.0 when more than half of the pixels share one value
    (an image already clipped at a noise level, such as firstgalaxydata's PNGs) and NaN when no
    pixel is finite.
    """
    x = np.asarray(radio, dtype=np.float64)
    x = x[np.isfinite(x)]
    if x.size == 0:
        return float("nan")
    med = np.median(x)
    return float(np.median(np.abs(x - med)) / MAD_TO_SIGMA)


def contour_levels(vmax: float, base: float, contour_factor: float = 2.0) -> np.ndarray:
    """RGZ-style contour levels ``base * contour_factor**k`` for every ``k`` with level < ``vmax``."""
    if not (base > 0 and contour_factor > 1 and np.isfinite(vmax)) or vmax <= base:
        return np.array([base], dtype=np.float64)
    n = int(np.floor(np.log(vmax / base) / np.log(contour_factor))) + 1
    levels = base * contour_factor ** np.arange(n + 1, dtype=np.float64)
    return levels[levels < vmax] if (levels < vmax).any() else levels[:1]


@dataclass
class Component:
    """One radio component: an 8-connected region above the lowest contour.

    mask: (H, W) bool, the component's pixels. box: x1, y1, x2, y2 (pixel edges). polygons: its
    outline(s) as flat float32 arrays ``x0, y0, x1, y1, ...`` on the pixel edges. peaks: (x, y)
    pixel indices of its counted peaks, brightest first. peak_values: the image values there.
    """

    mask: np.ndarray
    box: tuple[float, float, float, float]
    polygons: list[np.ndarray]
    peaks: list[tuple[int, int]]
    peak_values: list[float]
    n_pixels: int
    flux: float  # sum of pixel values (image units x pixels)

    @property
    def n_peaks(self) -> int:
        return len(self.peaks)

    @property
    def size(self) -> float:
        """Largest side of the bounding box, pixels."""
        return float(max(self.box[2] - self.box[0], self.box[3] - self.box[1]))


@dataclass
class RadioSource:
    """A source: the components of one radio galaxy, and its class ``{n}C_{m}P``."""

    components: list[Component]
    class_name: str
    reason: str | None = None  # why the source was skipped; None when kept

    @property
    def n_components(self) -> int:
        return len(self.components)

    @property
    def n_peaks(self) -> int:
        return sum(c.n_peaks for c in self.components)

    @property
    def box(self) -> tuple[float, float, float, float]:
        b = np.array([c.box for c in self.components])
        return (float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max()))

    @property
    def category_id(self) -> int | None:
        """COCO category id 1..6, or None for a class outside :data:`RGZ_CLASSES`."""
        return RGZ_CLASSES.index(self.class_name) + 1 if self.class_name in RGZ_CLASSES else None

    @property
    def masks(self) -> list[np.ndarray]:
        return [c.mask for c in self.components]

    @property
    def polygons(self) -> list[np.ndarray]:
        """All components' outlines: the source's segmentation."""
        return [p for c in self.components for p in c.polygons]

    @property
    def area(self) -> int:
        return int(sum(c.n_pixels for c in self.components))


@dataclass
class Labelling:
    """The result of :func:`derive_sources` on one image."""

    sources: list[RadioSource]      # kept: class in RGZ_CLASSES
    skipped: list[RadioSource]      # class outside RGZ_CLASSES; ``reason`` says why
    components: list[Component]     # every component, kept or not
    noise: float                    # sigma (image units); 0 when the background was clipped
    threshold: float                # the lowest contour L_0
    levels: np.ndarray = field(default_factory=lambda: np.zeros(0))  # L_0, L_1, ... up to the image max
    n_blank: int = 0                # NaN/inf pixels, set to 0 for labelling
    clipped: bool = False           # noise undefined (clipped background): L_0 from the data's clip


def mask_to_polygons(mask: np.ndarray) -> list[np.ndarray]:
    """Outer outline(s) of a binary mask on the pixel *edges*, as flat float32 ``x, y, ...`` arrays.

    The outline is traced on the (H+1, W+1) grid of pixel corners (a corner is inside when any of
    its four pixels is), so a single pixel ``(x, y)`` gives the square ``(x, y)-(x+1, y+1)`` and
    the polygon's area equals the pixel count except for half-pixel cuts at concave corners.
    Holes are ignored (RETR_EXTERNAL); every polygon has at least 4 vertices.
    """
    m = np.pad(np.asarray(mask, dtype=bool), 1)
    corners = (m[:-1, :-1] | m[1:, :-1] | m[:-1, 1:] | m[1:, 1:]).astype(np.uint8)
    contours, _ = cv2.findContours(corners, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        pts = c.reshape(-1, 2).astype(np.float32)
        if len(pts) < 3:  # cannot happen for a non-empty mask on the corner grid; be safe
            continue
        polys.append(pts.reshape(-1))
    return polys


def _count_peaks(values: np.ndarray, mask: np.ndarray, threshold: float, contour_factor: float,
                 min_prominence: float) -> tuple[list[tuple[int, int]], list[float]]:
    """Peaks of one component (a crop ``values`` with its ``mask``): prominent local maxima.

    Candidates are the local maxima (3x3 ``maximum_filter``; ties broken by raster order so a flat
    top counts once). The component's brightest pixel is always a peak. Another candidate of value
    ``v`` is a peak when it rises at least one contour step above its saddle ``s`` (the highest
    level at which it joins a higher pixel), i.e. ``v >= contour_factor * s``, and
    ``v - s >= min_prominence``. Tested directly: in the region above ``v / contour_factor`` (and
    above ``v - min_prominence``) connected to the candidate there is no higher pixel. Because
    every pixel of a component lies above ``threshold``, candidates below
    ``contour_factor * threshold`` can never qualify and are not tested.

    Returns the peaks' (x, y) in the crop and their values, brightest first.
    """
    v = np.where(mask, values, -np.inf)
    mf = ndimage.maximum_filter(v, footprint=_EIGHT, mode="constant", cval=-np.inf)
    cand = mask & (v == mf)
    ys, xs = np.nonzero(cand)
    vals = v[ys, xs]
    flat_idx = ys * v.shape[1] + xs
    order = np.lexsort((flat_idx, -vals))  # brightest first, then raster order
    ys, xs, vals, flat_idx = ys[order], xs[order], vals[order], flat_idx[order]
    raster = np.arange(v.size).reshape(v.shape)
    peaks = [(int(xs[0]), int(ys[0]))]
    pvals = [float(vals[0])]
    taken = np.zeros(v.shape, bool)  # pixels in a plateau already judged
    for y, x, val, fi in zip(ys[1:], xs[1:], vals[1:], flat_idx[1:]):
        if val < contour_factor * threshold or val - threshold < min_prominence or taken[y, x]:
            continue
        level = min(val / contour_factor, val - min_prominence)
        lab, _ = ndimage.label(v > level, structure=_EIGHT)
        region = lab == lab[y, x]
        same = region & (v == val)
        if ((v > val) & region).any() or (same & (raster < fi)).any():
            taken |= same
            continue
        taken |= same
        peaks.append((int(x), int(y)))
        pvals.append(float(val))
    return peaks, pvals


def group_components(components: Sequence[Component], link_factor: float = 1.5,
                     link_max: float = 60.0, link_min: float = 4.0) -> list[list[int]]:
    """Group components into sources: single-linkage on bounding-box gaps.

    Two components are linked when the gap between their bounding boxes (Euclidean distance
    between the boxes, 0 when they overlap) is at most
    ``clip(link_factor * max(size_i, size_j), link_min, link_max)`` pixels, ``size`` being a
    component's larger bounding-box side. Sources are the connected sets of that relation (so a
    core between two lobes joins both). Returns lists of component indices, each sorted, ordered by
    their first component.
    """
    n = len(components)
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if n > 1:
        b = np.array([c.box for c in components], dtype=np.float64)
        size = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
        dx = np.maximum(0.0, np.maximum(b[None, :, 0] - b[:, None, 2], b[:, None, 0] - b[None, :, 2]))
        dy = np.maximum(0.0, np.maximum(b[None, :, 1] - b[:, None, 3], b[:, None, 1] - b[None, :, 3]))
        gap = np.hypot(dx, dy)
        reach = np.clip(link_factor * np.maximum(size[:, None], size[None, :]), link_min, link_max)
        ii, jj = np.nonzero(np.triu(gap <= reach, 1))
        for i, j in zip(ii.tolist(), jj.tolist()):
            ri, rj = find(i), find(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


def derive_sources(radio: np.ndarray, sigma_level: float = 4.0, contour_factor: float = 2.0,
                   min_pixels: int = 5, min_prominence: float | None = None, link_factor: float = 1.5,
                   link_max: float = 60.0, noise: float | None = None,
                   threshold: float | None = None) -> Labelling:
    """Derive RGZ/ClaRAN labels from a radio image alone.

    radio: (H, W) float image (Jy/beam or any linear intensity); NaN/inf blanks are set to 0 here
        (counted in ``Labelling.n_blank``).
    sigma_level: the lowest contour in units of the noise (RGZ: 4).
    contour_factor: ratio of successive contour levels (RGZ: 2).
    min_pixels: components with fewer pixels are dropped as noise.
    min_prominence: a peak must also rise this much (image units) above its saddle; default
        ``(contour_factor - 1) * L_0``, the first contour step (implied by the ratio rule anyway).
    link_factor, link_max: the grouping rule of :func:`group_components`.
    noise: sigma to use instead of :func:`estimate_noise`.
    threshold: the lowest contour ``L_0`` to use instead of ``sigma_level * noise``.

    When the noise estimate is 0 (the background is already clipped, as in firstgalaxydata's
    PNGs), ``L_0`` is half the smallest positive value above the background, i.e. every pixel the
    data's own clip kept; ``Labelling.clipped`` is then True.
    """
    x = np.asarray(radio, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"derive_sources wants a 2-D image, got shape {x.shape}")
    finite = np.isfinite(x)
    n_blank = int(x.size - finite.sum())
    if n_blank:
        x = np.where(finite, x, np.float32(0))
    sigma = estimate_noise(radio) if noise is None else float(noise)
    clipped = False
    if threshold is None:
        if np.isfinite(sigma) and sigma > 0:
            threshold = sigma_level * sigma
        else:
            clipped = True
            bg = float(np.median(x))
            above = x[x > bg]
            threshold = bg + 0.5 * float(above.min() - bg) if above.size else np.inf
    threshold = float(threshold)
    vmax = float(x.max()) if x.size else 0.0
    levels = contour_levels(vmax, threshold, contour_factor) if np.isfinite(threshold) else np.zeros(0)

    components: list[Component] = []
    if np.isfinite(threshold) and vmax > threshold:
        lab, n = ndimage.label(x > threshold, structure=_EIGHT)
        for i, sl in enumerate(ndimage.find_objects(lab), start=1):
            if sl is None:
                continue
            crop_mask = lab[sl] == i
            npix = int(crop_mask.sum())
            if npix < min_pixels:
                continue
            crop = x[sl]
            peaks, pvals = _count_peaks(crop, crop_mask, threshold, contour_factor,
                                        threshold * (contour_factor - 1) if min_prominence is None else min_prominence)
            y0, x0 = sl[0].start, sl[1].start
            full = np.zeros(x.shape, dtype=bool)
            full[sl] = crop_mask
            polys = [p + np.tile(np.array([x0, y0], np.float32), len(p) // 2) for p in mask_to_polygons(crop_mask)]
            components.append(Component(
                mask=full,
                box=(float(sl[1].start), float(sl[0].start), float(sl[1].stop), float(sl[0].stop)),
                polygons=polys,
                peaks=[(px + x0, py + y0) for px, py in peaks],
                peak_values=pvals,
                n_pixels=npix,
                flux=float(crop[crop_mask].sum()),
            ))

    kept, skipped = [], []
    for g in group_components(components, link_factor=link_factor, link_max=link_max):
        comps = [components[i] for i in g]
        src = RadioSource(components=comps, class_name=f"{len(comps)}C_{sum(c.n_peaks for c in comps)}P")
        if src.class_name in RGZ_CLASSES:
            kept.append(src)
        else:
            if src.n_components > 3:
                why = f"{src.n_components} components (ClaRAN's classes have at most 3)"
            elif src.n_peaks > 3:
                why = f"{src.n_peaks} peaks (ClaRAN's classes have at most 3)"
            else:
                why = f"{src.n_components} components with {src.n_peaks} peaks is not a ClaRAN class"
            src.reason = f"{src.class_name} not one of {', '.join(RGZ_CLASSES)}: {why}"
            skipped.append(src)
    return Labelling(sources=kept, skipped=skipped, components=components, noise=float(sigma),
                     threshold=threshold, levels=levels, n_blank=n_blank, clipped=clipped)


# ---------------------------------------------------------------------------------------------
# rendering: ClaRAN's D1 / D3 / D4 inputs
# ---------------------------------------------------------------------------------------------

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


def pixel_boxes_to_world(boxes, wcs, pixel_centre_offset: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Sky positions (RA, Dec in degrees, the WCS's own frame) of box centres.

    boxes: (N, 4) ``x1, y1, x2, y2`` in the FITS image's pixel grid, library convention (pixel
    ``i`` spans ``[i, i + 1)``). The centre ``((x1+x2)/2, (y1+y2)/2)`` minus
    ``pixel_centre_offset`` is a position in the FITS's 0-based pixel-centre grid, converted with
    ``wcs.pixel_to_world_values``. Pass ``pixel_centre_offset=0`` for boxes already counted in
    pixel centres.
    """
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    cx = (b[:, 0] + b[:, 2]) / 2.0 - pixel_centre_offset
    cy = (b[:, 1] + b[:, 3]) / 2.0 - pixel_centre_offset
    ra, dec = wcs.pixel_to_world_values(cx, cy)
    return np.atleast_1d(np.asarray(ra, dtype=np.float64)), np.atleast_1d(np.asarray(dec, dtype=np.float64))


# ---------------------------------------------------------------------------------------------
# COCO export
# ---------------------------------------------------------------------------------------------

COCO_CATEGORIES = [{"id": i + 1, "name": n, "supercategory": "radio source"} for i, n in enumerate(RGZ_CLASSES)]


def _source_annotation(src: RadioSource, scale: float = 1.0) -> dict:
    x1, y1, x2, y2 = (v * scale for v in src.box)
    return {
        "category_id": src.category_id,
        "bbox": [x1, y1, x2 - x1, y2 - y1],
        "area": float(src.area * scale * scale),
        "segmentation": [[round(float(v) * scale, 3) for v in p] for p in src.polygons],
        "iscrowd": 0,
        "n_components": src.n_components,
        "n_peaks": src.n_peaks,
        "peaks": [[(px + 0.5) * scale, (py + 0.5) * scale] for c in src.components for px, py in c.peaks],
    }


def _skip_record(src: RadioSource, file_name: str, scale: float = 1.0) -> dict:
    return {"file": file_name, "class": src.class_name, "box": [v * scale for v in src.box], "reason": src.reason}


def _split_indices(n: int, test_fraction: float, seed: int) -> np.ndarray:
    """Boolean (n,): True for test images. Deterministic in ``seed``; when 0 < fraction < 1 and
    n >= 2, both splits get at least one image."""
    if not 0.0 <= test_fraction <= 1.0:
        raise ValueError(f"test_fraction must be in [0, 1], got {test_fraction}")
    n_test = int(round(n * test_fraction))
    if 0 < test_fraction < 1 and n >= 2:
        n_test = min(max(n_test, 1), n - 1)
    is_test = np.zeros(n, bool)
    is_test[np.random.default_rng(seed).permutation(n)[:n_test]] = True
    return is_test


def write_coco(out_dir, records: list[dict], is_test: np.ndarray, extra_info: dict | None = None) -> dict:
    """Write ``annotations/instances_{train,test}.json`` from per-image records.

    A record is ``{"image": {file_name, width, height, ...}, "annotations": [ann, ...],
    "skipped": [...]}`` (images already written under ``out_dir/images``). Image ids are 1..N in
    record order, annotation ids 1..M. Returns the summary: counts per class for train, test and
    total, image counts, and the skipped sources.
    """
    out_dir = Path(out_dir)
    (out_dir / "annotations").mkdir(parents=True, exist_ok=True)
    summary = {"train": Counter(), "test": Counter(), "total": Counter(),
               "images": {"train": 0, "test": 0}, "skipped": []}
    splits = {"train": {"images": [], "annotations": []}, "test": {"images": [], "annotations": []}}
    ann_id = 0
    for img_id, (rec, test) in enumerate(zip(records, is_test), start=1):
        split = "test" if test else "train"
        img = dict(rec["image"], id=img_id)
        splits[split]["images"].append(img)
        summary["images"][split] += 1
        for ann in rec["annotations"]:
            ann_id += 1
            splits[split]["annotations"].append(dict(ann, id=ann_id, image_id=img_id))
            name = RGZ_CLASSES[ann["category_id"] - 1]
            summary[split][name] += 1
            summary["total"][name] += 1
        summary["skipped"].extend(dict(s, split=split) for s in rec.get("skipped", []))
    info = {"description": "Radio sources labelled by gluon_rcnn.data.rgz (ClaRAN classes)", **(extra_info or {})}
    for split, d in splits.items():
        coco = {"info": info, "images": d["images"], "annotations": d["annotations"], "categories": COCO_CATEGORIES}
        tmp = out_dir / "annotations" / f"instances_{split}.json.tmp"
        with open(tmp, "w") as f:
            json.dump(coco, f)
        os.replace(tmp, out_dir / "annotations" / f"instances_{split}.json")
    for k in ("train", "test", "total"):
        summary[k] = {c: int(summary[k][c]) for c in RGZ_CLASSES}
    return summary


def _find_ir(ir_dir: Path, stem: str) -> Path | None:
    for ext in (".fits", ".fits.gz", ".fit", ".fts"):
        p = ir_dir / (stem + ext)
        if p.exists():
            return p
    return None


def _write_png(path: Path, rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"cannot write {path}")


def build_coco_dataset(fits_paths: Iterable, out_dir, render: str = "D1", ir_dir=None,
                       test_fraction: float = 0.2, seed: int = 0, sigma_level: float = 4.0,
                       contour_factor: float = 2.0, min_pixels: int = 5, link_factor: float = 1.5,
                       link_max: float = 60.0, progress: Callable[[int, int, str], None] | None = None) -> dict:
    """Label FITS radio images and write a COCO dataset under ``out_dir``.

    Writes ``images/<stem>.png`` (the rendering, same size as the FITS), and
    ``annotations/instances_train.json`` / ``instances_test.json``: categories are
    :data:`RGZ_CLASSES` with ids 1..6; one annotation per kept source (bbox xywh, segmentation = its
    components' polygons, area = pixel count, iscrowd 0, plus n_components/n_peaks/peaks); images
    carry ``fits_path``, ``noise``, ``threshold``, ``n_blank`` and the ``skipped`` sources.

    render: 'D1' (radio only), 'D3' (contours on infrared) or 'D4' (D3, infrared masked outside the
        sources' hulls); D3/D4 read ``ir_dir/<fits stem>.fits`` and reproject it to the radio grid.
    test_fraction, seed: the images (sorted by path) are split at random, deterministically.
    progress: called as ``progress(i, n, path)`` after each file.

    Returns the summary of :func:`write_coco` plus ``failed``: files that could not be read, with
    the error.
    """
    render = render.upper()
    if render not in ("D1", "D3", "D4"):
        raise ValueError(f"render must be D1, D3 or D4, got {render!r}")
    if render != "D1" and ir_dir is None:
        raise ValueError(f"render={render} draws radio contours over infrared: pass ir_dir")
    paths = sorted({str(Path(p)) for p in fits_paths})
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    records, failed, used_names = [], [], set()
    for i, p in enumerate(paths):
        try:
            rec = _fits_record(Path(p), out_dir, render, ir_dir, used_names, sigma_level=sigma_level,
                               contour_factor=contour_factor, min_pixels=min_pixels,
                               link_factor=link_factor, link_max=link_max)
            records.append(rec)
        except (FITSError, FileNotFoundError) as e:
            failed.append({"file": p, "error": str(e)})
        if progress is not None:
            progress(i + 1, len(paths), p)
    summary = write_coco(out_dir, records, _split_indices(len(records), test_fraction, seed),
                         extra_info={"render": render, "sigma_level": sigma_level,
                                     "contour_factor": contour_factor, "min_pixels": min_pixels,
                                     "link_factor": link_factor, "link_max": link_max, "seed": seed})
    summary["failed"] = failed
    return summary


def render_fits(path, render: str = "D1", ir_dir=None, **kw):
    """Read a radio FITS, derive its sources and render it as the network sees it.

    Returns ``(rgb uint8 (H, W, 3) on the FITS pixel grid, wcs, labelling)``. ``render`` is
    'D1' (radio only), 'D3' or 'D4' (both need ``ir_dir`` holding an infrared FITS of the same
    stem, reprojected onto the radio grid). ``kw`` goes to :func:`derive_sources`.
    """
    path = Path(path)
    if render not in ("D1", "D3", "D4"):
        raise ValueError(f"render must be D1, D3 or D4, got {render!r}")
    radio, wcs, _ = read_fits(path)
    lab = derive_sources(radio, **kw)
    if render == "D1":
        return render_d1(radio, noise=lab.noise), wcs, lab
    if ir_dir is None:
        raise ValueError(f"render {render} needs an infrared image folder (ir_dir)")
    ir_path = _find_ir(Path(ir_dir), path.stem)
    if ir_path is None:
        raise FileNotFoundError(f"{path}: no infrared image {path.stem}.fits in {ir_dir}")
    ir, ir_wcs, _ = read_fits(ir_path)
    ir = reproject_to(ir, ir_wcs, wcs, radio.shape)
    if render == "D3":
        return render_d3(radio, ir, levels=lab.levels), wcs, lab
    # every source's own hull (skipped ones too: the rendering sees all radio emission)
    return render_d4(radio, ir, [s.masks for s in lab.sources + lab.skipped], levels=lab.levels), wcs, lab


def _fits_record(path: Path, out_dir: Path, render: str, ir_dir, used_names: set, **kw) -> dict:
    rgb, wcs, lab = render_fits(path, render, ir_dir, **kw)
    radio_shape = rgb.shape[:2]
    name = path.stem + ".png"
    k = 1
    while name in used_names:
        name = f"{path.stem}_{k}.png"
        k += 1
    used_names.add(name)
    _write_png(out_dir / "images" / name, rgb)
    image = {"file_name": name, "width": int(radio_shape[1]), "height": int(radio_shape[0]),
             "fits_path": str(path.resolve()), "noise": lab.noise, "threshold": lab.threshold,
             "n_blank": lab.n_blank}
    skipped = [_skip_record(s, name) for s in lab.skipped]
    image["skipped"] = skipped
    return {"image": image, "annotations": [_source_annotation(s) for s in lab.sources], "skipped": skipped}


# ---------------------------------------------------------------------------------------------
# embedded demo data: real FIRST cutouts shipped inside the firstgalaxydata wheel
# ---------------------------------------------------------------------------------------------

DEMO_MORPHOLOGIES = ("FRI", "FRII", "Bent", "Compact")


def _firstgalaxydata_zip() -> Path:
    """``galaxy_data.zip`` inside the installed ``firstgalaxydata`` package (found without
    importing it: its loader would try to download)."""
    import importlib.util

    spec = importlib.util.find_spec("firstgalaxydata")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("the demo dataset needs the PyPI package firstgalaxydata (pip install firstgalaxydata)")
    for loc in spec.submodule_search_locations:
        p = Path(loc) / "galaxy_data.zip"
        if p.exists():
            return p
    raise FileNotFoundError(f"firstgalaxydata is installed at {list(spec.submodule_search_locations)} "
                            "but holds no galaxy_data.zip")


def build_demo_dataset(out_dir, n_images: int = 200, size: int = 150, seed: int = 0,
                       test_fraction: float = 0.2, sigma_level: float = 4.0, contour_factor: float = 2.0,
                       min_pixels: int = 10, link_factor: float = 1.5, link_max: float = 60.0) -> dict:
    """The demo COCO dataset from the real FIRST cutouts packaged in ``firstgalaxydata``.

    The wheel ships 2,158 distinct 300x300 uint8 PNGs (``galaxy_data/{train,valid,test}/<class>/``,
    classes FRI, FRII, Bent, Compact; their background is already clipped at the catalogue's noise
    level). ``n_images`` of them are drawn, a quarter from each morphology, at random with ``seed``,
    skipping cutouts where no source of the six ClaRAN classes is found. Each is labelled by
    :func:`derive_sources` on its full-resolution PNG intensities (the noise is MAD-based; with the
    clipped background it is 0, so the lowest contour is the data's own clip, about 3 sigma rather
    than ClaRAN's 4; ``min_pixels`` defaults to 10, about one FIRST beam at 1.8"/pixel, to drop the
    noise islands that this lower contour lets through), rendered by
    :func:`render_d1`, and the image, boxes and polygons are scaled to ``size`` x ``size``
    (INTER_AREA). Same layout as :func:`build_coco_dataset`; images carry ``source`` (the member of
    the zip) and ``morphology``. Returns the summary of :func:`write_coco`.
    """
    zpath = _firstgalaxydata_zip()
    out_dir = Path(out_dir)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(zpath) as zf:
        members = sorted(m for m in zf.namelist() if m.endswith(".png") and m.split("/")[1] in ("train", "valid", "test"))
        by_class = {c: [m for m in members if m.split("/")[2] == c] for c in DEMO_MORPHOLOGIES}
        quota = {c: n_images // len(DEMO_MORPHOLOGIES) + (i < n_images % len(DEMO_MORPHOLOGIES))
                 for i, c in enumerate(DEMO_MORPHOLOGIES)}
        chosen: list[tuple[str, str, Labelling, np.ndarray]] = []
        for c in DEMO_MORPHOLOGIES:
            order = rng.permutation(len(by_class[c]))
            got = 0
            for j in order:
                if got >= quota[c]:
                    break
                m = by_class[c][j]
                img = cv2.imdecode(np.frombuffer(zf.read(m), np.uint8), cv2.IMREAD_GRAYSCALE)
                if img is None:
                    continue
                lab = derive_sources(img.astype(np.float32), sigma_level=sigma_level, contour_factor=contour_factor,
                                     min_pixels=min_pixels, link_factor=link_factor, link_max=link_max)
                if not lab.sources:
                    continue
                chosen.append((m, c, lab, img))
                got += 1
    records = []
    for m, c, lab, img in chosen:
        h, w = img.shape
        scale = size / max(h, w)
        rgb = render_d1(img.astype(np.float32), noise=lab.noise)
        if scale != 1.0:
            rgb = cv2.resize(rgb, (int(round(w * scale)), int(round(h * scale))), interpolation=cv2.INTER_AREA)
        name = f"{c}_{Path(m).stem}.png"
        _write_png(out_dir / "images" / name, rgb)
        skipped = [_skip_record(s, name, scale) for s in lab.skipped]
        records.append({
            "image": {"file_name": name, "width": int(rgb.shape[1]), "height": int(rgb.shape[0]),
                      "source": f"firstgalaxydata:{m}", "morphology": c, "scale": scale,
                      "threshold": lab.threshold, "skipped": skipped},
            "annotations": [_source_annotation(s, scale) for s in lab.sources],
            "skipped": skipped,
        })
    return write_coco(out_dir, records, _split_indices(len(records), test_fraction, seed),
                      extra_info={"source": "firstgalaxydata galaxy_data.zip (FIRST cutouts)", "size": size,
                                  "seed": seed, "n_images": n_images})
