"""Compressed and large FITS inputs (gluon_rcnn.radio): ``.fits.gz`` and tile-compressed ``.fz``
predict like ``.fits`` (through the predict command line); truncated compressed files are refused
naming the file; D3/D4 read the infrared image by sections (memory bounded by the tile)."""
import gzip
import shutil
import tracemalloc

import numpy as np
import pytest

from conftest import MIRABEST, need_first_fits

pytest.importorskip("astropy", reason="gluon_rcnn.radio needs the radio extra")
pytest.importorskip("reproject", reason="gluon_rcnn.radio needs the radio extra")

from astropy.io import fits  # noqa: E402
from astropy.table import Table  # noqa: E402
from astropy.wcs import WCS  # noqa: E402

from radio_synth import first_like_header, gaussian_sources  # noqa: E402

from gluon_rcnn.radio import RGZ_CLASSES  # noqa: E402
from gluon_rcnn.radio import derive_sources  # noqa: E402
from gluon_rcnn.radio.fits import FITSError, open_fits_image, read_fits  # noqa: E402
from gluon_rcnn.radio.render import infrared_section, reproject_to  # noqa: E402
from gluon_rcnn.radio.survey import TruthDetector, predict_fits, predict_mosaic  # noqa: E402


def _compressed_copies(src, folder):
    """``src`` (a .fits) as .fits.gz (gzip stream) and .fits.fz (lossless GZIP_2 tile compression, as
    ``fpack -g2 -q 0``: the same pixels), in ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = src.name[:-len(".fits")]
    plain = folder / src.name
    shutil.copyfile(src, plain)
    gz = folder / f"{stem}_gz.fits.gz"
    with open(src, "rb") as f, gzip.open(gz, "wb") as g:
        shutil.copyfileobj(f, g)
    fz = folder / f"{stem}_fz.fits.fz"
    data, _, header = read_fits(src)  # the header with SkyView's tab characters made printable
    fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(data, header=header, compression_type="GZIP_2",
                                                       quantize_level=0.0)]).writeto(fz)
    assert np.array_equal(fits.getdata(fz), fits.getdata(src))  # lossless
    return plain, gz, fz


def _synthetic(path):
    data, _ = gaussian_sources(seed=5)
    fits.PrimaryHDU(data, header=first_like_header(data.shape)).writeto(path)
    return path


def _cli_catalogue(files, out, capsys):
    from gluon_rcnn.cli.predict import main

    rc = main(["--model", "faster_rcnn_fpn_resnet18_v1b_rgz", "--random-weights", "--input", *map(str, files),
               "--output", str(out), "--device", "cpu", "--score-thresh", "0", "--config",
               "TEST.RESULT_SCORE_THRESH=0.0", "TEST.RESULTS_PER_IM=5", "--format", "fits", "--name-prefix", "FIRST"])
    assert rc == 0, capsys.readouterr().err
    return Table.read(out / "catalogue.fits")


def _same_catalogue(t, plain, others):
    """Rows of each compressed copy equal the plain file's, column for column (the file name aside)."""
    base = t[t["file"] == plain.name]
    assert len(base) >= 1
    for other in others:
        rows = t[t["file"] == other.name]
        assert len(rows) == len(base), other.name
        for c in t.colnames:
            if c == "file":
                continue
            a, b = np.asarray(base[c]), np.asarray(rows[c])
            if a.dtype.kind == "f":
                np.testing.assert_array_equal(a, b, err_msg=f"{other.name}: {c}")
            else:
                assert list(a) == list(b), (other.name, c)
    assert all(str(n).startswith("FIRST J") for n in t["name"])  # --name-prefix FIRST


def test_gz_and_fz_predict_like_fits_synthetic(tmp_path, capsys):
    src = _synthetic(tmp_path / "synth.fits")
    plain, gz, fz = _compressed_copies(src, tmp_path / "in")
    t = _cli_catalogue([plain, gz, fz], tmp_path / "out", capsys)
    _same_catalogue(t, plain, [gz, fz])
    assert t.meta["NFILES"] == 3 and t.meta["NBAD"] == 0


