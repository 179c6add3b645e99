"""Human labels: the Radio Galaxy Zoo (RGZ) consensus catalogue ClaRAN was trained and tested on.

The catalogue (ClaRAN v0.1, chenwuperth/rgz_rcnn commit b526c23, MIT licence) ships inside the
package (``gluon_rcnn/radio/data/rgz_dr1_consensus.csv.gz``, see its README.md): per source the
components' sky positions, the component and peak counts the volunteers' consensus gave, the
consensus level and ClaRAN's split. :func:`load_consensus` reads and validates it.

:func:`label_image` labels any image with a celestial WCS from it (docs/claran_labels.md):

1. islands: the 8-connected regions above the lowest contour (``L_0 = 3*sqrt(3)*rms``, RGZ's
   lowest contour, or a given threshold), at least ``min_pixels`` pixels;
2. the catalogue sources whose components all fall inside the image (by the image's WCS);
3. each component position picks the island containing it, or else the nearest island within
   ``match_radius`` arcsec (default 10", about two FIRST beams of 5.4");
4. the islands picked by one source's components form that source: class
   ``{num_cpnts}C_{num_peaks}P`` from the catalogue, box = the union of the islands' boxes,
   masks = the islands;
5. everything else is an ignore region, not background: islands no catalogue source picked,
   islands of sources that reach outside the image or clash with another source, and (as a box
   of +-``match_radius`` about its positions) a source with a component that found no island.
"""
from __future__ import annotations

import csv
import gzip
import io
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..structures.categories import RGZ_CLASSES
from .labels import RGZ_BASE_SIGMA, Component, ComponentGroup, EIGHT_CONNECTED, mask_to_polygons

DEFAULT_CATALOGUE = Path(__file__).with_name("data") / "rgz_dr1_consensus.csv.gz"
COLUMNS = ("catalog_id", "first_id", "num_cpnts", "num_peaks", "cpnts_ras", "cpnts_decs", "ang_extent", "cl",
           "training")


class CatalogueError(ValueError):
    """A consensus catalogue cannot be read; the message names the file, and the row and column."""


@dataclass(frozen=True)
class ConsensusSource:
    """One row of the consensus catalogue. ``row``: its line number in the file (header = 1)."""

    catalog_id: str
    first_id: str
    num_cpnts: int
    num_peaks: int
    ras: tuple[float, ...]
    decs: tuple[float, ...]
    ang_extent: float
    cl: float
    training: int
    row: int = 0

    @property
    def class_name(self) -> str:
        return f"{self.num_cpnts}C_{self.num_peaks}P"

    @property
    def category_id(self) -> int | None:
        return RGZ_CLASSES.index(self.class_name) + 1 if self.class_name in RGZ_CLASSES else None


class ConsensusCatalogue(list):
    """A list of :class:`ConsensusSource` with the component positions as unit vectors, for
    fast footprint queries. ``path``: the file it was read from."""

    def __init__(self, sources: Sequence[ConsensusSource], path: str = "<memory>"):
        super().__init__(sources)
        self.path = str(path)
        ra = np.array([r for s in self for r in s.ras], dtype=np.float64)
        dec = np.array([d for s in self for d in s.decs], dtype=np.float64)
        self.cpnt_source = np.repeat(np.arange(len(self)), [len(s.ras) for s in self]).astype(np.int64)
        self.cpnt_xyz = _unit(ra, dec)

    def near(self, ra: float, dec: float, radius_deg: float) -> list[int]:
        """Indices of sources with at least one component within ``radius_deg`` of (ra, dec)."""
        if not len(self):
            return []
        c = _unit(np.array([ra]), np.array([dec]))[0]
        hit = self.cpnt_xyz @ c >= math.cos(math.radians(radius_deg))
        return sorted(set(self.cpnt_source[hit].tolist()))


def _unit(ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
    ra, dec = np.radians(ra), np.radians(dec)
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1).reshape(-1, 3)


