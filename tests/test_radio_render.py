"""ClaRAN's renderings D1, D3, D4 (gluon_rcnn.radio.render), with an infrared FITS on another WCS."""
from __future__ import annotations

import numpy as np
import pytest

RADIO = "gluon_rcnn.radio needs the radio packages (astropy, scipy, reproject)"
pytest.importorskip("scipy", reason=RADIO)
pytest.importorskip("astropy", reason=RADIO)

from gluon_rcnn.radio import render  # noqa: E402


def gaussian(shape, x0, y0, amp, sigma):
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return amp * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2.0 * sigma ** 2))


def noisy(shape, sigma=1.0, seed=0):
    return np.random.default_rng(seed).normal(0.0, sigma, shape)


def blue(rgb):
    """Pixels where a (blue) contour was drawn: not grey."""
    return (rgb[..., 2].astype(int) > rgb[..., 0].astype(int)) | (rgb[..., 0] != rgb[..., 1])


# ---------------------------------------------------------------------------------------------
# D1
# ---------------------------------------------------------------------------------------------

def test_d1_is_ds9_log_minmax():
    rng = np.random.default_rng(0)
    radio = rng.normal(0, 1, (40, 50)) + gaussian((40, 50), 20, 25, 80.0, 2.0)
    radio[0, :5] = np.nan
    d1 = render.render_d1(radio)
    assert d1.shape == (40, 50, 3) and d1.dtype == np.uint8
    assert (d1[..., 0] == d1[..., 1]).all() and (d1[..., 1] == d1[..., 2]).all()
    # DS9: x = (v - min) / (max - min); y = log10(1000 x + 1) / log10(1000)
    v = radio[np.isfinite(radio)]
    x = (radio - v.min()) / (v.max() - v.min())
    want = np.round(255 * np.clip(np.log10(1000 * x + 1) / 3, 0, 1))
    fin = np.isfinite(radio)
    np.testing.assert_array_equal(d1[..., 0][fin], want[fin].astype(np.uint8))
    assert (d1[0, :5] == 0).all()  # NaN blanks black
    assert d1[25, 20, 0] == 255 and d1[..., 0][fin].min() == 0
    # the noise is lifted well above black by the log stretch (ClaRAN's D1 shows its noise)
    assert np.median(d1[..., 0]) > 60
    # limits and exponent are the DS9 parameters
    d1 = render.render_d1(np.array([[0.0, 5.0, 10.0, 20.0]]), limits=(0, 10), exponent=10)
    np.testing.assert_array_equal(d1[..., 0], [[0, np.round(255 * np.log10(6) / 1), 255, 255]])
    assert render.render_d1(np.full((4, 4), 3.0)).max() == 0
    assert render.render_d1(np.full((4, 4), np.nan)).max() == 0


# ---------------------------------------------------------------------------------------------
# contours
# ---------------------------------------------------------------------------------------------

def test_claran_levels():
    radio = noisy((200, 200), 2.0, seed=1)
    lv = render.claran_levels(radio)
    sigma = render.estimate_noise(radio)
    assert sigma == pytest.approx(2.0, rel=0.05)
    assert len(lv) == 14  # make_contours.py: NLEVELS = 13 -> 14 levels
    np.testing.assert_allclose(lv, 5.0 * sigma * 2.0 ** np.arange(14))  # fuse(): sigma_level 5, interval 2
    np.testing.assert_allclose(render.claran_levels(radio, sigma_level=4, noise=1.0)[:3], [4, 8, 16])
    assert len(render.claran_levels(np.zeros((10, 10)))) == 0  # no noise: no ladder


def test_contour_segments_follow_the_isophote():
    shape = (60, 60)
    img = gaussian(shape, 30.3, 28.7, 100.0, 5.0)
    level = 30.0
    seg = render.contour_segments(img, level)
    assert len(seg) > 50
    r_want = 5.0 * np.sqrt(2 * np.log(100.0 / level))
    r = np.hypot(seg[..., 0] - 30.3, seg[..., 1] - 28.7)
    assert np.abs(r - r_want).max() < 0.2  # linear interpolation on a smooth profile
    # closed curve: every end point is shared by two segments
    ends = np.round(seg.reshape(-1, 2), 6)
    _, counts = np.unique(ends, axis=0, return_counts=True)
    assert (counts % 2 == 0).all()
    assert len(render.contour_segments(img, 200.0)) == 0


