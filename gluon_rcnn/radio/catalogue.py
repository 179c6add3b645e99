"""Source catalogues astronomers use: one row per detected source (optionally one per component),
written as CSV, FITS table, VOTable (astropy.table) and a DS9 region file.

Per source (:data:`SOURCE_COLUMNS`; ``prob_<class>`` columns follow ``score``):

* ``name``: IAU-style ``<prefix>Jhhmmss.s+ddmmss`` of the flux-weighted centroid (truncated).
* ``file``: the FITS file; ``class``, ``score``: the detector's; ``prob_background``,
  ``prob_<class>``: the full softmax vector of the detection's RoI (NaN when the detector gives none).
* ``ra_deg``, ``dec_deg``: the flux-weighted centroid of the source's islands (the WCS's frame);
  ``x_cen``, ``y_cen``: the same in the FITS's 0-based pixel grid (astropy's ``pixel_to_world``
  takes it as is).
* ``x1, y1, x2, y2``: the detection box in the FITS's 0-based pixel grid (edges at ``-0.5``);
  ``box_ra_deg``, ``box_dec_deg``: its centre; ``box_width_arcsec``, ``box_height_arcsec``: its sides.
* ``n_components``, ``n_peaks``: islands (8-connected regions above ``sigma_level`` x the local rms
  with at least ``min_pixels`` pixels) whose brightest pixel lies in the box, and their peaks
  (:func:`gluon_rcnn.radio.labels.derive_sources`' rule).
* ``flux_int_mjy``: integrated flux density, ``sum(island pixels [Jy/beam]) / beam area [pixels]``,
  mJy; the beam area is ``pi * BMAJ * BMIN / (4 ln 2)`` over the pixel area (Gaussian beam).
* ``peak_mjy``: the brightest island pixel, mJy/beam; ``rms_mjy``: the local noise of the tile the
  source was found in (MAD), mJy/beam; ``snr``: ``peak / rms``.
* ``las_arcsec``: largest angular size, the largest distance between two island pixel centres
  plus one pixel (so a single pixel measures one pixel), arcsec.
* ``flags`` (bit mask) and one boolean column per bit: ``flag_tile_edge`` (1: merged from parts cut
  by tile borders: a source larger than the tile overlap allows), ``flag_image_edge`` (2: the box
  touches the image edge), ``flag_blanked`` (4: blanked (NaN) pixels in or next to the box),
  ``flag_no_island`` (8: no island above the threshold in the box; flux 0, centroid = box centre).

Provenance (model, weights and their sha256, thresholds, survey, pixel scale, beam, tiling) is in
``table.meta``: FITS header keywords (8 characters), VOTable INFO elements of the TABLE (and its
DESCRIPTION as ``KEY=value; ...``, which ``Table.read`` keeps as ``meta['description']``), leading ``# KEY = value``
lines of the CSV (read it with ``Table.read(path, format="ascii.csv", comment="#")``, or pandas'
``read_csv(path, comment="#")``).
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .labels import RGZ_BASE_SIGMA, RGZ_CONTOUR_FACTOR
from .coords import iau_name

FLAG_TILE_EDGE = 1
FLAG_IMAGE_EDGE = 2
FLAG_BLANKED = 4
FLAG_NO_ISLAND = 8
FLAG_NAMES = {FLAG_TILE_EDGE: "flag_tile_edge", FLAG_IMAGE_EDGE: "flag_image_edge", FLAG_BLANKED: "flag_blanked",
              FLAG_NO_ISLAND: "flag_no_island"}

FORMATS = {"csv": ".csv", "fits": ".fits", "votable": ".vot", "ds9": ".reg"}

__all__ = ["FLAG_TILE_EDGE", "FLAG_IMAGE_EDGE", "FLAG_BLANKED", "FLAG_NO_ISLAND", "FORMATS", "SourceMeasure",
           "beam_area_pixels", "measure_source", "catalogue_tables", "write_catalogue", "write_ds9",
           "sha256_file"]


def beam_area_pixels(bmaj_arcsec: float, bmin_arcsec: float, pixel_scale_arcsec: float) -> float:
    """Area of a Gaussian beam (FWHMs ``bmaj``, ``bmin``) in pixels: ``pi bmaj bmin / (4 ln 2) / pix^2``."""
    return math.pi * bmaj_arcsec * bmin_arcsec / (4.0 * math.log(2.0)) / pixel_scale_arcsec ** 2


def sha256_file(path) -> str | None:
    """Hex sha256 of a file, or None when ``path`` is not a file."""
    if path is None or not os.path.isfile(str(path)):
        return None
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class SourceMeasure:
    """What :func:`measure_source` finds in a box (pixel positions in the region's grid + origin)."""

    x_cen: float                 # flux-weighted centroid, 0-based pixel centres of the working grid
    y_cen: float
    flux: float                  # sum of island pixels (image units x pixels)
    peak: float                  # brightest island pixel (image units); NaN without islands
    n_components: int
    n_peaks: int
    las_pixels: float            # largest distance between island pixel centres + 1
    n_pixels: int
    blanked: bool
    components: list = field(default_factory=list)  # dicts: x_cen, y_cen, flux, peak, n_peaks, n_pixels, box


def _las(ys: np.ndarray, xs: np.ndarray) -> float:
    if len(xs) == 0:
        return 0.0
    pts = np.stack([xs, ys], 1).astype(np.float64)
    if len(pts) > 3:
        import cv2
        pts = cv2.convexHull(pts.astype(np.float32)).reshape(-1, 2).astype(np.float64)
    d = np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)).max() if len(pts) > 1 else 0.0
    return float(d) + 1.0


