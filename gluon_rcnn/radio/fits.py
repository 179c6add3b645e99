"""FITS input: images with a celestial WCS, read safely; the noise of a radio image."""
from __future__ import annotations

import math
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
# brightness units (BUNIT)
# ---------------------------------------------------------------------------------------------

class FITSUnitWarning(UserWarning):
    """A FITS image's brightness unit had to be assumed (no BUNIT)."""


#: unit words as they appear in real headers, any case -> astropy's spelling
_UNIT_WORDS = {"jy": "Jy", "ujy": "uJy", "\u00b5jy": "uJy", "njy": "nJy", "kjy": "kJy", "beam": "beam",
               "beams": "beam", "bm": "beam", "sr": "sr", "pix": "pix", "pixel": "pix", "pixels": "pix",
               "k": "K", "mk": "mK", "uk": "uK", "deg": "deg", "arcsec": "arcsec", "arcmin": "arcmin"}


def parse_bunit(text: str, where: str = "") -> "astropy.units.UnitBase":
    """The astropy unit of a BUNIT string, case and spacing forgiven: ``JY/BEAM``, ``Jy/beam``,
    ``mJy/beam``, ``uJy/beam``, ``Jy beam-1``, ``Jy / Beam`` ... (astropy parses the FITS spelling;
    unit words are then matched whatever their case). ``MJY`` written in capitals is refused as
    ambiguous (milli- or mega-jansky). Raises :class:`FITSError` naming ``where``."""
    import astropy.units as u

    text = str(text).strip()
    for fmt in ("fits", "generic"):
        try:
            return u.Unit(text, format=fmt)
        except ValueError:
            pass

    def word(m):
        w = m.group(0)
        if w in ("mJy", "MJy"):
            return w
        if w.lower() == "mjy":
            if w == "mjy":
                return "mJy"
            raise FITSError(f"{where}: BUNIT = {text!r} is ambiguous: {w} may be mJy (milli) or MJy (mega); "
                            "write it with its case (mJy/beam for a radio image)")
        try:
            return _UNIT_WORDS[w.lower()]
        except KeyError:
            raise FITSError(f"{where}: BUNIT = {text!r}: unknown unit {w!r}") from None

    folded = re.sub(r"[A-Za-z\u00b5]+", word, text)
    try:
        return u.Unit(folded, format="generic")
    except ValueError as e:
        raise FITSError(f"{where}: BUNIT = {text!r} is not a unit astropy can parse ({e})") from None


def jy_per_beam_factor(header, where: str, *, beam_arcsec=None, beam_in_header: bool = False,
                       pixel_scale_arcsec: float | None = None,
                       default_unit: str = "Jy/beam") -> tuple[float, str, str]:
    """``(factor, unit, source)``: pixel values times ``factor`` are Jy/beam.

    ``unit`` is the image's brightness unit as read (``source`` ``'BUNIT'``), or ``default_unit``
    when the header has no BUNIT (``source`` ``'assumed'``, with a :class:`FITSUnitWarning`).
    Flux densities per beam (Jy/beam, mJy/beam, uJy/beam, ...) convert by their prefix. Per
    steradian or per pixel (Jy/sr, MJy/sr, Jy/pixel) they convert only with the image's own beam
    (``beam_arcsec`` = (BMAJ, BMIN) FWHM, arcsec, and ``beam_in_header`` True; per pixel also needs
    ``pixel_scale_arcsec``): a peak per beam cannot be invented from a survey's nominal beam.
    Anything else (brightness temperature K, counts, ...) cannot become a flux density here. Errors
    are :class:`FITSError` naming ``where`` (file and HDU) and the keyword.
    """
    import astropy.units as u

    text = header.get("BUNIT")
    if text is None or not str(text).strip():
        warnings.warn(f"{where}: no BUNIT keyword: assuming {default_unit}", FITSUnitWarning, stacklevel=2)
        text, source = default_unit, "assumed"
    else:
        source = "BUNIT"
    unit = parse_bunit(text, where)
    jyb = u.Jy / u.beam
    label = f"{where}, keyword BUNIT = {str(text).strip()!r} ({unit.to_string()})"
    if unit.is_equivalent(jyb):
        return float(unit.to(jyb)), unit.to_string(), source
    per_sr, per_pix = unit.is_equivalent(u.Jy / u.sr), unit.is_equivalent(u.Jy / u.pix)
    if per_sr or per_pix:
        if not (beam_in_header and beam_arcsec is not None):
            raise FITSError(f"{label}: a surface brightness per {'steradian' if per_sr else 'pixel'}; turning it "
                            "into flux density per beam needs the image's beam (BMAJ/BMIN keywords), which "
                            "the header lacks. Add BMAJ/BMIN (degrees) or convert the image to Jy/beam")
        bmaj, bmin = beam_arcsec
        omega = math.pi * bmaj * bmin / (4.0 * math.log(2.0)) * u.arcsec ** 2
        if per_sr:
            return float(unit.to(u.Jy / u.sr)) * float(omega.to_value(u.sr)), unit.to_string(), source
        if not pixel_scale_arcsec:
            raise FITSError(f"{label}: a flux density per pixel needs the pixel scale to become Jy/beam")
        beam_pix = omega.to_value(u.arcsec ** 2) / float(pixel_scale_arcsec) ** 2
        return float(unit.to(u.Jy / u.pix) * beam_pix), unit.to_string(), source
    if unit.is_equivalent(u.K):
        why = ("a brightness temperature: converting it needs the observing frequency and the beam; "
               "convert the image to Jy/beam first")
    else:
        why = "not a flux density per beam (Jy/beam, mJy/beam, ...) nor a surface brightness"
    raise FITSError(f"{label}: {why}")


