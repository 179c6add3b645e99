"""Gaussian fits of radio components (gluon_rcnn.radio.fitting): injected point and extended sources
on noise correlated over the beam (FIRST's rms, beam and pixels) are recovered within their
errors; errors scale with the noise; deconvolution inverts convolution; position angles are east of
north; the catalogue rows carry the fit in mJy, degrees and arcsec."""
import math

import numpy as np
import pytest

pytest.importorskip("astropy", reason="gluon_rcnn.radio needs the radio extra")
pytest.importorskip("scipy", reason="gluon_rcnn.radio needs the radio extra")

from astropy.wcs import WCS  # noqa: E402
from scipy import ndimage  # noqa: E402

from gluon_rcnn.radio.catalogue import measure_source, source_rows  # noqa: E402
from gluon_rcnn.radio.fitting import (FWHM, Beam, _cov, beam_from_header, condon_errors, deconvolve,  # noqa: E402
                                      sky_pa)

RMS, PIX = 1.5e-4, 1.8
BEAM = beam_from_header(5.4, 5.4, PIX)   # 3 px FWHM
SIZE = 48


def _stamp(rng, snr, ext_px=0.0, noise_scale=1.0, noise=None):
    """A source of peak ``snr`` x rms (intrinsic FWHM ``ext_px``) on beam-correlated noise: (image,
    x0, y0, injected flux in Jy, the noise)."""
    sb = BEAM.maj / FWHM
    if noise is None:
        n = ndimage.gaussian_filter(rng.normal(0, 1, (SIZE, SIZE)), sb / math.sqrt(2), mode="wrap")
        noise = n * (RMS / n.std())
    s = math.hypot(sb, ext_px / FWHM)
    x0, y0 = SIZE / 2 + rng.uniform(-0.5, 0.5), SIZE / 2 + rng.uniform(-0.5, 0.5)
    yy, xx = np.mgrid[:SIZE, :SIZE]
    img = noise_scale * noise + snr * RMS * np.exp(-((xx - x0) ** 2 + (yy - y0) ** 2) / (2 * s * s))
    return img.astype(np.float32), x0, y0, snr * RMS * 2 * math.pi * s * s / BEAM.area, noise


def _measure(img, rms=RMS):
    c = SIZE // 2
    return measure_source(img, (0, 0), (c - 10, c - 10, c + 10, c + 10), rms, beam=BEAM)


@pytest.mark.parametrize("snr, ext_px", [(50.0, 0.0), (30.0, 6.0)])
def test_fit_recovers_injected_flux_and_position(snr, ext_px):
    rng = np.random.default_rng(7)
    ratio, island, pulls, inside = [], [], [], 0
    n = 25
    for _ in range(n):
        img, x0, y0, flux, _ = _stamp(rng, snr, ext_px)
        m = _measure(img)
        assert m.n_components == 1 and m.fit.ok and m.fit.n_gauss == 1
        f = m.fit
        ratio.append(f.flux / BEAM.area / flux)
        island.append(m.flux / BEAM.area / flux)
        pulls.append((f.flux / BEAM.area - flux) / (f.e_flux / BEAM.area))
        inside += abs(f.x - x0) < 3 * f.e_x and abs(f.y - y0) < 3 * f.e_y
    # fitted flux: unbiased (the median of 25 within 3 sigma of the mean error), within 3 errors each
    e_rel = np.median(np.abs(np.array(ratio) - 1) / np.abs(pulls))
    assert abs(np.median(ratio) - 1) < 3 * 1.25 * e_rel / math.sqrt(n), (np.median(ratio), e_rel)
    assert max(abs(p) for p in pulls) < 3.0 and 0.3 < np.median(np.abs(pulls)) < 1.0  # 0.674 for exact errors
    assert inside >= 0.8 * n
    # the island sum keeps the flux inside the 3*sqrt(3) rms contour: for a Gaussian of peak A,
    # 1 - 3*sqrt(3) rms / A of it (noise blurs the contour: 0.03)
    assert np.median(island) == pytest.approx(1 - 3 * math.sqrt(3) / snr, abs=0.03)
    # sizes: a point source is the beam; the extended one deconvolves to its intrinsic size
    if ext_px == 0:
        assert m.fit.maj == pytest.approx(BEAM.maj, abs=5 * m.fit.e_maj)
    else:
        assert m.fit.resolved and m.fit.deconv_maj == pytest.approx(ext_px, rel=0.2)


