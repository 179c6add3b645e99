"""Survey-scale prediction: FITS images of any size, tiled at the model's pixel scale, detections
merged across tile borders, one catalogue row per source (:mod:`.catalogue`).

The pipeline streams (:func:`predict_fits`): files are opened one at a time, memory-mapped and read
tile by tile (:class:`SurveyGrid`); each tile gets its own noise estimate and rendering; tiles of
one or several files are batched through the detector; a file's detections are merged and measured
as soon as its last tile is through, and its catalogue rows are yielded. Memory holds a batch of
tiles and the detections of the files in flight, whatever the size of a mosaic or the number of
files.

**Pixel scale.** The model sees tiles at its own pixel scale (``pixel_scale``, arcsec/pixel; default
the survey's, FIRST 1.8"): an input whose scale differs by more than 0.1% is regridded, tile by tile,
with ``reproject.reproject_interp`` onto the same projection with pixels ``pixel_scale / input
scale`` times larger (:func:`gluon_rcnn.radio.coords.scale_wcs`). Catalogue pixel positions are
given in the input's own pixel grid.

**Tiling.** Tiles of ``tile`` x ``tile`` pixels (smaller images: one tile, the whole image),
starting every ``tile - overlap`` pixels, the last row/column aligned with the image's far edge, so
two neighbouring tiles share at least ``overlap`` pixels.

**Merging rule** (:func:`merge_detections`). A tile border that is not an image edge is an *inner*
border. A detection whose box comes closer than ``edge_margin`` pixels to an inner border of its
tile may be a source cut in two; the others are *whole*.

1. Whole detections, farthest from their tile's inner borders first, are kept unless a kept
   detection from another tile overlaps them with IoU > ``merge_iou`` (the same source seen by two
   tiles).
2. A cut detection is dropped when at least half of its box lies inside a kept detection (a part
   of a source some tile saw whole).
3. Cut detections left over (sources too large for the overlap) are joined where their boxes
   intersect (across tiles) into one source with the union box, flagged ``flag_tile_edge``.

*Each source once*: let a source's box have sides at most ``L`` with ``overlap >= L + 2 *
edge_margin``. On each axis take the last tile that starts at least ``edge_margin`` before the box;
the next tile starts after that point and overlaps it by ``overlap``, so this tile's far inner border
is at least ``edge_margin`` beyond the box: one tile sees the source whole, and keeps it (step 1).
Every other tile sees it whole (suppressed by IoU in step 1, identical boxes for a consistent
detector) or cut (its box touches the inner border, dropped in step 2): the source is listed once,
never in two parts. (Two distinct sources whose boxes overlap by IoU > ``merge_iou`` may be taken for
one when seen from different tiles: the price of tolerating a detector whose boxes differ a little
from tile to tile.) The default ``overlap`` (96 px, 2.9' at FIRST's 1.8") covers ClaRAN's sources
(its training cutouts are 132" to a few arcmin wide).

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
from typing import Callable, Iterable, Iterator

import numpy as np

from .catalogue import (FLAG_IMAGE_EDGE, FLAG_TILE_EDGE, beam_area_pixels, catalogue_tables, measure_source,
                        sha256_file, source_rows, write_catalogue)
from .labels import RGZ_BASE_SIGMA
from .coords import pixel_scale_arcsec, scale_wcs, shift_wcs
from .fits import FITSError, estimate_noise, open_fits_image

logger = logging.getLogger(__name__)

__all__ = ["Survey", "SURVEYS", "SurveyGrid", "Tile", "tile_starts", "tile_grid", "ModelDetector", "TruthDetector",
           "build_mosaic",
           "merge_detections", "predict_fits", "predict_mosaic", "FileResult", "provenance", "write_results"]

DEFAULT_TILE = 300      # FIRST cutouts as ClaRAN's training images were made: 300 x 300 at 1.8"
DEFAULT_OVERLAP = 96


@dataclass(frozen=True)
class Survey:
    """A survey's defaults: pixel scale and beam (FWHM, arcsec), used when a header lacks them."""

    name: str
    pixel_scale: float
    bmaj: float
    bmin: float
    unit: str = "Jy/beam"


