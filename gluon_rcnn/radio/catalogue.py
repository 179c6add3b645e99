"""Source catalogues astronomers use: one row per detected source (optionally one per component),
written as CSV, FITS table, VOTable (astropy.table) and a DS9 region file.

Per source (:func:`source_columns`; ``prob_<class>`` columns follow ``score``):

* ``name``: IAU-style ``<prefix>Jhhmmss.s+ddmmss`` of the flux-weighted centroid's ICRS position
  (truncated).
* ``file``: the FITS file; ``class``, ``score``: the detector's; ``prob_background``,
  ``prob_<class>``: the full softmax vector of the detection's RoI (NaN when the detector gives none).
* ``ra_deg``, ``dec_deg``: the flux-weighted centroid of the source's islands, ICRS whatever the
  input WCS's frame (:class:`gluon_rcnn.radio.coords.IcrsWCS`);
  ``x_cen``, ``y_cen``: the same in the FITS's 0-based pixel grid (astropy's ``pixel_to_world``
  takes it as is).
* ``x1, y1, x2, y2``: the detection box in the FITS's 0-based pixel grid (edges at ``-0.5``);
  ``box_ra_deg``, ``box_dec_deg``: its centre; ``box_width_arcsec``, ``box_height_arcsec``: its sides;
  ``box_pa_deg``: the ICRS position angle of the image's y axis there (the box's sky orientation).
* ``n_components``, ``n_peaks``: the islands assigned to the source (8-connected regions above
  ``sigma_level`` x the local rms with at least ``min_pixels`` pixels, each in exactly one source:
  :mod:`gluon_rcnn.radio.islands`, :func:`gluon_rcnn.radio.survey.merge_detections`), and their
  peaks (:func:`gluon_rcnn.radio.labels.derive_sources`' RGZ rule).
* ``island_flux_mjy``: the island sum, ``sum(island pixels [Jy/beam]) / beam area [pixels]``, mJy;
  the beam area is ``pi * BMAJ * BMIN / (4 ln 2)`` over the pixel area (Gaussian beam). It leaves
  out the flux below the threshold: ``1 - sigma_level * rms / peak`` of a Gaussian source's flux.
* ``island_peak_mjy``: the brightest island pixel, mJy/beam; ``rms_mjy``: the local noise (MAD /
  0.6745 of the noise-map cell at the brightest pixel), mJy/beam; ``snr``: ``island_peak / rms``.
* Gaussian fits (:data:`FIT_COLUMNS`, :mod:`gluon_rcnn.radio.fitting`; NaN and ``fit_ok`` False
  when a fit fails): ``int_flux_mjy``, ``peak_flux_mjy`` and their errors ``e_*`` (Condon 1997, as
  PyBDSF); ``ra_fit_deg``, ``dec_fit_deg``, ``e_ra_arcsec``, ``e_dec_arcsec``; FWHM ``maj_arcsec``,
  ``min_arcsec``, ``pa_deg`` (east of north) with errors; beam-deconvolved ``deconv_maj_arcsec``,
  ``deconv_min_arcsec``, ``deconv_pa_deg`` (0: unresolved); ``resolved``; ``n_gauss``. A source's
  are its components' Gaussians together (fluxes summed; size from the model's second moments).
* ``las_arcsec``: largest angular size, the largest distance between two island pixel centres
  plus one pixel (so a single pixel measures one pixel), arcsec.
* ``flags`` (bit mask) and one boolean column per bit: ``flag_tile_edge`` (1: merged from parts cut
  by tile borders: a source larger than the tile overlap allows), ``flag_image_edge`` (2: the box
  touches the image edge), ``flag_blanked`` (4: blanked (NaN) pixels in or next to the box),
  ``flag_no_island`` (8: no island above the threshold in the box; flux 0, centroid = box centre),
  ``flag_shared`` (16: the detection's box also covered islands given to another source).

Every column has a unit, a UCD and a description (:data:`COLUMN_META`, :func:`column_meta`): FITS
TUNITn/TUCDn/TCOMMn and astropy's serialized column info, VOTable FIELD unit/ucd/DESCRIPTION, the
CSV's ``# column`` lines. Positions are ICRS: FITS ``RADESYS = 'ICRS'``, a VOTable ``COOSYS`` the
position FIELDs refer to, DS9 ``icrs``.

Provenance (model, weights and their sha256, thresholds, survey, pixel scale, beam as BMAJ/BMIN/BPA
in degrees, the inputs' BUNIT and frame, tiling) is in ``table.meta``: FITS header keywords (8 characters), VOTable INFO elements of the TABLE (and its
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
FLAG_SHARED = 16
FLAG_NAMES = {FLAG_TILE_EDGE: "flag_tile_edge", FLAG_IMAGE_EDGE: "flag_image_edge", FLAG_BLANKED: "flag_blanked",
              FLAG_NO_ISLAND: "flag_no_island", FLAG_SHARED: "flag_shared"}

FORMATS = {"csv": ".csv", "fits": ".fits", "votable": ".vot", "ds9": ".reg"}

__all__ = ["FLAG_TILE_EDGE", "FLAG_IMAGE_EDGE", "FLAG_BLANKED", "FLAG_NO_ISLAND", "FLAG_SHARED", "FORMATS",
           "SourceMeasure", "beam_area_pixels", "measure_islands", "measure_source", "catalogue_tables", "write_catalogue", "write_ds9",
           "sha256_file", "COLUMN_META", "COOSYS", "column_meta", "describe"]


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
    """What :func:`measure_islands` finds for one source (pixel positions on the working grid)."""

    x_cen: float                 # flux-weighted centroid, 0-based pixel centres of the working grid
    y_cen: float
    flux: float                  # sum of island pixels (image units x pixels)
    peak: float                  # brightest island pixel (image units); NaN without islands
    n_components: int
    n_peaks: int
    las_pixels: float            # largest distance between island pixel centres + 1
    n_pixels: int
    blanked: bool
    components: list = field(default_factory=list)  # dicts: x_cen, y_cen, flux, peak, n_peaks, n_pixels, box, fit
    rms: float = float("nan")    # the noise at the brightest pixel (image units)
    fit: object = None           # :class:`gluon_rcnn.radio.fitting.FitSummary` of all components' Gaussians


def _las(ys: np.ndarray, xs: np.ndarray) -> float:
    if len(xs) == 0:
        return 0.0
    pts = np.stack([xs, ys], 1).astype(np.float64)
    if len(pts) > 3:
        import cv2
        pts = cv2.convexHull(pts.astype(np.float32)).reshape(-1, 2).astype(np.float64)
    d = np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)).max() if len(pts) > 1 else 0.0
    return float(d) + 1.0


def measure_islands(islands, box, blanked: bool = False, beam=None, rms: float = float("nan")) -> SourceMeasure:
    """A source made of ``islands`` (:class:`gluon_rcnn.radio.islands.Island`, whole): flux-weighted
    centroid, island-sum flux, brightest pixel, peaks, largest angular size; with ``beam``
    (:class:`gluon_rcnn.radio.fitting.Beam`) per-island Gaussian fits summed per component and over
    the source (:func:`gluon_rcnn.radio.fitting.summarize`). ``rms``: the noise to report when there is
    no island (else the noise at the brightest island's peak)."""
    from .fitting import fit_island, summarize

    bx1, by1, bx2, by2 = (float(v) for v in box)
    islands = sorted(islands, key=lambda i: (-i.peak, i.key))
    if not islands:
        return SourceMeasure(x_cen=(bx1 + bx2) / 2 - 0.5, y_cen=(by1 + by2) / 2 - 0.5, flux=0.0, peak=float("nan"),
                             n_components=0, n_peaks=0, las_pixels=0.0, n_pixels=0, blanked=blanked, rms=rms,
                             fit=summarize(None, beam) if beam is not None else None)
    comp_rows, all_x, all_y, all_v, gauss = [], [], [], [], []
    for isl in islands:
        ys, xs = np.nonzero(isl.mask)
        v = np.nan_to_num(isl.values[ys, xs], nan=0.0, posinf=0.0, neginf=0.0).astype(np.float64)
        gx, gy = xs + isl.x0, ys + isl.y0
        wts = np.clip(v, 0, None)
        s = wts.sum() if wts.sum() > 0 else 1.0
        row = {"x_cen": float((gx * wts).sum() / s), "y_cen": float((gy * wts).sum() / s), "flux": float(v.sum()),
               "peak": isl.peak, "n_peaks": isl.n_peaks, "n_pixels": isl.n_pixels, "las_pixels": _las(gy, gx),
               "box": isl.box, "rms": isl.rms, "fit": None}
        if beam is not None:
            g = fit_island(isl.values, isl.mask, isl.others, (isl.x0, isl.y0), isl.peaks, isl.peak_values, isl.rms,
                           beam)
            row["fit"] = summarize(g, beam)
            gauss += g or []
        comp_rows.append(row)
        all_x.append(gx), all_y.append(gy), all_v.append(v)
    gx, gy, v = np.concatenate(all_x), np.concatenate(all_y), np.concatenate(all_v)
    wts = np.clip(v, 0, None)
    s = wts.sum() if wts.sum() > 0 else 1.0
    fit = None
    if beam is not None:
        fit = summarize(gauss, beam) if all(c["fit"].ok for c in comp_rows) else summarize(None, beam)
    return SourceMeasure(x_cen=float((gx * wts).sum() / s), y_cen=float((gy * wts).sum() / s), flux=float(v.sum()),
                         peak=float(islands[0].peak), n_components=len(islands),
                         n_peaks=int(sum(i.n_peaks for i in islands)), las_pixels=_las(gy, gx),
                         n_pixels=int(sum(i.n_pixels for i in islands)), blanked=blanked, components=comp_rows,
                         rms=islands[0].rms, fit=fit)


def measure_source(region: np.ndarray, origin: tuple[int, int], box, rms: float, sigma_level: float = RGZ_BASE_SIGMA,
                   min_pixels: int = 5, contour_factor: float = RGZ_CONTOUR_FACTOR, beam=None) -> SourceMeasure:
    """Islands, centroid, flux, peaks and size of the source in ``box``, on one image section with
    one noise level (:func:`measure_islands` of :func:`gluon_rcnn.radio.islands.find_islands`).

    region: (h, w) float image section (NaN blanks) whose pixel ``(0, 0)`` is pixel ``origin =
    (x0, y0)`` of the working grid; islands reaching its edge are cut there.
    box: ``x1, y1, x2, y2`` on the working grid, pixel edges (pixel ``i`` spans ``[i, i+1)``).
    rms: the noise; islands are the 8-connected regions above ``sigma_level * rms`` with at
    least ``min_pixels`` pixels whose brightest pixel lies inside the box. beam: a
    :class:`gluon_rcnn.radio.fitting.Beam` to fit Gaussians (None: no fit).
    """
    from .islands import NoiseMap, find_islands

    x0, y0 = origin
    h, w = region.shape
    bx1, by1, bx2, by2 = (float(v) for v in box)
    # blanked pixels inside the box or within one pixel of it
    cx1, cy1 = max(0, int(math.floor(bx1 - x0)) - 1), max(0, int(math.floor(by1 - y0)) - 1)
    cx2, cy2 = min(w, int(math.ceil(bx2 - x0)) + 1), min(h, int(math.ceil(by2 - y0)) + 1)
    blanked = bool((~np.isfinite(region[cy1:cy2, cx1:cx2])).any()) if cx2 > cx1 and cy2 > cy1 else False
    section = lambda a, b, c, d: region[a:b, c:d]  # noqa: E731
    noise = NoiseMap.constant((h, w), rms)
    local = (bx1 - x0, by1 - y0, bx2 - x0, by2 - y0)
    isl = find_islands(section, noise, local, sigma_level=sigma_level, contour_factor=contour_factor,
                       min_pixels=min_pixels, pad=max(h, w))
    for i in isl:  # back to the working grid
        i.x0, i.y0 = i.x0 + x0, i.y0 + y0
        i.key = (i.key[0] + y0, i.key[1] + x0)
        i.peaks = [(px + x0, py + y0) for px, py in i.peaks]
        i.box = (i.box[0] + x0, i.box[1] + y0, i.box[2] + x0, i.box[3] + y0)
    return measure_islands(isl, box, blanked, beam, rms)


# ---------------------------------------------------------------------------------------------
# tables and writers
# ---------------------------------------------------------------------------------------------

#: Column metadata, one entry per column of the source and component tables: (unit, UCD1+, description).
#: Units are astropy/FITS strings; UCDs are IVOA UCD1+ words (checked by astropy's ``check_ucd`` in the
#: tests); the writers put all three on every column (FITS TUNITn/TUCDn/TCOMMn and astropy's column
#: description/meta; VOTable FIELD unit/ucd/DESCRIPTION). ``prob_<class>`` and ``flag_<name>`` columns
#: are described by :func:`column_meta`. Positions are ICRS (:data:`COOSYS`).
COLUMN_META = {
    "name": (None, "meta.id;meta.main", "IAU-style name <prefix>Jhhmmss.s+ddmmss of the ICRS position "
             "(ra_deg, dec_deg), truncated"),
    "source": (None, "meta.id.parent", "name of the source this component belongs to"),
    "component": (None, "meta.number", "component number within its source, from 1"),
    "file": (None, "meta.id;obs.image", "input FITS file the row was measured in"),
    "class": (None, "src.morph.type", "detector class: RGZ morphology, components and peaks (e.g. 2C_3P)"),
    "score": (None, "stat.probability", "detector score of the class"),
    "ra_deg": ("deg", "pos.eq.ra;meta.main", "right ascension (ICRS) of the flux-weighted centroid of the islands"),
    "dec_deg": ("deg", "pos.eq.dec;meta.main", "declination (ICRS) of the flux-weighted centroid of the islands"),
    "x_cen": ("pix", "pos.cartesian.x;instr.det", "centroid x, 0-based pixel centres of the input FITS"),
    "y_cen": ("pix", "pos.cartesian.y;instr.det", "centroid y, 0-based pixel centres of the input FITS"),
    "x1": ("pix", "pos.cartesian.x;instr.det", "box left edge, 0-based pixel grid of the input FITS (edges at -0.5)"),
    "y1": ("pix", "pos.cartesian.y;instr.det", "box bottom edge, 0-based pixel grid of the input FITS (edges at -0.5)"),
    "x2": ("pix", "pos.cartesian.x;instr.det", "box right edge, 0-based pixel grid of the input FITS"),
    "y2": ("pix", "pos.cartesian.y;instr.det", "box top edge, 0-based pixel grid of the input FITS"),
    "box_ra_deg": ("deg", "pos.eq.ra", "right ascension (ICRS) of the detection box centre"),
    "box_dec_deg": ("deg", "pos.eq.dec", "declination (ICRS) of the detection box centre"),
    "box_width_arcsec": ("arcsec", "phys.angSize", "detection box side along the image x axis"),
    "box_height_arcsec": ("arcsec", "phys.angSize", "detection box side along the image y axis"),
    "box_pa_deg": ("deg", "pos.posAng", "position angle (east of ICRS north) of the image y axis at the box centre: "
                   "the box's sky orientation (0 for north-up equatorial images)"),
    "n_components": (None, "meta.number", "islands (components) of the source"),
    "n_peaks": (None, "meta.number", "peaks of the islands"),
    "n_pixels": (None, "meta.number", "pixels of the island"),
    "island_flux_mjy": ("mJy", "phot.flux.density;em.radio", "sum of the island pixels above sigma_level x rms over "
                        "the beam area in pixels (biased low for faint or extended sources: pixels below the "
                        "threshold are left out)"),
    "island_peak_mjy": ("mJy/beam", "phot.flux.density;stat.max;em.radio", "brightest island pixel"),
    "rms_mjy": ("mJy/beam", "stat.stdev;phot.flux.density", "local noise (MAD / 0.6745) at the source"),
    "snr": (None, "stat.snr", "peak over rms"),
    "las_arcsec": ("arcsec", "phys.angSize", "largest angular size: largest distance between island pixel centres "
                   "plus one pixel"),
    "flags": (None, "meta.code.qual", "quality flags, bit mask (flag_* columns: one bit each)"),
    # Gaussian fits (gluon_rcnn.radio.fitting): astropy.modeling Gaussian2D per peak, errors as PyBDSF (Condon 1997)
    "int_flux_mjy": ("mJy", "phot.flux.density;em.radio", "integrated flux density of the fitted Gaussians"),
    "e_int_flux_mjy": ("mJy", "stat.error;phot.flux.density;em.radio", "1-sigma error of int_flux_mjy"),
    "peak_flux_mjy": ("mJy/beam", "phot.flux.density;stat.max;em.radio",
                      "peak of the fitted model (the brightest Gaussian's amplitude)"),
    "e_peak_flux_mjy": ("mJy/beam", "stat.error;phot.flux.density;em.radio", "1-sigma error of peak_flux_mjy"),
    "ra_fit_deg": ("deg", "pos.eq.ra", "right ascension (ICRS) of the fit: integrated-flux-weighted mean of the "
                   "Gaussians' centres"),
    "dec_fit_deg": ("deg", "pos.eq.dec", "declination (ICRS) of the fit: integrated-flux-weighted mean of the "
                    "Gaussians' centres"),
    "e_ra_arcsec": ("arcsec", "stat.error;pos.eq.ra", "1-sigma error of ra_fit_deg on the sky (times cos dec)"),
    "e_dec_arcsec": ("arcsec", "stat.error;pos.eq.dec", "1-sigma error of dec_fit_deg"),
    "maj_arcsec": ("arcsec", "phys.angSize.smajAxis", "FWHM major axis of the fitted model (before deconvolution)"),
    "e_maj_arcsec": ("arcsec", "stat.error;phys.angSize.smajAxis",
                     "1-sigma error of maj_arcsec (NaN when n_gauss > 1)"),
    "min_arcsec": ("arcsec", "phys.angSize.sminAxis", "FWHM minor axis of the fitted model (before deconvolution)"),
    "e_min_arcsec": ("arcsec", "stat.error;phys.angSize.sminAxis",
                     "1-sigma error of min_arcsec (NaN when n_gauss > 1)"),
    "pa_deg": ("deg", "pos.posAng", "position angle of the fitted major axis, east of north"),
    "e_pa_deg": ("deg", "stat.error;pos.posAng", "1-sigma error of pa_deg (NaN when n_gauss > 1)"),
    "deconv_maj_arcsec": ("arcsec", "phys.angSize.smajAxis", "FWHM major axis deconvolved from the beam "
                          "(Wild 1970); 0 when unresolved"),
    "deconv_min_arcsec": ("arcsec", "phys.angSize.sminAxis", "deconvolved FWHM minor axis; 0 when unresolved along it"),
    "deconv_pa_deg": ("deg", "pos.posAng", "deconvolved position angle, east of north"),
    "resolved": (None, "meta.code", "the fitted size exceeds the beam (deconvolved major axis > 0)"),
    "n_gauss": (None, "meta.number", "Gaussians fitted (one per counted peak)"),
    "fit_ok": (None, "meta.code.qual", "the fit converged; fit columns are NaN when False"),
}

#: What each flag bit means (flag_<name> columns).
FLAG_DESCRIPTIONS = {
    "flag_tile_edge": "bit 1: merged from parts cut by tile borders (a source larger than the tile overlap allows)",
    "flag_image_edge": "bit 2: the box touches the image edge",
    "flag_blanked": "bit 4: blanked (NaN) pixels in or next to the box",
    "flag_no_island": "bit 8: no island above the threshold in the box (flux 0, centroid = box centre)",
    "flag_shared": "bit 16: the detection's box also covered islands given to another source's detection; this "
                   "row holds only the rest",
}

#: The sky frame of every position column: VOTable COOSYS ``ID``/``system``, FITS ``RADESYS``.
COOSYS = {"ID": "icrs", "system": "ICRS"}
SKY_COLUMNS = ("ra_deg", "dec_deg", "box_ra_deg", "box_dec_deg", "ra_fit_deg", "dec_fit_deg")


def column_meta(name: str) -> tuple[str | None, str, str]:
    """(unit, UCD, description) of a catalogue column; KeyError for a column nobody described."""
    if name in COLUMN_META:
        return COLUMN_META[name]
    if name == "prob_background":
        return None, "stat.probability", "detector probability of background (softmax of the detection's RoI)"
    if name.startswith("prob_"):
        return None, "stat.probability", f"detector probability of class {name[5:]} (softmax of the detection's RoI)"
    if name in FLAG_DESCRIPTIONS:
        return None, "meta.code.qual", FLAG_DESCRIPTIONS[name]
    raise KeyError(f"catalogue column {name!r} has no unit/UCD/description in gluon_rcnn.radio.catalogue.COLUMN_META")


def _prob_columns(classes) -> list[str]:
    return ["prob_background"] + [f"prob_{c}" for c in classes]


#: the Gaussian-fit columns of both tables (:mod:`gluon_rcnn.radio.fitting`)
FIT_COLUMNS = ["int_flux_mjy", "e_int_flux_mjy", "peak_flux_mjy", "e_peak_flux_mjy", "ra_fit_deg", "dec_fit_deg",
               "e_ra_arcsec", "e_dec_arcsec", "maj_arcsec", "e_maj_arcsec", "min_arcsec", "e_min_arcsec", "pa_deg",
               "e_pa_deg", "deconv_maj_arcsec", "deconv_min_arcsec", "deconv_pa_deg", "resolved", "n_gauss", "fit_ok"]


def source_columns(classes) -> list[str]:
    return (["name", "file", "class", "score"] + _prob_columns(classes) +
            ["ra_deg", "dec_deg", "x_cen", "y_cen", "x1", "y1", "x2", "y2", "box_ra_deg", "box_dec_deg",
             "box_width_arcsec", "box_height_arcsec", "box_pa_deg", "n_components", "n_peaks", "island_flux_mjy",
             "island_peak_mjy", "rms_mjy", "snr", "las_arcsec"] + FIT_COLUMNS + ["flags"]
            + list(FLAG_NAMES.values()))


COMPONENT_COLUMNS = ["name", "source", "component", "file", "ra_deg", "dec_deg", "x_cen", "y_cen", "x1", "y1",
                     "x2", "y2", "n_peaks", "n_pixels", "island_flux_mjy", "island_peak_mjy", "rms_mjy",
                     "las_arcsec"] + FIT_COLUMNS

_FLOAT_COLS = {"score", "ra_deg", "dec_deg", "x_cen", "y_cen", "x1", "y1", "x2", "y2", "box_ra_deg", "box_dec_deg",
               "box_width_arcsec", "box_height_arcsec", "box_pa_deg",
               "island_flux_mjy", "island_peak_mjy", "rms_mjy", "snr", "las_arcsec"} | (
                   set(FIT_COLUMNS) - {"resolved", "n_gauss", "fit_ok"})


def _table(rows: list[dict], columns: list[str], meta: dict):
    from astropy.table import Table

    data = {}
    for c in columns:
        vals = [r.get(c) for r in rows]
        if c in _FLOAT_COLS or c.startswith("prob_"):
            data[c] = np.array([np.nan if v is None else float(v) for v in vals], dtype=np.float64)
        elif c.startswith("flag_") or c in ("resolved", "fit_ok"):
            data[c] = np.array([bool(v) for v in vals], dtype=bool)
        elif c in ("n_components", "n_peaks", "n_pixels", "flags", "component", "n_gauss"):
            data[c] = np.array([int(v) for v in vals], dtype=np.int32)
        else:
            data[c] = np.array([str(v) for v in vals], dtype=str) if vals else np.array([], dtype="U1")
    t = Table(data, names=columns, meta=dict(meta))
    describe(t)
    return t


def describe(t) -> None:
    """Put :func:`column_meta`'s unit, UCD (``meta['ucd']``) and description on every column of ``t``
    (in place); the position columns refer to the ICRS COOSYS (``meta['ref']``)."""
    for c in t.colnames:
        unit, ucd, desc = column_meta(c)
        if unit:
            t[c].unit = unit
        t[c].description = desc
        t[c].meta["ucd"] = ucd
        if c in SKY_COLUMNS:
            t[c].meta["ref"] = COOSYS["ID"]


def catalogue_tables(rows: list[dict], classes, meta: dict, components: list[dict] | None = None):
    """(source table, component table or None) as astropy Tables with ``meta``."""
    src = _table(rows, source_columns(classes), meta)
    comp = _table(components, COMPONENT_COLUMNS, meta) if components is not None else None
    return src, comp


def _csv_write(t, path: Path) -> None:
    t = t.copy(copy_data=False)
    comments = [f"{k} = {v}" for k, v in t.meta.items()]
    for c in t.colnames:  # the column metadata, as comments too
        unit, ucd = t[c].unit, t[c].meta.get("ucd", "")
        comments.append(f"column {c}" + (f" [{unit}]" if unit else "") + f" ({ucd}): {t[c].description or ''}")
    t.meta = {"comments": comments}
    t.write(path, format="ascii.csv", overwrite=True, comment="# ")


def _fits_write(t, path: Path) -> None:
    """A binary table: provenance as header keywords, ``RADESYS = 'ICRS'`` (the frame of every position
    column; no EQUINOX: the FITS standard gives ICRS none), and per column TUNITn, TUCDn and TCOMMn
    (the HEASARC/VizieR conventions for UCDs and descriptions) besides astropy's own serialization."""
    from astropy.io import fits

    t = t.copy(copy_data=False)
    t.meta = {str(k)[:8].upper(): ("" if v is None else v) for k, v in t.meta.items()}
    t.meta["RADESYS"] = COOSYS["system"]
    t.write(path, format="fits", overwrite=True)  # astropy serializes units, descriptions and meta
    with fits.open(path, mode="update") as hdul:
        hdr = hdul[1].header
        hdr.comments["RADESYS"] = "frame of ra_deg, dec_deg and all sky positions"
        for k, text in (("BMAJ", "beam FWHM major axis, deg"), ("BMIN", "beam FWHM minor axis, deg"),
                        ("BPA", "beam position angle, deg east of north")):
            if k in hdr:
                hdr.comments[k] = text
        for i, c in enumerate(t.colnames, start=1):
            if t[c].meta.get("ucd"):
                hdr.insert(f"TFORM{i}", (f"TUCD{i}", t[c].meta["ucd"]), after=True)
            if t[c].description:
                hdr.insert(f"TFORM{i}", (f"TCOMM{i}", t[c].description), after=True)


def _votable_write(t, path: Path) -> None:
    """A VOTable whose RESOURCE holds ``COOSYS ID="icrs" system="ICRS"``, referenced (``ref``) by the
    position FIELDs; each FIELD has its unit, UCD and DESCRIPTION; provenance as INFO elements."""
    from astropy.io.votable import from_table
    from astropy.io.votable.tree import CooSys, Info

    meta = dict(t.meta)
    t = t.copy(copy_data=False)
    t.meta = {}
    vo = from_table(t)
    resource = vo.resources[0]
    resource.coordinate_systems.append(CooSys(ID=COOSYS["ID"], system=COOSYS["system"]))
    table = resource.tables[0]
    for f in table.fields:
        if f.name in SKY_COLUMNS:
            f.ref = COOSYS["ID"]
    for k, v in meta.items():
        table.infos.append(Info(name=str(k), value=str(v)))
    # astropy's Table.read keeps only the DESCRIPTION: the provenance there too, as KEY=value; ...
    table.description = "gluon_rcnn radio source catalogue; " + "; ".join(f"{k}={v}" for k, v in meta.items())
    vo.to_xml(str(path))


def write_ds9(t, path, colour: str = "green") -> None:
    """DS9 regions (``icrs``): per source a box of the detection (sky size from its pixel box, angle
    ``box_pa_deg``: the sky orientation of the image's pixel axes, 0 for north-up equatorial images)
    labelled with the name and class, and a point at the centroid."""
    lines = ["# Region file format: DS9 version 4.1",
             f'global color={colour} dashlist=8 3 width=1 font="helvetica 9 normal roman" select=1',
             "icrs"]
    has_pa = "box_pa_deg" in t.colnames
    for r in t:
        w, h = r["box_width_arcsec"], r["box_height_arcsec"]
        pa = float(r["box_pa_deg"]) if has_pa and np.isfinite(r["box_pa_deg"]) else 0.0
        lines.append(f'box({r["box_ra_deg"]:.7f},{r["box_dec_deg"]:.7f},{w:.2f}",{h:.2f}",{pa:.3f}) '
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


def fit_values(fit, wcs, pixel_scale: float, beam_area_pix: float) -> dict:
    """The :data:`FIT_COLUMNS` of a :class:`gluon_rcnn.radio.fitting.FitSummary` (None: no fit, NaNs):
    mJy, degrees, arcsec; position angles east of north through ``wcs``; position errors along the
    pixel axes (RA and Dec for north-up images)."""
    from .fitting import sky_pa

    nan = float("nan")
    if fit is None or not fit.ok:
        return {c: nan for c in FIT_COLUMNS} | {"resolved": False, "n_gauss": 0, "fit_ok": False}
    ra, dec = (float(v) for v in wcs.pixel_to_world_values(fit.x, fit.y))
    mjy = 1e3 / beam_area_pix
    return {"int_flux_mjy": fit.flux * mjy, "e_int_flux_mjy": fit.e_flux * mjy, "peak_flux_mjy": 1e3 * fit.peak,
            "e_peak_flux_mjy": 1e3 * fit.e_peak, "ra_fit_deg": ra, "dec_fit_deg": dec,
            "e_ra_arcsec": fit.e_x * pixel_scale, "e_dec_arcsec": fit.e_y * pixel_scale,
            "maj_arcsec": fit.maj * pixel_scale, "e_maj_arcsec": fit.e_maj * pixel_scale,
            "min_arcsec": fit.min * pixel_scale, "e_min_arcsec": fit.e_min * pixel_scale,
            "pa_deg": sky_pa(wcs, fit.x, fit.y, fit.theta), "e_pa_deg": math.degrees(fit.e_theta),
            "deconv_maj_arcsec": fit.deconv_maj * pixel_scale, "deconv_min_arcsec": fit.deconv_min * pixel_scale,
            "deconv_pa_deg": sky_pa(wcs, fit.x, fit.y, fit.deconv_theta) if fit.deconv_maj > 0 else nan,
            "resolved": bool(fit.resolved), "n_gauss": int(fit.n_gauss), "fit_ok": True}


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
           "island_flux_mjy": 1e3 * meas.flux / beam_area_pix, "island_peak_mjy": 1e3 * meas.peak,
           "rms_mjy": 1e3 * rms, "snr": meas.peak / rms if rms > 0 else float("nan"),
           "las_arcsec": meas.las_pixels * pixel_scale, "flags": int(flags),
           **fit_values(meas.fit, wcs, pixel_scale, beam_area_pix)}
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
                      "island_flux_mjy": 1e3 * c["flux"] / beam_area_pix, "island_peak_mjy": 1e3 * c["peak"],
                      "rms_mjy": 1e3 * c.get("rms", rms), "las_arcsec": c["las_pixels"] * pixel_scale,
                      **fit_values(c.get("fit"), wcs, pixel_scale, beam_area_pix)})
    return row, comps