def _parse_row(rec: dict, path: str, line: int) -> ConsensusSource:
    def bad(col: str, why: str):
        return CatalogueError(f"{path}: row {line}, column {col}: {why} (got {rec.get(col)!r})")

    for col in COLUMNS:
        if rec.get(col) in (None, ""):
            raise bad(col, "missing value")

    def number(col, kind=float):
        try:
            v = kind(rec[col].strip())
        except ValueError:
            raise bad(col, f"not a{'n integer' if kind is int else ' number'}") from None
        if kind is float and not math.isfinite(v):
            raise bad(col, "not a finite number")
        return v

    def positions(col, lo, hi, hi_open):
        out = []
        for k, part in enumerate(rec[col].split(";")):
            try:
                v = float(part)
            except ValueError:
                raise bad(col, f"position {k + 1} is not a number") from None
            if not (math.isfinite(v) and lo <= v and (v < hi if hi_open else v <= hi)):
                raise bad(col, f"position {k + 1} = {part.strip()} is outside [{lo}, {hi}{')' if hi_open else ']'}")
            out.append(v)
        return tuple(out)

    n_c, n_p = number("num_cpnts", int), number("num_peaks", int)
    if not 1 <= n_c <= 3:
        raise bad("num_cpnts", "must be 1..3")
    if not 1 <= n_p <= 3:
        raise bad("num_peaks", "must be 1..3")
    if n_p < n_c:
        raise bad("num_peaks", f"fewer peaks than the {n_c} components")
    ras = positions("cpnts_ras", 0.0, 360.0, True)
    decs = positions("cpnts_decs", -90.0, 90.0, False)
    for col, v in (("cpnts_ras", ras), ("cpnts_decs", decs)):
        if len(v) != n_c:
            raise bad(col, f"{len(v)} positions for num_cpnts = {n_c}")
    cl = number("cl")
    if not 0.0 <= cl <= 1.0:
        raise bad("cl", "consensus level must be in [0, 1]")
    training = number("training", int)
    if training not in (0, 1):
        raise bad("training", "must be 0 or 1")
    return ConsensusSource(catalog_id=rec["catalog_id"].strip(), first_id=rec["first_id"].strip(), num_cpnts=n_c,
                           num_peaks=n_p, ras=ras, decs=decs, ang_extent=number("ang_extent"), cl=cl,
                           training=training, row=line)


_CACHE: dict[str, ConsensusCatalogue] = {}


def load_consensus(path=None) -> ConsensusCatalogue:
    """Read and validate a consensus catalogue (``full_catalogue.csv`` layout, plain or .gz).

    ``path=None`` reads the catalogue shipped with the package (cached). Every row is checked: all
    columns present, counts integers in 1..3 with ``num_peaks >= num_cpnts``, RA in [0, 360),
    Dec in [-90, 90], as many positions as ``num_cpnts``, cl in [0, 1], training 0/1.
    Raises :class:`CatalogueError` naming the file, the row (line number, header = 1) and the column.
    """
    p = DEFAULT_CATALOGUE if path is None else Path(path)
    key = str(p.resolve()) if path is None else None
    if key and key in _CACHE:
        return _CACHE[key]
    try:
        raw = p.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
        text = raw.decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError) as e:
        raise CatalogueError(f"{p}: cannot read the catalogue ({e})") from None
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise CatalogueError(f"{p}: row 1 (header): missing column(s) {', '.join(missing)}")
    sources = []
    for rec in reader:
        line = reader.line_num
        if None in rec:
            raise CatalogueError(f"{p}: row {line}: more fields than the header's {len(reader.fieldnames)}")
        sources.append(_parse_row(rec, str(p), line))
    cat = ConsensusCatalogue(sources, str(p))
    if key:
        _CACHE[key] = cat
    return cat


# ---------------------------------------------------------------------------------------------
# matching the catalogue to an image
# ---------------------------------------------------------------------------------------------