#: FIRST (Becker et al. 1995): 1.8"/pixel images, 5.4" beam (the catalogue's; BMAJ/BMIN of a header
#: win). NVSS (Condon et al. 1998): 15"/pixel, 45" beam.
SURVEYS = {"FIRST": Survey("FIRST", 1.8, 5.4, 5.4), "NVSS": Survey("NVSS", 15.0, 45.0, 45.0)}


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
    ``beam`` (BMAJ, BMIN arcsec) comes from the header, else the survey's default
    (``beam_source`` says which). Raises :class:`FITSError` naming the file for bad input.
    """

    def __init__(self, path, survey="FIRST", pixel_scale: float | None = None):
        self.path = Path(path)
        self.survey = _survey(survey)
        self.image = open_fits_image(path, require_celestial=True)
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
                self.shape = (int(math.ceil(H / self.factor)), int(math.ceil(W / self.factor)))
                self.pixel_scale = target
            else:
                self.factor = 1.0
                self.wcs = self.image.wcs
                self.shape = self.image.shape
                self.pixel_scale = self.input_scale
            hdr = self.image.header
            if "BMAJ" in hdr and "BMIN" in hdr and float(hdr["BMAJ"]) > 0 and float(hdr["BMIN"]) > 0:
                self.beam = (float(hdr["BMAJ"]) * 3600.0, float(hdr["BMIN"]) * 3600.0)
                self.beam_source = "header"
            else:
                self.beam = (self.survey.bmaj, self.survey.bmin)
                self.beam_source = f"{self.survey.name} default"
            self.beam_area = beam_area_pixels(*self.beam, self.pixel_scale)
        except BaseException:
            self.image.close()
            raise

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


def _find_ir(ir_dir, path: Path) -> Path:
    name = path.name
    for suf in (".fits.gz", ".fits", ".fit", ".fts"):
        if name.lower().endswith(suf):
            name = name[: -len(suf)]
            break
    for ext in (".fits", ".fits.gz", ".fit", ".fts"):
        p = Path(ir_dir) / (name + ext)
        if p.exists():
            return p
    raise FileNotFoundError(f"{path}: no infrared image {name}.fits in {ir_dir}")


def render_tile(data: np.ndarray, rms: float, render: str = "D1", ir=None, tile_wcs=None) -> np.ndarray:
    """The network's view of one tile: D1 (radio), or D3/D4 with ``ir = (data, wcs)`` reprojected
    onto ``tile_wcs``. With the whole image as its tile this is :func:`gluon_rcnn.radio.render_fits`."""
    from .render import render_d1, render_d3, render_d4, reproject_to

    if render == "D1":
        return render_d1(data, noise=rms)
    from .labels import derive_sources

    lab = derive_sources(data, noise=rms)
    ir_tile = reproject_to(ir[0], ir[1], tile_wcs, data.shape)
    if render == "D3":
        return render_d3(data, ir_tile, levels=lab.levels)
    return render_d4(data, ir_tile, [s.masks for s in lab.sources + lab.skipped], levels=lab.levels)


# ---------------------------------------------------------------------------------------------
# detectors
# ---------------------------------------------------------------------------------------------

class ModelDetector:
    """A gluon_rcnn detector as a tile detector: batches of renderings in, detections scoring at
    least ``score_thresh`` out, each with its RoI's class-probability vector (``class_probs``)."""

    def __init__(self, model, device="cpu", score_thresh: float | None = None):
        self.model = model
        self.device = device
        self.classes = tuple(model.classes)
        if score_thresh is None:
            from ..viz import vis_score_thresh
            score_thresh = vis_score_thresh(model)
        self.score_thresh = float(score_thresh)

    def __call__(self, images, tiles=None):
        import torch

        with torch.inference_mode():
            dets = self.model([torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1).float().div(255)
                               .to(self.device) for im in images])
        out = []
        for d in dets:
            keep = d["scores"] >= self.score_thresh
            out.append({"boxes": d["boxes"][keep].float().cpu().numpy(),
                        "scores": d["scores"][keep].float().cpu().numpy(), "labels": d["labels"][keep].cpu().numpy(),
                        "class_probs": d["class_probs"][keep].float().cpu().numpy()})
        return out


