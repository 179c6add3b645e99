"""Each source once, whatever the tiling (gluon_rcnn.radio.survey's merge, gluon_rcnn.radio.islands).

Synthetic skies (noise and Gaussian components at FIRST's beam and pixel scale) hold a double or a
triple swept across one tile border and across a corner (two borders), and a point source. The
oracle detector sees truth unclipped, but a tile holding only some of a source's components
reports those as a source of their own (a cut double seen as a lone component) and clips the
components it cuts. The tiled catalogue must equal a single-tile run on the same sky: the same rows,
classes, components (island for island) and fluxes, each island in exactly one row."""
import numpy as np
import pytest

pytest.importorskip("astropy", reason="gluon_rcnn.radio needs the radio extra")
pytest.importorskip("scipy", reason="gluon_rcnn.radio needs the radio extra")
pytest.importorskip("reproject", reason="gluon_rcnn.radio needs the radio extra")

from astropy.io import fits  # noqa: E402
from astropy.wcs import WCS  # noqa: E402

from gluon_rcnn.radio import RGZ_CLASSES, derive_sources  # noqa: E402
from gluon_rcnn.radio.survey import TruthDetector, merge_detections, predict_mosaic  # noqa: E402

SHAPE = (240, 240)
TILE, OVERLAP = 128, 64            # tile starts 0, 64, 112 on each axis: 9 tiles
RMS = 1.5e-4                       # FIRST's rms, Jy/beam
SIGMA = 3.0 / (2.0 * np.sqrt(2.0 * np.log(2.0)))  # FIRST's 5.4" beam at 1.8"/px
POINT = (190.0, 120.0)             # a point source cut by the tiles ending at x = 192, whole in those from 112

# component offsets (dx, dy) from the source centre, px: sources up to 40 px, within the overlap
SHAPES = {"double_h": [(-15, 0), (15, 0)], "double_v": [(0, -15), (0, 15)],
          "triple": [(-14, -6), (0, 3), (14, -6)]}


def _sky(path, centre, offsets, seed=0):
    rng = np.random.default_rng(seed)
    data = rng.normal(0, RMS, SHAPE)
    yy, xx = np.mgrid[:SHAPE[0], :SHAPE[1]]
    lobes = [(centre[0] + dx, centre[1] + dy) for dx, dy in offsets]
    for (x, y), amp in zip(lobes + [POINT], [40 * RMS] * len(lobes) + [60 * RMS]):
        data += amp * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * SIGMA ** 2))
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval, w.wcs.crpix, w.wcs.cdelt = [150.0, 20.0], [120.5, 120.5], [-0.0005, 0.0005]
    hdr = w.to_header()
    hdr["BUNIT"] = "Jy/beam"
    fits.PrimaryHDU(data.astype(np.float32), header=hdr).writeto(path, overwrite=True)
    # truth: the components of the whole image (one noise cell: the image's rms), grouped by what was injected
    lab = derive_sources(data.astype(np.float32))
    groups = [lobes, [POINT]]
    truth = [[], []]
    for c in lab.components:
        px, py = c.peaks[0]
        for g, pts in enumerate(groups):
            if min(np.hypot(px - x, py - y) for x, y in pts) <= 2:
                truth[g].append((c.box, c.n_peaks))
    assert [len(t) for t in truth] == [len(lobes), 1], "a component of the synthetic sky was not found"
    boxes = [[min(b[0] for b, _ in t), min(b[1] for b, _ in t), max(b[2] for b, _ in t), max(b[3] for b, _ in t)]
             for t in truth]
    labels = [RGZ_CLASSES.index(f"{len(t)}C_{sum(n for _, n in t)}P") + 1 for t in truth]
    return TruthDetector(boxes, labels, RGZ_CLASSES, parts=truth)


def _catalogue(res):
    return sorted((r["_islands"], r["class"], r["n_components"], r["island_flux_mjy"], r["int_flux_mjy"], r["flags"])
                  for r in res.rows)