# ---------------------------------------------------------------------------------------------
# a radio image and an infrared FITS on a different WCS
# ---------------------------------------------------------------------------------------------

RADIO_SHAPE = (150, 150)
SRC_A, SRC_B = (45.0, 80.0), (110.0, 70.0)  # radio pixel (x, y) of two separated sources


def _wcs(crval, crpix, cdelt_deg, rot_deg=0.0):
    from astropy.wcs import WCS
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = crval
    w.wcs.crpix = crpix
    w.wcs.cdelt = [-cdelt_deg, cdelt_deg]
    t = np.deg2rad(rot_deg)
    w.wcs.pc = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    return w


def _radio_image(seed=0):
    radio = noisy(RADIO_SHAPE, 1.0, seed=seed)
    for x, y in (SRC_A, SRC_B):
        radio += gaussian(RADIO_SHAPE, x, y, 60.0, 3.0)
    return radio


@pytest.fixture(scope="module")
def ir_fits(module_tmp):
    """Radio WCS (FIRST-like 1.8"/px) and an infrared FITS file on another grid: WISE-like 1.375"/px,
    rotated 25 degrees, centred 20" away, larger; one infrared source at each radio source's sky
    position and one far from both."""
    pytest.importorskip("reproject", reason=RADIO)
    from astropy.io import fits
    radio_wcs = _wcs([150.0, 2.0], [75.5, 75.5], 1.8 / 3600)
    ir_wcs = _wcs([150.004, 2.003], [140.5, 130.5], 1.375 / 3600, rot_deg=25.0)
    ir_shape = (280, 300)
    ir = noisy(ir_shape, 1.0, seed=7)
    sky = {}
    for name, (x, y) in {"A": SRC_A, "B": SRC_B, "far": (75.0, 15.0)}.items():
        ra, dec = radio_wcs.pixel_to_world_values(x, y)
        ix, iy = ir_wcs.world_to_pixel_values(ra, dec)
        assert 10 < ix < ir_shape[1] - 10 and 10 < iy < ir_shape[0] - 10
        ir += gaussian(ir_shape, float(ix), float(iy), 50.0, 2.0)
        sky[name] = (float(ix), float(iy))
    path = module_tmp("ir") / "ir.fits"
    fits.PrimaryHDU(ir.astype(np.float32), header=ir_wcs.to_header()).writeto(path)
    return path, radio_wcs, sky


def test_infrared_fits_reprojected_onto_the_radio_grid(ir_fits):
    path, radio_wcs, sky = ir_fits
    ir = render.infrared_on_radio_grid(path, radio_wcs, RADIO_SHAPE)
    assert ir.shape == RADIO_SHAPE and ir.dtype == np.float32
    # the infrared sources land on the radio pixels of the same sky positions
    for x, y in (SRC_A, SRC_B, (75.0, 15.0)):
        win = np.nan_to_num(ir[int(y) - 6:int(y) + 7, int(x) - 6:int(x) + 7], nan=-np.inf)
        dy, dx = np.unravel_index(np.argmax(win), win.shape)
        assert abs(int(x) - 6 + dx - x) <= 1 and abs(int(y) - 6 + dy - y) <= 1
    assert not np.isnan(ir[60:90, 30:120]).any()