# ---------------------------------------------------------------------------------------------
# survey-scale access: one image plane, read by sections (memory bounded whatever its size)
# ---------------------------------------------------------------------------------------------

class FITSImage:
    """The first 2-D image plane of a FITS file, memory-mapped and read by sections.

    Opening checks what :func:`read_fits` would find out only by reading all pixels: an image HDU
    exists, the file holds all the bytes its header announces (a truncated file is refused), and,
    with ``require_celestial`` (the default), the header has a 2-D celestial WCS (RA/Dec or other
    longitude/latitude axes). Every failure raises :class:`FITSError` naming the file.

    Compressed files read like plain ones. A gzip/bzip2/xz/zip stream (``.fits.gz``) is decompressed
    once to a temporary file (deleted on :meth:`close`) and memory-mapped there: sections of a gzip
    stream could only be reached by decompressing it from the start each time; the truncation
    check then compares the decompressed length, and a stream cut short is refused as truncated.
    Tile-compressed images (``.fz``, astropy's CompImageHDU) stay as they are: the check compares the
    compressed table and heap the header announces, and :meth:`section` decompresses only the tiles
    it needs.

    Attributes: ``path``, ``hdu_index``, ``header`` (sanitized, see :func:`read_fits`), ``wcs`` (2-D
    celestial), ``shape`` (H, W), ``scale`` (1.0; pixel values are multiplied by it: a unit conversion).
    :meth:`section` reads ``[y0:y1, x0:x1]`` as float32 (BSCALE/BZERO applied, integer BLANK as NaN).
    Use as a context manager or call :meth:`close`.
    """

    def __init__(self, path, require_celestial: bool = True):
        from astropy.io import fits

        self.path = str(path)
        self.scale = 1.0  # pixel values are multiplied by this (a unit conversion, see SurveyGrid)
        self._hdul, self._tmp = None, None
        self._local = self.path
        compression = _stream_compression(self.path)
        if compression:
            self._tmp = self._local = _decompress(self.path, compression)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "may have been truncated": checked below, with a clear error
                self._hdul = fits.open(self._local, memmap=True, ignore_missing_end=True, output_verify="ignore",
                                       lazy_load_hdus=False)
        except Exception as e:  # OSError, ValueError, TypeError ... from a non-FITS or truncated file
            self.close()
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

        size = os.path.getsize(self._local)  # a compressed stream's decompressed length
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
            need = _announced_end(self._hdul, i, hdu, dims)
            if need is not None and size < need:
                raise FITSError(f"{self.path}: truncated FITS: the header of HDU {i} announces "
                                f"{need} bytes, the {'decompressed stream' if self._tmp else 'file'} has {size}")
            self.hdu_index = i
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
        if self.scale != 1.0:
            arr *= np.float32(self.scale)
        return arr

    @property
    def where(self) -> str:
        """``'<path>, HDU <i>'``: where this image is, for messages."""
        return f"{self.path}, HDU {self.hdu_index}"

    def close(self) -> None:
        hdul, self._hdul = getattr(self, "_hdul", None), None
        if hdul is not None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # VerifyWarning on unprintable commentary cards
                hdul.close(output_verify="ignore")
        tmp, self._tmp = getattr(self, "_tmp", None), None
        if tmp is not None:
            import os
            try:
                os.unlink(tmp)
            except OSError:
                pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _announced_end(hdul, i: int, hdu, dims) -> int | None:
    """The stream offset where HDU ``i``'s data ends, as its header announces (None: unknown)."""
    info = hdul.fileinfo(i)
    if info is None:
        return None
    if hdu.__class__.__name__ == "CompImageHDU":  # tile-compressed: the binary table and its heap
        bintable = getattr(hdu, "_bintable", None)
        if bintable is None:
            return None
        h = bintable.header
        return info["datLoc"] + int(h["NAXIS1"]) * int(h["NAXIS2"]) + int(h.get("PCOUNT", 0))
    return info["datLoc"] + int(np.prod(dims)) * abs(int(hdu.header["BITPIX"])) // 8


