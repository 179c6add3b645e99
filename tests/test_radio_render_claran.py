"""D3/D4 against direct transcriptions of ClaRAN's own code (ClaRAN v0.1, github.com/chenwuperth/rgz_rcnn
at b526c23, MIT licence): tools/make_contours.py (``make_levels``, ``conrec``, the level map of ``contour``),
tools/fuse_radio_ir.py (``_get_contour``'s noise, ``get_masked_ir``'s hull and fill). The transcriptions
below keep ClaRAN's arithmetic and only port Python 2 to 3 (``map`` -> lists); the contour builder that
chains CONREC's segments into lines is replaced by collecting the segments."""
from __future__ import annotations

import numpy as np
import pytest

cv2 = pytest.importorskip("cv2")
render = pytest.importorskip("gluon_rcnn.radio.render")

EPSILON = 1e-10  # make_contours.py


# --------------------------------------------------------------------------------------------------
# transcriptions
# --------------------------------------------------------------------------------------------------

def make_levels(NLEVELS, LEVEL_INTERVAL):  # make_contours.py make_levels
    LEVELS = [9. / np.sqrt(3)]
    for _ in range(NLEVELS):
        LEVELS.append(LEVELS[-1] * LEVEL_INTERVAL)
    return LEVELS


def claran_contour_levels(imgdata, sigma_level=5, LEVEL_INTERVAL=2.0, NLEVELS=13):
    """fuse_radio_ir.py _get_contour's sigma, then make_contours.py contour(f, sigma * sigma_level, 2.0)'s levels."""
    from scipy.special import erfinv
    mad2sigma = np.sqrt(2) * erfinv(2 * 0.75 - 1)
    med = np.nanmedian(imgdata)
    mad = np.nanmedian(np.abs(imgdata - med))
    sigma = mad / mad2sigma
    rms = sigma * sigma_level
    LEVELS = make_levels(NLEVELS, LEVEL_INTERVAL)
    return [lv * rms / LEVELS[0] for lv in LEVELS]


def conrec_segments(d, z):
    """make_contours.py conrec(d, 0, H-1, 0, W-1, range(1, H+1), range(1, W+1), len(z), z): its segments,
    each ``((col, row), (col, row))`` 1-based as it passes them to ``add_segment(Point(y1, x1), Point(y2, x2))``."""
    ilb, iub, jlb, jub = 0, len(d) - 1, 0, len(d[0]) - 1
    x, y = list(range(1, len(d) + 1)), list(range(1, len(d[0]) + 1))
    nc = len(z)
    h, sh, xh, yh = [None] * 5, [None] * 5, [None] * 5, [None] * 5
    im, jm = [0, 1, 1, 0], [0, 0, 1, 1]
    castab = [[[0, 0, 8], [0, 2, 5], [7, 6, 9]], [[0, 3, 4], [1, 3, 1], [4, 3, 0]], [[9, 6, 7], [5, 2, 0], [8, 0, 0]]]

    def sect(hh, xx, p1, p2):
        return ((hh[p2] * xx[p1]) - (hh[p1] * xx[p2])) / (hh[p2] - hh[p1])

    out = {k: [] for k in range(nc)}
    for j in range(jub - 1, jlb - 1, -1):
        for i in range(ilb, iub):
            dmin = min(min(d[i][j], d[i][j + 1]), min(d[i + 1][j], d[i + 1][j + 1]))
            dmax = max(max(d[i][j], d[i][j + 1]), max(d[i + 1][j], d[i + 1][j + 1]))
            if dmax >= z[0] and dmin <= z[nc - 1]:
                for k in range(0, nc):
                    if z[k] >= dmin and z[k] <= dmax:
                        for m in [4, 3, 2, 1, 0]:
                            if m > 0:
                                h[m] = d[i + im[m - 1]][j + jm[m - 1]] - z[k]
                                xh[m] = x[i + im[m - 1]]
                                yh[m] = y[j + jm[m - 1]]
                            else:
                                h[0] = 0.25 * (h[1] + h[2] + h[3] + h[4])
                                xh[0] = 0.5 * (x[i] + x[i + 1])
                                yh[0] = 0.5 * (y[j] + y[j + 1])
                            sh[m] = 1 if h[m] > EPSILON else (-1 if h[m] < -EPSILON else 0)
                        for m in [1, 2, 3, 4]:
                            m1, m2, m3 = m, 0, (m + 1 if m != 4 else 1)
                            case_value = castab[sh[m1] + 1][sh[m2] + 1][sh[m3] + 1]
                            if case_value == 0:
                                continue
                            if case_value == 1:
                                x1, y1, x2, y2 = xh[m1], yh[m1], xh[m2], yh[m2]
                            elif case_value == 2:
                                x1, y1, x2, y2 = xh[m2], yh[m2], xh[m3], yh[m3]
                            elif case_value == 3:
                                x1, y1, x2, y2 = xh[m3], yh[m3], xh[m1], yh[m1]
                            elif case_value == 4:
                                x1, y1, x2, y2 = xh[m1], yh[m1], sect(h, xh, m2, m3), sect(h, yh, m2, m3)
                            elif case_value == 5:
                                x1, y1, x2, y2 = xh[m2], yh[m2], sect(h, xh, m3, m1), sect(h, yh, m3, m1)
                            elif case_value == 6:
                                x1, y1, x2, y2 = xh[m3], yh[m3], sect(h, xh, m1, m2), sect(h, yh, m1, m2)
                            elif case_value == 7:
                                x1, y1 = sect(h, xh, m1, m2), sect(h, yh, m1, m2)
                                x2, y2 = sect(h, xh, m2, m3), sect(h, yh, m2, m3)
                            elif case_value == 8:
                                x1, y1 = sect(h, xh, m2, m3), sect(h, yh, m2, m3)
                                x2, y2 = sect(h, xh, m3, m1), sect(h, yh, m3, m1)
                            else:  # 9
                                x1, y1 = sect(h, xh, m3, m1), sect(h, yh, m3, m1)
                                x2, y2 = sect(h, xh, m1, m2), sect(h, yh, m1, m2)
                            out[k].append(((y1, x1), (y2, x2)))  # Point(y1, x1): x = column, y = row
    return out


