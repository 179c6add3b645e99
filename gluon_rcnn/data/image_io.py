"""The one image decoder of the library: file -> uint8 (H, W, 3) RGB, or a :class:`DatasetError`.

Every ordinary image the library reads (dataset items in :class:`~gluon_rcnn.data.coco.COCODetection`,
inputs of ``engine/predict.py``) goes through :func:`read_image`, so that a bad file fails the same
way everywhere, loudly, with a message naming the file (and the image id when there is one):

* a missing file, an empty (0-byte) file, bytes that are no image (e.g. text named ``.jpg``);
* a truncated file (JPEG or PNG cut short). OpenCV/libjpeg decode these "successfully" as a grey
  lower part and only print ``Premature end of JPEG file`` on stderr; here they raise, whatever
  ``PIL.ImageFile.LOAD_TRUNCATED_IMAGES`` says;
* a format outside :data:`SUPPORTED_FORMATS` (e.g. GIF), or a pixel mode with no unambiguous
  8-bit RGB meaning (32-bit integer or float images);
* (with ``expected_size``) a decoded size that differs from the annotated one.

Decoding is Pillow's (libjpeg-turbo for JPEG): on the coco128 JPEGs it gives exactly OpenCV's
pixels and takes the same time. Grayscale, palette, 1-bit, CMYK, YCbCr, LAB, RGBA and LA images
are converted to RGB (the alpha channel is dropped, as ``cv2.IMREAD_COLOR`` does); 16-bit images
keep their high byte (as OpenCV does).

Damage inside a JPEG's entropy-coded data that libjpeg can resynchronise past ("Corrupt JPEG
data: N extraneous bytes") is not detectable here: libjpeg only warns, and neither Pillow nor
OpenCV reports it.
"""
from __future__ import annotations

import contextlib
import os
import threading

import numpy as np

__all__ = ["DatasetError", "SUPPORTED_FORMATS", "read_image"]


class DatasetError(ValueError):
    """A dataset file is missing, malformed or undecodable; the message names the file (and entry)."""


#: Pillow format names :func:`read_image` accepts (MPO: the multi-picture JPEGs of some cameras,
#: decoded as their first picture, i.e. as an ordinary JPEG reader does).
SUPPORTED_FORMATS = ("JPEG", "MPO", "PNG", "BMP", "TIFF", "WEBP")

_TRUNCATION_LOCK = threading.Lock()


@contextlib.contextmanager
def _truncation_raises():
    """Make Pillow raise on truncated data for the duration, even if someone set
    ``ImageFile.LOAD_TRUNCATED_IMAGES = True`` (the default, False, costs nothing here)."""
    from PIL import ImageFile

    if not ImageFile.LOAD_TRUNCATED_IMAGES:
        yield
        return
    with _TRUNCATION_LOCK:
        saved = ImageFile.LOAD_TRUNCATED_IMAGES
        ImageFile.LOAD_TRUNCATED_IMAGES = False
        try:
            yield
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = saved


def _to_rgb(im) -> np.ndarray:
    """uint8 (H, W, 3) RGB array of a loaded PIL image (new memory, writable)."""
    mode = im.mode
    if mode == "RGB":
        return np.array(im)
    if mode.startswith("I;16"):  # 16-bit grayscale: keep the high byte, as OpenCV does
        gray = (np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if mode in ("I", "F") or mode.startswith("I;"):
        raise ValueError(f"{'32-bit integer' if mode != 'F' else 'floating-point'} pixels (PIL mode {mode}) "
                         "have no unambiguous 8-bit RGB meaning; convert the image to 8 bits first")
    if mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # Pillow warns converting such palettes straight to RGB
    return np.array(im.convert("RGB"))


def read_image(path, image_id=None, *, expected_size: tuple[int, int] | None = None,
               source: str | None = None) -> np.ndarray:
    """Decode the image file ``path`` to a uint8 (H, W, 3) RGB array; raise :class:`DatasetError`
    (message: the path, the image id when given, what is wrong) if it cannot be decoded completely.

    Args:
        path: the image file (str or path-like).
        image_id: the id to name in error messages (e.g. the COCO image id), optional.
        expected_size: ``(height, width)`` the caller knows the image has (e.g. from an annotation
            file). The EXIF orientation is applied (as every viewer does) unless only the stored,
            unrotated pixels have this size (some annotation tools sized the stored pixels); any
            other mismatch is an error. Without it the EXIF orientation is always applied.
        source: where ``path`` came from (e.g. the annotation file), named in error messages.
    """
    path = os.fspath(path)
    where = ", ".join(x for x in (f"image id {image_id}" if image_id is not None else "",
                                  f"listed in {source}" if source else "") if x)
    where = f" ({where})" if where else ""

    def fail(what: str) -> DatasetError:
        return DatasetError(f"{path}: {what}{where}")

    if not os.path.isfile(path):
        raise fail("image file not found" if not os.path.exists(path) else "not a regular file")
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise fail(f"cannot read the image file: {e}") from None
    if size == 0:
        raise fail("empty image file: 0 bytes")

    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with _truncation_raises(), Image.open(path) as im:
            fmt = im.format
            if fmt not in SUPPORTED_FORMATS:
                raise fail(f"unsupported image format {fmt} (supported: {', '.join(SUPPORTED_FORMATS)})")
            im.load()
            orientation = im.getexif().get(0x0112, 1)  # EXIF Orientation; 1 = as stored
            oriented = ImageOps.exif_transpose(im) if orientation not in (1, None) else im
            if expected_size is not None and (oriented.height, oriented.width) != tuple(expected_size):
                if (im.height, im.width) == tuple(expected_size):
                    oriented = im  # the annotation tool sized the stored (unrotated) pixels
                else:
                    raise fail(f"decoded size {oriented.width}x{oriented.height} differs from the annotated "
                               f"{expected_size[1]}x{expected_size[0]}")
            rgb = _to_rgb(oriented)
    except DatasetError:
        raise
    except UnidentifiedImageError:
        raise fail("cannot decode the image file: it is corrupt or not an image") from None
    except MemoryError:
        raise
    except Exception as e:  # OSError (truncated, decoder error), SyntaxError, struct.error, EOFError, ...
        msg = str(e) or type(e).__name__
        kind = "truncated image file" if "truncat" in msg.lower() else "corrupt image file"
        raise fail(f"{kind}: {msg}") from None
    return rgb
