"""gluon_rcnn.radio: FITS reading, ClaRAN label derivation, rendering, COCO export, demo data."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

# the radio side (FITS, WCS, labelling) needs astropy and scipy, which may become an optional extra
RADIO = "gluon_rcnn.radio needs the radio packages (astropy, scipy, reproject)"
pytest.importorskip("scipy", reason=RADIO)
pytest.importorskip("astropy", reason=RADIO)

from conftest import MIRABEST  # noqa: E402
from gluon_rcnn import radio as rgz  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
MIRABEST_FILES = sorted(MIRABEST.glob("*.fits")) if MIRABEST.is_dir() else []
# real FIRST cutouts cannot ship with the repository (tests/conftest.py says why)
needs_mirabest = pytest.mark.skipif(not MIRABEST_FILES, reason=f"real FIRST FITS cutouts not found at {MIRABEST}: FIRST data may not be redistributed in this repository")


# ---------------------------------------------------------------------------------------------
# helpers: FITS files written byte by byte, so headers can hold what astropy would refuse to write
# ---------------------------------------------------------------------------------------------

def _card(text: str) -> bytes:
    assert len(text) <= 80, text
    return text.ljust(80).encode("latin-1")


def _kv(key: str, value) -> bytes:
    if isinstance(value, bool):
        v = "T" if value else "F"
    elif isinstance(value, str):
        v = f"'{value:<8}'"
    else:
        v = repr(value)
    return _card(f"{key:<8}= {v:>20}")


def _pad(b: bytes, fill: bytes) -> bytes:
    return b + fill * ((-len(b)) % 2880)


def _wcs_cards(crpix=(50.5, 50.5), crval=(150.0, 2.0), cdelt=0.0005, naxis_extra=0) -> list[bytes]:
    cards = [_kv("CTYPE1", "RA---TAN"), _kv("CTYPE2", "DEC--TAN"), _kv("CRPIX1", float(crpix[0])),
             _kv("CRPIX2", float(crpix[1])), _kv("CRVAL1", float(crval[0])), _kv("CRVAL2", float(crval[1])),
             _kv("CDELT1", -cdelt), _kv("CDELT2", cdelt), _kv("RADESYS", "FK5"), _kv("EQUINOX", 2000.0)]
    if naxis_extra:
        cards += [_kv("CTYPE3", "FREQ"), _kv("CRPIX3", 1.0), _kv("CRVAL3", 1.4e9), _kv("CDELT3", 1e6),
                  _kv("CTYPE4", "STOKES"), _kv("CRPIX4", 1.0), _kv("CRVAL4", 1.0), _kv("CDELT4", 1.0)]
    return cards


def write_raw_fits(path: Path, data: np.ndarray | None, extra_cards=(), wcs_kw=None) -> Path:
    """A primary-HDU FITS with float32 ``data`` (any ndim; None = header only)."""
    shape = () if data is None else data.shape
    cards = [_kv("SIMPLE", True), _kv("BITPIX", -32), _kv("NAXIS", len(shape))]
    for i, n in enumerate(reversed(shape), start=1):
        cards.append(_kv(f"NAXIS{i}", int(n)))
    if data is not None:
        cards += _wcs_cards(**(wcs_kw or {}), naxis_extra=max(0, len(shape) - 2))
    cards += list(extra_cards)
    cards.append(_card("END"))
    raw = _pad(b"".join(cards), b" ")
    if data is not None:
        raw += _pad(np.ascontiguousarray(data, dtype=">f4").tobytes(), b"\0")
    path.write_bytes(raw)
    return path


TAB_CARDS = [
    _card("COMMENT Provenance:  The FIRST project team: R.J. Becker, D.H. Helfand, R.L. W"),
    _card("COMMENT          hite \t  M.D. Gregg. S.A. Laurent-Muehleisen."),
    _card("HISTORY Copyright:   1994, University of California. \t  Permission is granted"),
]


def gaussian(shape, x0, y0, amp, sx, sy=None, theta=0.0):
    sy = sx if sy is None else sy
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(np.float64)
    dx, dy = xx - x0, yy - y0
    c, s = np.cos(theta), np.sin(theta)
    u, v = c * dx + s * dy, -s * dx + c * dy
    return amp * np.exp(-0.5 * ((u / sx) ** 2 + (v / sy) ** 2))


def noisy(shape=(200, 200), sigma=1.0, seed=0):
    return np.random.default_rng(seed).normal(0.0, sigma, shape)


def classes(lab):
    return sorted(s.class_name for s in lab.sources)


# ---------------------------------------------------------------------------------------------
# read_fits
# ---------------------------------------------------------------------------------------------

def test_read_fits_with_tab_characters_in_commentary_cards(tmp_path):
    data = np.arange(60 * 80, dtype=np.float32).reshape(60, 80)
    p = write_raw_fits(tmp_path / "tabs.fits", data, extra_cards=TAB_CARDS)
    assert b"\t" in p.read_bytes()
    arr, wcs, header = rgz.read_fits(p)
    assert arr.shape == (60, 80) and arr.dtype == np.float32 and arr.dtype.isnative
    np.testing.assert_array_equal(arr, data)
    assert wcs.naxis == 2 and wcs.wcs.ctype[0].startswith("RA")
    comments = " ".join(str(c) for c in header["COMMENT"]) + " ".join(str(c) for c in header["HISTORY"])
    assert "\t" not in comments and "Gregg" in comments and "Permission" in comments
    assert "BUNIT" not in header  # missing BUNIT is fine
    ra, dec = wcs.pixel_to_world_values(49.5, 49.5)  # CRPIX 50.5 (1-based) is 49.5 0-based
    assert ra == pytest.approx(150.0) and dec == pytest.approx(2.0)


def test_read_fits_squeezes_degenerate_axes(tmp_path):
    data = np.random.default_rng(1).normal(size=(1, 1, 40, 30)).astype(np.float32)
    arr, wcs, _ = rgz.read_fits(write_raw_fits(tmp_path / "4d.fits", data))
    assert arr.shape == (40, 30)
    np.testing.assert_array_equal(arr, data[0, 0])
    assert wcs.naxis == 2 and wcs.has_celestial


def test_read_fits_finds_image_in_extension(tmp_path):
    from astropy.io import fits

    img = np.ones((20, 25), np.float32)
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column("a", "E", array=np.zeros(3))]),
                  fits.ImageHDU(img)]).writeto(tmp_path / "ext.fits")
    arr, wcs, _ = rgz.read_fits(tmp_path / "ext.fits")
    assert arr.shape == (20, 25) and wcs.naxis == 2


@pytest.mark.parametrize("kind", ["header_only", "table_only", "not_fits"])
def test_read_fits_without_image_raises_fitserror_naming_file(tmp_path, kind):
    from astropy.io import fits

    p = tmp_path / f"{kind}.fits"
    if kind == "header_only":
        write_raw_fits(p, None, extra_cards=TAB_CARDS)
    elif kind == "table_only":
        fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(
            [fits.Column("flux", "E", array=np.arange(4, dtype=np.float32))])]).writeto(p)
    else:
        p.write_text("this is not a FITS file\n")
    with pytest.raises(rgz.FITSError) as e:
        rgz.read_fits(p)
    assert isinstance(e.value, ValueError)
    assert str(p) in str(e.value)


def test_nan_blanks_are_kept_and_labelling_survives(tmp_path):
    img = noisy((120, 120), 1.0, seed=3) + gaussian((120, 120), 60, 60, 50.0, 3.0)
    img[:, :20] = np.nan  # a blanked strip, as at the edge of a survey
    img[58:61, 70:73] = np.nan  # and a few blanks on the source's flank
    arr, _, _ = rgz.read_fits(write_raw_fits(tmp_path / "nan.fits", img.astype(np.float32)))
    assert np.isnan(arr).sum() == 120 * 20 + 9
    assert rgz.estimate_noise(arr) == pytest.approx(1.0, rel=0.1)
    lab = rgz.derive_sources(arr)
    assert lab.n_blank == 120 * 20 + 9
    assert classes(lab) == ["1C_1P"]
    x1, y1, x2, y2 = lab.sources[0].box
    assert x1 < 60 < x2 and y1 < 60 < y2
    rgb = rgz.render_d1(arr)
    assert rgb.shape == (120, 120, 3) and rgb[:, :20].max() == 0


@needs_mirabest
def test_real_mirabest_files_load():
    for p in MIRABEST_FILES[:3]:
        arr, wcs, header = rgz.read_fits(p)
        assert arr.shape == (300, 300) and arr.dtype == np.float32
        assert wcs.naxis == 2 and wcs.has_celestial
        assert all("\t" not in str(c) for c in header["COMMENT"])
        noise = rgz.estimate_noise(arr)
        assert 1e-5 < noise < 1e-3  # FIRST: ~0.15 mJy/beam


# ---------------------------------------------------------------------------------------------
# noise and label derivation
# ---------------------------------------------------------------------------------------------

def test_noise_estimate_on_gaussian_noise():
    x = noisy((300, 300), 2.5, seed=0) + 7.0
    assert rgz.estimate_noise(x) == pytest.approx(2.5, rel=0.02)
    # robust: bright sources on 1% of the pixels hardly move it (a plain std would)
    x[:30, :30] += 1000.0
    assert rgz.estimate_noise(x) == pytest.approx(2.5, rel=0.05)
    assert np.std(x) > 10 * 2.5
    x[50:60] = np.nan
    assert rgz.estimate_noise(x) == pytest.approx(2.5, rel=0.05)
    assert rgz.estimate_noise(np.zeros((10, 10))) == 0.0


#: the rule this library used before RGZ's (4 sigma, contours x2, peaks by prominence)
EARLIER_RULE = {"sigma_level": 4.0, "contour_factor": 2.0, "peak_rule": "prominence"}


def test_single_gaussian_is_1c_1p():
    lab = rgz.derive_sources(noisy() + gaussian((200, 200), 80, 120, 40.0, 2.5))
    assert lab.noise == pytest.approx(1.0, rel=0.05)
    assert lab.threshold == pytest.approx(3 * np.sqrt(3) * lab.noise)  # RGZ's lowest contour
    assert classes(lab) == ["1C_1P"] and not lab.skipped
    src = lab.sources[0]
    assert src.components[0].peaks[0] == (80, 120)
    assert src.category_id == 1


def test_two_separate_gaussians_are_one_2c_2p_source():
    img = noisy() + gaussian((200, 200), 80, 100, 40.0, 2.5) + gaussian((200, 200), 105, 100, 30.0, 2.5)
    lab = rgz.derive_sources(img)
    assert len(lab.components) == 2
    assert classes(lab) == ["2C_2P"]
    x1, y1, x2, y2 = lab.sources[0].box
    assert x1 < 80 and x2 > 105 and y1 < 100 < y2


def test_far_apart_gaussians_are_separate_sources():
    img = noisy() + gaussian((200, 200), 20, 20, 40.0, 2.5) + gaussian((200, 200), 180, 170, 30.0, 2.5)
    lab = rgz.derive_sources(img)
    assert classes(lab) == ["1C_1P", "1C_1P"]


def test_elongated_double_peaked_is_1c_2p():
    # two Gaussians 12 px apart: one component (saddle ~13 sigma > 4 sigma) with two peaks,
    # each rising more than one contour step (factor 2) above the saddle
    img = noisy() + gaussian((200, 200), 94, 100, 50.0, 3.0) + gaussian((200, 200), 106, 100, 45.0, 3.0)
    lab = rgz.derive_sources(img)
    assert len(lab.components) == 1
    assert classes(lab) == ["1C_2P"]
    peaks = sorted(lab.components[0].peaks)
    assert abs(peaks[0][0] - 94) <= 1 and abs(peaks[1][0] - 106) <= 1


def test_shallow_saddle_and_noisy_plateau_give_one_peak():
    # the earlier 'prominence' rule (4 sigma, contours x2): two maxima 9 px apart, saddle ~33 sigma, peaks
    # ~51 sigma, less than one contour step (x2) apart: one peak. RGZ's ladder (5.2 sigma x sqrt(3)**k) has a
    # contour at 46.8 sigma between saddle and peaks: two innermost contours, two peaks.
    img = noisy() + gaussian((200, 200), 95.5, 100, 50.0, 3.0) + gaussian((200, 200), 104.5, 100, 50.0, 3.0)
    assert classes(rgz.derive_sources(img, **EARLIER_RULE)) == ["1C_1P"]
    assert classes(rgz.derive_sources(img, **dict(EARLIER_RULE, contour_factor=1.3))) == ["1C_2P"]  # finer contours
    assert classes(rgz.derive_sources(img)) == ["1C_2P"]
    # a broad diffuse source: noise makes many local maxima on it, none a contour step high (earlier rule)
    img = noisy(seed=5) + gaussian((200, 200), 100, 100, 20.0, 12.0)
    assert classes(rgz.derive_sources(img, **EARLIER_RULE)) == ["1C_1P"]
    # RGZ's rule counts innermost contours: the flat top of a 20-sigma source crossed by a contour breaks into
    # several islands on white noise (here 7: skipped as outside the six classes), still one component
    lab = rgz.derive_sources(img)
    assert len(lab.components) == 1 and not lab.sources and lab.skipped[0].class_name == "1C_7P"


def test_triple_sources():
    shape = (200, 200)
    core_lobes = (noisy() + gaussian(shape, 100, 100, 30.0, 2.5) + gaussian(shape, 75, 100, 40.0, 2.5)
                  + gaussian(shape, 125, 100, 40.0, 2.5))
    assert classes(rgz.derive_sources(core_lobes)) == ["3C_3P"]
    chain = (noisy() + gaussian(shape, 88, 100, 50.0, 3.0) + gaussian(shape, 100, 100, 50.0, 3.0)
             + gaussian(shape, 112, 100, 50.0, 3.0))
    assert classes(rgz.derive_sources(chain)) == ["1C_3P"]


def test_class_outside_the_six_is_skipped_with_reason():
    shape = (200, 200)
    img = noisy() + sum(gaussian(shape, 70 + 20 * k, 100, 40.0, 2.5) for k in range(4))
    lab = rgz.derive_sources(img)
    assert not lab.sources
    assert [s.class_name for s in lab.skipped] == ["4C_4P"]
    assert "4C_4P" in lab.skipped[0].reason and "4 components" in lab.skipped[0].reason
    assert lab.skipped[0].category_id is None


def test_min_pixels_drops_specks():
    img = noisy()
    img[50, 50] = 100.0  # a one-pixel spike
    lab = rgz.derive_sources(img, min_pixels=5)
    assert all(c.n_pixels >= 5 for c in lab.components)
    assert not any(c.mask[50, 50] for c in lab.components)


def test_grouping_rule_is_bounding_box_gap():
    def comp(x1, x2):
        return rgz.Component(mask=np.zeros((1, 1), bool), box=(x1, 0.0, x2, 10.0), polygons=[], peaks=[(0, 0)],
                             peak_values=[1.0], n_pixels=1, flux=1.0)

    # sizes 10: reach 1.5 * 10 = 15 px
    assert rgz.group_components([comp(0, 10), comp(25, 35)]) == [[0, 1]]          # gap 15
    assert rgz.group_components([comp(0, 10), comp(26, 36)]) == [[0], [1]]        # gap 16
    # a core links two lobes that are too far apart to link directly (single linkage)
    assert rgz.group_components([comp(0, 10), comp(40, 50), comp(20, 30)]) == [[0, 1, 2]]
    # the cap: two big components 70 px apart stay apart
    assert rgz.group_components([comp(0, 100), comp(170, 270)], link_max=60) == [[0], [1]]


def test_polygons_trace_pixel_edges():
    from pycocotools import mask as mask_utils

    one = np.zeros((5, 5), bool)
    one[2, 3] = True
    (poly,) = rgz.mask_to_polygons(one)
    xs, ys = poly[0::2], poly[1::2]
    assert (xs.min(), xs.max(), ys.min(), ys.max()) == (3, 4, 2, 3)

    img = noisy() + gaussian((200, 200), 100, 90, 40.0, 6.0, 3.0, 0.5)
    lab = rgz.derive_sources(img)
    c = lab.sources[0].components[0]
    rle = mask_utils.merge(mask_utils.frPyObjects([p.tolist() for p in c.polygons], 200, 200))
    back = mask_utils.decode(rle).astype(bool)
    iou = (back & c.mask).sum() / (back | c.mask).sum()
    assert iou > 0.9
    x1, y1, x2, y2 = c.box
    ys_, xs_ = np.nonzero(c.mask)
    assert (x1, y1, x2, y2) == (xs_.min(), ys_.min(), xs_.max() + 1, ys_.max() + 1)


# ---------------------------------------------------------------------------------------------
# rendering and reprojection
# ---------------------------------------------------------------------------------------------

def test_render_shapes_and_dtypes():
    shape = (90, 110)
    radio = noisy(shape, 1.0) + gaussian(shape, 40, 45, 60.0, 2.5) + gaussian(shape, 70, 45, 50.0, 2.5)
    ir = noisy(shape, 1.0, seed=9) + gaussian(shape, 55, 45, 30.0, 1.5) + gaussian(shape, 10, 10, 30.0, 1.5)
    lab = rgz.derive_sources(radio)
    d1 = rgz.render_d1(radio)
    d3 = rgz.render_d3(radio, ir)
    d4 = rgz.render_d4(radio, ir, lab.sources[0].masks)
    for im in (d1, d3, d4):
        assert im.shape == shape + (3,) and im.dtype == np.uint8
    # D1 (DS9 log, min-max limits): grey, black at the image's minimum, brightest at the peak
    assert (d1[..., 0] == d1[..., 1]).all() and (d1[..., 0] == d1[..., 2]).all()
    assert d1.max() == 255 and d1.min() == 0 and d1[np.unravel_index(radio.argmin(), shape)][0] == 0
    assert d1[45, 40, 0] == 255
    # D3: coloured contour pixels near the sources, plain grey away from them
    colour = (d3[..., 0] != d3[..., 1]) | (d3[..., 1] != d3[..., 2])
    assert colour[30:60, 25:85].any() and not colour[:, :15].any()
    # D4: the infrared source at (10, 10), outside the radio components' hull, is replaced by the
    # constant fill (as at the corner); the one at (55, 45), between the radio components, is kept
    assert d3[10, 10].max() > 100 and (d4[10, 10] == d4[0, 0]).all() and d4[10, 10].max() < d3[10, 10].max()
    assert d4[45, 55].max() > 100
    with pytest.raises(ValueError, match="reproject"):
        rgz.render_d3(radio, ir[:50])


def test_d1_exact_stretch():
    radio = np.array([[0.0, 1.0, 10.0, 100.0]])
    d1 = rgz.render_d1(radio)[..., 0]
    # DS9 log, min-max: x = 0, .01, .1, 1; log10(1000 x + 1) / 3 = 0, .347, .668, 1
    np.testing.assert_array_equal(d1, [[0, 89, 170, 255]])


def test_reproject_with_shifted_wcs():
    pytest.importorskip("reproject", reason=RADIO)
    from astropy.wcs import WCS

    def make_wcs(crpix):
        w = WCS(naxis=2)
        w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        w.wcs.crval = [150.0, 2.0]
        w.wcs.crpix = crpix
        w.wcs.cdelt = [-0.0005, 0.0005]
        return w

    radio_wcs = make_wcs([50.5, 50.5])
    ir_wcs = make_wcs([55.5, 47.5])  # the same sky sits 5 px right, 3 px down in the infrared grid
    ir = gaussian((100, 100), 60, 40, 100.0, 2.0).astype(np.float32)
    out = rgz.reproject_to(ir, ir_wcs, radio_wcs, (100, 100))
    assert out.shape == (100, 100) and out.dtype == np.float32
    y, x = np.unravel_index(np.nanargmax(out), out.shape)
    assert (x, y) == (55, 43)
    assert np.isnan(out[:, -3:]).all()  # not covered by the infrared image
    same = rgz.reproject_to(ir, radio_wcs, radio_wcs, (100, 100))
    np.testing.assert_array_equal(same, ir)


# ---------------------------------------------------------------------------------------------
# world coordinates
# ---------------------------------------------------------------------------------------------

def test_pixel_boxes_to_world_matches_skycoord(tmp_path):
    p = write_raw_fits(tmp_path / "w.fits", np.zeros((100, 100), np.float32), extra_cards=TAB_CARDS,
                       wcs_kw={"crpix": (41.0, 61.0), "crval": (200.0, 35.0)})
    _, wcs, _ = rgz.read_fits(p)
    boxes = np.array([[40.0, 60.0, 41.0, 61.0], [10.0, 20.0, 31.0, 27.0], [0.0, 0.0, 100.0, 100.0]])
    ra, dec = rgz.pixel_boxes_to_world(boxes, wcs)
    # the single pixel at CRPIX (1-based 41, 61 -> 0-based 40, 60) is exactly CRVAL
    assert ra[0] == pytest.approx(200.0, abs=1e-12) and dec[0] == pytest.approx(35.0, abs=1e-12)
    for (x1, y1, x2, y2), r, d in zip(boxes, ra, dec):
        sky = wcs.pixel_to_world((x1 + x2) / 2 - 0.5, (y1 + y2) / 2 - 0.5)
        assert abs(sky.ra.deg - r) < 1e-9 and abs(sky.dec.deg - d) < 1e-9
    ra0, _ = rgz.pixel_boxes_to_world(boxes[:1], wcs, pixel_centre_offset=0.0)
    assert abs(ra0[0] - 200.0) > 1e-5  # the half pixel matters


@needs_mirabest
def test_pixel_boxes_to_world_on_real_header():
    arr, wcs, header = rgz.read_fits(MIRABEST_FILES[0])
    ra_c, dec_c = rgz.pixel_boxes_to_world([[0, 0, 300, 300]], wcs)
    assert ra_c[0] == pytest.approx(header["CRVAL1"], abs=1e-9) and dec_c[0] == pytest.approx(header["CRVAL2"], abs=1e-9)
    sky = wcs.pixel_to_world(149.5, 149.5)
    assert abs(sky.ra.deg - ra_c[0]) < 1e-9 and abs(sky.dec.deg - dec_c[0]) < 1e-9


# ---------------------------------------------------------------------------------------------
# COCO export
# ---------------------------------------------------------------------------------------------

def _check_coco(out: Path, summary: dict, n_images: int):
    from pycocotools.coco import COCO

    seen_images, seen_ann_ids = set(), set()
    for split in ("train", "test"):
        coco = COCO(str(out / "annotations" / f"instances_{split}.json"))
        assert [c["name"] for c in coco.loadCats(sorted(coco.getCatIds()))] == list(rgz.RGZ_CLASSES)
        assert sorted(coco.getCatIds()) == [1, 2, 3, 4, 5, 6]
        for name, cid in zip(rgz.RGZ_CLASSES, range(1, 7)):
            assert len(coco.getAnnIds(catIds=[cid])) == summary[split][name]
        assert len(coco.getImgIds()) == summary["images"][split]
        for img in coco.loadImgs(coco.getImgIds()):
            assert img["id"] not in seen_images
            seen_images.add(img["id"])
            assert (out / "images" / img["file_name"]).is_file()
            for a in coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]])):
                assert a["id"] not in seen_ann_ids
                seen_ann_ids.add(a["id"])
                x, y, w, h = a["bbox"]
                assert 0 <= x and 0 <= y and w > 0 and h > 0 and x + w <= img["width"] and y + h <= img["height"]
                assert a["iscrowd"] == 0 and a["area"] > 0
                assert a["segmentation"] and all(len(p) >= 6 and len(p) % 2 == 0 for p in a["segmentation"])
                m = coco.annToMask(a)
                assert m.shape == (img["height"], img["width"]) and m.sum() > 0
                assert abs(int(m.sum()) - a["area"]) <= 0.25 * a["area"] + 4
    assert len(seen_images) == n_images
    for k in rgz.RGZ_CLASSES:
        assert summary["total"][k] == summary["train"][k] + summary["test"][k]


@needs_mirabest
def test_build_coco_dataset_on_real_files(tmp_path):
    files = MIRABEST_FILES[:5]
    summary = rgz.build_coco_dataset(files, tmp_path / "coco", render="D1", test_fraction=0.2, seed=0)
    assert summary["images"] == {"train": 4, "test": 1} and not summary["failed"]
    _check_coco(tmp_path / "coco", summary, 5)
    # the counts are those of the derivation itself
    expect = {c: 0 for c in rgz.RGZ_CLASSES}
    n_skipped = 0
    for f in files:
        lab = rgz.derive_sources(rgz.read_fits(f)[0])
        for s in lab.sources:
            expect[s.class_name] += 1
        n_skipped += len(lab.skipped)
    assert summary["total"] == expect and len(summary["skipped"]) == n_skipped
    assert sum(expect.values()) > 0
    img = json.loads((tmp_path / "coco" / "annotations" / "instances_train.json").read_text())["images"][0]
    assert Path(img["fits_path"]).is_file() and img["width"] == img["height"] == 300


def test_build_coco_dataset_d3_d4_with_infrared(tmp_path):
    pytest.importorskip("reproject", reason=RADIO)  # the infrared grid is shifted: reprojected
    radio_dir, ir_dir = tmp_path / "radio", tmp_path / "ir"
    radio_dir.mkdir()
    ir_dir.mkdir()
    shape = (100, 100)
    for k in range(3):
        radio = noisy(shape, 1.0, seed=k) + gaussian(shape, 30 + 10 * k, 50, 40.0, 2.5) + gaussian(shape, 55 + 10 * k, 50, 40.0, 2.5)
        ir = noisy(shape, 1.0, seed=10 + k) + gaussian(shape, 50, 50, 50.0, 2.0)
        write_raw_fits(radio_dir / f"src{k}.fits", radio.astype(np.float32), extra_cards=TAB_CARDS)
        write_raw_fits(ir_dir / f"src{k}.fits", ir.astype(np.float32), wcs_kw={"crpix": (52.5, 50.5)})
    paths = sorted(radio_dir.glob("*.fits"))
    for render in ("D3", "D4"):
        out = tmp_path / render
        summary = rgz.build_coco_dataset(paths, out, render=render, ir_dir=ir_dir, test_fraction=0.34)
        assert summary["images"] == {"train": 2, "test": 1} and not summary["failed"]
        assert summary["total"]["2C_2P"] == 3
        _check_coco(out, summary, 3)
    with pytest.raises(ValueError, match="ir_dir"):
        rgz.build_coco_dataset(paths, tmp_path / "x", render="D3")


def test_make_rgz_dataset_cli(tmp_path):
    d = tmp_path / "fits"
    d.mkdir()
    shape = (80, 80)
    write_raw_fits(d / "a.fits", (noisy(shape) + gaussian(shape, 40, 40, 30.0, 2.5)).astype(np.float32), TAB_CARDS)
    write_raw_fits(d / "b.fits", (noisy(shape, seed=2) + gaussian(shape, 30, 40, 30.0, 2.5)
                                  + gaussian(shape, 50, 40, 30.0, 2.5)).astype(np.float32))
    write_raw_fits(d / "c.fits", None)  # no image: reported, not fatal
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "make_rgz_dataset.py"), str(d), str(tmp_path / "out"),
                        "--test-fraction", "0.5"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = {ln.split()[0]: ln.split()[1:] for ln in r.stdout.splitlines() if ln.strip()}
    assert lines["1C_1P"][2] == "1" and lines["2C_2P"][2] == "1" and lines["all"][2] == "2"
    assert "c.fits" in r.stdout and "no HDU with 2-D image data" in r.stdout
    assert (tmp_path / "out" / "annotations" / "instances_test.json").is_file()


# ---------------------------------------------------------------------------------------------
# embedded demo data (firstgalaxydata's packaged PNGs; never /work/shared)
# ---------------------------------------------------------------------------------------------

def test_build_demo_dataset(tmp_path):
    pytest.importorskip("firstgalaxydata", reason="the demo dataset is read from the firstgalaxydata package")
    a = rgz.build_demo_dataset(tmp_path / "a", n_images=8, size=150, seed=0)
    assert a["images"]["train"] + a["images"]["test"] == 8 and a["images"]["test"] >= 1
    assert sum(a["total"].values()) >= 8  # every demo image holds at least one labelled source
    _check_coco(tmp_path / "a", a, 8)
    imgs = json.loads((tmp_path / "a" / "annotations" / "instances_train.json").read_text())["images"]
    assert all(i["width"] == i["height"] == 150 and i["source"].startswith("firstgalaxydata:") for i in imgs)
    assert {i["morphology"] for i in imgs} <= set(rgz.DEMO_MORPHOLOGIES)
    # deterministic
    b = rgz.build_demo_dataset(tmp_path / "b", n_images=8, size=150, seed=0)
    for split in ("train", "test"):
        ja = (tmp_path / "a" / "annotations" / f"instances_{split}.json").read_text()
        jb = (tmp_path / "b" / "annotations" / f"instances_{split}.json").read_text()
        assert ja == jb
    assert a == b