def get_masked_ir_fill(im_ir, ct_bboxes):
    """fuse_radio_ir.py get_masked_ir(..., replace_mask_with_mean=True) on a BGR image ``im_ir`` and the
    k = 0 contours' bounding boxes ``(min_x, min_y, max_x, max_y)``: the hull of their corners filled, the
    rest ``bg_ir``."""
    mask_ir = np.zeros(im_ir.shape, np.uint8)
    bg_ir = np.ones(im_ir.shape, np.uint8)
    bg_ir[:, :, 0] *= 14
    bg_ir[:, :, 1] *= 45
    bg_ir[:, :, 2] *= 213
    ct_pts = np.zeros((len(ct_bboxes) * 4, 1, 2), dtype=np.int32)
    for i, (min_x, min_y, max_x, max_y) in enumerate(ct_bboxes):
        ct_pts[4 * i + 0, 0] = min_x, min_y
        ct_pts[4 * i + 1, 0] = min_x, max_y
        ct_pts[4 * i + 2, 0] = max_x, min_y
        ct_pts[4 * i + 3, 0] = max_x, max_y
    hull = cv2.convexHull(ct_pts)
    a, b, c = hull.shape
    roi_corners = np.reshape(hull, (b, a, c))
    cv2.fillPoly(mask_ir, roi_corners, (255,) * 3)
    masked_image = np.zeros(im_ir.shape, np.uint8)
    for i in range(3):
        fg = cv2.bitwise_or(im_ir[:, :, i], im_ir[:, :, i], mask=mask_ir[:, :, i])
        mask = cv2.bitwise_not(mask_ir[:, :, i])
        bk = cv2.bitwise_or(bg_ir[:, :, i], bg_ir[:, :, i], mask=mask)
        masked_image[:, :, i] = cv2.bitwise_or(fg, bk)
    return masked_image


# --------------------------------------------------------------------------------------------------
# a synthetic image: noise, a double and a compact source
# --------------------------------------------------------------------------------------------------

