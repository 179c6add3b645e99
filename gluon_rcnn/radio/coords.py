"""Pixel <-> sky conversions (FITS WCS, 0-based pixel centres)."""
from __future__ import annotations


import numpy as np

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


def pixel_scale_arcsec(wcs) -> float:
    """The mean pixel side of a celestial WCS, arcsec (at its reference point)."""
    from astropy.wcs.utils import proj_plane_pixel_scales

    return float(np.mean(proj_plane_pixel_scales(wcs.celestial)) * 3600.0)


def shift_wcs(wcs, x0: float, y0: float):
    """The WCS of the grid whose pixel ``(0, 0)`` is pixel ``(x0, y0)`` of ``wcs`` (a section of it)."""
    w = wcs.deepcopy()
    w.wcs.crpix = w.wcs.crpix - np.array([x0, y0], dtype=np.float64)
    return w


def scale_wcs(wcs, factor: float):
    """The same projection on pixels ``factor`` times larger: the grid whose pixel edges at 0 coincide
    with those of ``wcs`` (1-based ``(p - 0.5) / factor + 0.5``)."""
    w = wcs.deepcopy()
    if w.wcs.has_cd():
        w.wcs.cd = w.wcs.cd * factor
    else:
        w.wcs.cdelt = w.wcs.cdelt * factor
    w.wcs.crpix = (w.wcs.crpix - 0.5) / factor + 0.5
    w.wcs.set()
    return w


def iau_name(ra_deg, dec_deg, prefix: str = "J") -> list[str]:
    """IAU-style names ``Jhhmmss.s+ddmmss`` (RA to 0.1 s of time, Dec to 1 arcsec; truncated, not
    rounded, as the IAU recommends), one per position."""
    out = []
    for ra, dec in zip(np.atleast_1d(ra_deg), np.atleast_1d(dec_deg)):
        t = int(np.floor((float(ra) % 360.0) / 15.0 * 36000.0 + 1e-6))  # tenths of a second of time
        h, rem = divmod(t, 36000)
        m, rem = divmod(rem, 600)
        sign = "-" if float(dec) < 0 else "+"
        a = int(np.floor(abs(float(dec)) * 3600.0 + 1e-6))
        d, rem2 = divmod(a, 3600)
        dm, ds = divmod(rem2, 60)
        out.append(f"{prefix}{h % 24:02d}{m:02d}{rem // 10:02d}.{rem % 10:d}{sign}{d:02d}{dm:02d}{ds:02d}")
    return out

