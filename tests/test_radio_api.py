"""Catalogue metadata and the notebook API (gluon_rcnn.radio): every column of the FITS and VOTable
catalogues has its unit, UCD and description (read back with astropy's Table.read); the beam is in
degrees; find_sources turns an HDU or an array + WCS into an astropy Table with a SkyCoord column;
crossmatch joins it with a user's catalogue."""
import numpy as np
import pytest

pytest.importorskip("astropy", reason="gluon_rcnn.radio needs the radio extra")
pytest.importorskip("reproject", reason="gluon_rcnn.radio needs the radio extra")

import astropy.units as u  # noqa: E402
from astropy.coordinates import SkyCoord  # noqa: E402
from astropy.io import fits  # noqa: E402
from astropy.io.votable.ucd import check_ucd  # noqa: E402
from astropy.table import Table  # noqa: E402
from astropy.wcs import WCS  # noqa: E402

from radio_synth import first_like_header, gaussian_sources  # noqa: E402

from gluon_rcnn.radio import RGZ_CLASSES, crossmatch, derive_sources, find_sources  # noqa: E402
from gluon_rcnn.radio.catalogue import COLUMN_META, column_meta, source_columns  # noqa: E402
from gluon_rcnn.radio.survey import TruthDetector, predict_fits, predict_mosaic, provenance, write_results  # noqa: E402


@pytest.fixture(scope="module")
def image():
    data, srcs = gaussian_sources(seed=7)
    header = first_like_header(data.shape)
    lab = derive_sources(np.asarray(data, np.float64))
    src = lab.sources + lab.skipped
    det = TruthDetector([s.box for s in src], [s.category_id or 1 for s in src], RGZ_CLASSES)
    return data, header, det


def test_every_column_has_unit_ucd_description_fits_and_votable(image, tmp_path):
    data, header, det = image
    path = tmp_path / "img.fits"
    fits.PrimaryHDU(data, header=header).writeto(path)
    paths, _ = write_results(predict_fits(det, [path], name_prefix="FIRST "), tmp_path / "cat", RGZ_CLASSES,
                             provenance(name_prefix="FIRST "), components=True)
    lines = []
    for suffix in ("cat.fits", "cat.vot", "cat_components.fits", "cat_components.vot"):
        t = Table.read(tmp_path / suffix)
        assert len(t) >= 3
        if suffix.startswith("cat."):
            assert t.colnames == source_columns(RGZ_CLASSES)
        for c in t.colnames:
            unit, ucd, desc = column_meta(c)
            assert t[c].meta.get("ucd") == ucd and check_ucd(ucd, check_controlled_vocabulary=True), (suffix, c, ucd)
            assert t[c].description and " ".join(t[c].description.split()) == desc, (suffix, c)  # VOTable wraps lines
            assert (t[c].unit is None) == (unit is None) and (unit is None or t[c].unit == u.Unit(unit)), (suffix, c)
        if suffix == "cat.fits":
            for c in t.colnames:
                lines.append(f"{c:18s} {str(t[c].unit or ''):9s} {t[c].meta['ucd']:40s} {t[c].description[:60]}")
    hdr = fits.getheader(tmp_path / "cat.fits", 1)
    names = [hdr[f"TTYPE{i}"] for i in range(1, hdr["TFIELDS"] + 1)]
    i = names.index("island_flux_mjy") + 1
    assert hdr[f"TUNIT{i}"] == "mJy" and hdr[f"TUCD{i}"] == "phot.flux.density;em.radio" and hdr[f"TCOMM{i}"]
    # the beam in degrees (FITS convention), the frame, the flux unit
    assert hdr["BMAJ"] == pytest.approx(5.4 / 3600) and hdr["BMIN"] == pytest.approx(5.4 / 3600) and hdr["BPA"] == 0
    assert hdr["RADESYS"] == "ICRS" and hdr["FLUXUNIT"] == "mJy"
    assert hdr["NAMEPFX"] == "FIRST"  # FITS drops trailing blanks
    assert all(str(n).startswith("FIRST J") for n in Table.read(tmp_path / "cat.fits")["name"])
    print("\nTable.read('cat.fits'): column, unit, UCD, description\n" + "\n".join(lines))
    vot = Table.read(tmp_path / "cat.vot")
    print("Table.read('cat.vot'): " + ", ".join(f"{c} [{vot[c].unit}] {vot[c].meta['ucd']}"
                                                for c in ("ra_deg", "dec_deg", "rms_mjy", "las_arcsec")))