def test_errors_scale_with_noise():
    e1 = condon_errors(1e-3, 4.0, 3.2, 0.4, 1e-4, BEAM)
    e2 = condon_errors(1e-3, 4.0, 3.2, 0.4, 2e-4, BEAM)
    for k in e1:  # Condon's errors are proportional to rms / peak
        assert e2[k] == pytest.approx(2 * e1[k] if k != "theta" else min(2 * e1[k], math.pi), rel=1e-12)
    # the fit of one source on the same noise, scaled by 2: errors twice as large (the fitted sizes move a little)
    rng = np.random.default_rng(3)
    img1, x0, y0, flux, noise = _stamp(rng, 80.0)
    rng = np.random.default_rng(3)
    img2, *_ = _stamp(rng, 80.0, noise_scale=2.0, noise=noise)
    f1, f2 = _measure(img1).fit, _measure(img2, 2 * RMS).fit
    for a, b in ((f1.e_flux, f2.e_flux), (f1.e_peak, f2.e_peak), (f1.e_x, f2.e_x), (f1.e_maj, f2.e_maj)):
        assert 1.8 < b / a < 2.2


def test_deconvolution_inverts_convolution():
    beam = Beam(3.0, 2.4, 1.2)
    for maj, mn, th in ((4.0, 2.0, 0.3), (6.0, 5.0, 2.0), (3.0, 1.0, 0.0)):
        conv = _cov(maj, mn, th) + _cov(beam.maj, beam.min, beam.theta)  # FWHMs add in quadrature, as covariances
        w, v = np.linalg.eigh(conv)
        got = deconvolve(math.sqrt(w[1]), math.sqrt(w[0]), math.atan2(v[1, 1], v[0, 1]), beam)
        assert got[0] == pytest.approx(maj, rel=1e-9) and got[1] == pytest.approx(mn, rel=1e-9)
        d = (got[2] - th) % math.pi
        assert min(d, math.pi - d) < 1e-9
    assert deconvolve(beam.maj, beam.min, beam.theta, beam)[:2] == pytest.approx((0.0, 0.0), abs=1e-6)
    assert deconvolve(2.0, 1.0, 0.0, beam)[:2] == (0.0, 0.0)  # smaller than the beam: unresolved


def _wcs():
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval, w.wcs.crpix, w.wcs.cdelt = [150.0, 20.0], [SIZE / 2 + 0.5, SIZE / 2 + 0.5], [-PIX / 3600, PIX / 3600]
    return w


def test_position_angle_east_of_north():
    w = _wcs()
    x = y = SIZE / 2 - 0.5  # the tangent point: north is +y, east -x exactly
    for theta, pa in ((math.pi / 2, 0.0), (0.0, 90.0), (3 * math.pi / 4, 45.0), (math.pi / 4, 135.0)):
        got = sky_pa(w, x, y, theta)
        assert 0 <= got < 180 and min(abs(got - pa), 180 - abs(got - pa)) < 1e-5, (theta, got)


def test_catalogue_rows_carry_the_fit():
    rng = np.random.default_rng(11)
    img, x0, y0, flux, _ = _stamp(rng, 60.0, 6.0)
    m = _measure(img)
    w = _wcs()
    row, comps = source_rows(m, file="f.fits", class_name="1C_1P", score=1.0, probs=None, classes=("1C_1P",),
                             box_grid=(14, 14, 34, 34), to_input=lambda x, y: (x, y), wcs=w, beam_area_pix=BEAM.area,
                             rms=m.rms, pixel_scale=PIX, flags=0)
    assert row["fit_ok"] and row["n_gauss"] == 1 and row["resolved"] and len(comps) == 1
    assert abs(row["int_flux_mjy"] - 1e3 * flux) < 3 * row["e_int_flux_mjy"]
    assert row["island_flux_mjy"] < row["int_flux_mjy"]
    assert row["peak_flux_mjy"] == pytest.approx(1e3 * 60 * RMS, rel=0.1)
    ra, dec = w.pixel_to_world_values(x0, y0)
    assert abs(row["ra_fit_deg"] - ra) * 3600 * math.cos(math.radians(dec)) < 3 * row["e_ra_arcsec"]
    assert abs(row["dec_fit_deg"] - dec) * 3600 < 3 * row["e_dec_arcsec"]
    assert row["maj_arcsec"] == pytest.approx(PIX * math.hypot(6.0, 3.0), rel=0.1)
    assert row["deconv_maj_arcsec"] == pytest.approx(PIX * 6.0, rel=0.2)
    for c in ("int_flux_mjy", "e_int_flux_mjy", "maj_arcsec", "pa_deg"):  # one component: the same numbers
        assert comps[0][c] == pytest.approx(row[c], rel=1e-12, nan_ok=True)