def _check(tmp_path, centre, shape, fit=False):
    """Tiled vs single-tile catalogue of one sky; returns how many views of part of the swept source
    the tiles reported (lone components, clipped components)."""
    path = tmp_path / "sky.fits"
    det = _sky(path, centre, SHAPES[shape])
    partial = []

    class Spy(TruthDetector):  # counts the views of part of the swept source that the tiles report
        def __call__(self, images, tiles):
            out = det(images, tiles)
            s = det.boxes[0]
            for d, t in zip(out, tiles):
                for v in d["boxes"] + np.array([t.x0, t.y0, t.x0, t.y0]):
                    inside = v[0] >= s[0] and v[1] >= s[1] and v[2] <= s[2] and v[3] <= s[3]
                    partial.append(inside and not np.allclose(v, s))
            return out

    tiled = predict_mosaic(Spy([], [], RGZ_CLASSES), path, tile=TILE, overlap=OVERLAP, fit=fit)
    single = predict_mosaic(det, path, tile=max(SHAPE), overlap=0, fit=fit)
    assert tiled.n_tiles == 9 and single.n_tiles == 1
    got, want = _catalogue(tiled), _catalogue(single)
    where = f"{shape} at {centre}"
    assert len(got) == len(want) == 2, f"{where}: {len(got)} rows tiled, {len(want)} single-tile"
    for g, w in zip(got, want):
        assert g[:3] == w[:3] and g[5] == w[5] == 0, f"{where}: {g} != {w}"
        # the same island pixels summed in the same order: equal to rounding
        assert g[3] == pytest.approx(w[3], rel=1e-12) and (not fit or g[4] == pytest.approx(w[4], rel=1e-9)), where
    islands = [k for r in tiled.rows for k in r["_islands"]]
    assert len(islands) == len(set(islands)) == len(SHAPES[shape]) + 1, f"{where}: islands {islands}"
    return sum(partial)


def _placements(step, every_shape=True):
    """(centre, shape): across one border (x = 64, 112, 128 and 192 are tile borders; y = 40 lies in
    the first tile row only), and across two at once along the diagonal through the tiles' corners;
    every shape at every offset, or (``every_shape`` False) the shapes in turn."""
    names = list(SHAPES)
    for k, c in enumerate(range(24, 217, step)):
        for centre in ((float(c), 40.0), (float(c), float(c))):
            for shape in (names if every_shape else [names[k % len(names)]]):
                yield centre, shape


def test_merge_sweep_fast(tmp_path):
    """A representative subset (every 12th px, the shapes in turn); the full sweep is
    test_merge_sweep_every_offset (make slow)."""
    n_cut = sum(_check(tmp_path, centre, shape) > 0 for centre, shape in _placements(12, every_shape=False))
    assert n_cut >= 15  # half the placements put the source across a border: some tile saw it in parts


@pytest.mark.slow
def test_merge_sweep_every_offset(tmp_path):
    placements = list(_placements(1))
    n_cut = sum(_check(tmp_path, centre, shape) > 0 for centre, shape in placements)
    assert len(placements) == 1158 and n_cut >= len(placements) // 3


def test_merge_with_fits_equals_single_tile(tmp_path):
    """Gaussian fits too: the same fluxes whatever the tiling (a triple across a corner)."""
    _check(tmp_path, (118.0, 120.0), "triple", fit=True)


def test_merge_islands_each_once():
    """The issue's case on the rule itself: tile 0 sees a double whole (islands L1, L2), tile 1 sees
    lobe L2 as a complete source and clips lobe L1 at its border; tile 0 also boxes L2 alone (another
    class on the same emission). One source, both islands, the double's detection."""
    L1, L2, L3 = (30, 110), (30, 200), (80, 150)
    boxes = np.array([[100, 10, 208, 50],     # 0: tile 0, the double, whole
                      [190, 10, 208, 50],     # 1: tile 1, lobe L2 seen as a lone source, whole
                      [112, 10, 120, 50],     # 2: tile 1, lobe L1 clipped at its border x = 112
                      [190, 12, 208, 48]], float)  # 3: tile 0, L2 boxed alone too
    tiles, dist = np.array([0, 1, 1, 0]), np.array([20.0, 70.0, 0.0, 20.0])
    covers = [{L1, L2}, {L2}, {L1}, {L2}]
    out = merge_detections(boxes, [0.9, 0.95, 0.6, 0.99], tiles, dist, covers)
    assert len(out) == 1 and out[0].members == [0] and out[0].islands == {L1, L2} and not out[0].cut
    # merged on boxes alone (the former rule) the lone lobe is a second row: what islands fix
    assert len(merge_detections(boxes, [0.9, 0.95, 0.6, 0.99], tiles, dist)) > 1
    # a detection covering an island another source took keeps the rest, flagged shared
    out = merge_detections(np.vstack([boxes[:1], [[150, 10, 210, 160]]]), [0.9, 0.9], [0, 1], [20.0, 20.0],
                           [{L1, L2}, {L2, L3}], {L1: 2.0, L2: 1.0, L3: 0.5})
    assert [(m.islands, m.shared) for m in out] == [({L1, L2}, False), ({L3}, True)]
    # no tile sees a source whole: its cut parts, linked by a shared island or touching boxes, join
    out = merge_detections(np.array([[100, 10, 128, 50], [112, 10, 208, 50]], float), [0.8, 0.9], [0, 1],
                           [0.0, 0.0], [{L1}, {L1, L2}])
    assert len(out) == 1 and out[0].cut and out[0].islands == {L1, L2} and out[0].members == [1, 0]