def test_column_metadata_covers_the_columns():
    for c in source_columns(RGZ_CLASSES):
        column_meta(c)  # KeyError if a column has none
    with pytest.raises(KeyError, match="no unit/UCD/description"):
        column_meta("not_a_column")
    for c, (unit, ucd, desc) in COLUMN_META.items():
        assert check_ucd(ucd, check_controlled_vocabulary=True), (c, ucd)
        assert unit is None or u.Unit(unit) is not None
        assert len(desc) > 10


def test_find_sources_hdu_and_array_agree_with_the_file_pipeline(image, tmp_path):
    data, header, det = image
    path = tmp_path / "img.fits"
    fits.PrimaryHDU(data, header=header).writeto(path)
    file_rows = predict_mosaic(det, path).rows
    t = find_sources(fits.PrimaryHDU(data, header=header), model=det, name="img.fits")
    assert isinstance(t, Table) and isinstance(t["coord"], SkyCoord) and t["coord"].frame.name == "icrs"
    assert len(t) == len(file_rows) >= 3
    assert list(t["name"]) == [r["name"] for r in file_rows] and set(t["file"]) == {"img.fits"}
    np.testing.assert_array_equal(t["ra_deg"], [r["ra_deg"] for r in file_rows])
    np.testing.assert_array_equal(t["coord"].ra.deg, t["ra_deg"])
    assert t["ra_deg"].unit == u.deg and t.meta["INFRAME"] == "FK5 J2000.000" and t.meta["INBUNIT"] == "Jy / beam"
    assert len(t.meta["components"]) >= len(t)
    # an array in mJy/beam with a WCS object: the same sources and fluxes (float32 rounding)
    t2 = find_sources(np.asarray(data, np.float32) * np.float32(1000), wcs=WCS(header), unit="mJy/beam", model=det)
    assert list(t2["name"]) == list(t["name"]) and set(t2["file"]) == {"<array>"}
    np.testing.assert_allclose(t2["island_flux_mjy"], t["island_flux_mjy"], rtol=1e-5)
    with pytest.raises(ValueError, match="no celestial WCS"):
        find_sources(np.zeros((50, 50), np.float32), model=det)


def test_find_sources_with_a_gluon_rcnn_model(image):
    from gluon_rcnn import get_model

    data, header, _ = image
    model = get_model("faster_rcnn_fpn_resnet18_v1b_rgz", pretrained=None,
                      overrides=["TEST.RESULT_SCORE_THRESH=0.0", "TEST.RESULTS_PER_IM=3"])
    t = find_sources(fits.PrimaryHDU(data, header=header), model=model, score_thresh=0.0)
    assert 1 <= len(t) <= 3 and isinstance(t["coord"], SkyCoord)
    probs = np.stack([np.asarray(t[c]) for c in t.colnames if c.startswith("prob_")], 1)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)


def test_crossmatch_with_a_user_catalogue(image):
    data, header, det = image
    cat = find_sources(fits.PrimaryHDU(data, header=header), model=det)
    n = len(cat)
    # a user's catalogue (FK5 degrees, its own column names): the first source 1" away, the second 20"
    # away (beyond the radius), one unrelated entry
    c = cat["coord"]
    near = c[0].directional_offset_by(45 * u.deg, 1 * u.arcsec)
    far = c[1].directional_offset_by(0 * u.deg, 20 * u.arcsec)
    other = Table({"RAJ2000": [near.fk5.ra.deg, far.fk5.ra.deg, 10.0],
                   "DEJ2000": [near.fk5.dec.deg, far.fk5.dec.deg, -5.0],
                   "name": ["A", "B", "C"], "S1.4": [12.0, 3.0, 1.0]})
    m = crossmatch(cat, other, radius=5 * u.arcsec, frame="fk5")
    assert len(m) == n and "name_match" in m.colnames and "S1.4" in m.colnames
    assert m["name_match"][0] == "A" and m["match_sep_arcsec"][0] == pytest.approx(1.0, abs=1e-6)
    assert bool(m["name_match"].mask[1]) and bool(m["match_sep_arcsec"].mask[1])  # 20" > 5"
    assert int((~np.asarray(m["match_sep_arcsec"].mask)).sum()) == 1
    assert m["match_sep_arcsec"].unit == u.arcsec and m["match_sep_arcsec"].meta["ucd"] == "pos.angDistance"
    # a SkyCoord column and a radius in arcsec (a number)
    other2 = Table({"pos": SkyCoord([near.ra.deg], [near.dec.deg], unit="deg"), "id": [7]})
    m2 = crossmatch(cat, other2, radius=1.5)
    assert m2["id"][0] == 7 and int((~np.asarray(m2["id"].mask)).sum()) == 1
