"""Source labels from the radio image alone (the rule labeller): components, peaks, groups, classes.

See docs/claran.md. Human labels (the RGZ consensus) are in :mod:`gluon_rcnn.radio.consensus`."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import cv2
import numpy as np
from scipy import ndimage

from ..structures.categories import RGZ_CLASSES
from .fits import estimate_noise

EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)  # 8-connectivity structuring element

def contour_levels(vmax: float, base: float, contour_factor: float = 2.0) -> np.ndarray:
    """RGZ-style contour levels ``base * contour_factor**k`` for every ``k`` with level < ``vmax``."""
    if not (base > 0 and contour_factor > 1 and np.isfinite(vmax)) or vmax <= base:
        return np.array([base], dtype=np.float64)
    n = int(np.floor(np.log(vmax / base) / np.log(contour_factor))) + 1
    levels = base * contour_factor ** np.arange(n + 1, dtype=np.float64)
    return levels[levels < vmax] if (levels < vmax).any() else levels[:1]


@dataclass
class Component:
    """One radio component: an 8-connected region above the lowest contour.

    mask: (H, W) bool, the component's pixels. box: x1, y1, x2, y2 (pixel edges). polygons: its
    outline(s) as flat float32 arrays ``x0, y0, x1, y1, ...`` on the pixel edges. peaks: (x, y)
    pixel indices of its counted peaks, brightest first. peak_values: the image values there.
    """

    mask: np.ndarray
    box: tuple[float, float, float, float]
    polygons: list[np.ndarray]
    peaks: list[tuple[int, int]]
    peak_values: list[float]
    n_pixels: int
    flux: float  # sum of pixel values (image units x pixels)

    @property
    def n_peaks(self) -> int:
        return len(self.peaks)

    @property
    def size(self) -> float:
        """Largest side of the bounding box, pixels."""
        return float(max(self.box[2] - self.box[0], self.box[3] - self.box[1]))


class ComponentGroup:
    """The geometry of a group of :class:`Component` (``self.components``): the union box, the masks,
    the outlines and the pixel count. Shared by rule-derived and catalogue-labelled sources."""

    components: list[Component]

    @property
    def box(self) -> tuple[float, float, float, float]:
        b = np.array([c.box for c in self.components])
        return (float(b[:, 0].min()), float(b[:, 1].min()), float(b[:, 2].max()), float(b[:, 3].max()))

    @property
    def masks(self) -> list[np.ndarray]:
        return [c.mask for c in self.components]

    @property
    def polygons(self) -> list[np.ndarray]:
        """All components' outlines: the source's segmentation."""
        return [p for c in self.components for p in c.polygons]

    @property
    def area(self) -> int:
        return int(sum(c.n_pixels for c in self.components))


@dataclass
class RadioSource(ComponentGroup):
    """A source: the components of one radio galaxy, and its class ``{n}C_{m}P``."""

    components: list[Component]
    class_name: str
    reason: str | None = None  # why the source was skipped; None when kept

    @property
    def n_components(self) -> int:
        return len(self.components)

    @property
    def n_peaks(self) -> int:
        return sum(c.n_peaks for c in self.components)

    @property
    def category_id(self) -> int | None:
        """COCO category id 1..6, or None for a class outside :data:`RGZ_CLASSES`."""
        return RGZ_CLASSES.index(self.class_name) + 1 if self.class_name in RGZ_CLASSES else None


@dataclass
class Labelling:
    """The result of :func:`derive_sources` on one image."""

    sources: list[RadioSource]      # kept: class in RGZ_CLASSES
    skipped: list[RadioSource]      # class outside RGZ_CLASSES; ``reason`` says why
    components: list[Component]     # every component, kept or not
    noise: float                    # sigma (image units); 0 when the background was clipped
    threshold: float                # the lowest contour L_0
    levels: np.ndarray = field(default_factory=lambda: np.zeros(0))  # L_0, L_1, ... up to the image max
    n_blank: int = 0                # NaN/inf pixels, set to 0 for labelling
    clipped: bool = False           # noise undefined (clipped background): L_0 from the data's clip


def mask_to_polygons(mask: np.ndarray) -> list[np.ndarray]:
    """Outer outline(s) of a binary mask on the pixel *edges*, as flat float32 ``x, y, ...`` arrays.

    The outline is traced on the (H+1, W+1) grid of pixel corners (a corner is inside when any of
    its four pixels is), so a single pixel ``(x, y)`` gives the square ``(x, y)-(x+1, y+1)`` and
    the polygon's area equals the pixel count except for half-pixel cuts at concave corners.
    Holes are ignored (RETR_EXTERNAL); every polygon has at least 4 vertices.
    """
    m = np.pad(np.asarray(mask, dtype=bool), 1)
    corners = (m[:-1, :-1] | m[1:, :-1] | m[:-1, 1:] | m[1:, 1:]).astype(np.uint8)
    contours, _ = cv2.findContours(corners, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    polys = []
    for c in contours:
        pts = c.reshape(-1, 2).astype(np.float32)
        if len(pts) < 3:  # cannot happen for a non-empty mask on the corner grid; be safe
            continue
        polys.append(pts.reshape(-1))
    return polys


def _count_peaks(values: np.ndarray, mask: np.ndarray, threshold: float, contour_factor: float,
                 min_prominence: float) -> tuple[list[tuple[int, int]], list[float]]:
    """Peaks of one component (a crop ``values`` with its ``mask``): prominent local maxima.

    Candidates are the local maxima (3x3 ``maximum_filter``; ties broken by raster order so a flat
    top counts once). The component's brightest pixel is always a peak. Another candidate of value
    ``v`` is a peak when it rises at least one contour step above its saddle ``s`` (the highest
    level at which it joins a higher pixel), i.e. ``v >= contour_factor * s``, and
    ``v - s >= min_prominence``. Tested directly: in the region above ``v / contour_factor`` (and
    above ``v - min_prominence``) connected to the candidate there is no higher pixel. Because
    every pixel of a component lies above ``threshold``, candidates below
    ``contour_factor * threshold`` can never qualify and are not tested.

    Returns the peaks' (x, y) in the crop and their values, brightest first.
    """
    v = np.where(mask, values, -np.inf)
    mf = ndimage.maximum_filter(v, footprint=EIGHT_CONNECTED, mode="constant", cval=-np.inf)
    cand = mask & (v == mf)
    ys, xs = np.nonzero(cand)
    vals = v[ys, xs]
    flat_idx = ys * v.shape[1] + xs
    order = np.lexsort((flat_idx, -vals))  # brightest first, then raster order
    ys, xs, vals, flat_idx = ys[order], xs[order], vals[order], flat_idx[order]
    raster = np.arange(v.size).reshape(v.shape)
    peaks = [(int(xs[0]), int(ys[0]))]
    pvals = [float(vals[0])]
    taken = np.zeros(v.shape, bool)  # pixels in a plateau already judged
    for y, x, val, fi in zip(ys[1:], xs[1:], vals[1:], flat_idx[1:]):
        if val < contour_factor * threshold or val - threshold < min_prominence or taken[y, x]:
            continue
        level = min(val / contour_factor, val - min_prominence)
        lab, _ = ndimage.label(v > level, structure=EIGHT_CONNECTED)
        region = lab == lab[y, x]
        same = region & (v == val)
        if ((v > val) & region).any() or (same & (raster < fi)).any():
            taken |= same
            continue
        taken |= same
        peaks.append((int(x), int(y)))
        pvals.append(float(val))
    return peaks, pvals


RGZ_BASE_SIGMA = 3.0 * np.sqrt(3.0)  # RGZ's lowest contour: 3*sqrt(3) * rms
RGZ_CONTOUR_FACTOR = float(np.sqrt(3.0))  # RGZ's contour ladder: L_k = L_0 * sqrt(3)**k
#: derive_sources keywords that reproduce RGZ's pipeline: its contour ladder and its peak count
RGZ_RULE = {"sigma_level": RGZ_BASE_SIGMA, "contour_factor": RGZ_CONTOUR_FACTOR, "peak_rule": "rgz"}
PEAK_RULES = ("prominence", "rgz")


def _count_peaks_rgz(values: np.ndarray, mask: np.ndarray, levels: np.ndarray) -> tuple[list[tuple[int, int]], list[float]]:
    """Peaks of one component as RGZ's pipeline counts them: one per innermost contour.

    The component (``mask``, the region above ``levels[0]``) has a contour tree: at each level
    ``L_k`` the 8-connected regions of the component above ``L_k``. A contour is innermost when it
    encloses no contour of the next level (its region has no pixel above ``L_{k+1}``); the peak
    count is the number of innermost contours (the leaves of the tree), each placed at its
    brightest pixel (ties: raster order). Returns the peaks' (x, y) in the crop and their values,
    brightest first.
    """
    v = np.where(mask, values, -np.inf)
    peaks: list[tuple[float, int, int]] = []
    for k, level in enumerate(levels):
        above = v > level if k else mask
        if not above.any():
            break
        nxt = levels[k + 1] if k + 1 < len(levels) else np.inf
        lab, n = ndimage.label(above, structure=EIGHT_CONNECTED)
        if n == 0:
            break
        rmax = np.atleast_1d(ndimage.maximum(v, lab, np.arange(1, n + 1)))
        for i, sl in enumerate(ndimage.find_objects(lab), start=1):
            if sl is None or rmax[i - 1] > nxt:  # encloses a contour of the next level: not innermost
                continue
            crop = np.where(lab[sl] == i, v[sl], -np.inf)
            py, px = np.unravel_index(int(np.argmax(crop)), crop.shape)  # first brightest pixel, raster order
            peaks.append((float(rmax[i - 1]), int(px + sl[1].start), int(py + sl[0].start)))
    peaks.sort(key=lambda t: (-t[0], t[2], t[1]))
    return [(x, y) for _, x, y in peaks], [m for m, _, _ in peaks]


#: RGZ's make_contours ``THRESHOLD``: a lowest contour is kept when its bounding-box diagonal is above
#: ``THRESHOLD * (width / 301)`` pixels (zooniverse/Radio-Galaxy-Zoo scripts/make_contours.py ``filter_small``;
#: 301 px is the app's ``fitsImageDimension``)
RGZ_CONTOUR_THRESHOLD = 8.0


def contour_diagonal(values: np.ndarray, mask: np.ndarray, level: float) -> float:
    """Bounding-box diagonal (pixels) of the lowest contour around one component, as RGZ's
    make_contours measures it for ``filter_small``: the extent of the CONREC contour points at
    ``level`` (linear interpolation between pixel centres, :func:`gluon_rcnn.radio.render.contour_segments`).
    ``values``: the image; ``mask``: the component's pixels. Other emission above ``level`` in the
    crop is lowered below it, so only this component's contour counts. A component with no contour
    point (one covering the whole image) measures the extent of its pixel centres."""
    from .render import contour_segments

    ys, xs = np.nonzero(mask)
    H, W = mask.shape
    y0, y1, x0, x1 = max(ys.min() - 1, 0), min(ys.max() + 2, H), max(xs.min() - 1, 0), min(xs.max() + 2, W)
    v = np.asarray(values[y0:y1, x0:x1], np.float64)
    m = mask[y0:y1, x0:x1]
    low = float(min(np.nanmin(v), level)) - 1.0
    v = np.where(m | (v < level), v, low)
    seg = contour_segments(v, float(level)).reshape(-1, 2)
    if len(seg) == 0:
        return float(np.hypot(xs.max() - xs.min(), ys.max() - ys.min()))
    return float(np.hypot(*(seg.max(0) - seg.min(0))))


def group_components(components: Sequence[Component], link_factor: float = 1.5,
                     link_max: float = 60.0, link_min: float = 4.0) -> list[list[int]]:
    """Group components into sources: single-linkage on bounding-box gaps.

    Two components are linked when the gap between their bounding boxes (Euclidean distance
    between the boxes, 0 when they overlap) is at most
    ``clip(link_factor * max(size_i, size_j), link_min, link_max)`` pixels, ``size`` being a
    component's larger bounding-box side. Sources are the connected sets of that relation (so a
    core between two lobes joins both). Returns lists of component indices, each sorted, ordered by
    their first component.
    """
    n = len(components)
    parent = list(range(n))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    if n > 1:
        b = np.array([c.box for c in components], dtype=np.float64)
        size = np.maximum(b[:, 2] - b[:, 0], b[:, 3] - b[:, 1])
        dx = np.maximum(0.0, np.maximum(b[None, :, 0] - b[:, None, 2], b[:, None, 0] - b[None, :, 2]))
        dy = np.maximum(0.0, np.maximum(b[None, :, 1] - b[:, None, 3], b[:, None, 1] - b[None, :, 3]))
        gap = np.hypot(dx, dy)
        reach = np.clip(link_factor * np.maximum(size[:, None], size[None, :]), link_min, link_max)
        ii, jj = np.nonzero(np.triu(gap <= reach, 1))
        for i, j in zip(ii.tolist(), jj.tolist()):
            ri, rj = find(i), find(j)
            if ri != rj:
                parent[max(ri, rj)] = min(ri, rj)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(find(i), []).append(i)
    return sorted(groups.values(), key=lambda g: g[0])


def derive_sources(radio: np.ndarray, sigma_level: float = RGZ_BASE_SIGMA, contour_factor: float = RGZ_CONTOUR_FACTOR,
                   min_pixels: int = 5, min_prominence: float | None = None, link_factor: float = 1.5,
                   link_max: float = 60.0, noise: float | None = None,
                   threshold: float | None = None, peak_rule: str = "rgz", min_diagonal: float = 0.0) -> Labelling:
    """Derive RGZ/ClaRAN labels from a radio image alone.

    radio: (H, W) float image (Jy/beam or any linear intensity); NaN/inf blanks are set to 0 here
        (counted in ``Labelling.n_blank``).
    sigma_level: the lowest contour in units of the noise (default RGZ's, 3*sqrt(3); this library's
        earlier rule used 4).
    contour_factor: ratio of successive contour levels (default RGZ's, sqrt(3); earlier 2).
    min_pixels: components with fewer pixels are dropped as noise.
    min_diagonal: also drop components whose lowest contour has a bounding-box diagonal of at most
        this many pixels (:func:`contour_diagonal`; RGZ's make_contours filter, ``THRESHOLD`` = 8 px
        on its 301 px images, :data:`RGZ_CONTOUR_THRESHOLD`); 0 (the default, measured in
        docs/claran_labels.md) applies no such filter.
    min_prominence: a peak must also rise this much (image units) above its saddle; default
        ``(contour_factor - 1) * L_0``, the first contour step (implied by the ratio rule anyway).
    link_factor, link_max: the grouping rule of :func:`group_components`.
    noise: sigma to use instead of :func:`estimate_noise`.
    threshold: the lowest contour ``L_0`` to use instead of ``sigma_level * noise``.
    peak_rule: 'prominence' (a peak rises one contour step above its saddle, see
        :func:`_count_peaks`) or 'rgz' (RGZ's pipeline: one peak per innermost contour of the
        ladder ``L_0 * contour_factor**k``). :data:`RGZ_RULE` holds RGZ's whole rule:
        ``derive_sources(img, **RGZ_RULE)`` (``L_0 = 3*sqrt(3)*rms``, factor ``sqrt(3)``, 'rgz').

    When the noise estimate is 0 (the background is already clipped, as in firstgalaxydata's
    PNGs), ``L_0`` is half the smallest positive value above the background, i.e. every pixel the
    data's own clip kept; ``Labelling.clipped`` is then True.
    """
    x = np.asarray(radio, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"derive_sources wants a 2-D image, got shape {x.shape}")
    if peak_rule not in PEAK_RULES:
        raise ValueError(f"peak_rule must be one of {PEAK_RULES}, got {peak_rule!r}")
    finite = np.isfinite(x)
    n_blank = int(x.size - finite.sum())
    if n_blank:
        x = np.where(finite, x, np.float32(0))
    sigma = estimate_noise(radio) if noise is None else float(noise)
    clipped = False
    if threshold is None:
        if np.isfinite(sigma) and sigma > 0:
            threshold = sigma_level * sigma
        else:
            clipped = True
            bg = float(np.median(x))
            above = x[x > bg]
            threshold = bg + 0.5 * float(above.min() - bg) if above.size else np.inf
    threshold = float(threshold)
    vmax = float(x.max()) if x.size else 0.0
    levels = contour_levels(vmax, threshold, contour_factor) if np.isfinite(threshold) else np.zeros(0)

    components: list[Component] = []
    if np.isfinite(threshold) and vmax > threshold:
        lab, n = ndimage.label(x > threshold, structure=EIGHT_CONNECTED)
        for i, sl in enumerate(ndimage.find_objects(lab), start=1):
            if sl is None:
                continue
            crop_mask = lab[sl] == i
            npix = int(crop_mask.sum())
            if npix < min_pixels:
                continue
            crop = x[sl]
            if min_diagonal > 0:
                pad = tuple(slice(max(a.start - 1, 0), a.stop + 1) for a in sl)
                if contour_diagonal(x[pad], lab[pad] == i, threshold) <= min_diagonal:
                    continue
            if peak_rule == "rgz":
                peaks, pvals = _count_peaks_rgz(crop, crop_mask, levels)
            else:
                peaks, pvals = _count_peaks(crop, crop_mask, threshold, contour_factor,
                                            threshold * (contour_factor - 1) if min_prominence is None else min_prominence)
            y0, x0 = sl[0].start, sl[1].start
            full = np.zeros(x.shape, dtype=bool)
            full[sl] = crop_mask
            polys = [p + np.tile(np.array([x0, y0], np.float32), len(p) // 2) for p in mask_to_polygons(crop_mask)]
            components.append(Component(
                mask=full,
                box=(float(sl[1].start), float(sl[0].start), float(sl[1].stop), float(sl[0].stop)),
                polygons=polys,
                peaks=[(px + x0, py + y0) for px, py in peaks],
                peak_values=pvals,
                n_pixels=npix,
                flux=float(crop[crop_mask].sum()),
            ))

    kept, skipped = [], []
    for g in group_components(components, link_factor=link_factor, link_max=link_max):
        comps = [components[i] for i in g]
        src = RadioSource(components=comps, class_name=f"{len(comps)}C_{sum(c.n_peaks for c in comps)}P")
        if src.class_name in RGZ_CLASSES:
            kept.append(src)
        else:
            if src.n_components > 3:
                why = f"{src.n_components} components (ClaRAN's classes have at most 3)"
            elif src.n_peaks > 3:
                why = f"{src.n_peaks} peaks (ClaRAN's classes have at most 3)"
            else:
                why = f"{src.n_components} components with {src.n_peaks} peaks is not a ClaRAN class"
            src.reason = f"{src.class_name} not one of {', '.join(RGZ_CLASSES)}: {why}"
            skipped.append(src)
    return Labelling(sources=kept, skipped=skipped, components=components, noise=float(sigma),
                     threshold=threshold, levels=levels, n_blank=n_blank, clipped=clipped)


# ---------------------------------------------------------------------------------------------
# rendering: ClaRAN's D1 / D3 / D4 inputs
# ---------------------------------------------------------------------------------------------

