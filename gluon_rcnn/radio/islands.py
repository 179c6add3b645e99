"""Islands of emission, the same whatever the tiling: what survey catalogues assign to sources.

An *island* is an 8-connected region of pixels above ``sigma_level x rms`` with at least
``min_pixels`` pixels, ``rms`` being a noise map on a fixed grid of cells of the working grid
(:class:`NoiseMap`; cells of about ``noise_box`` px, laid out from the image's shape alone, so a
tiled run and a single-tile run threshold every pixel alike). An island is identified by its
brightest pixel (``key = (y, x)`` on the working grid; ties: the first in raster order), and
:func:`find_islands` always returns islands whole: it reads a region around a box and grows the
region until no selected island touches a region edge that is not an image edge. So the island a
detection in one tile covers is, pixel for pixel, the island any other tile's detection covers:
islands can be assigned to exactly one source (:func:`gluon_rcnn.radio.survey.merge_detections`).

Peaks are counted as :func:`gluon_rcnn.radio.labels.derive_sources` counts them with RGZ's rule
(one per innermost contour of the ladder ``L_0 * contour_factor**k``), ``L_0`` being the threshold at
the island's brightest pixel.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
from scipy import ndimage

from .fits import estimate_noise
from .labels import EIGHT_CONNECTED, _count_peaks_rgz, contour_levels

logger = logging.getLogger(__name__)

DEFAULT_NOISE_BOX = 300  # px: one cell for a 300 x 300 FIRST cutout (the noise of the whole image, as before)

__all__ = ["DEFAULT_NOISE_BOX", "NoiseMap", "Island", "find_islands"]


def cell_edges(n: int, box: int) -> np.ndarray:
    """Edges of ``max(1, round(n / box))`` near-equal cells along an axis of ``n`` pixels."""
    nb = max(1, int(round(n / float(box))))
    return np.round(np.linspace(0, n, nb + 1)).astype(int)


class NoiseMap:
    """The rms (:func:`estimate_noise`) of each cell of a fixed grid over a working grid of ``shape``,
    each computed on first use from ``section(y0, y1, x0, x1)``; piecewise constant."""

    def __init__(self, section: Callable[[int, int, int, int], np.ndarray], shape: tuple[int, int],
                 noise_box: int = DEFAULT_NOISE_BOX):
        if noise_box < 1:
            raise ValueError(f"noise_box must be >= 1 px, got {noise_box}")
        self.section = section
        self.shape = tuple(shape)
        self.noise_box = int(noise_box)
        self.ye, self.xe = cell_edges(shape[0], noise_box), cell_edges(shape[1], noise_box)
        self.rms = np.full((len(self.ye) - 1, len(self.xe) - 1), np.nan)
        self._done = np.zeros(self.rms.shape, bool)

    @classmethod
    def constant(cls, shape: tuple[int, int], rms: float) -> "NoiseMap":
        """One rms over the whole grid."""
        m = cls(lambda *a: None, shape, max(shape))
        m.ye, m.xe = np.array([0, shape[0]]), np.array([0, shape[1]])
        m.rms, m._done = np.full((1, 1), float(rms)), np.ones((1, 1), bool)
        return m

    def _cells(self, edges, a, b):
        return max(int(np.searchsorted(edges, a, "right")) - 1, 0), min(int(np.searchsorted(edges, b - 1, "right")),
                                                                          len(edges) - 1)

    def region(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The rms map over working-grid pixels ``[y0:y1, x0:x1]`` (inside the grid)."""
        i0, i1 = self._cells(self.ye, y0, y1)
        j0, j1 = self._cells(self.xe, x0, x1)
        for i in range(i0, i1):
            for j in range(j0, j1):
                if not self._done[i, j]:
                    cell = self.section(self.ye[i], self.ye[i + 1], self.xe[j], self.xe[j + 1])
                    self.rms[i, j] = estimate_noise(cell)
                    self._done[i, j] = True
        iy = np.searchsorted(self.ye, np.arange(y0, y1), "right") - 1
        ix = np.searchsorted(self.xe, np.arange(x0, x1), "right") - 1
        return self.rms[np.ix_(iy, ix)]

    def at(self, x: float, y: float) -> float:
        """The rms at working-grid pixel ``(x, y)`` (0-based centres; clipped to the grid)."""
        yi = min(max(int(round(y)), 0), self.shape[0] - 1)
        xi = min(max(int(round(x)), 0), self.shape[1] - 1)
        return float(self.region(yi, yi + 1, xi, xi + 1)[0, 0])


@dataclass
class Island:
    """One island. ``values``/``mask``/``others`` are crops whose pixel ``(0, 0)`` is working-grid pixel
    ``(x0, y0)``, reaching ``margin`` px beyond the island where the image allows: the image (NaN
    blanks), the island's pixels, and the pixels of other islands (left out of fits)."""

    key: tuple[int, int]          # (y, x) of the brightest pixel, working grid
    x0: int
    y0: int
    values: np.ndarray
    mask: np.ndarray
    others: np.ndarray
    peak: float                   # brightest pixel (image units)
    threshold: float              # sigma_level x rms at the brightest pixel
    rms: float                    # the noise map there
    peaks: list                   # (x, y) working grid, brightest first (RGZ's count)
    peak_values: list
    n_pixels: int
    flux: float                   # sum of the island's pixels (image units x pixels)
    box: tuple                    # x1, y1, x2, y2: pixel edges, working grid

    @property
    def n_peaks(self) -> int:
        return len(self.peaks)


