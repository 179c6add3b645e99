"""Prediction at the scale the model was trained at: tiles, pixel scale and resolution (gluon_rcnn.radio.survey)."""
from __future__ import annotations

import math

import numpy as np
import pytest

pytest.importorskip("astropy")
pytest.importorskip("reproject")

from gluon_rcnn.radio.fits import FITSError  # noqa: E402
from gluon_rcnn.radio.survey import (DEFAULT_OVERLAP, DEFAULT_TILE, SURVEYS, ModelDetector, ModelScale,  # noqa: E402
                                     SurveyGrid, TruthDetector, model_scale, predict_fits, scale_defaults)
from gluon_rcnn.structures.categories import RGZ_CLASSES  # noqa: E402

CLARAN = ModelScale(180.0 / 132, 132, 5.4)  # 3' cutouts of 132 px, FIRST's beam
FWHM = 2.0 * math.sqrt(2.0 * math.log(2.0))


def write_fits(path, data, pixel_arcsec, beam=None, bpa=0.0):
    from astropy.io import fits
    from astropy.wcs import WCS
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [150.0, 30.0]
    w.wcs.crpix = [data.shape[1] / 2 + 0.5, data.shape[0] / 2 + 0.5]
    w.wcs.cdelt = [-pixel_arcsec / 3600, pixel_arcsec / 3600]
    h = w.to_header()
    h["BUNIT"] = "Jy/beam"
    if beam:
        h["BMAJ"], h["BMIN"], h["BPA"] = beam[0] / 3600, beam[1] / 3600, bpa
    fits.PrimaryHDU(np.asarray(data, np.float32), header=h).writeto(path)
    return path


def point_source(shape, x, y, peak, bmaj_px, bmin_px=None, bpa_deg=0.0):
    """A point source as a beam of the given FWHM (pixels), BPA east of north (north +y, east -x)."""
    bmin_px = bmaj_px if bmin_px is None else bmin_px
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float64)
    t = math.radians(bpa_deg)
    u = np.array([-math.sin(t), math.cos(t)])  # major axis on the grid
    v = np.array([math.cos(t), math.sin(t)])
    dx, dy = xx - x, yy - y
    a, b = dx * u[0] + dy * u[1], dx * v[0] + dy * v[1]
    return peak * np.exp(-0.5 * ((a / (bmaj_px / FWHM)) ** 2 + (b / (bmin_px / FWHM)) ** 2))


def moments(img, x, y, r=20):
    c = img[int(y) - r:int(y) + r + 1, int(x) - r:int(x) + r + 1].astype(np.float64)
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1].astype(np.float64)
    s = c.sum()
    return (c * xx * xx).sum() / s, (c * yy * yy).sum() / s, (c * xx * yy).sum() / s


# ------------------------------------------------------------------------------------------ scale of a model
def test_the_claran_entries_record_claran_scale_and_others_none():
    from gluon_rcnn.model_zoo import get_config
    for name in ("faster_rcnn_fpn_resnet50_v1b_rgz", "mask_rcnn_fpn_resnet50_v1b_rgz"):
        sc = model_scale(type("M", (), {"config": get_config(name)})())
        assert sc.tile == 132 and sc.beam == 5.4 and sc.pixel_scale == pytest.approx(180.0 / 132, rel=1e-15)
    assert model_scale(type("M", (), {"config": get_config("faster_rcnn_fpn_resnet18_v1b_rgz")})()) == ModelScale()
    assert model_scale(object()) == ModelScale()


def test_scale_defaults_follow_the_model_unless_told():
    det = type("D", (), {"scale": CLARAN})()
    assert scale_defaults(det) == (132, 66, CLARAN.pixel_scale, 5.4)  # overlap: 96, at most half the tile
    assert scale_defaults(det, tile=200, overlap=10, pixel_scale=1.8, model_beam=0) == (200, 10, 1.8, None)
    assert scale_defaults(TruthDetector([], [], RGZ_CLASSES)) == (DEFAULT_TILE, DEFAULT_OVERLAP, None, None)