def measure_source(region: np.ndarray, origin: tuple[int, int], box, rms: float, sigma_level: float = RGZ_BASE_SIGMA,
                   min_pixels: int = 5, contour_factor: float = RGZ_CONTOUR_FACTOR) -> SourceMeasure:
    """Islands, centroid, flux, peaks and size of the source in ``box``.

    region: (h, w) float image section (NaN blanks) whose pixel ``(0, 0)`` is pixel ``origin =
    (x0, y0)`` of the working grid; it should extend beyond the box so that islands are whole.
    box: ``x1, y1, x2, y2`` on the working grid, pixel edges (pixel ``i`` spans ``[i, i+1)``).
    rms: the local noise; islands are the 8-connected regions above ``sigma_level * rms`` with at
    least ``min_pixels`` pixels whose brightest pixel lies inside the box.
    """
    from .labels import derive_sources

    x0, y0 = origin
    bx1, by1, bx2, by2 = (float(v) for v in box)
    h, w = region.shape
    # blanked pixels inside the box or within one pixel of it
    cx1, cy1 = max(0, int(math.floor(bx1 - x0)) - 1), max(0, int(math.floor(by1 - y0)) - 1)
    cx2, cy2 = min(w, int(math.ceil(bx2 - x0)) + 1), min(h, int(math.ceil(by2 - y0)) + 1)
    blanked = bool((~np.isfinite(region[cy1:cy2, cx1:cx2])).any()) if cx2 > cx1 and cy2 > cy1 else False
    comps = []
    if np.isfinite(rms) and rms > 0 and np.isfinite(region).any():
        lab = derive_sources(region, sigma_level=sigma_level, contour_factor=contour_factor, min_pixels=min_pixels,
                             noise=rms)
        for c in lab.components:
            px, py = c.peaks[0]
            if bx1 <= px + x0 + 0.5 < bx2 and by1 <= py + y0 + 0.5 < by2:
                comps.append(c)
    vals = np.nan_to_num(region, nan=0.0, posinf=0.0, neginf=0.0)
    if not comps:
        return SourceMeasure(x_cen=(bx1 + bx2) / 2 - 0.5, y_cen=(by1 + by2) / 2 - 0.5, flux=0.0, peak=float("nan"),
                             n_components=0, n_peaks=0, las_pixels=0.0, n_pixels=0, blanked=blanked)
    union = np.zeros(region.shape, bool)
    comp_rows = []
    for c in comps:
        union |= c.mask
        ys, xs = np.nonzero(c.mask)
        v = vals[ys, xs].astype(np.float64)
        wts = np.clip(v, 0, None)
        s = wts.sum() if wts.sum() > 0 else 1.0
        comp_rows.append({"x_cen": float((xs * wts).sum() / s) + x0, "y_cen": float((ys * wts).sum() / s) + y0,
                          "flux": float(v.sum()), "peak": float(max(c.peak_values)), "n_peaks": c.n_peaks,
                          "n_pixels": c.n_pixels, "las_pixels": _las(ys, xs),
                          "box": (c.box[0] + x0, c.box[1] + y0, c.box[2] + x0, c.box[3] + y0)})
    ys, xs = np.nonzero(union)
    v = vals[ys, xs].astype(np.float64)
    wts = np.clip(v, 0, None)
    s = wts.sum() if wts.sum() > 0 else 1.0
    return SourceMeasure(x_cen=float((xs * wts).sum() / s) + x0, y_cen=float((ys * wts).sum() / s) + y0,
                         flux=float(v.sum()), peak=float(v.max()), n_components=len(comps),
                         n_peaks=int(sum(c.n_peaks for c in comps)), las_pixels=_las(ys, xs),
                         n_pixels=int(union.sum()), blanked=blanked, components=comp_rows)


