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