def test_gz_and_fz_predict_like_fits_real_first(tmp_path):
    """Real FIRST cutouts (the command line above runs the network; here an oracle of the cutouts'
    own sources makes it fast): the compressed copies' rows equal the plain file's."""
    from gluon_rcnn.radio.survey import provenance, write_results

    for name in ("100_150.470-000.878_0.1364_0124.24", "100_213.808-001.618_0.1496_0108.03"):
        src = need_first_fits(MIRABEST / f"{name}.fits")
        plain, gz, fz = _compressed_copies(src, tmp_path / name)
        lab = derive_sources(read_fits(src)[0])
        det = TruthDetector([s.box for s in lab.sources + lab.skipped],
                            [s.category_id or 1 for s in lab.sources + lab.skipped], RGZ_CLASSES)
        write_results(predict_fits(det, [plain, gz, fz], name_prefix="FIRST "), tmp_path / name / "cat", RGZ_CLASSES,
                      provenance(), formats=("fits",))
        t = Table.read(tmp_path / name / "cat.fits")
        _same_catalogue(t, plain, [gz, fz])
        print(f"\n{name}: {len(t)} rows, {sum(t['file'] == plain.name)} per file; .fits.gz and .fz rows equal "
              f"the .fits rows")


def test_truncated_compressed_files_are_refused(tmp_path):
    src = _synthetic(tmp_path / "synth.fits")
    _, gz, fz = _compressed_copies(src, tmp_path / "in")
    det = TruthDetector([], [], RGZ_CLASSES)
    for path, why in ((gz, "truncated"), (fz, "truncated")):
        raw = path.read_bytes()
        bad = tmp_path / ("cut_" + path.name)
        bad.write_bytes(raw[: len(raw) * 2 // 3])
        with pytest.raises(FITSError, match=why) as e:
            predict_mosaic(det, bad)
        assert str(bad) in str(e.value)
    # a whole .gz: the check measures the decompressed stream, not the (smaller) file
    with open_fits_image(gz) as im:
        assert im.shape == (300, 300)


def _big_infrared(path, radio_header, n=3000):
    """An infrared image of n x n 1"-pixels (float32, 64 MB at n = 4000) centred on the radio image."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval = [radio_header["CRVAL1"], radio_header["CRVAL2"]]
    w.wcs.crpix = [n / 2 + 0.5, n / 2 + 0.5]
    w.wcs.cdelt = [-1 / 3600, 1 / 3600]
    hdr = w.to_header()
    hdr["BUNIT"] = "DN"
    rng = np.random.default_rng(0)
    fits.PrimaryHDU(rng.normal(100, 5, (n, n)).astype(np.float32), header=hdr).writeto(path)
    return path


def test_infrared_section_equals_the_whole_image_reprojection(tmp_path):
    radio_h = first_like_header((300, 300))
    ir = _big_infrared(tmp_path / "ir.fits", radio_h, n=800)
    tile = WCS(radio_h)
    tile.wcs.crpix = tile.wcs.crpix - np.array([40, 70])  # a tile of the radio image, not at its origin
    with open_fits_image(ir) as im:
        got = infrared_section(im, tile, (200, 250))
        whole = reproject_to(im.section(0, 800, 0, 800), im.wcs, tile, (200, 250))
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, whole, rtol=1e-6)  # bilinear: the section holds every pixel used


def test_d3_infrared_read_by_sections_memory_bounded(tmp_path):
    data, _ = gaussian_sources((450, 450), seed=6)
    radio = tmp_path / "radio" / "field.fits"
    radio.parent.mkdir()
    h = first_like_header(data.shape)
    fits.PrimaryHDU(data, header=h).writeto(radio)
    irdir = tmp_path / "ir"
    irdir.mkdir()
    _big_infrared(irdir / "field.fits", h, n=4000)
    det = TruthDetector([[50, 60, 80, 90]], [1], RGZ_CLASSES)
    list(predict_fits(det, [radio], render="D3", ir_dir=irdir, tile=300, overlap=96))  # warm-up (imports, caches)
    tracemalloc.start()
    res = next(predict_fits(det, [radio], render="D3", ir_dir=irdir, tile=300, overlap=96, batch_size=2))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert res.n_tiles == 4 and len(res.rows) == 1
    ir_bytes = 4000 * 4000 * 4
    print(f"\nD3 with a {ir_bytes / 1e6:.0f} MB infrared image: traced peak {peak / 1e6:.1f} MB")
    assert peak < ir_bytes / 3, f"peak {peak / 1e6:.1f} MB: the infrared image was read whole"