class _Spy:
    """A tile detector with a model's scale: records what it is given, detects nothing."""
    classes = RGZ_CLASSES

    def __init__(self, scale):
        self.scale = scale
        self.shapes, self.tiles = [], []

    def __call__(self, images, tiles):
        self.shapes += [im.shape for im in images]
        self.tiles += list(tiles)
        return [{"boxes": np.zeros((0, 4)), "scores": np.zeros(0), "labels": np.zeros(0, int)} for _ in images]


def test_a_first_image_is_tiled_at_claran_scale(tmp_path):
    """A 300 px FIRST image (1.8"/px) for a ClaRAN model: regridded to 1.36"/px (396 px), 132 px tiles
    every 66 px, every rendering 132 x 132 (the model resizes it to 600: 3' -> 600 px as in training)."""
    rng = np.random.default_rng(0)
    path = write_fits(tmp_path / "first.fits", rng.normal(0, 1e-4, (300, 300)), 1.8, beam=(5.4, 5.4))
    spy = _Spy(CLARAN)
    res = next(predict_fits(spy, [path], fit=False))
    assert res.grid_info["pixel_scale"] == pytest.approx(180.0 / 132)
    assert res.shape == (396, 396)  # 300 x 1.8 / (180 / 132) = 396 exactly
    assert set(spy.shapes) == {(132, 132, 3)}
    assert sorted({t.x0 for t in spy.tiles}) == [0, 66, 132, 198, 264]
    # a model recording no scale: 300 px tiles at the survey's pixel scale, as before
    spy0 = _Spy(ModelScale())
    res0 = next(predict_fits(spy0, [path], fit=False))
    assert res0.shape == (300, 300) and spy0.shapes == [(300, 300, 3)]


def test_model_detector_pads_small_renderings_to_its_tile():
    torch = pytest.importorskip("torch")
    from gluon_rcnn.config import get_default_config

    class Fake(torch.nn.Module):
        classes = RGZ_CLASSES

        def __init__(self):
            super().__init__()
            self.config = get_default_config()
            self.config.RADIO.TILE = 132
            self.seen = []

        def forward(self, images):
            self.seen += [tuple(im.shape) for im in images]
            return [{"boxes": torch.tensor([[100.0, 5.0, 131.0, 120.0]]), "scores": torch.tensor([0.9]),
                     "labels": torch.tensor([1]), "class_probs": torch.full((1, 7), 1 / 7)} for _ in images]

    det = ModelDetector(Fake(), score_thresh=0.5)
    assert det.scale == ModelScale(None, 132, None)
    out = det([np.full((90, 110, 3), 7, np.uint8), np.zeros((132, 132, 3), np.uint8)])
    assert det.model.seen == [(3, 132, 132), (3, 132, 132)]
    np.testing.assert_array_equal(out[0]["boxes"], [[100, 5, 110, 90]])  # clipped to the rendering
    np.testing.assert_array_equal(out[1]["boxes"], [[100, 5, 131, 120]])


# ------------------------------------------------------------------------------------------- resolution
def test_survey_presets():
    assert (SURVEYS["FIRST"].pixel_scale, SURVEYS["FIRST"].bmaj) == (1.8, 5.4)
    assert (SURVEYS["NVSS"].pixel_scale, SURVEYS["NVSS"].bmaj) == (15.0, 45.0)
    assert (SURVEYS["VLASS"].pixel_scale, SURVEYS["VLASS"].bmaj) == (1.0, 2.5)
    assert (SURVEYS["LOTSS"].pixel_scale, SURVEYS["LOTSS"].bmaj) == (1.5, 6.0)


