"""In-memory API for notebooks: an image in, an astropy Table out; cross-matching with astropy.

    >>> from astropy.io import fits
    >>> from gluon_rcnn.radio import find_sources, crossmatch
    >>> hdu = fits.open("first_cutout.fits")[0]
    >>> cat = find_sources(hdu, model=my_model)            # astropy Table, one row per source
    >>> cat["coord"][:3]                                   # ICRS SkyCoord column
    >>> both = crossmatch(cat, first_catalogue, radius=5 * u.arcsec)

:func:`find_sources` runs the survey pipeline (:func:`gluon_rcnn.radio.survey.predict_fits`: tiling,
merging, measurement, units and frames) on an image held in memory; the table has the catalogue's
columns (:mod:`gluon_rcnn.radio.catalogue`, with units, UCDs and descriptions) plus ``coord``.
"""
from __future__ import annotations

import numpy as np

from .catalogue import catalogue_tables
from .fits import FITSError, MemoryImage

__all__ = ["find_sources", "crossmatch", "to_memory_image"]


def to_memory_image(image, wcs=None, header=None, unit=None, name: str | None = None) -> MemoryImage:
    """A :class:`~gluon_rcnn.radio.fits.MemoryImage` of an HDU (PrimaryHDU, ImageHDU, CompImageHDU),
    an HDUList (its first 2-D image), or an array with ``wcs`` (an astropy WCS or a header) and/or
    ``header``. ``unit`` (e.g. ``"mJy/beam"``) overrides BUNIT."""
    from astropy.io import fits

    if isinstance(image, fits.HDUList):
        hdus = [h for h in image if getattr(h, "is_image", False) and h.data is not None and np.ndim(h.data) >= 2]
        if not hdus:
            raise FITSError(f"{name or 'HDUList'}: no HDU with 2-D image data")
        image = hdus[0]
    if hasattr(image, "data") and hasattr(image, "header"):
        data, hdr = image.data, image.header.copy()
        if header is not None:
            hdr.update(header)
        name = name or getattr(image, "name", None) or "<hdu>"
    else:
        data, hdr = image, (fits.Header(header) if header is not None else fits.Header())
        name = name or "<array>"
    if unit is not None:
        hdr["BUNIT"] = str(unit)
    return MemoryImage(data, header=hdr, wcs=wcs, name=name)


def find_sources(image, wcs=None, *, model="faster_rcnn_fpn_resnet18_v1b_rgz", weights=True, header=None,
                 unit=None, name: str | None = None, device: str = "cpu", score_thresh: float | None = None,
                 name_prefix: str = "", survey="FIRST", **kw):
    """Radio sources in an image held in memory: an astropy ``Table``, one row per source.

    image: an HDU, an HDUList, or a 2-D array with ``wcs`` (astropy WCS or header) and/or ``header``;
    its BUNIT (or ``unit``) is read as the survey pipeline reads a file's (Jy/beam, mJy/beam, ...; none:
    Jy/beam assumed, with a warning). model: a zoo name (loaded with ``weights``: True for the zoo's
    pretrained weights, or a checkpoint path), a gluon_rcnn model, or a tile detector (anything with
    ``classes`` called as ``detector(images, tiles)``, see :mod:`gluon_rcnn.radio.survey`). Other
    keywords go to :func:`~gluon_rcnn.radio.survey.predict_fits` (``tile``, ``overlap``, ``render``,
    ``ir_dir``, ``pixel_scale``, ...).

    Returns the catalogue table (:func:`~gluon_rcnn.radio.catalogue.catalogue_tables`: the source
    columns with units, UCDs and descriptions; ``meta`` the provenance) with a ``coord`` column: the
    ICRS ``SkyCoord`` of (``ra_deg``, ``dec_deg``). ``table.meta['components']`` holds the component
    table.
    """
    import torch
    from astropy.coordinates import SkyCoord

    from .survey import ModelDetector, predict_fits, provenance

    img = to_memory_image(image, wcs=wcs, header=header, unit=unit, name=name)
    detector, model_name = model, getattr(model, "name", None)
    if isinstance(model, str):
        from ..model_zoo import get_model
        model_name = model
        detector = get_model(model, pretrained=weights, device=device)
    if isinstance(detector, torch.nn.Module):
        detector = ModelDetector(detector.eval(), device=device, score_thresh=score_thresh)
    res = next(iter(predict_fits(detector, [img], survey=survey, name_prefix=name_prefix, keep_preview=False, **kw)))
    g = res.grid_info
    meta = provenance(model_name=model_name or type(detector).__name__,
                      weights=weights if isinstance(model, str) and isinstance(weights, str) else None,
                      score_thresh=getattr(detector, "score_thresh", score_thresh), survey=survey,
                      pixel_scale=g["pixel_scale"], beam=g["beam"], beam_source=g["beam_source"],
                      name_prefix=name_prefix,
                      **{k: kw[k] for k in ("tile", "overlap", "render", "sigma_level", "min_pixels", "edge_margin",
                                            "merge_iou") if k in kw})
    meta.update(BPA=float(g["bpa"]), INBUNIT=g["bunit"], UNITSRC=g["unit_source"], INFRAME=g["frame"], NFILES=1,
                NBAD=0)
    src, comp = catalogue_tables(res.rows, tuple(detector.classes), meta, res.components)
    src["coord"] = SkyCoord(np.asarray(src["ra_deg"], float), np.asarray(src["dec_deg"], float), unit="deg",
                            frame="icrs")
    src["coord"].info.description = "ICRS position (ra_deg, dec_deg) as a SkyCoord"
    src.meta["components"] = comp
    return src


def _coords(t, ra=None, dec=None, frame="icrs"):
    """A SkyCoord for each row of table ``t``: its SkyCoord column, or the ``ra``/``dec`` columns
    (degrees unless they carry units), or the first of ra_deg/RA/ra/RAJ2000 ... found."""
    from astropy.coordinates import SkyCoord
    import astropy.units as u

    if ra is None and dec is None:
        sky = [c for c in t.colnames if isinstance(t[c], SkyCoord)]
        if sky:
            return t[sky[0]]
        lower = {c.lower(): c for c in t.colnames}
        for r, d in (("ra_deg", "dec_deg"), ("ra", "dec"), ("raj2000", "dej2000"), ("_raj2000", "_dej2000"),
                     ("ra_icrs", "de_icrs")):
            if r in lower and d in lower:
                ra, dec = lower[r], lower[d]
                break
        else:
            raise ValueError(f"no sky position in table columns {t.colnames}: give ra= and dec= column names")
    cr, cd = t[ra], t[dec]
    q = [c.quantity if getattr(c, "unit", None) is not None else np.asarray(c, float) * u.deg for c in (cr, cd)]
    return SkyCoord(q[0], q[1], frame=frame)


def crossmatch(catalogue, other, radius=5.0, *, ra=None, dec=None, frame="icrs", suffix: str = "_match"):
    """Each row of ``catalogue`` with its nearest ``other`` row within ``radius`` (arcsec, or an
    astropy angle): astropy's ``SkyCoord.match_to_catalog_sky``.

    catalogue: a table from :func:`find_sources` or a catalogue file read with ``Table.read``;
    other: any astropy Table (e.g. the FIRST catalogue, WISE hosts) with a SkyCoord column, or RA/Dec
    columns named by ``ra``/``dec`` (degrees unless the columns have units; ``frame`` their frame,
    e.g. ``'fk5'``), or found among ra_deg/ra/RAJ2000/RA_ICRS. Returns ``catalogue`` with ``other``'s
    columns appended (a name both have gets ``suffix``; a SkyCoord column ``pos`` becomes ICRS
    ``pos_ra_deg``, ``pos_dec_deg``), masked where no row lies within the radius, and
    ``match_sep_arcsec`` (the separation; masked likewise). Several catalogue rows may match the
    same ``other`` row (nearest neighbour, not one-to-one)."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from astropy.table import MaskedColumn, Table, hstack

    radius = radius if isinstance(radius, u.Quantity) else float(radius) * u.arcsec
    c1, c2 = _coords(catalogue), _coords(other, ra, dec, frame)
    if len(catalogue) == 0 or len(other) == 0:
        idx, sep = np.zeros(len(catalogue), int), np.full(len(catalogue), np.inf) * u.arcsec
    else:
        idx, sep, _ = c1.match_to_catalog_sky(c2)
    ok = np.asarray(sep.to_value(u.arcsec) <= radius.to_value(u.arcsec))
    right = Table(other, copy=True)[np.asarray(idx, int)] if len(other) else Table()
    for c in right.colnames:  # a SkyCoord column cannot be masked: its ICRS ra/dec columns instead
        if isinstance(right[c], SkyCoord):
            sky = right[c].icrs
            i = right.colnames.index(c)
            right.remove_column(c)
            right.add_column(sky.ra.deg * u.deg, name=f"{c}_ra_deg", index=i)
            right.add_column(sky.dec.deg * u.deg, name=f"{c}_dec_deg", index=i + 1)
    right = Table(right, masked=True, copy=False)
    for c in right.colnames:
        right[c].mask = np.asarray(right[c].mask) | (~ok).reshape((-1,) + (1,) * (np.ndim(right[c]) - 1))
    out = hstack([catalogue, right], join_type="exact", uniq_col_name="{col_name}{table_name}",
                 table_names=["", suffix]) if len(right.colnames) else catalogue.copy()
    out["match_sep_arcsec"] = MaskedColumn(sep.to_value(u.arcsec), mask=~ok, unit="arcsec",
                                           description=f"separation to the nearest {suffix[1:] or 'other'} row "
                                                       f"(masked beyond {radius.to_value(u.arcsec):g} arcsec)")
    out["match_sep_arcsec"].meta["ucd"] = "pos.angDistance"
    return out