def synthetic(shape=(64, 72), seed=3):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    img = rng.normal(0.0, 1.0, shape)
    for x, y, peak, s in ((18.3, 20.6, 80.0, 2.5), (31.7, 27.2, 45.0, 3.0), (55.2, 48.9, 400.0, 1.8)):
        img += peak * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * s * s))
    return img


def test_levels_are_claran_by_default_and_rgz_on_request():
    img = synthetic()
    want = claran_contour_levels(img)
    assert len(want) == 14
    # estimate_noise divides the MAD by 0.6745, ClaRAN by sqrt(2) erfinv(0.5) = 0.67448975...: that ratio
    from scipy.special import erfinv
    rtol = abs(0.6745 / (np.sqrt(2) * erfinv(0.5)) - 1) + 1e-12
    np.testing.assert_allclose(render.claran_levels(img), want, rtol=rtol)
    np.testing.assert_allclose(render.ladder_levels(img), want, rtol=rtol)
    sigma = render.estimate_noise(img)
    np.testing.assert_allclose(render.claran_levels(img)[:4] / sigma, [5, 10, 20, 40], rtol=1e-12)
    # RGZ's ladder: 3*sqrt(3) sigma x sqrt(3)**k = 5.196, 9, 15.59, ... sigma; the labeller's constants
    from gluon_rcnn.radio.labels import RGZ_BASE_SIGMA, RGZ_CONTOUR_FACTOR
    rgz = render.ladder_levels(img, "rgz")
    np.testing.assert_allclose(rgz / sigma, RGZ_BASE_SIGMA * RGZ_CONTOUR_FACTOR ** np.arange(14), rtol=1e-12)
    np.testing.assert_allclose(rgz[:3] / sigma, [3 * np.sqrt(3), 9.0, 9 * np.sqrt(3)], rtol=1e-12)
    with pytest.raises(ValueError, match="claran, rgz"):
        render.ladder_levels(img, "ds9")


def test_contour_segments_are_claran_conrec():
    """Every segment of make_contours.py conrec at ClaRAN's levels, as contour_segments traces it (pixel
    centres 0-based here, 1-based there). Tolerance: float64 rounding of the interpolation."""
    img = synthetic()
    levels = claran_contour_levels(img)
    theirs = conrec_segments(img.tolist(), levels)
    n = 0
    for k, lv in enumerate(levels):
        ours = render.contour_segments(img, lv)
        t = np.asarray(theirs[k], np.float64).reshape(-1, 2, 2) - 1.0
        assert len(ours) == len(t)
        n += len(t)
        if not len(t):
            continue

        def canon(s):  # unordered end points, rounded
            s = np.round(s, 9)
            swap = (s[:, 0, 0] > s[:, 1, 0]) | ((s[:, 0, 0] == s[:, 1, 0]) & (s[:, 0, 1] > s[:, 1, 1]))
            s[swap] = s[swap][:, ::-1]
            return s[np.lexsort((s[:, 1, 1], s[:, 1, 0], s[:, 0, 1], s[:, 0, 0]))]

        np.testing.assert_allclose(canon(ours), canon(t), atol=1e-8)
    assert n > 100


def test_d4_fill_and_hull_are_get_masked_ir():
    """render_d4's masking = get_masked_ir(replace_mask_with_mean=True) given the same bounding boxes:
    the hull of their corners keeps the infrared, the rest is ClaRAN's fixed BGR (14, 45, 213)."""
    img = synthetic()
    rng = np.random.default_rng(5)
    ir = rng.normal(10.0, 3.0, img.shape)
    comps = render.claran_components(img, render.claran_levels(img)[0])
    assert len(comps) >= 2  # several components: the hull pools them
    boxes = []
    for m in comps:
        ys, xs = np.nonzero(m)
        boxes.append((xs.min(), ys.min(), xs.max(), ys.max()))
    grey = render.stretch_ir(ir)
    want = get_masked_ir_fill(np.repeat(grey[:, :, None], 3, axis=2), boxes)[..., ::-1]  # BGR -> RGB
    ours = render.render_d4(img, ir, comps, levels=[])  # no contours drawn: the masked infrared alone
    np.testing.assert_array_equal(ours, want)
    assert tuple(render.CLARAN_D4_FILL_RGB) == (213, 45, 14)
    assert (ours[0, 0] == (213, 45, 14)).all()
    # default components: the image's own regions above the lowest contour; contours drawn on top
    d4 = render.render_d4(img, ir)
    np.testing.assert_array_equal(d4, render.render_d4(img, ir, comps))
    # other fills on request
    assert (render.render_d4(img, ir, comps, levels=[], fill=0)[0, 0] == 0).all()
    assert (render.render_d4(img, ir, comps, levels=[], fill=(1, 2, 3))[0, 0] == (1, 2, 3)).all()
    with pytest.raises(ValueError, match="fill"):
        render.render_d4(img, ir, comps, fill="median")


