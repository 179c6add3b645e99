"""Survey-scale prediction: FITS images of any size, tiled at the model's pixel scale, detections
merged across tile borders, one catalogue row per source (:mod:`.catalogue`).

The pipeline streams (:func:`predict_fits`): files are opened one at a time, memory-mapped and read
tile by tile (:class:`SurveyGrid`); each tile gets its own noise estimate and rendering; tiles of
one or several files are batched through the detector; a file's detections are merged and measured
as soon as its last tile is through, and its catalogue rows are yielded. Memory holds a batch of
tiles and the detections of the files in flight, whatever the size of a mosaic or the number of
files.

**Scale.** The model sees tiles at the scale it was trained at (:func:`model_scale`: its config's
``RADIO.PIXEL_SCALE``, ``RADIO.TILE``, ``RADIO.BEAM``; :func:`scale_defaults`): a converted ClaRAN
model 132 px tiles of 1.36"/pixel (3' cutouts, magnified to 600 by the model as in training); a model
recording none 300 px tiles at the survey's pixel scale (FIRST 1.8"). An input whose pixel scale
differs by more than 0.1% is regridded, tile by tile, with ``reproject.reproject_interp`` onto the
same projection with pixels ``pixel_scale / input scale`` times larger
(:func:`gluon_rcnn.radio.coords.scale_wcs`); one with a sharper beam than the model's is convolved to
it for the model's view, one with a coarser beam refused (:class:`SurveyGrid`). Catalogue pixel
positions are given in the input's own pixel grid.

**Tiling.** Tiles of ``tile`` x ``tile`` pixels (smaller images: one tile, the whole image),
starting every ``tile - overlap`` pixels (default overlap: 96, at most half the tile), the last
row/column aligned with the image's far edge, so two neighbouring tiles share at least ``overlap`` pixels.

**Islands** (:mod:`.islands`). Once a file's last tile is through, each detection is given the
islands it covers: the 8-connected regions above ``sigma_level`` x rms (at least ``min_pixels``
pixels) whose brightest pixel lies in its box. The rms is a noise map on fixed cells of about
``noise_box`` px laid out from the image's shape alone (one cell for a 300 px cutout), and islands
are always found whole (the region read grows until no island touches its edge), so an island is
the same pixels whichever tile's detection found it, and in a single-tile run. An island is named
by its brightest pixel.

**Merging rule** (:func:`merge_detections`). A tile border that is not an image edge is an *inner*
border. A detection whose box comes closer than ``edge_margin`` pixels to an inner border of its
tile may be a source cut in two (*cut*); the others are *whole*.

1. Whole detections covering islands, most islands first (then most island flux, highest score,
   the box: an order that depends on the detection alone, never on its tile), each become a source
   of the islands they cover that no earlier source took. A detection whose islands were all taken
   is dropped: a copy of a source another tile saw too, a part of one (a lobe of a double seen
   whole elsewhere, taken for a lone source), or another class on the same emission in the same
   tile. When only some were taken, the rest is a source flagged ``flag_shared``.
2. Cut detections covering islands no source took (sources too large for the overlap) are joined
   where they share such an island, their boxes intersect, or boxes of different tiles touch:
   each group is one source of those islands, with the union box, flagged ``flag_tile_edge``.
3. Detections covering no island are merged on their boxes: a whole one is kept unless a kept
   source overlaps it with IoU > ``merge_iou``; a cut one is dropped when half of its box lies in a
   kept source; the cut ones left are joined as in step 2.

*Each island in one row* (checked by :func:`merge_detections` on every call): step 1 gives each
island at most once, step 2 gives every island left over that a detection covers.

*Each source once, whatever the tiling*: let a source's box have sides at most ``L`` with
``overlap >= L + 2 * edge_margin``. On each axis take the last tile that starts at least
``edge_margin`` before the box; the next tile starts after that point and overlaps it by
``overlap``, so this tile's far inner border is at least ``edge_margin`` beyond the box: one tile
holds the source whole and (a detector that sees a source it holds whole as it would in one tile)
reports a whole detection ``D`` covering all its islands. Any other view of the source, from any
tile (a copy; a lone component; a box clipped at a border), covers a subset of those islands:
a copy ties with ``D`` (and is interchangeable with it), a strict subset comes after ``D`` in
step 1 or is cut (step 2, after step 1), so ``D``'s islands are all taken when it comes, and it is
dropped. The source is one row with all its components, as in a run on one tile holding the whole
image, where only ``D`` exists: since the order of step 1 does not depend on the tiling either,
both runs give every island to the same source (tests/test_radio_merge.py sweeps doubles and
triples across one and two tile borders against a single-tile run). The default ``overlap`` (96 px,
2.9' at FIRST's 1.8"; 66 px, 1.5', for ClaRAN's 132 px tiles of 1.36") covers most of ClaRAN's sources
(its training cutouts are 3' wide); larger ones are joined by step 2.

**Measurements** (:func:`gluon_rcnn.radio.catalogue.measure_islands`): per source, its islands'
pixel sums, centroid, peaks and size, and per island Gaussian fits (:mod:`.fitting`; ``fit``).

**Detectors.** Anything called as ``detector(images, tiles)`` with a list of uint8 (H, W, 3)
renderings and their :class:`Tile`\\ s, returning per image a dict of ``boxes`` (K, 4) (tile pixels,
pixel ``i`` spanning ``[i, i+1)``), ``scores`` (K,), ``labels`` (K,) in 1..C and optionally
``class_probs`` (K, C+1), and having ``classes``; :class:`ModelDetector` wraps a gluon_rcnn model.
An oracle built from known sources makes merging testable without a trained model.
"""
from __future__ import annotations

import datetime
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple

import numpy as np

from .catalogue import (FLAG_IMAGE_EDGE, FLAG_SHARED, FLAG_TILE_EDGE, beam_area_pixels, catalogue_tables,
                        measure_islands, sha256_file, source_rows, write_catalogue)
from .fitting import beam_from_header
from .islands import DEFAULT_NOISE_BOX, NoiseMap, find_islands
from .labels import RGZ_BASE_SIGMA, RGZ_CONTOUR_FACTOR
from .coords import IcrsWCS, pixel_scale_arcsec, scale_wcs, shift_wcs
from .fits import FITSError, FITSImage, MemoryImage, estimate_noise, jy_per_beam_factor, open_fits_image

logger = logging.getLogger(__name__)

__all__ = ["Survey", "SURVEYS", "SurveyGrid", "ModelScale", "model_scale", "scale_defaults", "default_overlap",
           "Tile", "tile_starts", "tile_grid", "ModelDetector", "TruthDetector",
           "build_mosaic",
           "merge_detections", "predict_fits", "predict_mosaic", "FileResult", "provenance", "write_results"]