# ---------------------------------------------------------------------------------------------
# tables and writers
# ---------------------------------------------------------------------------------------------

_UNITS = {"score": "", "ra_deg": "deg", "dec_deg": "deg", "box_ra_deg": "deg", "box_dec_deg": "deg",
          "x_cen": "pix", "y_cen": "pix", "x1": "pix", "y1": "pix", "x2": "pix", "y2": "pix",
          "flux_int_mjy": "mJy", "peak_mjy": "mJy/beam", "rms_mjy": "mJy/beam", "las_arcsec": "arcsec",
          "box_width_arcsec": "arcsec", "box_height_arcsec": "arcsec"}


def _prob_columns(classes) -> list[str]:
    return ["prob_background"] + [f"prob_{c}" for c in classes]


def source_columns(classes) -> list[str]:
    return (["name", "file", "class", "score"] + _prob_columns(classes) +
            ["ra_deg", "dec_deg", "x_cen", "y_cen", "x1", "y1", "x2", "y2", "box_ra_deg", "box_dec_deg",
             "box_width_arcsec", "box_height_arcsec", "n_components", "n_peaks", "flux_int_mjy", "peak_mjy", "rms_mjy", "snr", "las_arcsec", "flags"]
            + list(FLAG_NAMES.values()))


COMPONENT_COLUMNS = ["name", "source", "component", "file", "ra_deg", "dec_deg", "x_cen", "y_cen", "x1", "y1",
                     "x2", "y2", "n_peaks", "n_pixels", "flux_int_mjy", "peak_mjy", "las_arcsec"]

_FLOAT_COLS = {"score", "ra_deg", "dec_deg", "x_cen", "y_cen", "x1", "y1", "x2", "y2", "box_ra_deg", "box_dec_deg",
               "box_width_arcsec", "box_height_arcsec",
               "flux_int_mjy", "peak_mjy", "rms_mjy", "snr", "las_arcsec"}