def test_survey_tiles_draw_claran_contours_unless_told_rgz():
    pytest.importorskip("reproject")
    from astropy.wcs import WCS

    from gluon_rcnn.radio.survey import render_tile
    img = synthetic().astype(np.float32)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval, w.wcs.crpix, w.wcs.cdelt = [150.0, 2.0], [36.5, 32.5], [-0.0005, 0.0005]
    ir = np.random.default_rng(1).normal(10.0, 3.0, img.shape).astype(np.float32)
    rms = render.estimate_noise(img)
    d3 = render_tile(img, rms, "D3", ir=(ir, w), tile_wcs=w)
    np.testing.assert_array_equal(d3, render.render_d3(img, ir, levels=render.claran_levels(img, noise=rms)))
    d3r = render_tile(img, rms, "D3", ir=(ir, w), tile_wcs=w, contours="rgz")
    np.testing.assert_array_equal(d3r, render.render_d3(img, ir, levels=render.ladder_levels(img, "rgz", noise=rms)))
    assert (d3 != d3r).any()
    d4 = render_tile(img, rms, "D4", ir=(ir, w), tile_wcs=w)
    np.testing.assert_array_equal(d4, render.render_d4(img, ir, noise=rms))


def test_rgz_contour_filter_measures_the_lowest_contour_as_make_contours():
    """labels.contour_diagonal = make_contours.py's ``bounding_box`` diagonal of the lowest CONREC contour
    (transcribed conrec above); derive_sources(min_diagonal=D) drops components at or below D px, as
    ``filter_small`` keeps contours above its threshold."""
    from gluon_rcnn.radio.labels import RGZ_RULE, contour_diagonal, derive_sources
    shape = (60, 90)
    rng = np.random.default_rng(11)
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    img = rng.normal(0.0, 1.0, shape)
    img += 30.0 * np.exp(-((xx - 20.4) ** 2 + (yy - 30.2) ** 2) / (2 * 1.2 ** 2))  # compact
    img += 60.0 * np.exp(-((xx - 68.3) / 7.0) ** 2 / 2 - ((yy - 28.7) / 3.0) ** 2 / 2)  # extended
    lab = derive_sources(img, **RGZ_RULE)
    level = lab.threshold
    big = [c for c in lab.components if c.box[0] > 40]
    small = [c for c in lab.components if c.box[2] < 30]
    assert len(big) == 1 and len(small) == 1
    seg = np.asarray(conrec_segments(img.tolist(), [level])[0], np.float64) - 1.0  # 0-based (col, row)
    for comp, side in ((small[0], seg[:, :, 0].max(1) < 40), (big[0], seg[:, :, 0].min(1) > 40)):
        pts = seg[side].reshape(-1, 2)
        want = np.hypot(*(pts.max(0) - pts.min(0)))  # bounding_box, then filter_small's sqrt(x*x + y*y)
        assert contour_diagonal(img, comp.mask, level) == pytest.approx(want, rel=1e-12)
    d_small = contour_diagonal(img, small[0].mask, level)
    assert 2 < d_small < 8 < contour_diagonal(img, big[0].mask, level)
    kept = derive_sources(img, **RGZ_RULE, min_diagonal=8.0).components
    assert [c.box for c in kept if c.box[0] > 40] == [big[0].box] and not [c for c in kept if c.box[2] < 30]
    assert len(derive_sources(img, **RGZ_RULE, min_diagonal=d_small - 1e-6).components) == len(lab.components)
    assert len(derive_sources(img, **RGZ_RULE, min_diagonal=d_small).components) == len(lab.components) - 1