DEFAULT_TILE = 300      # tile side when the model does not record its own (RADIO.TILE)
DEFAULT_OVERLAP = 96    # tile overlap, at most half the tile (default_overlap)


def default_overlap(tile: int) -> int:
    """The default overlap of ``tile`` px tiles: 96 px, at most half the tile (132 px tiles: 66)."""
    return min(DEFAULT_OVERLAP, int(tile) // 2)


class ModelScale(NamedTuple):
    """The sky scale a model was trained at (its config's ``RADIO`` keys; None where unknown):
    ``pixel_scale`` (arcsec/pixel of its training images), ``tile`` (their side, pixels), ``beam``
    (their resolution, FWHM arcsec)."""

    pixel_scale: float | None = None
    tile: int | None = None
    beam: float | None = None


def model_scale(model) -> ModelScale:
    """The :class:`ModelScale` a model's config records (``RADIO.PIXEL_SCALE``, ``RADIO.TILE``,
    ``RADIO.BEAM``; 0 or absent: unknown). The ClaRAN zoo entries (faster/mask_rcnn_fpn_resnet50_v1b_rgz,
    and the ClaRAN v0.2 checkpoint converted onto them) record ClaRAN's: 132 px cutouts of 3' (180/132 =
    1.36"/pixel) of FIRST (5.4" beam), resized to 600 by the model's PREPROC.TEST_SHORT_EDGE_SIZE; a model
    trained here records what its training config says (scripts/demo.py sets its dataset's)."""
    r = getattr(getattr(model, "config", None), "RADIO", None) or {}
    ps, tile, beam = (float(r.get("PIXEL_SCALE", 0) or 0), int(r.get("TILE", 0) or 0), float(r.get("BEAM", 0) or 0))
    return ModelScale(ps if ps > 0 else None, tile if tile > 0 else None, beam if beam > 0 else None)


def scale_defaults(detector, tile=None, overlap=None, pixel_scale=None, model_beam=None) -> tuple:
    """``(tile, overlap, pixel_scale, model_beam)`` for a run of ``detector``: each given value, else the
    scale the detector's model records (``detector.scale``, a :class:`ModelScale`), else ``DEFAULT_TILE``,
    :func:`default_overlap`, None (the survey's pixel scale) and None (no resolution matching).
    ``model_beam`` 0 turns resolution matching off."""
    sc = getattr(detector, "scale", None) or ModelScale()
    tile = int(tile or sc.tile or DEFAULT_TILE)
    overlap = default_overlap(tile) if overlap is None else int(overlap)
    pixel_scale = pixel_scale or sc.pixel_scale
    model_beam = sc.beam if model_beam is None else (float(model_beam) or None)
    return tile, overlap, pixel_scale, model_beam


@dataclass(frozen=True)
class Survey:
    """A survey's defaults: pixel scale and beam (FWHM, arcsec), used when a header lacks them."""

    name: str
    pixel_scale: float
    bmaj: float
    bmin: float
    unit: str = "Jy/beam"


#: An input survey's pixel scale and resolution, used where a header lacks them (BMAJ/BMIN of a header
#: win): FIRST (Becker et al. 1995): 1.8"/pixel images, 5.4" beam. NVSS (Condon et al. 1998): 15"/pixel,
#: 45" beam. VLASS (Lacy et al. 2020) quick-look images: 1.0"/pixel, about 2.5" beam (epoch-dependent:
#: their headers carry it). LoTSS DR2 (Shimwell et al. 2022): 1.5"/pixel, 6" beam. With a model that
#: records its training resolution (RADIO.BEAM, :class:`SurveyGrid` ``model_beam``) a sharper input
#: (VLASS for a FIRST-trained model) is convolved to it and a coarser one (NVSS, LoTSS) refused.
SURVEYS = {"FIRST": Survey("FIRST", 1.8, 5.4, 5.4), "NVSS": Survey("NVSS", 15.0, 45.0, 45.0),
           "VLASS": Survey("VLASS", 1.0, 2.5, 2.5), "LOTSS": Survey("LoTSS", 1.5, 6.0, 6.0)}


def _survey(s) -> Survey:
    if isinstance(s, Survey):
        return s
    try:
        return SURVEYS[str(s).upper()]
    except KeyError:
        raise ValueError(f"unknown survey {s!r}: one of {', '.join(SURVEYS)} or a Survey(...)") from None


class SurveyGrid:
    """A FITS image on the model's pixel grid, read by sections (memory bounded).

    ``wcs`` and ``shape`` are the working grid's: the file's own when its pixel scale is the
    model's (``regrid`` False), else the same projection with pixels ``factor`` times larger.
    ``wcs`` is seen through :class:`~gluon_rcnn.radio.coords.IcrsWCS`: its ``pixel_to_world_values``
    gives ICRS RA/Dec whatever the file's frame (Galactic, FK4 B1950, FK5 ...; ``frame`` names it).
    ``beam`` (BMAJ, BMIN arcsec) and ``bpa`` (deg) come from the header, else the survey's default
    (``beam_source`` says which). Pixels are read in Jy/beam: ``bunit`` is the file's BUNIT (or the
    survey's unit, assumed with a warning, when it has none; ``unit_source`` says which) and
    :func:`~gluon_rcnn.radio.fits.jy_per_beam_factor` the conversion. ``path`` may also be an open
    :class:`~gluon_rcnn.radio.fits.FITSImage` or :class:`~gluon_rcnn.radio.fits.MemoryImage`.
    Raises :class:`FITSError` naming the file for bad input.

    **Resolution** (``model_beam``, the FWHM in arcsec of the images the model was trained on; None:
    not matched). An input whose beam is sharper (its BMIN below ``model_beam``) is seen by the model
    (:meth:`view`) convolved to ``model_beam``: with the Gaussian whose covariance is the circular model
    beam's less the input beam's (astropy.convolution, after regridding; ``kernel``), the pixels scaled by
    the beam-area ratio so they stay per beam. An input whose beam is coarser (its BMAJ above
    ``model_beam``, by more than 0.1%) is refused: smoothing cannot sharpen it. The catalogue's
    measurements use :meth:`section`, the input's own resolution.
    """

    def __init__(self, path, survey="FIRST", pixel_scale: float | None = None, model_beam: float | None = None):
        self.survey = _survey(survey)
        if isinstance(path, (FITSImage, MemoryImage)):
            self.image = path
        else:
            self.image = open_fits_image(path, require_celestial=True)
        self.path = Path(self.image.path)
        try:
            self.input_scale = pixel_scale_arcsec(self.image.wcs)
            if not (np.isfinite(self.input_scale) and self.input_scale > 0):
                raise FITSError(f"{path}: the celestial WCS has no usable pixel scale ({self.input_scale})")
            target = float(pixel_scale or self.survey.pixel_scale)
            self.factor = target / self.input_scale
            self.regrid = abs(self.factor - 1.0) > 1e-3
            if self.regrid:
                self.wcs = scale_wcs(self.image.wcs, self.factor)
                H, W = self.image.shape
                # ceil, less float rounding (300 px of 1.8" at 180/132 "/px: 396 px, not 397)
                self.shape = (int(math.ceil(H / self.factor - 1e-9)), int(math.ceil(W / self.factor - 1e-9)))
                self.pixel_scale = target
            else:
                self.factor = 1.0
                self.wcs = self.image.wcs
                self.shape = self.image.shape
                self.pixel_scale = self.input_scale
            self.wcs = IcrsWCS(self.wcs)
            self.frame = self.wcs.frame_label
            hdr = self.image.header
            if "BMAJ" in hdr and "BMIN" in hdr and float(hdr["BMAJ"]) > 0 and float(hdr["BMIN"]) > 0:
                self.beam = (float(hdr["BMAJ"]) * 3600.0, float(hdr["BMIN"]) * 3600.0)
                self.bpa = float(hdr.get("BPA", 0.0) or 0.0)
                self.beam_source = "header"
            else:
                self.beam = (self.survey.bmaj, self.survey.bmin)
                self.bpa = 0.0
                self.beam_source = f"{self.survey.name} default"
            self.beam_area = beam_area_pixels(*self.beam, self.pixel_scale)
            self.image.scale, self.bunit, self.unit_source = jy_per_beam_factor(
                hdr, self.image.where, beam_arcsec=self.beam, beam_in_header=self.beam_source == "header",
                pixel_scale_arcsec=self.input_scale, default_unit=self.survey.unit)
            self.model_beam, self.kernel, self.kernel_gain = self._match_beam(model_beam, path)
        except BaseException:
            self.image.close()
            raise

    def _match_beam(self, model_beam, path):
        """``(model_beam, kernel, gain)``: the convolution kernel (astropy Kernel2D on the working grid,
        unit sum) that takes the input's beam to ``model_beam``, and the beam-area ratio; (.., None, 1.0)
        when no convolution is needed; FITSError when the input is coarser than the model's beam."""
        if not model_beam:
            return None, None, 1.0
        B = float(model_beam)
        bmaj, bmin = self.beam
        tol = 1e-3 * B
        if bmaj > B + tol:
            raise FITSError(
                f"{path}: its resolution ({bmaj:.3g}\" x {bmin:.3g}\" beam, {self.beam_source}) is coarser than the "
                f"model's ({B:.3g}\", the images it was trained on): smoothing cannot sharpen an image, so the model "
                f"would see sources unlike its training data. Use a model trained at this resolution (its RADIO.BEAM), "
                f"or turn resolution matching off (predict_fits model_beam=0, --model-beam 0) knowingly")
        if bmin >= B - tol:
            return B, None, 1.0
        from astropy.convolution import Gaussian2DKernel

        f2s = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))  # FWHM -> sigma
        px = self.pixel_scale
        # kernel covariance = circular model beam - input beam: along the input's major axis B^2 - bmaj^2,
        # along its minor axis B^2 - bmin^2 (arcsec^2, as sigma^2 in pixels of the working grid)
        s_major = math.sqrt(max(B * B - bmaj * bmaj, 0.0)) * f2s / px
        s_minor = math.sqrt(max(B * B - bmin * bmin, 0.0)) * f2s / px
        # BPA is east of north; on the grid north is +y and east -x (RA grows to the left): the major axis
        # points along (-sin BPA, cos BPA), at angle BPA + 90 deg from +x
        theta = math.radians(self.bpa + 90.0)
        floor = 1e-3  # an axis needing no smoothing: a delta along it
        k = Gaussian2DKernel(max(s_major, floor), max(s_minor, floor), theta=theta)
        k.normalize("integral")
        return B, k, (B * B) / (bmaj * bmin)

    def view(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Working-grid pixels ``[y0:y1, x0:x1]`` at the model's resolution: :meth:`section`, convolved
        to ``model_beam`` when the input is sharper (read with a margin of the kernel's half-size, so tiles
        join seamlessly; NaN blanks stay NaN and are interpolated over)."""
        if self.kernel is None:
            return self.section(y0, y1, x0, x1)
        from astropy.convolution import convolve

        m = max(self.kernel.shape) // 2
        data = self.section(y0 - m, y1 + m, x0 - m, x1 + m)
        if not np.isfinite(data).any():
            return data[m:m + y1 - y0, m:m + x1 - x0]
        out = convolve(data, self.kernel, boundary="extend", nan_treatment="interpolate", preserve_nan=True,
                       normalize_kernel=False)
        return (out[m:m + y1 - y0, m:m + x1 - x0] * self.kernel_gain).astype(np.float32)

    def close(self) -> None:
        self.image.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def to_input(self, x, y):
        """0-based working-grid pixel positions -> the input file's 0-based pixel grid."""
        if not self.regrid:
            return float(x), float(y)
        f = self.factor
        return float((x + 0.5) * f - 0.5), float((y + 0.5) * f - 0.5)

    def section(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Working-grid pixels ``[y0:y1, x0:x1]`` as float32, NaN outside the image and at blanks."""
        out = np.full((y1 - y0, x1 - x0), np.nan, np.float32)
        H, W = self.image.shape
        if not self.regrid:
            a0, a1, b0, b1 = max(y0, 0), min(y1, H), max(x0, 0), min(x1, W)
            if a1 > a0 and b1 > b0:
                out[a0 - y0:a1 - y0, b0 - x0:b1 - x0] = self.image.section(a0, a1, b0, b1)
            return out
        from reproject import reproject_interp

        f = self.factor
        # the input pixels under this section (0-based centres (q + 0.5) f - 0.5), with a margin
        p0x, p1x = (x0 + 0.5) * f - 0.5, (x1 - 0.5 + 0.5) * f - 0.5
        p0y, p1y = (y0 + 0.5) * f - 0.5, (y1 - 0.5 + 0.5) * f - 0.5
        b0, b1 = max(int(math.floor(p0x)) - 2, 0), min(int(math.ceil(p1x)) + 3, W)
        a0, a1 = max(int(math.floor(p0y)) - 2, 0), min(int(math.ceil(p1y)) + 3, H)
        if a1 - a0 < 2 or b1 - b0 < 2:
            return out
        data = self.image.section(a0, a1, b0, b1)
        res = reproject_interp((data, shift_wcs(self.image.wcs, b0, a0)), shift_wcs(self.wcs, x0, y0),
                               shape_out=out.shape, return_footprint=False)
        return np.asarray(res, dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# tiles
# ---------------------------------------------------------------------------------------------

def tile_starts(n: int, tile: int, overlap: int) -> list[int]:
    """Tile starts along an axis of ``n`` pixels: every ``tile - overlap``, the last at ``n - tile``."""
    if tile <= 0 or not 0 <= overlap < tile:
        raise ValueError(f"need tile > 0 and 0 <= overlap < tile, got tile={tile}, overlap={overlap}")
    if n <= tile:
        return [0]
    step = tile - overlap
    starts = list(range(0, n - tile, step))
    starts.append(n - tile)
    return starts


@dataclass
class Tile:
    """One tile of a file on its working grid: ``[y0:y1, x0:x1]``; ``inner``: whether its left,
    top, right and bottom borders are inner borders (shared with a neighbour, not the image edge)."""

    file_index: int
    path: Path
    index: int
    x0: int
    y0: int
    x1: int
    y1: int
    inner: tuple[bool, bool, bool, bool]
    rms: float = float("nan")
    wcs: object = None


def tile_grid(shape: tuple[int, int], tile: int, overlap: int) -> list[tuple[int, int, int, int, tuple]]:
    """``(x0, y0, x1, y1, inner)`` of every tile of an (H, W) grid, row by row."""
    H, W = shape
    xs, ys = tile_starts(W, tile, overlap), tile_starts(H, tile, overlap)
    out = []
    for y0 in ys:
        for x0 in xs:
            x1, y1 = min(x0 + tile, W), min(y0 + tile, H)
            out.append((x0, y0, x1, y1, (x0 > 0, y0 > 0, x1 < W, y1 < H)))
    return out


_FITS_EXTS = (".fits.gz", ".fits.fz", ".fits", ".fit", ".fts", ".fz")


def _find_ir(ir_dir, path: Path) -> Path:
    name = path.name
    for suf in _FITS_EXTS:
        if name.lower().endswith(suf):
            name = name[: -len(suf)]
            break
    for ext in (".fits", ".fits.gz", ".fits.fz", ".fit", ".fts", ".fz"):
        p = Path(ir_dir) / (name + ext)
        if p.exists():
            return p
    raise FileNotFoundError(f"{path}: no infrared image {name}.fits in {ir_dir}")


def render_tile(data: np.ndarray, rms: float, render: str = "D1", ir=None, tile_wcs=None,
                contours: str = "claran") -> np.ndarray:
    """The network's view of one tile: D1 (radio), or D3/D4 with the infrared ``ir`` (an open
    :class:`~gluon_rcnn.radio.fits.FITSImage`, read by the section under the tile, or ``(data, wcs)``)
    reprojected onto ``tile_wcs``. D3/D4 draw the contour ladder ``contours`` on the tile's noise
    ``rms`` (:func:`gluon_rcnn.radio.render.ladder_levels`: ``'claran'``, 5 sigma x 2**k as ClaRAN's
    fuse, the default; ``'rgz'``, RGZ's 3*sqrt(3) sigma x sqrt(3)**k); D4's hull is around the tile's
    regions above the lowest contour and its fill ClaRAN's fixed colour (:func:`~gluon_rcnn.radio.render.render_d4`).
    With the whole image as its tile this is :func:`gluon_rcnn.radio.render_fits`."""
    from .render import infrared_section, ladder_levels, render_d1, render_d3, render_d4, reproject_to

    if render == "D1":
        return render_d1(data, noise=rms)
    levels = ladder_levels(data, contours, noise=rms if np.isfinite(rms) and rms > 0 else None)
    if isinstance(ir, FITSImage):
        ir_tile = infrared_section(ir, tile_wcs, data.shape)
    else:
        ir_tile = reproject_to(ir[0], ir[1], tile_wcs, data.shape)
    if render == "D3":
        return render_d3(data, ir_tile, levels=levels)
    return render_d4(data, ir_tile, levels=levels)


# ---------------------------------------------------------------------------------------------
# detectors
# ---------------------------------------------------------------------------------------------

class ModelDetector:
    """A gluon_rcnn detector as a tile detector: batches of renderings in, detections scoring at
    least ``score_thresh`` out, each with its RoI's class-probability vector (``class_probs``).

    ``scale`` (:func:`model_scale`) is the sky scale the model was trained at; :func:`predict_fits` tiles
    at it. A rendering smaller than the model's tile (an image smaller than one tile) is padded with
    black to the tile's side before the model resizes it (PREPROC.TEST_SHORT_EDGE_SIZE), so every
    tile is magnified alike (ClaRAN: 132 px to 600, x4.55); its boxes are clipped to the rendering."""

    def __init__(self, model, device="cpu", score_thresh: float | None = None):
        self.model = model
        self.device = device
        self.scale = model_scale(model)
        self.classes = tuple(model.classes)
        if score_thresh is None:
            from ..viz import vis_score_thresh
            score_thresh = vis_score_thresh(model)
        self.score_thresh = float(score_thresh)

    def __call__(self, images, tiles=None):
        import torch

        t = self.scale.tile
        sizes = [im.shape[:2] for im in images]
        if t:
            images = [np.pad(im, ((0, max(t - im.shape[0], 0)), (0, max(t - im.shape[1], 0)), (0, 0)))
                      if im.shape[0] < t or im.shape[1] < t else im for im in images]
        with torch.inference_mode():
            dets = self.model([torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1).float().div(255)
                               .to(self.device) for im in images])
        out = []
        for d, (h, w) in zip(dets, sizes):
            keep = d["scores"] >= self.score_thresh
            boxes = d["boxes"][keep].float().cpu().numpy()
            boxes[:, 0::2] = boxes[:, 0::2].clip(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clip(0, h)
            out.append({"boxes": boxes,
                        "scores": d["scores"][keep].float().cpu().numpy(), "labels": d["labels"][keep].cpu().numpy(),
                        "class_probs": d["class_probs"][keep].float().cpu().numpy()})
        return out


class TruthDetector:
    """An oracle tile detector from known sources, score 1, one-hot class probabilities. For testing
    merging and catalogues without a trained model, and for timing everything but the network.

    Without ``parts``: every source box (working-grid pixel edges) that overlaps a tile, clipped to
    it (a cut source gives a box that ends at the tile border, as a detector seeing part of it would).

    With ``parts`` (per source, its components as ``(box, n_peaks)``): a tile holding all of a
    source's components reports the source (its box and label); a tile holding only some of them
    whole reports those as one source of their own, class ``{n}C_{m}P`` from what it sees (as a
    detector that takes a cut double for a lone component would), and each component the tile cuts
    as a clipped box of class ``1C_{m}P``."""

    def __init__(self, boxes, labels, classes, parts=None):
        self.boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        self.labels = np.asarray(labels, int).reshape(-1)
        self.classes = tuple(classes)
        self.parts = parts
        if parts is not None and len(parts) != len(self.boxes):
            raise ValueError(f"parts: one list of components per source ({len(self.boxes)}), got {len(parts)}")

    def _views(self, t):
        """(boxes, labels) this oracle reports for tile ``t`` (working grid)."""
        if self.parts is None:
            b = self.boxes
            c = np.stack([np.maximum(b[:, 0], t.x0), np.maximum(b[:, 1], t.y0), np.minimum(b[:, 2], t.x1),
                          np.minimum(b[:, 3], t.y1)], 1) if len(b) else b
            ok = (c[:, 2] > c[:, 0]) & (c[:, 3] > c[:, 1]) if len(b) else np.zeros(0, bool)
            return c[ok], self.labels[ok]
        out_b, out_l = [], []
        for box, label, parts in zip(self.boxes, self.labels, self.parts):
            inside, cut = [], []
            for pb, npk in parts:
                if pb[0] >= t.x0 and pb[1] >= t.y0 and pb[2] <= t.x1 and pb[3] <= t.y1:
                    inside.append((pb, npk))
                elif min(pb[2], t.x1) > max(pb[0], t.x0) and min(pb[3], t.y1) > max(pb[1], t.y0):
                    cut.append((pb, npk))
            if not cut and len(inside) == len(parts):
                out_b.append(box), out_l.append(label)
                continue
            if inside:
                name = f"{len(inside)}C_{sum(n for _, n in inside)}P"
                if name in self.classes:
                    ib = np.array([pb for pb, _ in inside], np.float64)
                    out_b.append([ib[:, 0].min(), ib[:, 1].min(), ib[:, 2].max(), ib[:, 3].max()])
                    out_l.append(self.classes.index(name) + 1)
            for pb, npk in cut:
                if f"1C_{npk}P" in self.classes:
                    out_b.append([max(pb[0], t.x0), max(pb[1], t.y0), min(pb[2], t.x1), min(pb[3], t.y1)])
                    out_l.append(self.classes.index(f"1C_{npk}P") + 1)
        return np.array(out_b, np.float64).reshape(-1, 4), np.array(out_l, int)

    def __call__(self, images, tiles):
        out = []
        for t in tiles:
            boxes, labels = self._views(t)
            k = len(boxes)
            probs = np.zeros((k, len(self.classes) + 1))
            probs[np.arange(k), labels] = 1.0
            out.append({"boxes": boxes - np.array([t.x0, t.y0, t.x0, t.y0], np.float64), "scores": np.ones(k),
                        "labels": labels, "class_probs": probs})
        return out


# ---------------------------------------------------------------------------------------------
# merging across tile borders
# ---------------------------------------------------------------------------------------------

def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of box ``a`` (4,) against boxes ``b`` (N, 4)."""
    ix = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    iy = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    inter = ix * iy
    area = lambda x: np.clip(x[..., 2] - x[..., 0], 0, None) * np.clip(x[..., 3] - x[..., 1], 0, None)  # noqa: E731
    return inter / np.maximum(area(a) + area(b) - inter, 1e-9)


def _inter(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    ix = np.clip(np.minimum(a[2], b[:, 2]) - np.maximum(a[0], b[:, 0]), 0, None)
    iy = np.clip(np.minimum(a[3], b[:, 3]) - np.maximum(a[1], b[:, 1]), 0, None)
    return ix * iy


def border_distance(boxes: np.ndarray, tile: Tile) -> np.ndarray:
    """Distance (pixels) of each box (working grid) to the nearest inner border of its tile; inf
    when the tile has none."""
    d = np.full(len(boxes), np.inf)
    for side, (flag, v) in enumerate(zip(tile.inner, (tile.x0, tile.y0, tile.x1, tile.y1))):
        if flag:
            dist = boxes[:, side] - v if side < 2 else v - boxes[:, side]
            d = np.minimum(d, dist)
    return d


class Merged(NamedTuple):
    """One source from :func:`merge_detections`: ``members`` (detection indices, the representative
    first: its score, class and probabilities), ``box`` (working grid), ``cut`` (joined from parts
    cut by tile borders: flag_tile_edge), ``islands`` (the island keys assigned to it) and ``shared``
    (a member's box also covered islands given to another source: flag_shared)."""

    members: list
    box: np.ndarray
    cut: bool
    islands: frozenset = frozenset()
    shared: bool = False


def merge_detections(boxes, scores, tile_ids, dist, islands=None, island_flux=None, edge_margin: float = 2.0,
                     merge_iou: float = 0.3) -> list[Merged]:
    """The module's merging rule. Inputs per detection: working-grid box, score, tile id, distance
    to its tile's inner borders, and the keys of the islands it covers (``islands``: one set per
    detection; None: no island information, every detection is merged on its box alone);
    ``island_flux`` (key -> flux) orders detections covering as many islands. Returns one
    :class:`Merged` per source. Invariant (checked): every island covered by a detection is assigned
    to exactly one source."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    n = len(boxes)
    scores, tile_ids, dist = np.asarray(scores, np.float64), np.asarray(tile_ids), np.asarray(dist, np.float64)
    isl = [frozenset()] * n if islands is None else [frozenset(s) for s in islands]
    if len(isl) != n:
        raise ValueError(f"islands: one set per detection ({n}), got {len(isl)}")
    flux = island_flux or {}
    whole = dist >= edge_margin

    def priority(i):  # depends on the detection alone, not on the tiling (identical copies tie)
        return (-len(isl[i]), -sum(flux.get(k, 0.0) for k in isl[i]), -scores[i], tuple(boxes[i]), i)

    out: list[Merged] = []
    claimed: set = set()
    # step 1: whole detections covering islands, most islands first: each takes its islands not yet taken
    for i in sorted((i for i in range(n) if whole[i] and isl[i]), key=priority):
        free = isl[i] - claimed
        if free:
            claimed |= free
            out.append(Merged([i], boxes[i].copy(), False, free, free != isl[i]))
    # step 2: cut detections covering islands not yet taken; those linked (a shared free island,
    # intersecting boxes, or boxes of different tiles that touch) are joined into one source
    cut = [i for i in range(n) if not whole[i] and isl[i] - claimed]
    for members in _link(cut, boxes, tile_ids, [isl[i] - claimed for i in range(n)]):
        members = sorted(members, key=priority)
        free = frozenset().union(*(isl[i] - claimed for i in members))
        b = boxes[members]
        out.append(Merged(members, np.array([b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()]), True, free,
                          any(isl[i] - claimed != isl[i] for i in members)))
        claimed |= free
    # step 3: detections covering no island, merged on their boxes: a whole one is kept unless a kept
    # source overlaps it with IoU > merge_iou; a cut one is dropped when half of its box lies in a kept
    # source; the cut ones left are joined as in step 2
    for i in sorted((i for i in range(n) if whole[i] and not isl[i]), key=lambda i: (-dist[i], -scores[i], i)):
        if out and (_iou(boxes[i], np.array([m.box for m in out])) > merge_iou).any():
            continue
        out.append(Merged([i], boxes[i].copy(), False))
    area = lambda b: max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)  # noqa: E731
    cut = [i for i in range(n) if not whole[i] and not isl[i]]
    if out:
        kb = np.array([m.box for m in out])
        cut = [i for i in cut if _inter(boxes[i], kb).max() < 0.5 * max(area(boxes[i]), 1e-9)]
    for members in _link(cut, boxes, tile_ids, [frozenset()] * n):
        members = sorted(members, key=lambda i: (-scores[i], i))
        b = boxes[members]
        out.append(Merged(members, np.array([b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()]), True))
    # the invariant: each island covered by some detection belongs to exactly one source
    given = [k for m in out for k in m.islands]
    covered = frozenset().union(*isl) if n else frozenset()
    if len(given) != len(set(given)) or set(given) != covered:
        raise AssertionError(f"merge: islands assigned {len(given)} times, {len(set(given))} distinct, "
                             f"{len(covered)} covered")
    return out


def _link(idx: list[int], boxes, tile_ids, isl) -> list[list[int]]:
    """Connected groups of detections ``idx``: linked by a shared island, intersecting boxes, or
    boxes of different tiles that touch."""
    parent = {i: i for i in idx}

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a_i, a in enumerate(idx):
        for b in idx[a_i + 1:]:
            if (isl[a] & isl[b]) or _inter(boxes[a], boxes[b][None])[0] > 0 or (
                    tile_ids[a] != tile_ids[b] and _touching(boxes[a], boxes[b])):
                ra, rb = find(a), find(b)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for i in idx:
        groups.setdefault(find(i), []).append(i)
    return list(groups.values())


def _touching(a, b, tol: float = 1.0) -> bool:
    """Boxes that meet (within ``tol`` pixels) without overlapping."""
    return (a[0] - tol <= b[2] and b[0] - tol <= a[2] and a[1] - tol <= b[3] and b[1] - tol <= a[3])


# ---------------------------------------------------------------------------------------------
# the streaming pipeline
# ---------------------------------------------------------------------------------------------

@dataclass
class FileResult:
    """One input file's outcome: its catalogue rows and component rows, the rendering with the
    detections when the file was a single tile (for a PNG), or ``error`` when it was skipped."""

    path: Path
    rows: list = field(default_factory=list)
    components: list = field(default_factory=list)
    n_tiles: int = 0
    shape: tuple = ()
    preview: np.ndarray | None = None
    error: str | None = None
    grid_info: dict = field(default_factory=dict)


@dataclass
class _Pending:
    index: int
    path: Path
    grid: SurveyGrid
    n_tiles: int
    tiles: list = field(default_factory=list)
    dets: list = field(default_factory=list)
    done: int = 0
    preview: np.ndarray | None = None


def predict_fits(detector: Callable, files: Iterable, tile: int | None = None, overlap: int | None = None,
                 batch_size: int = 4, render: str = "D1", ir_dir=None, survey="FIRST",
                 pixel_scale: float | None = None, sigma_level: float = RGZ_BASE_SIGMA, min_pixels: int = 5,
                 edge_margin: float = 2.0, merge_iou: float = 0.3, name_prefix: str = "",
                 skip_bad: bool = False, keep_preview: bool = True, noise_box: int = DEFAULT_NOISE_BOX,
                 fit: bool = True, model_beam: float | None = None, contours: str = "claran") -> Iterator[FileResult]:
    """Stream FITS files (small cutouts or large mosaics) through ``detector``; yield one
    :class:`FileResult` per file, in order, as soon as its last tile is through.

    ``tile``, ``overlap``, ``pixel_scale`` and ``model_beam`` default to the scale the detector's model
    was trained at (:func:`scale_defaults`: a converted ClaRAN model tiles 132 px of 1.36"/pixel and
    matches FIRST's 5.4" beam); ``contours``: the D3/D4 contour ladder (:func:`render_tile`).

    A bad file (not FITS, truncated, no image, no celestial WCS, missing infrared image) raises an
    error naming it (:class:`FITSError` / FileNotFoundError); with ``skip_bad`` it is yielded with
    ``error`` set instead. See the module docstring for tiling, regridding and merging.
    """
    render = render.upper()
    if render not in ("D1", "D3", "D4"):
        raise ValueError(f"render must be D1, D3 or D4, got {render!r}")
    if render != "D1" and ir_dir is None:
        raise ValueError(f"render {render} needs an infrared image folder (ir_dir)")
    tile, overlap, pixel_scale, model_beam = scale_defaults(detector, tile, overlap, pixel_scale, model_beam)
    tile_starts(10 * tile, tile, overlap)  # validates tile/overlap before any file is opened
    _survey(survey)  # an unknown survey is the caller's error, not a bad file
    classes = tuple(detector.classes)
    pending: dict[int, _Pending] = {}
    batch: list[tuple[_Pending, Tile, np.ndarray]] = []
    ready: dict[int, FileResult] = {}
    next_out = 0

    def flush():
        if not batch:
            return
        dets = detector([b[2] for b in batch], [b[1] for b in batch])
        for (p, t, rgb), d in zip(batch, dets):
            t.wcs = None  # rendered: only its position and rms are needed from now on
            p.tiles.append(t)
            p.dets.append(d)
            p.done += 1
            if p.n_tiles == 1 and keep_preview:
                p.preview = rgb
            if p.done == p.n_tiles:
                ready[p.index] = _describe_file(
                    _finish(p, classes, sigma_level, min_pixels, edge_margin, merge_iou, name_prefix, noise_box,
                            fit), p.grid)
                p.grid.close()
                del pending[p.index]
        batch.clear()

    def drain():
        nonlocal next_out
        while next_out in ready:
            yield ready.pop(next_out)
            next_out += 1

    try:
        for i, path in enumerate(files):
            item, path = path, Path(getattr(path, "path", path))
            try:
                grid = SurveyGrid(item, survey=survey, pixel_scale=pixel_scale, model_beam=model_beam)
            except (FITSError, OSError, ValueError) as e:
                if not skip_bad:
                    raise
                ready[i] = FileResult(path=path, error=str(e) if str(path) in str(e) else f"{path}: {e}")
                yield from drain()
                continue
            try:
                ir = None
                if render != "D1":  # read by sections: memory bounded by the tile, not the infrared image
                    ir = open_fits_image(_find_ir(ir_dir, path), require_celestial=True)
                specs = tile_grid(grid.shape, tile, overlap)
            except (FITSError, OSError, ValueError) as e:
                grid.close()
                if not skip_bad:
                    raise
                ready[i] = FileResult(path=path, error=str(e) if str(path) in str(e) else f"{path}: {e}")
                yield from drain()
                continue
            p = _Pending(index=i, path=path, grid=grid, n_tiles=len(specs))
            pending[i] = p
            try:
                for k, (x0, y0, x1, y1, inner) in enumerate(specs):
                    data = grid.view(y0, y1, x0, x1)  # at the model's resolution
                    rms = estimate_noise(data)
                    twcs = shift_wcs(grid.wcs, x0, y0)
                    rgb = render_tile(data, rms, render, ir, twcs, contours)
                    batch.append((p, Tile(i, path, k, x0, y0, x1, y1, inner, rms, twcs), rgb))
                    if len(batch) >= batch_size:
                        flush()
                        yield from drain()
            finally:
                if ir is not None:
                    ir.close()
        flush()
        yield from drain()
    finally:
        for p in list(pending.values()):
            p.grid.close()


def _finish(p: _Pending, classes, sigma_level, min_pixels, edge_margin, merge_iou, name_prefix,
            noise_box: int = DEFAULT_NOISE_BOX, fit: bool = True) -> FileResult:
    grid = p.grid
    boxes, scores, labels, probs, tids, dist = [], [], [], [], [], []
    for t, d in zip(p.tiles, p.dets):
        b = np.asarray(d["boxes"], np.float64).reshape(-1, 4) + np.array([t.x0, t.y0, t.x0, t.y0], np.float64)
        k = len(b)
        boxes.append(b)
        scores.append(np.asarray(d["scores"], np.float64).reshape(-1))
        labels.append(np.asarray(d["labels"]).reshape(-1).astype(int))
        cp = d.get("class_probs")
        probs.append(np.asarray(cp, np.float64).reshape(k, len(classes) + 1) if cp is not None
                     else np.full((k, len(classes) + 1), np.nan))
        tids.append(np.full(k, t.index))
        dist.append(border_distance(b, t))
    boxes, scores, labels = np.concatenate(boxes), np.concatenate(scores), np.concatenate(labels)
    probs, tids, dist = np.concatenate(probs), np.concatenate(tids), np.concatenate(dist)
    H, W = grid.shape
    boxes = np.stack([np.clip(boxes[:, 0], 0, W), np.clip(boxes[:, 1], 0, H), np.clip(boxes[:, 2], 0, W),
                      np.clip(boxes[:, 3], 0, H)], 1) if len(boxes) else boxes
    # the islands each detection covers, on a noise map laid out from the image alone (module docstring)
    noise = NoiseMap(grid.section, grid.shape, noise_box)
    found: dict = {}
    covers = []
    for b in boxes:
        isl = find_islands(grid.section, noise, b, sigma_level=sigma_level, contour_factor=RGZ_CONTOUR_FACTOR,
                           min_pixels=min_pixels)
        for i in isl:
            found.setdefault(i.key, i)
        covers.append(frozenset(i.key for i in isl))
    beam = None
    if fit:
        beam = beam_from_header(grid.beam[0], grid.beam[1], grid.pixel_scale, getattr(grid, "bpa", 0.0))
    rows, comps = [], []
    merged = merge_detections(boxes, scores, tids, dist, covers, {k: i.flux for k, i in found.items()}, edge_margin,
                              merge_iou)
    for m in merged:
        i = m.members[0]
        box = m.box
        # blanked pixels inside the box or within one pixel of it
        bx0, by0 = max(int(math.floor(box[0])) - 1, 0), max(int(math.floor(box[1])) - 1, 0)
        bx1, by1 = min(int(math.ceil(box[2])) + 1, W), min(int(math.ceil(box[3])) + 1, H)
        blanked = bx1 > bx0 and by1 > by0 and bool((~np.isfinite(grid.section(by0, by1, bx0, bx1))).any())
        meas = measure_islands([found[k] for k in m.islands], box, blanked, beam,
                               rms=noise.at((box[0] + box[2]) / 2 - 0.5, (box[1] + box[3]) / 2 - 0.5))
        flags = (FLAG_TILE_EDGE if m.cut else 0) | (FLAG_SHARED if m.shared else 0)
        if box[0] < edge_margin or box[1] < edge_margin or box[2] > W - edge_margin or box[3] > H - edge_margin:
            flags |= FLAG_IMAGE_EDGE
        label = int(labels[i])
        row, crow = source_rows(meas, file=p.path.name, class_name=classes[label - 1], score=scores[i],
                                probs=probs[i], classes=classes, box_grid=box, to_input=grid.to_input, wcs=grid.wcs,
                                beam_area_pix=grid.beam_area, rms=meas.rms, pixel_scale=grid.pixel_scale, flags=flags,
                                name_prefix=name_prefix)
        row["_label"] = label  # private keys: not catalogue columns
        row["_box"] = tuple(float(v) for v in box)  # the working grid's box (pixel edges), for drawing
        row["_islands"] = tuple(sorted(m.islands))  # the island keys (y, x) assigned to this source
        rows.append(row)
        comps += crow
    rows.sort(key=lambda r: (r["ra_deg"], r["dec_deg"]))
    info = {"input_scale": grid.input_scale, "pixel_scale": grid.pixel_scale, "regrid": grid.regrid,
            "beam": grid.beam, "beam_source": grid.beam_source, "shape": grid.shape,
            "input_shape": grid.image.shape, "noise_map": noise.rms.copy()}
    return FileResult(path=p.path, rows=rows, components=comps, n_tiles=p.n_tiles, shape=grid.shape,
                      preview=p.preview, grid_info=info)


def predict_mosaic(detector, fits_path, tile: int | None = None, overlap: int | None = None, **kw) -> FileResult:
    """:func:`predict_fits` on one (large) FITS image: its :class:`FileResult`."""
    return next(iter(predict_fits(detector, [fits_path], tile=tile, overlap=overlap, **kw)))


# ---------------------------------------------------------------------------------------------
# provenance and writing
# ---------------------------------------------------------------------------------------------

def _describe_file(result: FileResult, grid: SurveyGrid) -> FileResult:
    """Add what the catalogue needs to know about the file's units and frame to ``result.grid_info``
    (``bunit``, ``unit_source``, ``frame``, ``bpa``), and to each row the sky orientation of its box
    (``box_pa_deg``, from the row's working-grid box ``_box``)."""
    result.grid_info.update(bunit=grid.bunit, unit_source=grid.unit_source, frame=grid.frame, bpa=grid.bpa)
    boxes = [r.get("_box") for r in result.rows]
    if result.rows and all(b is not None for b in boxes):
        b = np.asarray(boxes, np.float64)
        pa = grid.wcs.y_axis_pa((b[:, 0] + b[:, 2]) / 2 - 0.5, (b[:, 1] + b[:, 3]) / 2 - 0.5)
        for r, v in zip(result.rows, np.atleast_1d(pa)):
            r["box_pa_deg"] = float(v)
    return result


def provenance(*, model_name: str | None = None, weights=None, score_thresh=None, tile=DEFAULT_TILE,
               overlap=DEFAULT_OVERLAP, survey="FIRST", pixel_scale=None, beam=None, beam_source=None,
               render="D1", sigma_level=RGZ_BASE_SIGMA, min_pixels=5, edge_margin=2.0, merge_iou=0.3,
               name_prefix: str = "", noise_box: int = DEFAULT_NOISE_BOX, fit: bool = True, extra=None) -> dict:
    """Catalogue metadata (FITS-keyword-sized keys): what made the catalogue.

    Beam keywords follow the FITS convention: ``BMAJ``, ``BMIN`` (FWHM) and ``BPA`` in degrees
    (``beam`` is given in arcsec, as the survey defaults are). ``RADESYS = 'ICRS'``: the frame of all
    positions; ``FLUXUNIT``: the catalogue's flux unit (mJy; mJy/beam for peaks and rms);
    :func:`write_results` adds the inputs' brightness unit (``INBUNIT``) and frame (``INFRAME``)."""
    s = _survey(survey)
    bmaj, bmin = beam or (s.bmaj, s.bmin)
    meta = {
        "CREATOR": "gluon_rcnn.radio.survey",
        "DATE": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
        "MODEL": model_name or "",
        "WEIGHTS": "" if weights is None else str(weights),
        "WSHA256": sha256_file(weights) or "",
        "SCORETHR": "" if score_thresh is None else float(score_thresh),
        "SURVEY": s.name,
        "PIXSCALE": float(pixel_scale or s.pixel_scale),
        "BMAJ": float(bmaj) / 3600.0,
        "BMIN": float(bmin) / 3600.0,
        "BPA": 0.0,
        "BEAMSRC": beam_source or f"{s.name} default",
        "RADESYS": "ICRS",
        "FLUXUNIT": "mJy",
        "NAMEPFX": name_prefix,
        "RENDER": render,
        "TILE": int(tile),
        "OVERLAP": int(overlap),
        "EDGEMARG": float(edge_margin),
        "MERGEIOU": float(merge_iou),
        "SIGLEVEL": float(sigma_level),
        "MINPIX": int(min_pixels),
        "NOISEBOX": int(noise_box),
        "GAUSFIT": "Gaussian2D per peak, Condon (1997) errors" if fit else "none",
    }
    meta.update(extra or {})
    return meta


def _one_or_many(values: set, many: str):
    return next(iter(values)) if len(values) == 1 else many


def write_results(results: Iterable[FileResult], stem, classes, meta: dict,
                  formats=("csv", "fits", "votable", "ds9"), components: bool = False,
                  on_file: Callable[[FileResult], None] | None = None) -> tuple[list[Path], list[FileResult]]:
    """Consume :func:`predict_fits`' stream and write the catalogue (``stem`` + suffixes). Only rows
    are kept (never images), so memory grows with the number of sources, not of pixels.
    ``on_file`` sees each result as it comes (to write a PNG, say). Returns the paths written and
    the skipped (bad) files' results.

    The inputs' beam (``BMAJ``/``BMIN``/``BPA``, degrees), brightness unit (``INBUNIT``, with
    ``UNITSRC``: read from the header or assumed) and sky frame (``INFRAME``) go into the metadata
    when all files agree, else ``per file (...)``."""
    rows, comps, bad = [], [], []
    beams, units, frames = set(), set(), set()
    n_files = 0
    for r in results:
        n_files += 1
        if on_file is not None:
            on_file(r)
        if r.error:
            bad.append(r)
            continue
        rows += r.rows
        comps += r.components
        if r.grid_info:
            g = r.grid_info
            beams.add((tuple(g["beam"]), g.get("bpa", 0.0), g["beam_source"], g["pixel_scale"]))
            if "bunit" in g:
                units.add((g["bunit"], g["unit_source"]))
                frames.add(g["frame"])
            if g["regrid"]:
                meta = dict(meta, REGRID=True)
        r.preview = None
    meta = dict(meta)
    meta["NFILES"] = n_files
    meta["NBAD"] = len(bad)
    if len(beams) == 1:
        (beam, bpa, src, pix), = beams
        meta.update(BMAJ=float(beam[0]) / 3600.0, BMIN=float(beam[1]) / 3600.0, BPA=float(bpa), BEAMSRC=src,
                    PIXSCALE=float(pix))
    elif len(beams) > 1:
        meta["BEAMSRC"] = "per file (headers differ)"
    if units:
        unit = _one_or_many(units, None)
        meta["INBUNIT"] = unit[0] if unit else "per file (inputs differ)"
        meta["UNITSRC"] = unit[1] if unit else "per file"
        meta["INFRAME"] = _one_or_many(frames, "per file (inputs differ)")
    src, comp = catalogue_tables(rows, classes, meta, comps if components else None)
    return write_catalogue(src, stem, formats, comp), bad


# ---------------------------------------------------------------------------------------------
# a mosaic from cutouts (demonstrations and tests)
# ---------------------------------------------------------------------------------------------

def build_mosaic(cutouts, centres, shape: tuple[int, int], out_path, centre_radec=(180.0, 30.0),
                 pixel_scale: float = 1.8, header_cards: dict | None = None):
    """Write a FITS mosaic of real cutouts reprojected onto one larger TAN grid.

    cutouts: FITS paths; centres: per cutout the mosaic pixel ``(x, y)`` (0-based) where its
    centre pixel lands: each cutout's WCS is moved there (CRVAL set to the mosaic's sky position
    of that pixel; the cutouts come from all over the sky) and reprojected with
    ``reproject.reproject_and_coadd`` (bilinear, mean where they overlap; NaN where none covers).
    Returns ``(data, wcs)`` of the mosaic.
    """
    from astropy.io import fits
    from astropy.wcs import WCS
    from reproject import reproject_interp
    from reproject.mosaicking import reproject_and_coadd

    from .fits import read_fits

    H, W = shape
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = list(centre_radec)
    w.wcs.crpix = [W / 2 + 0.5, H / 2 + 0.5]
    w.wcs.cdelt = [-pixel_scale / 3600.0, pixel_scale / 3600.0]
    w.wcs.radesys = "FK5"
    w.wcs.equinox = 2000.0
    inputs = []
    for path, (cx, cy) in zip(cutouts, centres):
        data, cw, _ = read_fits(path)
        cw = cw.deepcopy()
        ra, dec = w.pixel_to_world_values(cx + (cw.wcs.crpix[0] - 1) - (data.shape[1] - 1) / 2,
                                          cy + (cw.wcs.crpix[1] - 1) - (data.shape[0] - 1) / 2)
        cw.wcs.crval = [float(ra), float(dec)]
        cw.wcs.set()
        inputs.append((data, cw))
    mosaic, foot = reproject_and_coadd(inputs, w, shape_out=shape, reproject_function=reproject_interp,
                                       combine_function="mean")
    mosaic = np.where(foot > 0, mosaic, np.nan).astype(np.float32)
    hdr = w.to_header()
    hdr["BUNIT"] = "JY/BEAM"
    for k, v in (header_cards or {}).items():
        hdr[k] = v
    fits.PrimaryHDU(mosaic, header=hdr).writeto(out_path, overwrite=True)
    return mosaic, w