@pytest.mark.parametrize("beam,bpa", [((2.5, 2.5), 0.0), ((4.0, 2.0), 30.0), ((4.0, 2.0), -70.0)])
def test_a_sharper_input_is_convolved_to_the_model_beam(tmp_path, beam, bpa):
    """A point source (peak 10 mJy/beam) in a VLASS-like image (1"/px) seen by a FIRST-trained model
    (5.4"): circular 5.4" FWHM whatever the input beam's shape and angle, peak still 10 mJy/beam (a
    point source's peak per beam is its flux). Tolerance: the kernel is cut at 4 sigma (astropy's
    default size), a relative 3e-4 of its mass (exp(-8)); moments over a 41 px box lose less."""
    shape, x, y = (120, 120), 60.0, 60.0
    img = point_source(shape, x, y, 0.010, beam[0], beam[1], bpa)
    path = write_fits(tmp_path / "vlass.fits", img, 1.0, beam=beam, bpa=bpa)
    with SurveyGrid(path, survey="VLASS", pixel_scale=1.0, model_beam=5.4) as g:
        assert g.kernel is not None and g.kernel_gain == pytest.approx(5.4 ** 2 / (beam[0] * beam[1]))
        v = g.view(0, shape[0], 0, shape[1])
        np.testing.assert_array_equal(g.section(0, 120, 0, 120), img.astype(np.float32))  # measurements: native
        # tiles join seamlessly: a tile's view is the whole view's crop
        np.testing.assert_allclose(g.view(30, 90, 20, 75), v[30:90, 20:75], rtol=1e-6, atol=1e-9)
    assert v[60, 60] == pytest.approx(0.010, rel=1e-3)
    sxx, syy, sxy = moments(v, x, y)
    want = (5.4 / FWHM) ** 2
    assert sxx == pytest.approx(want, rel=2e-3) and syy == pytest.approx(want, rel=2e-3)
    assert abs(sxy) < 2e-3 * want


def test_same_resolution_is_left_alone_and_a_coarser_one_refused(tmp_path):
    img = point_source((60, 60), 30, 30, 0.01, 3.0)
    p = write_fits(tmp_path / "first.fits", img, 1.8, beam=(5.4, 5.4))
    with SurveyGrid(p, pixel_scale=1.8, model_beam=5.4) as g:
        assert g.kernel is None
        np.testing.assert_array_equal(g.view(0, 60, 0, 60), g.section(0, 60, 0, 60))
    nvss = write_fits(tmp_path / "nvss.fits", img, 15.0, beam=(45.0, 45.0))
    with pytest.raises(FITSError, match=r"nvss.fits: its resolution \(45.*coarser than the model's \(5.4"):
        SurveyGrid(nvss, survey="NVSS", pixel_scale=1.8, model_beam=5.4)
    # refused in a run too, naming the file; resolution matching off on request
    spy = _Spy(ModelScale(1.8, 60, 5.4))
    with pytest.raises(FITSError, match="coarser"):
        next(predict_fits(spy, [nvss], survey="NVSS", fit=False))
    assert next(predict_fits(spy, [nvss], survey="NVSS", fit=False, model_beam=0)).error is None
    # no header beam: the survey preset's (LoTSS 6") decides
    lotss = write_fits(tmp_path / "lotss.fits", img, 1.5)
    with pytest.raises(FITSError, match=r"6\" x 6\" beam, LoTSS default"):
        SurveyGrid(lotss, survey="LoTSS", pixel_scale=1.8, model_beam=5.4)


def test_a_converted_claran_checkpoint_records_claran_scale():
    pytest.importorskip("torch")
    from gluon_rcnn.convert.tensorpack import tensorpack_config
    c = tensorpack_config("ClaRAN-v0.2-FasterRCNN-R50FPN")
    assert model_scale(type("M", (), {"config": c})()) == CLARAN
    assert c.PREPROC.TEST_SHORT_EDGE_SIZE == 600  # the model resizes the 132 px tile to 600, as ClaRAN