#: magic numbers of the whole-file compressions astropy reads (gzip, bzip2, xz, zip)
_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bzip2", b"\xfd7zXZ\x00": "lzma", b"PK\x03\x04": "zip"}


def _stream_compression(path: str) -> str | None:
    try:
        with open(path, "rb") as f:
            head = f.read(6)
    except OSError:
        return None  # fits.open reports it, naming the file
    return next((name for magic, name in _MAGIC.items() if head.startswith(magic)), None)


def _decompress(path: str, compression: str) -> str:
    """The FITS stream of a compressed file, decompressed into a temporary file (its path)."""
    import bz2
    import gzip
    import lzma
    import os
    import shutil
    import tempfile
    import zipfile

    fd, tmp = tempfile.mkstemp(suffix=".fits", prefix="gluon_rcnn_")
    try:
        with os.fdopen(fd, "wb") as out:
            if compression == "zip":
                with zipfile.ZipFile(path) as z, z.open(z.infolist()[0]) as f:
                    shutil.copyfileobj(f, out, 1 << 20)
            else:
                with {"gzip": gzip.open, "bzip2": bz2.open, "lzma": lzma.open}[compression](path, "rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)
    except (EOFError, OSError, ValueError, zipfile.BadZipFile, lzma.LZMAError) as e:
        os.unlink(tmp)
        raise FITSError(f"{path}: truncated or corrupt {compression} stream ({e})") from None
    except BaseException:
        os.unlink(tmp)
        raise
    return tmp


def open_fits_image(path, require_celestial: bool = True) -> FITSImage:
    """:class:`FITSImage` of ``path`` (see there); raises :class:`FITSError` naming the file."""
    return FITSImage(path, require_celestial=require_celestial)


class MemoryImage:
    """An image already in memory (a notebook's HDU, or an array and a WCS/header) with
    :class:`FITSImage`'s interface, so the survey pipeline reads it as it reads a file.

    ``data``: 2-D (degenerate leading axes squeezed; for a cube, the first plane); ``header``: its
    FITS header (BUNIT, BMAJ/BMIN, the WCS) or None; ``wcs``: an astropy WCS (or header) that wins over
    the header's; ``name``: what the catalogue's ``file`` column and messages say. Raises
    :class:`FITSError` when the image is not 2-D or, with ``require_celestial``, has no celestial WCS.
    """

    def __init__(self, data, header=None, wcs=None, name: str = "<memory>", require_celestial: bool = True):
        from astropy.io import fits
        from astropy.wcs import WCS

        self.path = str(name)
        self.hdu_index = 0
        self.scale = 1.0
        arr = np.squeeze(np.asarray(data))
        while arr.ndim > 2:
            arr = arr[0]
        if arr.ndim != 2 or min(arr.shape) < 2:
            raise FITSError(f"{self.path}: not a 2-D image (shape {np.shape(data)})")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            self.header = _sanitize_header(header) if header is not None else fits.Header()
            if np.issubdtype(arr.dtype, np.integer):  # BLANK pixels of an integer image are NaN
                raw, arr = arr, arr.astype(np.float32)
                if "BLANK" in self.header:
                    arr[raw == self.header["BLANK"]] = np.nan
            self._data = arr
            self.shape = arr.shape
            if wcs is not None:
                w = wcs if isinstance(wcs, WCS) else WCS(wcs)
                self.header.update(w.celestial.to_header())
            self.wcs = _celestial_wcs(self.header)
        if require_celestial and not (self.wcs.has_celestial and self.wcs.naxis == 2):
            raise FITSError(f"{self.path}: no celestial WCS: pass wcs= or a header with CTYPE1/2 "
                            "(sky positions and the pixel scale cannot be known)")

    @property
    def where(self) -> str:
        return self.path

    def section(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        arr = np.array(self._data[y0:y1, x0:x1], dtype=np.float32)
        if self.scale != 1.0:
            arr *= np.float32(self.scale)
        return arr

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass
