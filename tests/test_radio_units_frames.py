"""Brightness units (BUNIT) and sky frames of FITS inputs (gluon_rcnn.radio): the same image in
mJy/beam, or with its WCS in Galactic or FK4 B1950 coordinates, gives the same catalogue rows (ICRS
positions, fluxes in mJy); units that cannot become a flux density are refused naming the file, HDU
and keyword; every output says its frame (FITS RADESYS, VOTable COOSYS, DS9 icrs)."""
import warnings

import numpy as np
import pytest

from conftest import MIRABEST, need_first_fits

pytest.importorskip("astropy", reason="gluon_rcnn.radio needs the radio extra")
pytest.importorskip("reproject", reason="gluon_rcnn.radio needs the radio extra")

from astropy.coordinates import FK4, SkyCoord  # noqa: E402
from astropy.io import fits  # noqa: E402
from astropy.table import Table  # noqa: E402
from astropy.wcs import WCS  # noqa: E402

from radio_synth import first_like_header, gaussian_sources, max_sky_difference_arcsec, reframe_header  # noqa: E402

from gluon_rcnn.radio import RGZ_CLASSES, derive_sources  # noqa: E402
from gluon_rcnn.radio.coords import iau_name  # noqa: E402
from gluon_rcnn.radio.fits import FITSError, FITSUnitWarning, jy_per_beam_factor, read_fits  # noqa: E402
from gluon_rcnn.radio.survey import TruthDetector, predict_fits, predict_mosaic, provenance, write_results  # noqa: E402

REAL = ["100_150.470-000.878_0.1364_0124.24", "100_161.928+043.781_0.0858_0112.61",
        "100_213.808-001.618_0.1496_0108.03"]  # MiraBest cutouts (FK5 J2000, JY/BEAM)
F32_REL = 1e-5  # a value x 1000 stored as float32 and scaled back: ~1e-7 per pixel; sums of islands stay below this


# ---------------------------------------------------------------------------------------------
# BUNIT parsing
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("text, factor", [("JY/BEAM", 1.0), ("Jy/beam", 1.0), ("Jy / Beam", 1.0), ("jy beam-1", 1.0),
                                          ("mJy/beam", 1e-3), ("mjy/beam", 1e-3), ("uJy/beam", 1e-6),
                                          ("UJY/BEAM", 1e-6), ("JY/BM", 1.0)])
def test_bunit_variants(text, factor):
    h = fits.Header()
    h["BUNIT"] = text
    f, unit, source = jy_per_beam_factor(h, "x.fits, HDU 0")
    assert f == pytest.approx(factor, rel=1e-12) and source == "BUNIT"


@pytest.mark.parametrize("text, why", [("K", "brightness temperature"), ("MJy/sr", "per steradian"),
                                       ("Jy/sr", "BMAJ/BMIN"), ("Jy/pixel", "per pixel"), ("MJY/BEAM", "ambiguous"),
                                       ("counts", "unknown unit"), ("W/m2", "not a flux density per beam")])
def test_unusable_units_name_file_hdu_keyword(text, why):
    h = fits.Header()
    h["BUNIT"] = text
    with pytest.raises(FITSError, match=why) as e:
        jy_per_beam_factor(h, "img.fits, HDU 2")
    assert "img.fits, HDU 2" in str(e.value) and "BUNIT" in str(e.value) and repr(text) in str(e.value)


def test_per_steradian_and_per_pixel_with_the_header_beam():
    """Jy/sr and Jy/pixel become Jy/beam with the image's own beam: Omega_beam = pi bmaj bmin / 4 ln 2."""
    h = fits.Header()
    h["BUNIT"] = "MJy/sr"
    omega_sr = np.pi * 5.4 * 5.4 / (4 * np.log(2)) / 206264.80624709636 ** 2
    f, _, _ = jy_per_beam_factor(h, "x", beam_arcsec=(5.4, 5.4), beam_in_header=True)
    assert f == pytest.approx(1e6 * omega_sr, rel=1e-12)
    h["BUNIT"] = "Jy/pixel"
    f, _, _ = jy_per_beam_factor(h, "x", beam_arcsec=(5.4, 5.4), beam_in_header=True, pixel_scale_arcsec=1.8)
    assert f == pytest.approx(np.pi * 5.4 * 5.4 / (4 * np.log(2)) / 1.8 ** 2, rel=1e-12)  # the beam in pixels


# ---------------------------------------------------------------------------------------------
# copies of one image: units and frames
# ---------------------------------------------------------------------------------------------

def _write(path, data, header):
    fits.PrimaryHDU(np.asarray(data, np.float32), header=header).writeto(path, overwrite=True)
    return path


def _copies(tmp_path, data, header):
    """The image, its mJy/beam copy, and Galactic and FK4 B1950 copies (same pixels: only the header's
    frame changes, see radio_synth.reframe_header); returns paths and each frame copy's own error."""
    out = {"orig": _write(tmp_path / "orig.fits", data, header)}
    h = header.copy()
    h["BUNIT"] = "mJy/beam"
    out["mjy"] = _write(tmp_path / "mjy.fits", np.asarray(data, np.float32) * np.float32(1000), h)
    errs = {}
    for key, frame in (("gal", "galactic"), ("fk4", FK4(equinox="B1950"))):
        hf = reframe_header(header, frame)
        errs[key] = max_sky_difference_arcsec(header, hf, data.shape)
        out[key] = _write(tmp_path / f"{key}.fits", data, hf)
    return out, errs


def _truth(data):
    lab = derive_sources(np.asarray(data, np.float64))
    src = lab.sources + lab.skipped
    return TruthDetector([s.box for s in src], [s.category_id or 1 for s in src], RGZ_CLASSES)


def _flux_columns(row):
    return [c for c in ("island_flux_mjy", "int_flux_mjy", "island_peak_mjy", "peak_flux_mjy", "rms_mjy") if c in row]


def _compare(paths, errs, det, report=None, min_rows=1):
    """Every copy gives the original's rows: same boxes, classes, names; ICRS positions within the
    copy's own frame error (+1 uas of arithmetic); fluxes equal (same pixels) or within float32
    rounding (the mJy/beam copy)."""
    res = {k: predict_mosaic(det, p) for k, p in paths.items()}
    base = sorted(res["orig"].rows, key=lambda r: (r["x1"], r["y1"]))
    assert len(base) >= min_rows
    for key, r in res.items():
        rows = sorted(r.rows, key=lambda q: (q["x1"], q["y1"]))
        assert [(q["x1"], q["y1"], q["x2"], q["y2"], q["class"]) for q in rows] == \
               [(q["x1"], q["y1"], q["x2"], q["y2"], q["class"]) for q in base], key
        a = SkyCoord([q["ra_deg"] for q in rows], [q["dec_deg"] for q in rows], unit="deg")
        b = SkyCoord([q["ra_deg"] for q in base], [q["dec_deg"] for q in base], unit="deg")
        sep = a.separation(b).arcsec
        tol = errs.get(key, 0.0) + 1e-6
        assert sep.max() <= tol, (key, sep.max(), tol)
        for q, p in zip(rows, base):  # a fit that failed on the original fails on the copy too
            assert [np.isfinite(q[c]) for c in _flux_columns(p)] == [np.isfinite(p[c]) for c in _flux_columns(p)]
        rel = max(abs(q[c] / p[c] - 1) for q, p in zip(rows, base) for c in _flux_columns(p)
                  if np.isfinite(p[c]) and p[c])
        assert rel <= (F32_REL if key == "mjy" else 1e-12), (key, rel)
        for q in rows:  # IAU names from the ICRS position
            assert q["name"] == iau_name([q["ra_deg"]], [q["dec_deg"]])[0]
        if key in ("orig", "mjy"):
            assert [q["name"] for q in rows] == [q["name"] for q in base]
        if report is not None:
            report.append(f"{key}: {len(rows)} rows, max position difference {sep.max():.2e} arcsec, "
                          f"max relative flux difference {rel:.2e}, frame {r.grid_info['frame']}, "
                          f"BUNIT {r.grid_info['bunit']}")
    return res


def test_synthetic_first_like_copies_agree(tmp_path):
    data, srcs = gaussian_sources()
    header = first_like_header(data.shape)
    paths, errs = _copies(tmp_path, data, header)
    assert errs["gal"] < 1e-6 and errs["fk4"] < 0.01  # the copies describe the same sky (FK4: E-terms)
    report = []
    res = _compare(paths, errs, _truth(data), report, min_rows=5)
    print("\n".join(report))
    assert res["gal"].grid_info["frame"] == "Galactic" and res["fk4"].grid_info["frame"] == "FK4 B1950.000"
    assert res["orig"].grid_info["frame"] == "FK5 J2000.000" and res["mjy"].grid_info["bunit"] == "mJy / beam"
    # the positions are ICRS: the injected sources' ICRS positions (the original WCS, FK5 -> ICRS)
    truth = WCS(header).pixel_to_world([s[0] for s in srcs], [s[1] for s in srcs]).icrs
    got = SkyCoord([r["ra_deg"] for r in res["gal"].rows], [r["dec_deg"] for r in res["gal"].rows], unit="deg")
    idx, sep, _ = truth.match_to_catalog_sky(got)
    lone = [0, 1, 2, 5]  # not the close pair (3, 4), catalogued as one double source
    assert (sep.arcsec[lone] < 0.5).all(), sep.arcsec  # centroids of S/N >= 33 sources, 1.8" pixels
    # the copies' pixel axes are the original's on the sky: ICRS north up (FK5 -> ICRS: a 0.02" frame tie)
    for key in ("orig", "gal", "fk4"):
        assert all(min(r["box_pa_deg"], 360 - r["box_pa_deg"]) < 1e-3 for r in res[key].rows), key


@pytest.mark.parametrize("name", REAL)
def test_real_first_cutout_mjy_and_galactic_copies(tmp_path, name):
    """A real FIRST cutout, its mJy/beam copy and its Galactic and FK4 copies: the same rows,
    positions within 0.1" (here within each copy's frame error), fluxes within 0.1% (float32)."""
    src = need_first_fits(MIRABEST / f"{name}.fits")
    data, _, header = read_fits(src)
    keep = fits.Header()
    for k in ("CTYPE1", "CTYPE2", "CRVAL1", "CRVAL2", "CRPIX1", "CRPIX2", "CDELT1", "CDELT2", "RADESYS", "EQUINOX",
              "BUNIT"):
        keep[k] = header[k]
    paths, errs = _copies(tmp_path, data, keep)
    report = []
    _compare(paths, errs, _truth(data), report)
    print("\n".join(report))
    assert max(errs.values()) < 0.1


def test_missing_bunit_is_assumed_with_a_warning(tmp_path):
    data, _ = gaussian_sources(seed=1)
    h = first_like_header(data.shape)
    del h["BUNIT"]
    p = _write(tmp_path / "nobunit.fits", data, h)
    with pytest.warns(FITSUnitWarning, match=r"nobunit.fits, HDU 0: no BUNIT keyword: assuming Jy/beam"):
        res = predict_mosaic(_truth(data), p)
    assert res.grid_info["unit_source"] == "assumed" and len(res.rows) >= 3
    _, bad = write_results(iter([res]), tmp_path / "cat", RGZ_CLASSES, provenance(), formats=("fits",))
    t = Table.read(tmp_path / "cat.fits")
    assert t.meta["UNITSRC"] == "assumed" and t.meta["INBUNIT"] == "Jy / beam"


@pytest.mark.parametrize("bunit, why", [("K", "brightness temperature"), ("MJy/sr", "per steradian")])
def test_unusable_bunit_refused_by_prediction(tmp_path, bunit, why):
    data, _ = gaussian_sources(seed=2)
    h = first_like_header(data.shape)
    h["BUNIT"] = bunit
    p = tmp_path / "img.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(data, header=h)]).writeto(p)
    with pytest.raises(FITSError, match=why) as e:
        predict_mosaic(TruthDetector([], [], RGZ_CLASSES), p)
    assert f"{p}, HDU 1, keyword BUNIT = {bunit!r}" in str(e.value)


