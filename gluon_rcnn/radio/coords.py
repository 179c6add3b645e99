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


# ---------------------------------------------------------------------------------------------
# COCO export
# ---------------------------------------------------------------------------------------------

