"""Renderings as ClaRAN made them: D1 (radio), D3 (radio contours on infrared), D4 (hull-masked infrared).

ClaRAN (Wu et al. 2019, MNRAS 482, 1211) trained on three renderings of each Radio Galaxy Zoo
(RGZ) subject. Where its code is public, this module follows it (ClaRAN v0.1,
github.com/chenwuperth/rgz_rcnn at b526c23, MIT licence; this is our own code, written from
reading it):

* **D1** — the radio image alone: ``<first_id>_logminmax.png`` in ClaRAN's image lists
  (``data/RGZdevkit2017/RGZ2017/ImageSets/Main/trainD1.txt``). ClaRAN made its PNGs with SAOImage
  DS9 (``tools/fits_utils.py`` ``fits2png``: ``-cmap gist_heat -cmap value 0.684039 0 -scale log
  -scale mode minmax -export png``): DS9's log stretch between the image's minimum and maximum.
  :func:`render_d1` (grey, the continuous formula, the array's own row order) and
  :func:`render_d1_ds9` (DS9's PNG byte for byte: its quantisation tables, any DS9 colour table,
  north up).
* **D3** — radio contours over the infrared image (``_infraredct``): ``tools/fuse_radio_ir.py``
  ``fuse(..., mask_ir=False)``. The noise is ``sigma = MAD / 0.6745`` (``_get_contour``; here
  :func:`~gluon_rcnn.radio.fits.estimate_noise`, the same estimator), the contours are
  ``tools/make_contours.py`` ``contour(fits, sigma * sigma_level, 2.0)``: 14 levels
  ``sigma_level * sigma * 2**k``, k = 0..13 (``make_levels(13, 2.0)`` rescaled so the first is
  ``sigma_level * sigma``), traced by CONREC (linear interpolation on the four triangles of each
  pixel cell) and drawn in blue. ``fuse``'s default ``sigma_level`` is 5, which is what
  ``tools/demo.py`` ``fuse_radio_ir_4_pred`` uses to make the network's D3/D4 input (its plot
  overlay uses 4). These are ClaRAN's contour levels, the default everywhere (survey tiles,
  datasets), not RGZ's own (``3*sqrt(3)*rms * sqrt(3)**k``, :func:`ladder_levels` ``'rgz'``, an
  option). :func:`render_d3`.
* **D4** — D3 with the infrared outside ONE convex hull replaced by a constant
  (``_infraredctmask``): ``tools/fuse_radio_ir.py`` ``get_masked_ir``: the hull of the
  bounding-box corners of every outermost (k = 0) contour of the image — all components of the
  image, whichever source they belong to — filled; outside it the infrared is replaced
  (``replace_mask_with_mean=True``, as ``fuse`` calls it) by a FIXED colour, ``bg_ir`` = BGR
  (14, 45, 213) (commented "mean for each channel": a mean of RGZ's infrared PNGs, not of the image);
  the contours are drawn on top. The hull here is built from each 8-connected component's pixel
  bounding box; ClaRAN's from each k = 0 contour line's CONREC bounding box (up to a pixel wider,
  truncated to integers).
  :func:`render_d4`.

What is ours, not ClaRAN's: ClaRAN's infrared images were RGZ's own infrared (WISE) PNGs, already
on the radio cutout's footprint. Here the user supplies the infrared as a FITS image with a
celestial WCS; it is reprojected onto the radio pixel grid (:func:`reproject_to`,
:func:`infrared_on_radio_grid`) and stretched to grey by :func:`stretch_ir` (percentile limits,
square root). ClaRAN drew its 0.25 pt contour lines with matplotlib at 150 dpi on the (larger)
infrared PNG; we draw 1 px anti-aliased lines at ``scale`` times the radio grid. :func:`render_d1` is
grey and renders NaN blanks as 0; fits2png names DS9's ``gist_heat`` (contrast 0.684039, bias 0), which
:func:`render_d1_ds9` reproduces given DS9's colour table file (not shipped: DS9 is GPL).
"""
from __future__ import annotations

import re
from typing import Sequence

import cv2
import numpy as np

from .fits import estimate_noise

#: ClaRAN's contour colour (matplotlib 'blue', tools/fuse_radio_ir.py ``fuse``), RGB
CONTOUR_RGB = (0, 0, 255)
#: ClaRAN's contour ladder: tools/make_contours.py NLEVELS = 13 -> 14 levels; fuse's LEVEL_INTERVAL
CLARAN_N_LEVELS = 14
CLARAN_LEVEL_FACTOR = 2.0
#: tools/fuse_radio_ir.py ``fuse`` default sigma_level (used for the network's D3/D4 input)
CLARAN_SIGMA_LEVEL = 5.0
#: RGZ's own ladder (zooniverse/Radio-Galaxy-Zoo scripts/make_contours.py as RGZ called it): 3*sqrt(3) sigma
#: times sqrt(3)**k, 14 levels (5.2, 9, 15.6, ... sigma); gluon_rcnn.radio.labels.RGZ_BASE_SIGMA/RGZ_CONTOUR_FACTOR
RGZ_SIGMA_LEVEL, RGZ_LEVEL_FACTOR = 3.0 * 3.0 ** 0.5, 3.0 ** 0.5
#: the contour ladders D3/D4 can draw: name -> (lowest level in sigma, ratio of successive levels)
CONTOUR_LADDERS = {"claran": (CLARAN_SIGMA_LEVEL, CLARAN_LEVEL_FACTOR), "rgz": (RGZ_SIGMA_LEVEL, RGZ_LEVEL_FACTOR)}
#: ClaRAN's D4 fill outside the hull: tools/fuse_radio_ir.py ``get_masked_ir``'s fixed ``bg_ir`` channels
#: (14, 45, 213) in OpenCV's BGR order (its "mean for each channel" of RGZ's infrared PNGs), here as RGB
CLARAN_D4_FILL_RGB = (213, 45, 14)
#: SAOImage DS9's default log exponent (``-log exp``), the ``a`` of its log stretch
DS9_LOG_EXPONENT = 1000.0


def _gray3(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(img[:, :, None], 3, axis=2))