def _table(rows: list[dict], columns: list[str], meta: dict):
    from astropy.table import Table

    data = {}
    for c in columns:
        vals = [r.get(c) for r in rows]
        if c in _FLOAT_COLS or c.startswith("prob_"):
            data[c] = np.array([np.nan if v is None else float(v) for v in vals], dtype=np.float64)
        elif c.startswith("flag_"):
            data[c] = np.array([bool(v) for v in vals], dtype=bool)
        elif c in ("n_components", "n_peaks", "n_pixels", "flags", "component"):
            data[c] = np.array([int(v) for v in vals], dtype=np.int32)
        else:
            data[c] = np.array([str(v) for v in vals], dtype=str) if vals else np.array([], dtype="U1")
    t = Table(data, names=columns, meta=dict(meta))
    for c in columns:
        u = _UNITS.get(c)
        if u:
            t[c].unit = u
    return t


def catalogue_tables(rows: list[dict], classes, meta: dict, components: list[dict] | None = None):
    """(source table, component table or None) as astropy Tables with ``meta``."""
    src = _table(rows, source_columns(classes), meta)
    comp = _table(components, COMPONENT_COLUMNS, meta) if components is not None else None
    return src, comp


def _csv_write(t, path: Path) -> None:
    t = t.copy(copy_data=False)
    t.meta = {"comments": [f"{k} = {v}" for k, v in t.meta.items()]}
    t.write(path, format="ascii.csv", overwrite=True, comment="# ")


def _fits_write(t, path: Path) -> None:
    t = t.copy(copy_data=False)
    t.meta = {str(k)[:8].upper(): ("" if v is None else v) for k, v in t.meta.items()}
    t.write(path, format="fits", overwrite=True)


def _votable_write(t, path: Path) -> None:
    from astropy.io.votable import from_table
    from astropy.io.votable.tree import Info

    meta = dict(t.meta)
    t = t.copy(copy_data=False)
    t.meta = {}
    vo = from_table(t)
    table = vo.resources[0].tables[0]
    for k, v in meta.items():
        table.infos.append(Info(name=str(k), value=str(v)))
    # astropy's Table.read keeps only the DESCRIPTION: the provenance there too, as KEY=value; ...
    table.description = "gluon_rcnn radio source catalogue; " + "; ".join(f"{k}={v}" for k, v in meta.items())
    vo.to_xml(str(path))


def write_ds9(t, path, colour: str = "green") -> None:
    """DS9 regions (fk5): per source a box of the detection (sky size from its pixel box, angle 0:
    the pixel axes, exact for north-up images) labelled with the name and class, and a point at the
    centroid."""
    lines = ["# Region file format: DS9 version 4.1",
             f'global color={colour} dashlist=8 3 width=1 font="helvetica 9 normal roman" select=1',
             "fk5"]
    for r in t:
        w, h = r["box_width_arcsec"], r["box_height_arcsec"]
        lines.append(f'box({r["box_ra_deg"]:.7f},{r["box_dec_deg"]:.7f},{w:.2f}",{h:.2f}",0) '
                     f'# text={{{r["name"]} {r["class"]} {r["score"]:.2f}}}')
        lines.append(f'point({r["ra_deg"]:.7f},{r["dec_deg"]:.7f}) # point=x')
    Path(path).write_text("\n".join(lines) + "\n")