class TruthDetector:
    """An oracle tile detector from known sources: every source box (working-grid pixel edges) that
    overlaps a tile, clipped to it (a cut source gives a box that ends at the tile border, as a
    detector seeing part of it would), score 1, one-hot class probabilities. For testing merging
    and catalogues without a trained model, and for timing everything but the network."""

    def __init__(self, boxes, labels, classes):
        self.boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
        self.labels = np.asarray(labels, int).reshape(-1)
        self.classes = tuple(classes)

    def __call__(self, images, tiles):
        out = []
        for t in tiles:
            b = self.boxes
            c = np.stack([np.maximum(b[:, 0], t.x0), np.maximum(b[:, 1], t.y0), np.minimum(b[:, 2], t.x1),
                          np.minimum(b[:, 3], t.y1)], 1) if len(b) else b
            ok = (c[:, 2] > c[:, 0]) & (c[:, 3] > c[:, 1]) if len(b) else np.zeros(0, bool)
            k = int(ok.sum())
            probs = np.zeros((k, len(self.classes) + 1))
            probs[np.arange(k), self.labels[ok]] = 1.0
            out.append({"boxes": c[ok] - np.array([t.x0, t.y0, t.x0, t.y0], np.float64), "scores": np.ones(k),
                        "labels": self.labels[ok], "class_probs": probs})
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


