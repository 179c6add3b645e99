"""FITS input: images with a celestial WCS, read safely; the noise of a radio image."""
from __future__ import annotations

import re
import warnings

import numpy as np

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



# ---------------------------------------------------------------------------------------------
# survey-scale access: one image plane, read by sections (memory bounded whatever its size)
# ---------------------------------------------------------------------------------------------

class FITSImage:
    """The first 2-D image plane of a FITS file, memory-mapped and read by sections.

    Opening checks what :func:`read_fits` would find out only by reading all pixels: an image HDU
    exists, the file holds all the bytes its header announces (a truncated file is refused), and,
    with ``require_celestial`` (the default), the header has a 2-D celestial WCS (RA/Dec or other
    longitude/latitude axes). Every failure raises :class:`FITSError` naming the file.

    Attributes: ``path``, ``header`` (sanitized, see :func:`read_fits`), ``wcs`` (2-D celestial),
    ``shape`` (H, W). :meth:`section` reads ``[y0:y1, x0:x1]`` as float32 (BSCALE/BZERO applied,
    integer BLANK as NaN). Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path, require_celestial: bool = True):
        from astropy.io import fits

        self.path = str(path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "may have been truncated": checked below, with a clear error
                self._hdul = fits.open(self.path, memmap=True, ignore_missing_end=True, output_verify="ignore",
                                       lazy_load_hdus=False)
        except Exception as e:  # OSError, ValueError, TypeError ... from a non-FITS or truncated file
            raise FITSError(f"{self.path}: cannot open as FITS ({e})") from None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # VerifyWarning on unprintable commentary cards
                self._setup(require_celestial)
        except BaseException:
            self.close()
            raise

    def _setup(self, require_celestial: bool) -> None:
        import os

        size = os.path.getsize(self.path)
        for i, hdu in enumerate(self._hdul):
            if not getattr(hdu, "is_image", False):
                continue
            hdr = hdu.header
            naxis = int(hdr.get("NAXIS", 0))
            dims = [int(hdr.get(f"NAXIS{k}", 0)) for k in range(1, naxis + 1)]  # FITS order: x first
            if naxis < 2 or min(dims) < 1:
                continue
            big = [d for d in dims if d > 1]
            if len(big) < 2 or dims[0] < 2 or dims[1] < 2:
                continue  # the image plane must be the first two axes (x, y)
            info = self._hdul.fileinfo(i)
            need = info["datLoc"] + int(np.prod(dims)) * abs(int(hdr["BITPIX"])) // 8
            if size < need:
                raise FITSError(f"{self.path}: truncated FITS: the header of HDU {i} announces "
                                f"{need} bytes, the file has {size}")
            self._hdu = hdu
            self._lead = (0,) * (naxis - 2)  # leading (degenerate or cube) axes: the first plane
            self.shape = (dims[1], dims[0])
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.header = _sanitize_header(hdr)
            self._blank = (self.header.get("BLANK") if int(hdr["BITPIX"]) > 0 else None)
            self.wcs = _celestial_wcs(self.header)
            if require_celestial and not (self.wcs.has_celestial and self.wcs.naxis == 2):
                ctype = [self.header.get(f"CTYPE{k}", "") for k in (1, 2)]
                raise FITSError(f"{self.path}: no celestial WCS (CTYPE1/2 = {ctype}): sky positions and "
                                "the survey's pixel scale cannot be known")
            return
        raise FITSError(f"{self.path}: no HDU with 2-D image data")

    def section(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Pixels ``[y0:y1, x0:x1]`` (inside the image) as a float32 array; NaN blanks kept."""
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                raw = np.asarray(self._hdu.section[self._lead + (slice(y0, y1), slice(x0, x1))])
        except Exception as e:
            raise FITSError(f"{self.path}: cannot read pixels [{y0}:{y1}, {x0}:{x1}] ({e})") from None
        arr = raw.astype(np.float32)
        if self._blank is not None and np.issubdtype(raw.dtype, np.integer):
            arr[raw == self._blank] = np.nan
        return arr

    def close(self) -> None:
        hdul, self._hdul = getattr(self, "_hdul", None), None
        if hdul is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # VerifyWarning on unprintable commentary cards
                hdul.close(output_verify="ignore")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def open_fits_image(path, require_celestial: bool = True) -> FITSImage:
    """:class:`FITSImage` of ``path`` (see there); raises :class:`FITSError` naming the file."""
    return FITSImage(path, require_celestial=require_celestial)