@dataclass
class LabelledSource(ComponentGroup):
    """A catalogue source found in an image: its islands (components) and its catalogue class."""

    consensus: ConsensusSource
    components: list[Component]
    pixels: list[tuple[float, float]]  # the component positions in the image (x, y), pixel centres at integers

    @property
    def class_name(self) -> str:
        return self.consensus.class_name

    @property
    def category_id(self) -> int | None:
        return self.consensus.category_id

    @property
    def n_components(self) -> int:
        return self.consensus.num_cpnts

    @property
    def n_peaks(self) -> int:
        return self.consensus.num_peaks



@dataclass
class IgnoreRegion:
    """Emission the catalogue does not label: neither a source nor background. ``reason`` says why."""

    box: tuple[float, float, float, float]
    reason: str
    component: Component | None = None
    catalog_id: str | None = None


@dataclass
class ConsensusLabelling:
    """The result of :func:`label_image`."""

    sources: list[LabelledSource]
    ignore: list[IgnoreRegion]
    islands: list[Component]
    threshold: float
    noise: float
    duplicates: list[ConsensusSource] = field(default_factory=list)  # rows repeating a kept source


def find_islands(x: np.ndarray, threshold: float, min_pixels: int = 5) -> list[Component]:
    """The 8-connected regions of ``x > threshold`` with at least ``min_pixels`` pixels, as
    :class:`~gluon_rcnn.radio.labels.Component` (peaks: the brightest pixel only)."""
    from scipy import ndimage

    out: list[Component] = []
    if not np.isfinite(threshold):
        return out
    lab, _ = ndimage.label(x > threshold, structure=EIGHT_CONNECTED)
    for i, sl in enumerate(ndimage.find_objects(lab), start=1):
        if sl is None:
            continue
        m = lab[sl] == i
        npix = int(m.sum())
        if npix < min_pixels:
            continue
        crop = np.where(m, x[sl], -np.inf)
        py, px = np.unravel_index(int(np.argmax(crop)), crop.shape)
        y0, x0 = sl[0].start, sl[1].start
        full = np.zeros(x.shape, dtype=bool)
        full[sl] = m
        polys = [p + np.tile(np.array([x0, y0], np.float32), len(p) // 2) for p in mask_to_polygons(m)]
        out.append(Component(mask=full, box=(float(x0), float(y0), float(sl[1].stop), float(sl[0].stop)),
                             polygons=polys, peaks=[(int(px + x0), int(py + y0))], peak_values=[float(crop[py, px])],
                             n_pixels=npix, flux=float(x[sl][m].sum())))
    return out


def _pixel_scale_arcsec(wcs) -> float:
    from astropy.wcs.utils import proj_plane_pixel_scales

    return float(np.mean(proj_plane_pixel_scales(wcs)) * 3600.0)


def image_sources(catalogue: ConsensusCatalogue, wcs, shape: tuple[int, int], margin_px: float = 0.0):
    """Catalogue sources near an image: ``(inside, partial)``, each a list of
    ``(source, [(x, y) per component])``. ``inside``: every component falls on the image (pixel
    centres ``-0.5 - margin .. W - 0.5 + margin``); ``partial``: some do, some do not."""
    h, w = shape
    ra0, dec0 = (float(v) for v in wcs.all_pix2world([[(w - 1) / 2, (h - 1) / 2]], 0)[0])
    radius = math.hypot(w, h) / 2 * _pixel_scale_arcsec(wcs) / 3600.0 * 1.05 + margin_px * _pixel_scale_arcsec(wcs) / 3600.0
    inside, partial = [], []
    for i in catalogue.near(ra0, dec0, radius):
        s = catalogue[i]
        xy = wcs.all_world2pix(np.column_stack([s.ras, s.decs]), 0)
        ok = ((xy[:, 0] >= -0.5 - margin_px) & (xy[:, 0] <= w - 0.5 + margin_px)
              & (xy[:, 1] >= -0.5 - margin_px) & (xy[:, 1] <= h - 0.5 + margin_px) & np.isfinite(xy).all(1))
        pts = [(float(a), float(b)) for a, b in xy]
        if ok.all():
            inside.append((s, pts))
        elif ok.any():
            partial.append((s, pts))
    return inside, partial


def _pick_island(islands: list[Component], owner: np.ndarray, x: float, y: float, radius_px: float) -> int | None:
    h, w = owner.shape
    xi, yi = int(round(x)), int(round(y))
    if 0 <= xi < w and 0 <= yi < h and owner[yi, xi] >= 0:
        return int(owner[yi, xi])
    r = int(math.ceil(radius_px))
    y0, y1, x0, x1 = max(yi - r, 0), min(yi + r + 1, h), max(xi - r, 0), min(xi + r + 1, w)
    if y0 >= y1 or x0 >= x1:
        return None
    win = owner[y0:y1, x0:x1]
    yy, xx = np.nonzero(win >= 0)
    if not len(yy):
        return None
    d = np.hypot(xx + x0 - x, yy + y0 - y)
    j = int(np.argmin(d))
    return int(win[yy[j], xx[j]]) if d[j] <= radius_px else None


def label_image(image: np.ndarray, wcs, catalogue: ConsensusCatalogue | None = None, noise: float | None = None,
                threshold: float | None = None, sigma_level: float = RGZ_BASE_SIGMA, min_pixels: int = 5,
                match_radius: float = 10.0, min_cl: float = 0.0) -> ConsensusLabelling:
    """Label one image from the consensus catalogue (human labels); see the module docstring.

    image: (H, W) radio intensities (NaN blanks count as 0). wcs: its 2-D celestial WCS
    (:func:`~gluon_rcnn.radio.read_fits`). catalogue: :func:`load_consensus` (default: the shipped one).
    noise / threshold: the islands' threshold is ``threshold``, else ``sigma_level * noise``, else
    ``sigma_level * estimate_noise(image)``; with a clipped background (noise 0, e.g.
    firstgalaxydata's PNGs) half the smallest value above the background, as
    :func:`~gluon_rcnn.radio.derive_sources` does.
    match_radius: arcsec; a component position outside every island picks the nearest island
    within it (default 10.0", about two FIRST beams). min_cl: sources below this consensus level
    are ignore regions, not labels.
    """
    from .fits import estimate_noise

    cat = load_consensus() if catalogue is None else catalogue
    x = np.asarray(image, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"label_image wants a 2-D image, got shape {x.shape}")
    x = np.where(np.isfinite(x), x, np.float32(0))
    sigma = estimate_noise(image) if noise is None else float(noise)
    if threshold is None:
        if np.isfinite(sigma) and sigma > 0:
            threshold = sigma_level * sigma
        else:
            bg = float(np.median(x))
            above = x[x > bg]
            threshold = bg + 0.5 * float(above.min() - bg) if above.size else np.inf
    islands = find_islands(x, float(threshold), min_pixels)
    owner = np.full(x.shape, -1, dtype=np.int32)
    for k, c in enumerate(islands):
        owner[c.mask] = k
    scale = _pixel_scale_arcsec(wcs)
    radius_px = match_radius / scale
    inside, partial = image_sources(cat, wcs, x.shape)

    taken: dict[int, int] = {}  # island -> index in `kept`
    kept: list[LabelledSource] = []
    ignore: list[IgnoreRegion] = []
    ignored_islands: set[int] = set()
    duplicates: list[ConsensusSource] = []

    def pos_box(pts):
        a = np.array(pts)
        return (float(a[:, 0].min() - radius_px + 0.5), float(a[:, 1].min() - radius_px + 0.5),
                float(a[:, 0].max() + radius_px + 0.5), float(a[:, 1].max() + radius_px + 0.5))

    # most confident first: a later (less agreed) row that clashes with a kept one is ignored
    for s, pts in sorted(inside, key=lambda t: (-t[0].cl, t[0].row)):
        picks = [_pick_island(islands, owner, px, py, radius_px) for px, py in pts]
        if s.cl < min_cl:
            ignored_islands.update(p for p in picks if p is not None)
            ignore.append(IgnoreRegion(pos_box(pts), f"consensus level {s.cl:.2f} < {min_cl}", catalog_id=s.catalog_id))
            continue
        if any(p is None for p in picks):
            ignored_islands.update(p for p in picks if p is not None)
            ignore.append(IgnoreRegion(pos_box(pts), f"catalogue source {s.catalog_id}: a component within "
                                       f"{match_radius:.1f}\" of no island", catalog_id=s.catalog_id))
            continue
        isl = sorted(set(picks))
        owners = {taken[i] for i in isl if i in taken}
        if owners:
            k = owners.pop()
            if not owners and sorted({id(c) for c in kept[k].components}) == sorted(id(islands[i]) for i in isl):
                duplicates.append(s)  # the same islands again (overlapping RGZ subjects)
            else:
                ignored_islands.update(i for i in isl if i not in taken)
                ignore.append(IgnoreRegion(pos_box(pts), f"catalogue source {s.catalog_id} shares islands with "
                                           "another source", catalog_id=s.catalog_id))
            continue
        for i in isl:
            taken[i] = len(kept)
        kept.append(LabelledSource(consensus=s, components=[islands[i] for i in isl], pixels=list(pts)))
    for s, pts in partial:
        picks = {_pick_island(islands, owner, px, py, radius_px) for px, py in pts} - {None}
        ignored_islands.update(p for p in picks if p not in taken)
    for k, c in enumerate(islands):
        if k in taken:
            continue
        why = "island of a catalogue source not usable here" if k in ignored_islands else "no catalogue source"
        ignore.append(IgnoreRegion(c.box, why, component=c))
    kept.sort(key=lambda t: t.box[:2])
    return ConsensusLabelling(sources=kept, ignore=ignore, islands=islands, threshold=float(threshold),
                              noise=float(sigma), duplicates=duplicates)


# ---------------------------------------------------------------------------------------------
# images at hand: FIRST cutouts of the firstgalaxydata wheel; MiraBest FITS
# ---------------------------------------------------------------------------------------------

FIRST_PIXEL_DEG = 1.8 / 3600.0


def first_cutout_wcs(ra: float, dec: float, shape: tuple[int, int] = (300, 300)):
    """The WCS of a FIRST cutout centred on (ra, dec): RA---TAN/DEC--TAN, 1.8"/pixel, north up
    (row index increasing to the north, as FITS data arrays), east left; the layout of SkyView's
    FIRST cutouts (the MiraBest FITS) and, checked against them, of firstgalaxydata's PNGs."""
    from astropy.wcs import WCS

    h, w = shape
    wcs = WCS(naxis=2)
    wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    wcs.wcs.crval = [float(ra), float(dec)]
    wcs.wcs.crpix = [(w + 1) / 2.0, (h + 1) / 2.0]
    wcs.wcs.cdelt = [-FIRST_PIXEL_DEG, FIRST_PIXEL_DEG]
    wcs.wcs.cunit = ["deg", "deg"]
    wcs.wcs.radesys = "FK5"
    wcs.wcs.equinox = 2000.0
    return wcs


def firstgalaxydata_position(member: str) -> tuple[float, float]:
    """(ra, dec) in degrees from a firstgalaxydata member name ``.../<ra>_<dec>_<label>_<catalogue>.png``
    (3 decimals: +-1.8", one pixel)."""
    stem = Path(member).stem
    try:
        ra, dec = (float(v) for v in stem.split("_")[:2])
    except ValueError:
        raise ValueError(f"{member}: not a firstgalaxydata cutout name <ra>_<dec>_<label>_<catalogue>.png") from None
    return ra, dec


def angular_separation_deg(ra1, dec1, ra2, dec2) -> np.ndarray:
    """(N, M) great-circle separations in degrees between two position lists."""
    a = _unit(np.asarray(ra1, float), np.asarray(dec1, float))
    b = _unit(np.asarray(ra2, float), np.asarray(dec2, float))
    return np.degrees(np.arccos(np.clip(a @ b.T, -1.0, 1.0)))


# ---------------------------------------------------------------------------------------------
# the rule labeller against the consensus
# ---------------------------------------------------------------------------------------------

def _rule_source_at(rule_sources, x: float, y: float, radius_px: float):
    """The rule source (of ``rule_sources``, kept and skipped) with a component mask containing
    pixel (x, y), else the one with a mask pixel nearest within ``radius_px``; None if none."""
    xi, yi = int(round(x)), int(round(y))
    best, best_d = None, np.inf
    for s in rule_sources:
        for c in s.components:
            h, w = c.mask.shape
            if 0 <= xi < w and 0 <= yi < h and c.mask[yi, xi]:
                return s
            x1, y1, x2, y2 = c.box
            if x < x1 - radius_px - 1 or x > x2 + radius_px or y < y1 - radius_px - 1 or y > y2 + radius_px:
                continue
            yy, xx = np.nonzero(c.mask[int(y1):int(y2), int(x1):int(x2)])
            d = float(np.hypot(xx + x1 - x, yy + y1 - y).min()) if len(yy) else np.inf
            if d < best_d:
                best, best_d = s, d
    return best if best_d <= radius_px else None


def compare_to_rule(consensus: ConsensusLabelling, rule, radius_px: float = 5.6) -> list[dict]:
    """One record per consensus source of ``consensus``: the rule labeller's source (``rule``: a
    :class:`~gluon_rcnn.radio.labels.Labelling`, kept and skipped sources) at its first component's
    position (or the nearest within ``radius_px``), and whether class, component count and peak
    count agree. ``rule_class`` is 'none' when the rule found no source there."""
    out = []
    pool = list(rule.sources) + list(rule.skipped)
    for ls in consensus.sources:
        x, y = ls.pixels[0]
        r = _rule_source_at(pool, x, y, radius_px)
        rc = r.class_name if r is not None else "none"
        out.append({"catalog_id": ls.consensus.catalog_id, "cl": ls.consensus.cl, "class": ls.class_name,
                    "rule_class": rc, "class_ok": rc == ls.class_name,
                    "cpnts_ok": r is not None and r.n_components == ls.n_components,
                    "peaks_ok": r is not None and r.n_peaks == ls.n_peaks,
                    "rule_cpnts": r.n_components if r is not None else 0,
                    "rule_peaks": r.n_peaks if r is not None else 0})
    return out


def agreement_summary(records: Sequence[dict]) -> dict:
    """Agreement fractions over ``compare_to_rule`` records: n, class, components, peaks, the
    confusion counts ``{(consensus class, rule class): n}``, and the most common confusion."""
    n = len(records)
    conf: dict[tuple[str, str], int] = {}
    for r in records:
        conf[(r["class"], r["rule_class"])] = conf.get((r["class"], r["rule_class"]), 0) + 1
    wrong = sorted(((v, k) for k, v in conf.items() if k[0] != k[1]), reverse=True)
    frac = (lambda key: sum(bool(r[key]) for r in records) / n) if n else (lambda key: float("nan"))
    return {"n": n, "class": frac("class_ok"), "components": frac("cpnts_ok"), "peaks": frac("peaks_ok"),
            "confusion": conf, "top_confusion": (wrong[0][1], wrong[0][0]) if wrong else None}


def format_confusion(conf: dict, classes: Sequence[str] = RGZ_CLASSES) -> str:
    """A text confusion matrix: rows the consensus class, columns the rule's (other = outside the
    six classes, none = no rule source there)."""
    cols = list(classes) + ["other", "none"]
    def col(rc):
        return rc if rc in classes or rc == "none" else "other"
    m = {(a, b): 0 for a in classes for b in cols}
    for (a, rc), v in conf.items():
        if a in classes:
            m[(a, col(rc))] += v
    lines = ["consensus \\ rule " + " ".join(f"{c:>6}" for c in cols)]
    for a in classes:
        lines.append(f"{a:<16} " + " ".join(f"{m[(a, b)]:>6}" for b in cols))
    return "\n".join(lines)