def _finite(radio) -> np.ndarray:
    return np.nan_to_num(np.asarray(radio, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)


# ------------------------------------------------------------------------------------------------
# D1
# ------------------------------------------------------------------------------------------------

def render_d1(radio: np.ndarray, noise: float | None = None, *, exponent: float = DS9_LOG_EXPONENT,
              limits: tuple[float, float] | None = None) -> np.ndarray:
    """D1 (ClaRAN's ``_logminmax``): the radio image alone, uint8 (H, W, 3) grey RGB.

    SAOImage DS9's ``-scale log -scale mode minmax`` (ClaRAN v0.1 ``tools/fits_utils.py``
    ``fits2png``), with ``lo, hi`` the minimum and maximum of the finite pixels (or ``limits``)::

        x = clip((v - lo) / (hi - lo), 0, 1)
        y = log10(a * x + 1) / log10(a)          # a = exponent, DS9's default 1000
        out = round(255 * min(y, 1))

    NaN/inf pixels are 0 (black); a constant image renders black. ``noise`` is accepted for
    callers of the earlier noise-floor stretch and ignored: min-max limits use no noise.
    """
    del noise
    v = np.asarray(radio, dtype=np.float64)
    finite = np.isfinite(v)
    out = np.zeros(v.shape, np.uint8)
    if not finite.any():
        return _gray3(out)
    lo, hi = (float(v[finite].min()), float(v[finite].max())) if limits is None else map(float, limits)
    if not hi > lo:
        return _gray3(out)
    a = float(exponent)
    x = np.clip((np.where(finite, v, lo) - lo) / (hi - lo), 0.0, 1.0)
    y = np.clip(np.log10(a * x + 1.0) / np.log10(a), 0.0, 1.0)
    out = np.round(255.0 * y).astype(np.uint8)
    out[~finite] = 0
    return _gray3(out)


#: SAOImage DS9's tables (tksao/frame/base.h SCALESIZE; ds9/library/colorbar.tcl ``-colors``) and its
#: default NaN colour (ds9/library/ds9.tcl ``pds9(nan) white``)
DS9_SCALE_SIZE, DS9_COLORS, DS9_NAN_RGB = 16384, 2048, (255, 255, 255)


def _sao_colormap(colormap) -> list[tuple[np.ndarray, np.ndarray]]:
    """(x, y) float32 point lists of the red, green and blue channels: ``'grey'`` (DS9's built-in,
    tksao/colorbar/default.C: (0, 0)-(1, 1)) or an SAOimage colour table file (DS9's ``cmaps/*.sao``)."""
    if colormap in ("grey", "gray"):
        return [(np.float32([0, 1]), np.float32([0, 1]))] * 3
    text = "\n".join(line for line in open(colormap).read().splitlines() if not line.lstrip().startswith("#"))
    chans = []
    for name, nxt in (("RED:", "GREEN:"), ("GREEN:", "BLUE:"), ("BLUE:", None)):
        part = text.split(name, 1)[1]
        part = part.split(nxt, 1)[0] if nxt else part
        pts = [(float(x), float(y)) for x, y in re.findall(r"\(\s*([^,()\s]+)\s*,\s*([^,()\s]+)\s*\)", part)]
        chans.append((np.float32([p[0] for p in pts]), np.float32([p[1] for p in pts])))
    return chans


def _ds9_color_cells(colormap, contrast: float, bias: float, count: int = DS9_COLORS) -> np.ndarray:
    """DS9's colour cells (count, 3) uint8 RGB: tksao/colorbar/colorbar.C ``updateColorCells`` with
    colorbarbase.C ``calcContrastBias`` and sao.C ``getColorChar`` (float arithmetic, truncation)."""
    f32 = np.float32
    b, c = f32(bias), f32(contrast)
    i = np.arange(count)
    if abs(float(b) - 0.5) < 1e-4 and abs(float(c) - 1.0) < 1e-4:
        idx = i
    else:
        r = ((i.astype(f32) / f32(count) - b) * c).astype(np.float64) + 0.5
        idx = np.clip(np.trunc(r * count).astype(np.int64), 0, count - 1)
    x = idx.astype(f32) / f32(count)
    out = np.zeros((count, 3), np.uint8)
    for ch, (px, py) in enumerate(_sao_colormap(colormap)):
        head = np.searchsorted(px, x, side="left")  # the first point with X >= x; tail: the one before
        for k in range(count):
            h = head[k]
            if h == 0 or h == len(px):  # before the first point / after the last: that point's value
                y = py[0] if h == 0 else py[-1]
            else:
                m = f32((py[h] - py[h - 1]) / (px[h] - px[h - 1]))
                y = f32(m * f32(x[k] - px[h - 1]) + py[h - 1]) if m else py[h]
            out[k, ch] = int(f32(y * f32(255)))
    return out


def render_d1_ds9(radio: np.ndarray, *, colormap="grey", contrast: float = 1.0, bias: float = 0.5,
                  exponent: float = DS9_LOG_EXPONENT, limits: tuple[float, float] | None = None) -> np.ndarray:
    """ClaRAN's D1 PNG byte for byte: what SAOImage DS9 writes for ``ds9 FILE.fits -cmap COLORMAP
    [-cmap value CONTRAST BIAS] -scale log -scale mode minmax -export png OUT.png`` (ClaRAN v0.1
    tools/fits_utils.py ``fits2png``), as ``cv2.imread(OUT.png)[..., ::-1]`` reads it: uint8 RGB (H, W, 3).

    DS9 (tksao/frame/frame.C ``savePhotoCmd``, colorscale.C ``LogScale``) quantises twice: a pixel ``v``
    picks entry ``l = int((v - lo) / (hi - lo) * 16383 + 0.5)`` (0 at or below ``lo``, 16383 at or above
    ``hi``) of a 16384-entry table whose entry ``l`` is colour cell ``min(int(log10(a l / 16384 + 1) /
    log10(a) * 2048), 2047)`` of the colour map's 2048 cells (:func:`_ds9_color_cells`). NaN pixels are
    white. **The rows are north up**: DS9 writes the last FITS row first, so row 0 of the PNG is row
    ``H - 1`` of ``radio``. The grey levels differ from :func:`render_d1` (the continuous formula on the
    array's own rows) by at most 1. ``colormap``: ``'grey'`` or a DS9 colour table file (``cmaps/*.sao``).
    """
    v = np.asarray(radio, dtype=np.float64)
    finite = np.isfinite(v)
    if limits is None:
        lo, hi = (float(v[finite].min()), float(v[finite].max())) if finite.any() else (0.0, 0.0)
    else:
        lo, hi = map(float, limits)
    n = DS9_SCALE_SIZE - 1
    cells = _ds9_color_cells(colormap, contrast, bias)
    ii = np.arange(DS9_SCALE_SIZE, dtype=np.float64)
    a = float(exponent)
    ll = (np.log10(a * ii / DS9_SCALE_SIZE + 1) / np.log10(a) * DS9_COLORS).astype(np.int64)
    table = cells[np.minimum(ll, DS9_COLORS - 1)]
    with np.errstate(invalid="ignore", divide="ignore"):
        idx = np.where(v <= lo, 0, np.where(v >= hi, n, ((v - lo) / (hi - lo) * n + 0.5).astype(np.int64)
                                            if hi > lo else 0))
    out = table[np.where(finite, idx, 0)]
    out[~finite] = DS9_NAN_RGB
    return np.ascontiguousarray(out[::-1])


# ------------------------------------------------------------------------------------------------
# infrared
# ------------------------------------------------------------------------------------------------

def stretch_ir(ir: np.ndarray, percentiles: tuple[float, float] = (1.0, 99.5),
               mask: np.ndarray | None = None) -> np.ndarray:
    """Infrared image to uint8 (H, W): clip between two percentiles of its finite pixels, then
    ``255 * sqrt((v - lo) / (hi - lo))``. NaN blanks (e.g. outside a reprojected footprint) and
    pixels outside ``mask`` are 0. (Ours: ClaRAN used RGZ's already-rendered infrared PNGs.)"""
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
        out[~np.asarray(mask, dtype=bool)] = 0
    return out


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


def infrared_on_radio_grid(ir_fits, radio_wcs, shape: tuple[int, int]) -> np.ndarray:
    """A user's infrared FITS file (path; e.g. a WISE W1 cutout covering the radio image) read with
    :func:`~gluon_rcnn.radio.fits.read_fits` and reprojected onto the radio grid (:func:`reproject_to`).
    The file needs a 2-D image and a celestial WCS; pixels it does not cover are NaN (rendered 0)."""
    from .fits import read_fits

    ir, ir_wcs, _ = read_fits(ir_fits)
    return reproject_to(ir, ir_wcs, radio_wcs, shape)


def infrared_section(image, radio_wcs, shape: tuple[int, int], margin: int = 2) -> np.ndarray:
    """The part of an open infrared image (:class:`~gluon_rcnn.radio.fits.FITSImage`, memory-mapped)
    under a radio grid, reprojected onto it (:func:`reproject_to`): only the section covering the
    grid's footprint plus ``margin`` pixels (bilinear interpolation needs one) is read, so memory is
    bounded by the radio tile, whatever the size of the infrared image. The footprint is found by
    mapping the grid's border (pixel edges, 8 points per side) through the sky, frames converted by
    astropy (the two images may use different celestial frames). NaN where the infrared does not
    cover the grid."""
    from .coords import shift_wcs

    h, w = (int(s) for s in shape)
    t = np.linspace(0.0, 1.0, 9)
    xs = np.concatenate([t * w, t * w, np.zeros_like(t), np.full_like(t, w)]) - 0.5
    ys = np.concatenate([np.zeros_like(t), np.full_like(t, h), t * h, t * h]) - 0.5
    with np.errstate(invalid="ignore"):
        px, py = image.wcs.world_to_pixel(radio_wcs.pixel_to_world(xs, ys))
    px, py = np.asarray(px, np.float64), np.asarray(py, np.float64)
    H, W = image.shape
    ok = np.isfinite(px) & np.isfinite(py)
    if not ok.any():
        return np.full((h, w), np.nan, np.float32)
    x0, x1 = max(int(np.floor(px[ok].min())) - margin, 0), min(int(np.ceil(px[ok].max())) + margin + 1, W)
    y0, y1 = max(int(np.floor(py[ok].min())) - margin, 0), min(int(np.ceil(py[ok].max())) + margin + 1, H)
    if x1 - x0 < 2 or y1 - y0 < 2:
        return np.full((h, w), np.nan, np.float32)
    return reproject_to(image.section(y0, y1, x0, x1), shift_wcs(image.wcs, x0, y0), radio_wcs, (h, w))


# ------------------------------------------------------------------------------------------------
# contours (CONREC, as ClaRAN's tools/make_contours.py)
# ------------------------------------------------------------------------------------------------

def claran_levels(radio: np.ndarray, sigma_level: float = CLARAN_SIGMA_LEVEL, noise: float | None = None,
                  factor: float = CLARAN_LEVEL_FACTOR, n_levels: int = CLARAN_N_LEVELS) -> np.ndarray:
    """ClaRAN's contour levels ``sigma_level * sigma * factor**k``, k = 0..n_levels-1 (tools/
    fuse_radio_ir.py ``_get_contour`` -> tools/make_contours.py ``contour(f, sigma * sigma_level, 2.0)``).
    ``sigma`` = ``noise`` or MAD / 0.6745 of the finite pixels. Empty when the noise is not positive
    (an image clipped at its noise: no contour ladder can be built from it)."""
    sigma = estimate_noise(radio) if noise is None else float(noise)
    if not (np.isfinite(sigma) and sigma > 0):
        return np.zeros(0, np.float64)
    return float(sigma_level) * sigma * float(factor) ** np.arange(int(n_levels), dtype=np.float64)


def ladder_levels(radio: np.ndarray, ladder: str = "claran", noise: float | None = None) -> np.ndarray:
    """The 14 contour levels of a named ladder (:data:`CONTOUR_LADDERS`): ``'claran'`` (5 sigma x 2**k,
    ClaRAN's fuse, the default of D3/D4) or ``'rgz'`` (3*sqrt(3) sigma x sqrt(3)**k, RGZ's own);
    :func:`claran_levels` with that ladder's lowest level and ratio."""
    try:
        sigma_level, factor = CONTOUR_LADDERS[str(ladder).lower()]
    except KeyError:
        raise ValueError(f"unknown contour ladder {ladder!r}: one of {', '.join(CONTOUR_LADDERS)}") from None
    return claran_levels(radio, sigma_level, noise, factor)


def contour_segments(radio: np.ndarray, level: float) -> np.ndarray:
    """Line segments (N, 2, 2) ``[[x0, y0], [x1, y1]]`` of the contour of ``radio`` at ``level``
    (pixel centres at integer x = column, y = row), traced as CONREC (ClaRAN's tools/make_contours.py
    ``conrec``): each cell of four pixel centres is cut into four triangles around its centre (value:
    the mean of the corners), and the level is interpolated linearly along the triangles' edges."""
    d = _finite(radio)
    if d.shape[0] < 2 or d.shape[1] < 2:
        return np.zeros((0, 2, 2))
    h, w = d.shape
    yy, xx = np.mgrid[0:h - 1, 0:w - 1].astype(np.float64)
    corners = [  # (value, x, y) of the cell's corners, counter-clockwise
        (d[:-1, :-1], xx, yy), (d[:-1, 1:], xx + 1, yy), (d[1:, 1:], xx + 1, yy + 1), (d[1:, :-1], xx, yy + 1)]
    centre = (0.25 * (corners[0][0] + corners[1][0] + corners[2][0] + corners[3][0]), xx + 0.5, yy + 0.5)
    segs = []
    for k in range(4):
        tri = (corners[k], corners[(k + 1) % 4], centre)
        above = [t[0] >= level for t in tri]
        pts = []
        for (i, j) in ((0, 1), (1, 2), (2, 0)):
            cross = above[i] != above[j]
            vi, xi, yi = tri[i]
            vj, xj, yj = tri[j]
            with np.errstate(divide="ignore", invalid="ignore"):
                t = np.where(cross, (level - vi) / (vj - vi), 0.0)
            pts.append((cross, xi + t * (xj - xi), yi + t * (yj - yi)))
        n = pts[0][0].astype(int) + pts[1][0] + pts[2][0]
        sel = n == 2  # a triangle is cut by the level along exactly two of its edges
        if not sel.any():
            continue
        # the two crossed edges: (0,1)&(1,2), (1,2)&(2,0) or (2,0)&(0,1)
        for a, b in ((0, 1), (1, 2), (2, 0)):
            m = sel & pts[a][0] & pts[b][0]
            if m.any():
                segs.append(np.stack([np.stack([pts[a][1][m], pts[a][2][m]], -1),
                                      np.stack([pts[b][1][m], pts[b][2][m]], -1)], 1))
    return np.concatenate(segs) if segs else np.zeros((0, 2, 2))


def _draw_contours(rgb: np.ndarray, radio: np.ndarray, levels, scale: int = 1,
                   colour: tuple[int, int, int] = CONTOUR_RGB) -> np.ndarray:
    shift = 4
    for lev in levels:
        seg = contour_segments(radio, float(lev))
        if len(seg) == 0:
            continue
        # pixel centre (x, y) of the radio grid -> (x + 0.5) * scale - 0.5 on a canvas scale times larger
        p = np.round(((seg + 0.5) * scale - 0.5) * (1 << shift)).astype(np.int32).reshape(-1, 2, 1, 2)
        cv2.polylines(rgb, list(p), False, colour, 1, cv2.LINE_AA, shift)
    return rgb


# ------------------------------------------------------------------------------------------------
# D3, D4
# ------------------------------------------------------------------------------------------------

def _canvas(ir: np.ndarray, radio_shape, scale: int, percentiles, mask=None) -> np.ndarray:
    ir = np.asarray(ir)
    if ir.shape != tuple(radio_shape):
        raise ValueError(f"infrared image {ir.shape} is not on the radio grid {tuple(radio_shape)}: "
                         f"reproject it first (reproject_to / infrared_on_radio_grid)")
    g = stretch_ir(ir, percentiles, mask=mask)
    if scale != 1:
        g = cv2.resize(g, (g.shape[1] * scale, g.shape[0] * scale), interpolation=cv2.INTER_LINEAR)
    return _gray3(g)


def render_d3(radio: np.ndarray, ir: np.ndarray, levels: Sequence[float] | None = None,
              noise: float | None = None, sigma_level: float = CLARAN_SIGMA_LEVEL,
              contour_factor: float = CLARAN_LEVEL_FACTOR, ir_percentiles: tuple[float, float] = (1.0, 99.5),
              ir_mask: np.ndarray | None = None, scale: int = 1,
              colour: tuple[int, int, int] = CONTOUR_RGB) -> np.ndarray:
    """D3 (ClaRAN's ``_infraredct``): radio contours over the infrared, uint8 RGB (H*scale, W*scale, 3).

    ``ir`` must already be on the radio pixel grid (:func:`reproject_to`, :func:`infrared_on_radio_grid`).
    The infrared is stretched to grey by :func:`stretch_ir`; the contours are ClaRAN's
    (:func:`claran_levels`: ``sigma_level * sigma * contour_factor**k``, 14 levels; or ``levels``),
    traced as CONREC (:func:`contour_segments`) and drawn 1 px wide in ``colour`` (ClaRAN: blue) on a
    canvas ``scale`` times the radio grid. ``ir_mask`` (H, W bool): infrared outside it is 0.
    """
    radio = np.asarray(radio)
    rgb = _canvas(ir, radio.shape, int(scale), ir_percentiles, ir_mask)
    if levels is None:
        levels = claran_levels(radio, sigma_level, noise, contour_factor)
    return _draw_contours(rgb, radio, levels, int(scale), colour)


def _flat_masks(components) -> list[np.ndarray]:
    """Every component mask in ``components``: an (H, W) bool array, an object with ``.mask``
    (a Component) or ``.masks`` (a RadioSource), or any nesting of lists of those."""
    if components is None:
        return []
    if isinstance(components, np.ndarray) and components.ndim == 2:
        return [components.astype(bool)]
    if hasattr(components, "mask") and not isinstance(components, np.ndarray):
        return [np.asarray(components.mask, dtype=bool)]
    if hasattr(components, "masks") and not isinstance(components, (list, tuple, np.ndarray)):
        return [np.asarray(m, dtype=bool) for m in components.masks]
    if isinstance(components, np.ndarray) and components.ndim == 3:
        return [m.astype(bool) for m in components]
    out = []
    for c in components:
        out += _flat_masks(c)
    return out


def claran_components(radio: np.ndarray, level: float) -> list[np.ndarray]:
    """The image's components as ClaRAN's D4 hull sees them: the 8-connected regions above the lowest
    contour ``level`` (the outermost, k = 0, contours of tools/make_contours.py ``contour``), less
    ``filter_small``'s: a region whose bounding-box diagonal is not above ``8 * (width // 301)`` px
    (Python 2 integer division, as ClaRAN ran it: no region is dropped from images under 301 px)."""
    x = _finite(radio)
    n, lab = cv2.connectedComponents((x > level).astype(np.uint8), connectivity=8)
    min_diag = 8 * (x.shape[1] // 301)
    out = []
    for k in range(1, n):
        m = lab == k
        ys, xs = np.nonzero(m)
        if np.hypot(xs.max() - xs.min(), ys.max() - ys.min()) > min_diag:
            out.append(m)
    return out


def hull_mask(shape: tuple[int, int], components=None, positions=None, radius: float = 2.0) -> np.ndarray:
    """(H, W) bool: ONE convex hull around all components of the image (ClaRAN's ``get_masked_ir``).

    components: component masks (see :func:`render_d4`); each contributes the four corners of its
    bounding box, as ClaRAN's hull is built from the bounding boxes of the outermost contours.
    positions: (N, 2) pixel positions ``x, y`` of components (e.g. a catalogue's component positions
    converted with the radio WCS); each contributes a square of half-side ``radius`` px. All points go
    into one hull, whichever source they belong to. Empty when no point is given.
    """
    pts = []
    for m in _flat_masks(components):
        ys, xs = np.nonzero(m)
        if len(xs):
            x1, x2, y1, y2 = xs.min(), xs.max(), ys.min(), ys.max()
            pts += [(x1, y1), (x1, y2), (x2, y1), (x2, y2)]
    if positions is not None:
        r = float(radius)
        for x, y in np.asarray(positions, dtype=np.float64).reshape(-1, 2):
            pts += [(x - r, y - r), (x - r, y + r), (x + r, y - r), (x + r, y + r)]
    out = np.zeros(tuple(int(s) for s in shape), np.uint8)
    if pts:
        p = np.round(np.asarray(pts, np.float64)).astype(np.int32).reshape(-1, 1, 2)
        cv2.fillConvexPoly(out, cv2.convexHull(p), 1)
    return out.astype(bool)


def render_d4(radio: np.ndarray, ir: np.ndarray, components=None, *, positions=None, radius: float = 2.0,
              fill: float | str | tuple = "claran", levels: Sequence[float] | None = None, noise: float | None = None,
              sigma_level: float = CLARAN_SIGMA_LEVEL, contour_factor: float = CLARAN_LEVEL_FACTOR,
              ir_percentiles: tuple[float, float] = (1.0, 99.5), scale: int = 1,
              colour: tuple[int, int, int] = CONTOUR_RGB) -> np.ndarray:
    """D4 (ClaRAN's ``_infraredctmask``): D3 with the infrared outside ONE convex hull around all the
    image's components replaced by a constant, uint8 RGB (H*scale, W*scale, 3).

    components: the components: (H, W) bool masks, Components, RadioSources, or any nesting of lists of
    them (all are pooled: one hull, never one per source — a hull per source would hand the network the
    grouping it must predict). positions: and/or (N, 2) pixel positions (see :func:`hull_mask`). With
    neither, the components are the image's own regions above the lowest contour
    (:func:`claran_components`), as ClaRAN did. fill: what replaces the infrared outside the hull:
    ``'claran'`` (the default: ClaRAN's fixed colour, BGR (14, 45, 213) in ``get_masked_ir``, i.e.
    :data:`CLARAN_D4_FILL_RGB`; ClaRAN's ``replace_mask_with_mean`` uses this constant, not a mean of the
    image), ``'mean'`` (the mean of this image's stretched infrared), a grey level 0-255 or an RGB triple.
    Contours as :func:`render_d3`, drawn over the masked infrared.
    """
    radio = np.asarray(radio)
    if levels is None:
        levels = claran_levels(radio, sigma_level, noise, contour_factor)
    levels = [float(v) for v in levels]
    if components is None and positions is None:
        components = claran_components(radio, levels[0]) if levels else []
    hull = hull_mask(radio.shape, components, positions, radius)
    g = stretch_ir(ir if np.asarray(ir).shape == radio.shape else _bad_grid(ir, radio), ir_percentiles)
    if isinstance(fill, str):
        if fill not in ("claran", "mean"):
            raise ValueError(f"fill must be 'claran', 'mean', a grey level or an RGB triple, got {fill!r}")
        value = CLARAN_D4_FILL_RGB if fill == "claran" else (float(g.mean()),) * 3
    else:
        value = tuple(float(v) for v in np.broadcast_to(np.asarray(fill, np.float64), (3,)))
    rgb = _gray3(g)
    rgb[~hull] = np.clip(np.round(value), 0, 255).astype(np.uint8)
    s = int(scale)
    if s != 1:
        rgb = cv2.resize(rgb, (rgb.shape[1] * s, rgb.shape[0] * s), interpolation=cv2.INTER_LINEAR)
    return _draw_contours(np.ascontiguousarray(rgb), radio, levels, s, colour)


def _bad_grid(ir, radio):
    raise ValueError(f"infrared image {np.asarray(ir).shape} is not on the radio grid {np.asarray(radio).shape}: "
                     f"reproject it first (reproject_to / infrared_on_radio_grid)")