def _whole(region_shape, origin, image_shape, sl) -> bool:
    """Whether a label's slice avoids every region edge that is not an image edge."""
    (y0, x0), (h, w), (H, W) = origin, region_shape, image_shape
    return not ((sl[0].start == 0 and y0 > 0) or (sl[1].start == 0 and x0 > 0) or
                (sl[0].stop == h and y0 + h < H) or (sl[1].stop == w and x0 + w < W))


def find_islands(section: Callable[[int, int, int, int], np.ndarray], noise: NoiseMap, box, *,
                 sigma_level: float, contour_factor: float, min_pixels: int = 5, margin: int = 3,
                 pad: int | None = None, max_pixels: int = 1 << 26) -> list[Island]:
    """The islands whose brightest pixel lies in ``box`` (``x1, y1, x2, y2``, pixel edges, working
    grid: pixel ``i`` spans ``[i, i+1)``), whole. ``section`` reads working-grid pixels (NaN outside
    the image and at blanks), ``noise`` gives the rms map. The region read starts at the box plus
    ``pad`` (default: half its larger side, at least 8 px) and doubles its pad while a selected island
    touches a region edge inside the image (up to ``max_pixels``; beyond, islands may be truncated
    and a warning is logged)."""
    H, W = noise.shape
    bx1, by1, bx2, by2 = (float(v) for v in box)
    pad = int(math.ceil(max(8.0, 0.5 * max(bx2 - bx1, by2 - by1)))) if pad is None else int(pad)
    while True:
        y0, x0 = max(int(math.floor(by1)) - pad, 0), max(int(math.floor(bx1)) - pad, 0)
        y1, x1 = min(int(math.ceil(by2)) + pad, H), min(int(math.ceil(bx2)) + pad, W)
        if y1 <= y0 or x1 <= x0:
            return []
        region = section(y0, y1, x0, x1)
        thr = sigma_level * noise.region(y0, y1, x0, x1)
        with np.errstate(invalid="ignore"):
            above = np.isfinite(region) & np.isfinite(thr) & (thr > 0) & (region > thr)
        lab, n = ndimage.label(above, structure=EIGHT_CONNECTED)
        picked = []
        for i, sl in enumerate(ndimage.find_objects(lab), start=1):
            if sl is None:
                continue
            m = lab[sl] == i
            npix = int(m.sum())
            if npix < min_pixels:
                continue
            crop = np.where(m, region[sl], -np.inf)
            py, px = np.unravel_index(int(np.argmax(crop)), crop.shape)  # first brightest, raster order
            gx, gy = px + sl[1].start + x0, py + sl[0].start + y0
            if bx1 <= gx + 0.5 < bx2 and by1 <= gy + 0.5 < by2:
                picked.append((i, sl, npix, int(gx), int(gy)))
        whole = all(_whole(region.shape, (y0, x0), (H, W), sl) for _, sl, *_ in picked)
        full = (y0, x0, y1, x1) == (0, 0, H, W)
        if whole or full or (y1 - y0 + 2 * pad) * (x1 - x0 + 2 * pad) > max_pixels:
            if not (whole or full):
                logger.warning("an island around box %s reaches beyond %d px: measured truncated", tuple(box),
                               max_pixels)
            break
        pad *= 2
    vals = np.nan_to_num(region, nan=0.0, posinf=0.0, neginf=0.0)
    sizes = np.concatenate([[0], np.atleast_1d(ndimage.sum(above, lab, np.arange(1, n + 1)))]) if n else np.zeros(1)
    big = sizes >= min_pixels  # labels that are islands (index 0: background)
    out = []
    for i, sl, npix, gx, gy in picked:
        a0, a1 = max(sl[0].start - margin, 0), min(sl[0].stop + margin, region.shape[0])
        b0, b1 = max(sl[1].start - margin, 0), min(sl[1].stop + margin, region.shape[1])
        sub = lab[a0:a1, b0:b1]
        m = sub == i
        L0 = float(thr[gy - y0, gx - x0])
        v = vals[a0:a1, b0:b1]
        peak = float(region[gy - y0, gx - x0])
        peaks, pvals = _count_peaks_rgz(v, m, contour_levels(peak, L0, contour_factor))
        out.append(Island(key=(gy, gx), x0=b0 + x0, y0=a0 + y0, values=region[a0:a1, b0:b1].copy(), mask=m,
                          others=big[sub] & ~m, peak=peak, threshold=L0, rms=L0 / sigma_level,
                          peaks=[(px + b0 + x0, py + a0 + y0) for px, py in peaks], peak_values=pvals,
                          n_pixels=npix, flux=float(v[m].sum()),
                          box=(float(sl[1].start + x0), float(sl[0].start + y0), float(sl[1].stop + x0),
                               float(sl[0].stop + y0))))
    return out