def write_catalogue(table, stem, formats=("csv", "fits", "votable", "ds9"), components=None) -> list[Path]:
    """Write ``stem + '.csv' / '.fits' / '.vot' / '.reg'`` (and ``stem + '_components.*'`` for the
    component table, except DS9); each file atomically (a temporary name, then renamed)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    writers = {"csv": _csv_write, "fits": _fits_write, "votable": _votable_write, "ds9": write_ds9}
    out = []
    for fmt in formats:
        if fmt not in FORMATS:
            raise ValueError(f"unknown catalogue format {fmt!r}: one of {', '.join(FORMATS)}")
        for t, s in ((table, stem), (components, stem.with_name(stem.name + "_components"))):
            if t is None or (fmt == "ds9" and t is components):
                continue
            path = s.with_name(s.name + FORMATS[fmt])
            tmp = path.with_name(path.name + ".tmp")
            try:
                writers[fmt](t, tmp)
                os.replace(tmp, path)  # whole or not at all (the writers want a path, not a file object)
            finally:
                tmp.unlink(missing_ok=True)
            out.append(path)
    return out


def source_rows(meas: SourceMeasure, *, file: str, class_name: str, score: float, probs, classes, box_grid,
                to_input, wcs, beam_area_pix: float, rms: float, pixel_scale: float, flags: int,
                name_prefix: str = "") -> tuple[dict, list[dict]]:
    """The catalogue row of one source and its component rows.

    box_grid: the box on the working grid (pixel edges); ``to_input(x, y)`` maps 0-based working-grid
    pixel positions to the input FITS's 0-based grid; ``wcs`` is the working grid's celestial WCS."""
    ra, dec = (float(v) for v in wcs.pixel_to_world_values(meas.x_cen, meas.y_cen))
    bx = (box_grid[0] + box_grid[2]) / 2 - 0.5
    by = (box_grid[1] + box_grid[3]) / 2 - 0.5
    bra, bdec = (float(v) for v in wcs.pixel_to_world_values(bx, by))
    x1, y1 = to_input(box_grid[0] - 0.5, box_grid[1] - 0.5)
    x2, y2 = to_input(box_grid[2] - 0.5, box_grid[3] - 0.5)
    xc, yc = to_input(meas.x_cen, meas.y_cen)
    if meas.n_components == 0:
        flags |= FLAG_NO_ISLAND
    if meas.blanked:
        flags |= FLAG_BLANKED
    name = name_prefix + iau_name([ra], [dec])[0]
    row = {"name": name, "file": file, "class": class_name, "score": float(score),
           "ra_deg": ra, "dec_deg": dec, "x_cen": xc, "y_cen": yc, "x1": x1, "y1": y1, "x2": x2, "y2": y2,
           "box_ra_deg": bra, "box_dec_deg": bdec, "box_width_arcsec": (box_grid[2] - box_grid[0]) * pixel_scale,
           "box_height_arcsec": (box_grid[3] - box_grid[1]) * pixel_scale, "n_components": meas.n_components, "n_peaks": meas.n_peaks,
           "flux_int_mjy": 1e3 * meas.flux / beam_area_pix, "peak_mjy": 1e3 * meas.peak, "rms_mjy": 1e3 * rms,
           "snr": meas.peak / rms if rms > 0 else float("nan"), "las_arcsec": meas.las_pixels * pixel_scale,
           "flags": int(flags)}
    for bit, col in FLAG_NAMES.items():
        row[col] = bool(flags & bit)
    pcols = _prob_columns(classes)
    p = [None] * len(pcols) if probs is None else list(np.asarray(probs, dtype=np.float64).reshape(-1))
    for c, v in zip(pcols, p):
        row[c] = v
    comps = []
    for k, c in enumerate(meas.components, start=1):
        cra, cdec = (float(v) for v in wcs.pixel_to_world_values(c["x_cen"], c["y_cen"]))
        cx, cy = to_input(c["x_cen"], c["y_cen"])
        b = c["box"]
        X1, Y1 = to_input(b[0] - 0.5, b[1] - 0.5)
        X2, Y2 = to_input(b[2] - 0.5, b[3] - 0.5)
        comps.append({"name": name_prefix + iau_name([cra], [cdec])[0], "source": name, "component": k, "file": file,
                      "ra_deg": cra, "dec_deg": cdec, "x_cen": cx, "y_cen": cy, "x1": X1, "y1": Y1, "x2": X2,
                      "y2": Y2, "n_peaks": c["n_peaks"], "n_pixels": c["n_pixels"],
                      "flux_int_mjy": 1e3 * c["flux"] / beam_area_pix, "peak_mjy": 1e3 * c["peak"],
                      "las_arcsec": c["las_pixels"] * pixel_scale})
    return row, comps