def test_d3_contours_where_the_radio_emission_is(ir_fits):
    path, radio_wcs, _ = ir_fits
    radio = _radio_image()
    ir = render.infrared_on_radio_grid(path, radio_wcs, RADIO_SHAPE)
    d3 = render.render_d3(radio, ir)
    assert d3.shape == RADIO_SHAPE + (3,) and d3.dtype == np.uint8
    c = blue(d3)
    levels = render.claran_levels(radio)
    # contours only on the edges of the regions above the lowest level (an anti-aliased line
    # touches the pixels either side of it), around both sources
    import cv2
    above = (radio > levels[0]).astype(np.uint8)
    near = cv2.dilate(above, np.ones((5, 5), np.uint8)).astype(bool)
    assert c.any() and near[c].all()
    ys, xs = np.nonzero(c)
    d = np.minimum(np.hypot(xs - SRC_A[0], ys - SRC_A[1]), np.hypot(xs - SRC_B[0], ys - SRC_B[1]))
    assert d.max() < 12
    for x, y in (SRC_A, SRC_B):
        assert c[int(y) - 12:int(y) + 13, int(x) - 12:int(x) + 13].any()
    # the grey underneath is the stretched infrared: the far infrared source is bright, uncontoured
    assert d3[15, 75].min() > 150 and not c[5:26, 65:86].any()
    # ClaRAN's colour: blue lines (R = G < B where drawn)
    assert (d3[..., 2][c] >= d3[..., 0][c]).all()
    # rendered at 4x (600 px for a 150 px cutout): same picture, finer lines
    d3x4 = render.render_d3(radio, ir, scale=4)
    assert d3x4.shape == (600, 600, 3)
    ya, xa = 4 * int(SRC_A[1]), 4 * int(SRC_A[0])
    assert blue(d3x4)[ya - 48:ya + 49, xa - 48:xa + 49].any()
    with pytest.raises(ValueError, match="reproject"):
        render.render_d3(radio, ir[:100])


def test_d4_one_hull_around_all_components(ir_fits):
    path, radio_wcs, _ = ir_fits
    radio = _radio_image()
    ir = render.infrared_on_radio_grid(path, radio_wcs, RADIO_SHAPE)
    levels = render.claran_levels(radio)
    comps = render.claran_components(radio, levels[0])
    assert len(comps) == 2  # the two separated sources, no bridge between them
    assert not (comps[0] & comps[1]).any()
    gap = (int((SRC_A[0] + SRC_B[0]) / 2), int((SRC_A[1] + SRC_B[1]) / 2))  # x, y between them
    assert not any(m[gap[1], gap[0]] for m in comps)

    hull = render.hull_mask(RADIO_SHAPE, comps)
    for m in comps:
        assert hull[m].all()  # covers both
    assert hull[gap[1], gap[0]]  # and the gap between them
    assert not hull[15, 75] and not hull[140, 5]
    # one hull, however the components are grouped into sources: pooled, never one per source
    np.testing.assert_array_equal(render.hull_mask(RADIO_SHAPE, [[comps[0]], [comps[1]]]), hull)
    # from positions (e.g. catalogue components): also one hull covering the gap
    hp = render.hull_mask(RADIO_SHAPE, positions=[SRC_A, SRC_B], radius=3)
    assert hp[gap[1], gap[0]] and hp[int(SRC_A[1]), int(SRC_A[0])] and not hp[15, 75]

    d3 = render.render_d3(radio, ir)
    d4 = render.render_d4(radio, ir, fill="mean")  # components from the radio image itself, as ClaRAN
    np.testing.assert_array_equal(d4, render.render_d4(radio, ir, comps, fill="mean"))
    np.testing.assert_array_equal(d4, render.render_d4(radio, ir, [[comps[0]], [comps[1]]], fill="mean"))
    # the default fill is ClaRAN's fixed colour (tests/test_radio_render_claran.py)
    assert (render.render_d4(radio, ir)[~hull & ~blue(d4)] == render.CLARAN_D4_FILL_RGB).all()
    assert d4.shape == RADIO_SHAPE + (3,) and d4.dtype == np.uint8
    grey = render.stretch_ir(ir)
    fill = np.uint8(round(float(grey.mean())))
    # outside the hull: the constant fill (the far infrared source is gone); inside: the infrared
    out = ~hull & ~blue(d4)  # (anti-aliased contour pixels may spill one pixel past the hull)
    assert (d4[out] == fill).all() and out.sum() > 0.8 * (~hull).sum()
    assert d3[15, 75].min() > 150 and (d4[15, 75] == fill).all()
    inside = hull & ~blue(d3) & ~blue(d4)
    np.testing.assert_array_equal(d4[inside], d3[inside])
    np.testing.assert_array_equal(blue(d4), blue(d3))  # the same contours drawn on top
    assert (render.render_d4(radio, ir, comps, fill=0)[..., 0][~hull] == 0).all()
    assert render.render_d4(radio, ir, scale=4).shape == (600, 600, 3)
