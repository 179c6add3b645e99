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



# ---------------------------------------------------------------------------------------------
# sky frames: whatever the WCS's celestial frame, catalogue positions are ICRS
# ---------------------------------------------------------------------------------------------

def celestial_frame(wcs):
    """The astropy frame of a celestial WCS (ICRS, FK5 with its equinox, FK4, Galactic, ...), from
    its CTYPEs, RADESYS and EQUINOX (``astropy.wcs.utils.wcs_to_celestial_frame``)."""
    from astropy.wcs.utils import wcs_to_celestial_frame

    return wcs_to_celestial_frame(wcs.celestial)


def frame_label(frame) -> str:
    """A short text for a frame: ``ICRS``, ``FK5 J2000.000``, ``FK4 B1950.000``, ``Galactic``."""
    name = frame.name
    eq = getattr(frame, "equinox", None)
    if name in ("fk5", "fk4", "fk4noeterms") and eq is not None:
        return f"{name.upper()} {eq.jyear_str if name == 'fk5' else eq.byear_str}"
    return {"icrs": "ICRS", "galactic": "Galactic"}.get(name, name)


class IcrsWCS:
    """A celestial WCS whose :meth:`pixel_to_world_values` gives ICRS RA/Dec (degrees), whatever
    the WCS's own frame: Galactic, FK5 or FK4 with any equinox, ecliptic ... are converted with
    astropy's ``SkyCoord.transform_to`` (ICRS WCS are used as they are). Every other attribute is
    the wrapped WCS's; ``frame`` is its own frame, ``frame_label`` a text for it."""

    def __init__(self, wcs):
        self._wcs = wcs.celestial
        self.frame = celestial_frame(self._wcs)
        self.frame_label = frame_label(self.frame)
        self._native = self.frame.name == "icrs"

    def __getattr__(self, name):
        if name == "_wcs":  # not set yet (copy/pickle): no recursion
            raise AttributeError(name)
        return getattr(self._wcs, name)

    @property
    def native(self):
        """The wrapped celestial WCS (world coordinates in its own frame)."""
        return self._wcs

    def pixel_to_icrs(self, x, y):
        """An ICRS ``SkyCoord`` of 0-based pixel positions."""
        c = self._wcs.pixel_to_world(x, y)
        return c if self._native else c.icrs

    def pixel_to_world_values(self, x, y):
        """ICRS ``(ra, dec)`` in degrees of 0-based pixel positions (arrays or scalars, as given)."""
        c = self.pixel_to_icrs(x, y)
        return c.ra.deg, c.dec.deg

    def y_axis_pa(self, x, y) -> np.ndarray:
        """Position angle (degrees east of ICRS north, in [0, 360)) of the pixel grid's +y axis at
        ``(x, y)``: 0 for a north-up equatorial image; DS9's angle of a box drawn on the pixel axes."""
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        a, b = self.pixel_to_icrs(x, y), self.pixel_to_icrs(x, y + 1.0)
        return np.mod(a.position_angle(b).deg, 360.0)


def pixel_to_icrs(wcs, x, y) -> tuple[np.ndarray, np.ndarray]:
    """ICRS RA, Dec (degrees) of 0-based pixel positions of a celestial WCS in any frame."""
    ra, dec = (wcs if isinstance(wcs, IcrsWCS) else IcrsWCS(wcs)).pixel_to_world_values(x, y)
    return np.atleast_1d(np.asarray(ra, np.float64)), np.atleast_1d(np.asarray(dec, np.float64))