def test_jy_per_sr_with_a_header_beam_gives_the_jy_per_beam_fluxes(tmp_path):
    data, _ = gaussian_sources(seed=3)
    h = first_like_header(data.shape)
    h["BMAJ"] = h["BMIN"] = 5.4 / 3600
    a = _write(tmp_path / "jyb.fits", data, h)
    omega = np.pi * 5.4 ** 2 / (4 * np.log(2)) / 206264.80624709636 ** 2
    h2 = h.copy()
    h2["BUNIT"] = "Jy/sr"
    b = _write(tmp_path / "jysr.fits", np.asarray(data, np.float64) / omega, h2)
    det = _truth(data)
    ra, rb = predict_mosaic(det, a).rows, predict_mosaic(det, b).rows
    assert len(ra) == len(rb) >= 3
    for p, q in zip(ra, rb):
        for c in _flux_columns(p):
            if p[c]:
                assert q[c] == pytest.approx(p[c], rel=F32_REL), c


def test_outputs_record_the_frame(tmp_path):
    """Galactic input: the catalogue is ICRS in every format (FITS RADESYS, VOTable COOSYS referenced
    by the position FIELDs, DS9 'icrs' with boxes turned by box_pa_deg); the input frame in INFRAME."""
    from astropy.io.votable import parse

    data, _ = gaussian_sources(seed=4)
    h = first_like_header(data.shape)  # a Galactic image, north up in Galactic coordinates
    h["CTYPE1"], h["CTYPE2"], h["CRVAL1"], h["CRVAL2"] = "GLON-TAN", "GLAT-TAN", 30.0, 5.0
    del h["RADESYS"], h["EQUINOX"]
    p = _write(tmp_path / "gal.fits", data, h)
    _, bad = write_results(predict_fits(_truth(data), [p]), tmp_path / "cat", RGZ_CLASSES, provenance())
    hdr = fits.getheader(tmp_path / "cat.fits", 1)
    assert hdr["RADESYS"] == "ICRS" and hdr["INFRAME"] == "Galactic" and "EQUINOX" not in hdr
    vo = parse(str(tmp_path / "cat.vot"))
    coosys = vo.resources[0].coordinate_systems
    assert [(c.ID, c.system) for c in coosys] == [("icrs", "ICRS")]
    refs = {f.name: f.ref for f in vo.get_first_table().fields}
    assert refs["ra_deg"] == refs["dec_deg"] == refs["box_ra_deg"] == "icrs" and refs["x_cen"] is None
    reg = (tmp_path / "cat.reg").read_text().splitlines()
    assert reg[2] == "icrs" and not any("fk5" in line for line in reg)
    t = Table.read(tmp_path / "cat.fits")
    boxes = [line for line in reg if line.startswith("box(")]
    assert len(boxes) == len(t) >= 3
    w = WCS(h)
    for line, r in zip(boxes, t):  # the box angle: the ICRS position angle of the image's +y axis
        x, y = (r["x1"] + r["x2"]) / 2, (r["y1"] + r["y2"]) / 2
        want = w.pixel_to_world(x, y).icrs.position_angle(w.pixel_to_world(x, y + 1).icrs).deg % 360
        assert abs(float(line.split(")")[0].split(",")[-1]) - want) < 1e-3 and abs(r["box_pa_deg"] - want) < 1e-6
        assert 1 < want < 359  # Galactic north is not ICRS north
    # the example: this image's reference pixel is ICRS (277.074, -0.321), not (30, 5)
    c = SkyCoord(30.0, 5.0, unit="deg", frame="galactic").icrs
    assert abs(c.ra.deg - 277.074) < 1e-3 and abs(c.dec.deg + 0.321) < 1e-3
    assert all(abs(r["ra_deg"] - 277.07) < 0.1 and abs(r["dec_deg"] + 0.32) < 0.1 for r in t)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the FITS header the catalogue writes is standard
        with fits.open(tmp_path / "cat.fits") as hdul:
            hdul.verify("exception")