def merge_detections(boxes, scores, tile_ids, dist, edge_margin: float = 2.0, merge_iou: float = 0.3):
    """The module's merging rule. Inputs per detection: working-grid box, score, tile id, distance
    to its tile's inner borders. Returns ``[(members, box, cut)]``: the indices merged into one
    source (the first is the representative: its score, class and probabilities), the source's box,
    and whether it was joined from cut parts (step 3)."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    n = len(boxes)
    scores, tile_ids, dist = np.asarray(scores), np.asarray(tile_ids), np.asarray(dist, np.float64)
    whole = dist >= edge_margin
    order = sorted(np.nonzero(whole)[0].tolist(), key=lambda i: (-dist[i], -scores[i], i))
    kept: list[int] = []
    out = []
    for i in order:
        if kept:
            kb = boxes[kept]
            other = tile_ids[kept] != tile_ids[i]
            if (other & (_iou(boxes[i], kb) > merge_iou)).any():
                continue
        kept.append(i)
        out.append(([i], boxes[i].copy(), False))
    cut = [i for i in range(n) if not whole[i]]
    if kept and cut:
        kb = boxes[kept]
        area = lambda b: max(b[2] - b[0], 0.0) * max(b[3] - b[1], 0.0)  # noqa: E731
        cut = [i for i in cut if _inter(boxes[i], kb).max() < 0.5 * max(area(boxes[i]), 1e-9)]
    # step 3: join the remaining cut parts that intersect
    parent = {i: i for i in cut}

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a_i, a in enumerate(cut):
        for b in cut[a_i + 1:]:
            if _inter(boxes[a], boxes[b][None])[0] > 0 or (
                    tile_ids[a] != tile_ids[b] and _touching(boxes[a], boxes[b])):
                ra, rb = find(a), find(b)
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for i in cut:
        groups.setdefault(find(i), []).append(i)
    for members in groups.values():
        members = sorted(members, key=lambda i: (-scores[i], i))
        b = boxes[members]
        out.append((members, np.array([b[:, 0].min(), b[:, 1].min(), b[:, 2].max(), b[:, 3].max()]), True))
    return out


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


def predict_fits(detector: Callable, files: Iterable, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP,
                 batch_size: int = 4, render: str = "D1", ir_dir=None, survey="FIRST",
                 pixel_scale: float | None = None, sigma_level: float = RGZ_BASE_SIGMA, min_pixels: int = 5,
                 edge_margin: float = 2.0, merge_iou: float = 0.3, name_prefix: str = "",
                 skip_bad: bool = False, keep_preview: bool = True) -> Iterator[FileResult]:
    """Stream FITS files (small cutouts or large mosaics) through ``detector``; yield one
    :class:`FileResult` per file, in order, as soon as its last tile is through.

    A bad file (not FITS, truncated, no image, no celestial WCS, missing infrared image) raises an
    error naming it (:class:`FITSError` / FileNotFoundError); with ``skip_bad`` it is yielded with
    ``error`` set instead. See the module docstring for tiling, regridding and merging.
    """
    render = render.upper()
    if render not in ("D1", "D3", "D4"):
        raise ValueError(f"render must be D1, D3 or D4, got {render!r}")
    if render != "D1" and ir_dir is None:
        raise ValueError(f"render {render} needs an infrared image folder (ir_dir)")
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
                ready[p.index] = _finish(p, classes, sigma_level, min_pixels, edge_margin, merge_iou, name_prefix)
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
            path = Path(path)
            try:
                grid = SurveyGrid(path, survey=survey, pixel_scale=pixel_scale)
            except (FITSError, OSError, ValueError) as e:
                if not skip_bad:
                    raise
                ready[i] = FileResult(path=path, error=str(e) if str(path) in str(e) else f"{path}: {e}")
                yield from drain()
                continue
            try:
                ir = None
                if render != "D1":
                    from .fits import read_fits
                    ird, irw, _ = read_fits(_find_ir(ir_dir, path))
                    ir = (ird, irw)
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
            for k, (x0, y0, x1, y1, inner) in enumerate(specs):
                data = grid.section(y0, y1, x0, x1)
                rms = estimate_noise(data)
                twcs = shift_wcs(grid.wcs, x0, y0)
                rgb = render_tile(data, rms, render, ir, twcs)
                batch.append((p, Tile(i, path, k, x0, y0, x1, y1, inner, rms, twcs), rgb))
                if len(batch) >= batch_size:
                    flush()
                    yield from drain()
        flush()
        yield from drain()
    finally:
        for p in list(pending.values()):
            p.grid.close()


def _finish(p: _Pending, classes, sigma_level, min_pixels, edge_margin, merge_iou, name_prefix) -> FileResult:
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
    tiles = {t.index: t for t in p.tiles}
    H, W = grid.shape
    rows, comps = [], []
    for members, box, cut in merge_detections(boxes, scores, tids, dist, edge_margin, merge_iou):
        i = members[0]
        t = tiles[int(tids[i])]
        box = np.array([max(box[0], 0), max(box[1], 0), min(box[2], W), min(box[3], H)])
        bw, bh = box[2] - box[0], box[3] - box[1]
        pad = int(math.ceil(max(8.0, 0.5 * max(bw, bh))))
        x0, y0 = max(int(math.floor(box[0])) - pad, 0), max(int(math.floor(box[1])) - pad, 0)
        x1, y1 = min(int(math.ceil(box[2])) + pad, W), min(int(math.ceil(box[3])) + pad, H)
        region = grid.section(y0, y1, x0, x1)
        meas = measure_source(region, (x0, y0), box, t.rms, sigma_level=sigma_level, min_pixels=min_pixels)
        flags = FLAG_TILE_EDGE if cut else 0
        if box[0] < edge_margin or box[1] < edge_margin or box[2] > W - edge_margin or box[3] > H - edge_margin:
            flags |= FLAG_IMAGE_EDGE
        label = int(labels[i])
        row, crow = source_rows(meas, file=p.path.name, class_name=classes[label - 1], score=scores[i],
                                probs=probs[i], classes=classes, box_grid=box, to_input=grid.to_input, wcs=grid.wcs,
                                beam_area_pix=grid.beam_area, rms=t.rms, pixel_scale=grid.pixel_scale, flags=flags,
                                name_prefix=name_prefix)
        row["_label"] = label  # private keys: not catalogue columns
        row["_box"] = tuple(float(v) for v in box)  # the working grid's box (pixel edges), for drawing
        rows.append(row)
        comps += crow
    rows.sort(key=lambda r: (r["ra_deg"], r["dec_deg"]))
    info = {"input_scale": grid.input_scale, "pixel_scale": grid.pixel_scale, "regrid": grid.regrid,
            "beam": grid.beam, "beam_source": grid.beam_source, "shape": grid.shape,
            "input_shape": grid.image.shape}
    return FileResult(path=p.path, rows=rows, components=comps, n_tiles=p.n_tiles, shape=grid.shape,
                      preview=p.preview, grid_info=info)


def predict_mosaic(detector, fits_path, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP, **kw) -> FileResult:
    """:func:`predict_fits` on one (large) FITS image: its :class:`FileResult`."""
    return next(iter(predict_fits(detector, [fits_path], tile=tile, overlap=overlap, **kw)))


# ---------------------------------------------------------------------------------------------
# provenance and writing
# ---------------------------------------------------------------------------------------------

def provenance(*, model_name: str | None = None, weights=None, score_thresh=None, tile=DEFAULT_TILE,
               overlap=DEFAULT_OVERLAP, survey="FIRST", pixel_scale=None, beam=None, beam_source=None,
               render="D1", sigma_level=RGZ_BASE_SIGMA, min_pixels=5, edge_margin=2.0, merge_iou=0.3, extra=None) -> dict:
    """Catalogue metadata (FITS-keyword-sized keys): what made the catalogue."""
    s = _survey(survey)
    meta = {
        "CREATOR": "gluon_rcnn.radio.survey",
        "DATE": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S"),
        "MODEL": model_name or "",
        "WEIGHTS": "" if weights is None else str(weights),
        "WSHA256": sha256_file(weights) or "",
        "SCORETHR": "" if score_thresh is None else float(score_thresh),
        "SURVEY": s.name,
        "PIXSCALE": float(pixel_scale or s.pixel_scale),
        "BMAJ": float((beam or (s.bmaj, s.bmin))[0]),
        "BMIN": float((beam or (s.bmaj, s.bmin))[1]),
        "BEAMSRC": beam_source or f"{s.name} default",
        "FLUXUNIT": "mJy",
        "RENDER": render,
        "TILE": int(tile),
        "OVERLAP": int(overlap),
        "EDGEMARG": float(edge_margin),
        "MERGEIOU": float(merge_iou),
        "SIGLEVEL": float(sigma_level),
        "MINPIX": int(min_pixels),
    }
    meta.update(extra or {})
    return meta


def write_results(results: Iterable[FileResult], stem, classes, meta: dict,
                  formats=("csv", "fits", "votable", "ds9"), components: bool = False,
                  on_file: Callable[[FileResult], None] | None = None) -> tuple[list[Path], list[FileResult]]:
    """Consume :func:`predict_fits`' stream and write the catalogue (``stem`` + suffixes). Only rows
    are kept (never images), so memory grows with the number of sources, not of pixels.
    ``on_file`` sees each result as it comes (to write a PNG, say). Returns the paths written and
    the skipped (bad) files' results."""
    rows, comps, bad = [], [], []
    beams = set()
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
            beams.add((r.grid_info["beam"], r.grid_info["beam_source"], r.grid_info["pixel_scale"]))
            if r.grid_info["regrid"]:
                meta = dict(meta, REGRID=True)
        r.preview = None
    meta = dict(meta)
    meta["NFILES"] = n_files
    meta["NBAD"] = len(bad)
    if len(beams) == 1:
        (beam, src, pix), = beams
        meta.update(BMAJ=float(beam[0]), BMIN=float(beam[1]), BEAMSRC=src, PIXSCALE=float(pix))
    elif len(beams) > 1:
        meta["BEAMSRC"] = "per file (headers differ)"
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
