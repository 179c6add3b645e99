"""Survey-scale prediction (gluon_rcnn.radio.survey) and catalogues (gluon_rcnn.radio.catalogue):
a mosaic built from real FIRST cutouts, tiled with overlap; each source found once; RA/Dec checked
against astropy's WCS; CSV / FITS / VOTable / DS9 written and read back; bad inputs name the file."""
import csv
import re
import tracemalloc

import numpy as np
import pytest

from conftest import MIRABEST, need_first_fits

pytest.importorskip("astropy", reason="gluon_rcnn.radio needs the radio extra")
pytest.importorskip("scipy", reason="gluon_rcnn.radio needs the radio extra")
pytest.importorskip("reproject", reason="gluon_rcnn.radio needs the radio extra")

from astropy.io import fits  # noqa: E402
from astropy.table import Table  # noqa: E402
from astropy.wcs import WCS  # noqa: E402

from gluon_rcnn.radio import RGZ_CLASSES, derive_sources  # noqa: E402
from gluon_rcnn.radio.catalogue import FLAG_TILE_EDGE, source_columns  # noqa: E402
from gluon_rcnn.radio.coords import iau_name  # noqa: E402
from gluon_rcnn.radio.fits import FITSError  # noqa: E402
from gluon_rcnn.radio.survey import (SurveyGrid, TruthDetector, build_mosaic, merge_detections,  # noqa: E402
                                     predict_fits, predict_mosaic, provenance, tile_grid, tile_starts,
                                     write_results)

# six real MiraBest cutouts (FRI/FRII radio galaxies at their centres), 3 x 2 on one 840 x 560 grid
CUTOUTS = ["100_150.470-000.878_0.1364_0124.24", "100_161.928+043.781_0.0858_0112.61",
           "100_118.448+023.032_0.5016_0035.76", "100_213.808-001.618_0.1496_0108.03",
           "100_178.284+046.046_0.3627_0055.96", "100_149.174+018.597_0.1658_0049.58"]
CENTRES = [(150, 150), (420, 150), (690, 150), (150, 410), (420, 410), (690, 410)]
SHAPE = (560, 840)
TILE, OVERLAP = 300, 96


@pytest.fixture(scope="module")
def mosaic(module_tmp):
    paths = [need_first_fits(MIRABEST / f"{n}.fits") for n in CUTOUTS]
    out = module_tmp("mosaic") / "mosaic.fits"
    data, wcs = build_mosaic(paths, CENTRES, SHAPE, out)
    lab = derive_sources(data)
    truth = lab.sources + lab.skipped
    boxes = np.array([s.box for s in truth], np.float64)
    labels = np.array([s.category_id or 1 for s in truth])
    return out, data, boxes, labels, truth


def _straddling(boxes, shape, tile, overlap):
    """Truth boxes that some tile cuts (the tile overlaps the box without containing it)."""
    out = set()
    for x0, y0, x1, y1, _ in tile_grid(shape, tile, overlap):
        for i, b in enumerate(boxes):
            inter = min(b[2], x1) > max(b[0], x0) and min(b[3], y1) > max(b[1], y0)
            inside = b[0] >= x0 and b[1] >= y0 and b[2] <= x1 and b[3] <= y1
            if inter and not inside:
                out.add(i)
    return out


def test_provenance_hashes_the_weights(tmp_path):
    import hashlib

    w = tmp_path / "w.pth"
    w.write_bytes(b"weights" * 1000)
    meta = provenance(model_name="m", weights=w, score_thresh=0.7, tile=256, overlap=64, survey="NVSS")
    assert meta["WSHA256"] == hashlib.sha256(w.read_bytes()).hexdigest() and meta["WEIGHTS"] == str(w)
    assert (meta["SCORETHR"], meta["TILE"], meta["OVERLAP"], meta["PIXSCALE"], meta["BMAJ"]) == (0.7, 256, 64, 15.0, 45.0 / 3600)  # FITS: degrees
    assert all(len(k) <= 8 for k in meta)  # FITS keywords


def test_tiles_overlap_and_cover():
    for n in (1, 299, 300, 301, 560, 840, 1000):
        s = tile_starts(n, TILE, OVERLAP)
        assert s[0] == 0 and s[-1] + min(TILE, n) == n
        assert all(b - a <= TILE - OVERLAP for a, b in zip(s, s[1:]))  # neighbours share >= overlap pixels
    with pytest.raises(ValueError, match="overlap"):
        tile_starts(1000, 100, 100)


def test_merge_rule_once_and_cut_parts():
    # tile 0: [0, 300), tile 1: [204, 504) on x; a source [280, 320) x [10, 50)
    src = np.array([280.0, 10, 320, 50])
    boxes = np.array([[280, 10, 300, 50],        # tile 0: cut at its inner border x = 300
                      [280, 10, 320, 50],        # tile 1: whole
                      [100, 10, 140, 50],        # tile 0 only: whole
                      [210, 60, 240, 90],        # seen whole by both tiles ...
                      [210, 60, 240, 90]], float)  # ... (tile 1's left border is at 204)
    tiles = np.array([0, 1, 0, 0, 1])
    dist = np.array([0.0, 16.0, 160.0, 60.0, 6.0])
    out = merge_detections(boxes, np.ones(5), tiles, dist)  # no island information: merged on boxes alone
    kept = sorted(tuple(m.box) for m in out)
    assert kept == sorted([tuple(src), (100, 10, 140, 50), (210, 60, 240, 90)])
    assert [m.members for m in out if tuple(m.box) == (210, 60, 240, 90)] == [[3]]  # the one farther from a border
    # a source larger than the overlap: both parts cut, joined into one flagged source
    out = merge_detections(np.array([[150, 0, 300, 40], [204, 0, 450, 40]], float), np.array([0.9, 0.8]),
                           np.array([0, 1]), np.array([0.0, 0.0]))
    assert len(out) == 1 and out[0].cut and list(out[0].box) == [150, 0, 450, 40] and out[0].members == [0, 1]


def test_mosaic_each_source_once_radec_and_formats(mosaic, tmp_path):
    path, data, boxes, labels, truth = mosaic
    cut = _straddling(boxes, SHAPE, TILE, OVERLAP)
    # real sources straddle tile borders (the FRII of the 3rd cutout lies across x = 708, for one)
    assert len(cut) >= 2 and max(b[2] - b[0] for b in boxes[list(cut)]) > 20
    det = TruthDetector(boxes, labels, RGZ_CLASSES)
    res = predict_mosaic(det, path, tile=TILE, overlap=OVERLAP, batch_size=5)
    assert res.n_tiles == 12 and res.error is None
    rows = res.rows
    # each source once: one row per true source, box for box (catalogue boxes are in astropy's grid)
    got = sorted(tuple(round(v, 6) for v in (r["x1"] + 0.5, r["y1"] + 0.5, r["x2"] + 0.5, r["y2"] + 0.5)) for r in rows)
    assert got == sorted(tuple(float(v) for v in b) for b in boxes), "a source was lost, cut or counted twice"
    assert not any(r["flags"] & FLAG_TILE_EDGE for r in rows)
    # RA/Dec of the flux-weighted centroid agree with astropy's WCS of the mosaic file
    wcs = WCS(fits.getheader(path))
    for r in rows:
        sky = wcs.pixel_to_world(r["x_cen"], r["y_cen"]).icrs  # the mosaic is FK5 J2000: catalogue positions are ICRS
        assert abs(sky.ra.deg - r["ra_deg"]) * 3600 < 1e-6 and abs(sky.dec.deg - r["dec_deg"]) * 3600 < 1e-6
        assert r["name"] == iau_name([sky.ra.deg], [sky.dec.deg])[0]
        assert re.fullmatch(r"J\d{6}\.\d[+-]\d{6}", r["name"])
        bx, by = (r["x1"] + r["x2"]) / 2, (r["y1"] + r["y2"]) / 2
        bsky = wcs.pixel_to_world(bx, by).icrs
        assert abs(bsky.ra.deg - r["box_ra_deg"]) * 3600 < 1e-6 and abs(bsky.dec.deg - r["box_dec_deg"]) * 3600 < 1e-6
        assert r["box_width_arcsec"] == pytest.approx((r["x2"] - r["x1"]) * 1.8)
    # the centroid is the flux-weighted mean of the source's island pixels (computed here independently)
    for r in rows:
        i = next(k for k, b in enumerate(boxes) if np.allclose(b, [r["x1"] + .5, r["y1"] + .5, r["x2"] + .5, r["y2"] + .5]))
        m = np.zeros(SHAPE, bool)
        for c in truth[i].components:
            m |= c.mask
        ys, xs = np.nonzero(m)
        w = np.clip(data[ys, xs], 0, None)
        assert r["n_components"] >= 1 and r["island_flux_mjy"] > 0 and r["snr"] > 4 and r["las_arcsec"] > 0
        # islands are cut at 4 x the tile's rms instead of the whole mosaic's: the same within a pixel
        assert abs((xs * w).sum() / w.sum() - r["x_cen"]) < 1.0 and abs((ys * w).sum() / w.sum() - r["y_cen"]) < 1.0
        # integrated flux: island sum / beam area (FIRST 5.4" beam at 1.8"/px: 10.19 px)
        beam = np.pi * 5.4 * 5.4 / (4 * np.log(2)) / 1.8 ** 2
        assert r["island_flux_mjy"] == pytest.approx(1e3 * data[ys, xs].sum() / beam, rel=0.25)
        assert r[f"prob_{r['class']}"] == 1.0 and r["class"] == RGZ_CLASSES[labels[i] - 1]
    # the catalogue as CSV, FITS, VOTable and DS9, read back with astropy
    meta = provenance(model_name="oracle", score_thresh=0.5, tile=TILE, overlap=OVERLAP)
    paths, bad = write_results(predict_fits(det, [path], tile=TILE, overlap=OVERLAP), tmp_path / "cat", RGZ_CLASSES,
                               meta, components=True)
    assert not bad and {p.name for p in paths} >= {"cat.csv", "cat.fits", "cat.vot", "cat.reg", "cat_components.fits"}
    t_fits = Table.read(tmp_path / "cat.fits")
    t_vot = Table.read(tmp_path / "cat.vot")
    t_csv = Table.read(tmp_path / "cat.csv", format="ascii.csv", comment="#")  # provenance: leading '#' lines
    for t in (t_fits, t_vot, t_csv):
        assert t.colnames == source_columns(RGZ_CLASSES) and len(t) == len(rows)
        np.testing.assert_allclose(np.sort(np.asarray(t["ra_deg"], float)), np.sort([r["ra_deg"] for r in rows]),
                                   rtol=0, atol=1e-9)
        assert sorted(str(v) for v in t["name"]) == sorted(r["name"] for r in rows)
    assert t_fits["ra_deg"].unit == "deg" and t_fits["island_flux_mjy"].unit == "mJy"
    assert t_fits.meta["MODEL"] == "oracle" and t_fits.meta["PIXSCALE"] == 1.8 and t_fits.meta["BMAJ"] == 5.4 / 3600  # FITS: degrees
    assert t_fits.meta["TILE"] == TILE and t_fits.meta["OVERLAP"] == OVERLAP and "WSHA256" in t_fits.meta
    from astropy.io.votable import parse_single_table
    infos = {i.name: i.value for i in parse_single_table(tmp_path / "cat.vot").infos}
    assert infos["MODEL"] == "oracle" and infos["BEAMSRC"] == "FIRST default" and infos["PIXSCALE"] == "1.8"
    assert "MODEL=oracle" in t_vot.meta["description"] and f"BMAJ={5.4 / 3600}" in t_vot.meta["description"]
    assert "MODEL = oracle" in t_csv.meta["comments"]
    comps = Table.read(tmp_path / "cat_components.fits")
    assert len(comps) == sum(r["n_components"] for r in rows) and set(comps["source"]) == {r["name"] for r in rows}
    reg = (tmp_path / "cat.reg").read_text().splitlines()
    assert reg[0].startswith("# Region file format: DS9") and "icrs" in reg
    assert sum(line.startswith("box(") for line in reg) == len(rows)


def test_regridded_input_matches_native(mosaic, tmp_path):
    """A mosaic at 1.2"/px is regridded tile by tile onto the model's 1.8"/px: the same sources at
    the same sky positions."""
    path, data, boxes, labels, truth = mosaic
    fine = tmp_path / "fine.fits"
    # the top 300 rows of the native mosaic's sky, 1.5x finer: the same corner, centre and cutout positions
    centre = WCS(fits.getheader(path)).pixel_to_world_values(419.5, 149.5)
    build_mosaic([MIRABEST / f"{n}.fits" for n in CUTOUTS[:3]], [((x + 0.5) * 1.5 - 0.5, (y + 0.5) * 1.5 - 0.5)
                                                                 for x, y in CENTRES[:3]],
                 (450, 1260), fine, centre_radec=tuple(float(v) for v in centre), pixel_scale=1.2)
    with SurveyGrid(fine) as g:
        assert g.regrid and g.pixel_scale == pytest.approx(1.8) and g.shape == (300, 840)
        work = g.section(0, g.shape[0], 0, g.shape[1])
    lab = derive_sources(work)
    big = lab.sources + lab.skipped
    det = TruthDetector([s.box for s in big], [s.category_id or 1 for s in big], RGZ_CLASSES)
    res = predict_mosaic(det, fine)
    assert len(res.rows) == len(big) and res.grid_info["regrid"]
    native = predict_mosaic(TruthDetector(boxes, labels, RGZ_CLASSES), path).rows
    wcs = WCS(fits.getheader(fine))
    for r in res.rows:
        assert r["box_width_arcsec"] == pytest.approx((r["x2"] - r["x1"]) * 1.2)
        # catalogue pixels are in the input's own (1.2"/px) grid
        sky = wcs.pixel_to_world(r["x_cen"], r["y_cen"]).icrs
        assert abs(sky.ra.deg - r["ra_deg"]) * 3600 < 1e-6 and abs(sky.dec.deg - r["dec_deg"]) * 3600 < 1e-6
    bright = [r for r in native if r["snr"] > 20 and r["y_cen"] < 240]
    assert len(bright) >= 3
    for r in bright:  # the same galaxies, within a native pixel
        d = [np.hypot((r["ra_deg"] - q["ra_deg"]) * np.cos(np.radians(r["dec_deg"])), r["dec_deg"] - q["dec_deg"])
             * 3600 for q in res.rows]
        assert min(d) < 1.8


def test_stream_of_files_in_order(tmp_path):
    files = sorted(need_first_fits().glob("*.fits"))[:3]
    truths = []
    for f in files:
        with SurveyGrid(f) as g:
            lab = derive_sources(g.section(0, 300, 0, 300))
        truths.append([s.box for s in lab.sources])

    class PerFile(TruthDetector):
        def __call__(self, images, tiles):
            out = []
            for im, t in zip(images, tiles):
                self.boxes = np.array(truths[t.file_index], float).reshape(-1, 4)
                self.labels = np.ones(len(self.boxes), int)
                out += super().__call__([im], [t])
            return out

    got = list(predict_fits(PerFile([], [], RGZ_CLASSES), files, batch_size=2))
    assert [r.path for r in got] == files and [len(r.rows) for r in got] == [len(t) for t in truths]
    assert all(r.preview is not None and r.preview.shape == (300, 300, 3) for r in got)


def test_memory_bounded_by_the_tile_not_the_mosaic(tmp_path):
    rng = np.random.default_rng(0)
    big = tmp_path / "big.fits"
    data = rng.normal(0, 1.5e-4, (2000, 2000)).astype(np.float32)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval, w.wcs.crpix, w.wcs.cdelt = [180, 30], [1000.5, 1000.5], [-0.0005, 0.0005]
    fits.PrimaryHDU(data, header=w.to_header()).writeto(big)
    del data
    det = TruthDetector([[990, 990, 1030, 1030]], [1], RGZ_CLASSES)
    tracemalloc.start()
    res = predict_mosaic(det, big, batch_size=4)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert res.n_tiles == 100 and len(res.rows) == 1
    assert peak < 12e6, f"peak {peak / 1e6:.1f} MB for a 16 MB mosaic: not tile-bounded"


# ---------------------------------------------------------------------------------------------
# bad input: an error naming the file
# ---------------------------------------------------------------------------------------------
def _bad_files(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    no_image = tmp_path / "no_image.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column("a", "E", array=[1.0])])]).writeto(no_image)
    good = MIRABEST / f"{CUTOUTS[0]}.fits"
    truncated = tmp_path / "truncated.fits"
    raw = need_first_fits(good).read_bytes()
    truncated.write_bytes(raw[: len(raw) // 2])
    no_wcs = tmp_path / "no_wcs.fits"
    fits.PrimaryHDU(np.zeros((400, 400), np.float32)).writeto(no_wcs)
    return {no_image: "no HDU with 2-D image data", truncated: "truncated", no_wcs: "no celestial WCS"}


def test_bad_inputs_name_the_file(tmp_path):
    det = TruthDetector([], [], RGZ_CLASSES)
    bad = _bad_files(tmp_path)
    for path, why in bad.items():
        with pytest.raises(FITSError, match=why) as e:
            predict_mosaic(det, path)
        assert str(path) in str(e.value)
    # skipped on request: each reported, the good file still catalogued
    good = MIRABEST / f"{CUTOUTS[0]}.fits"
    out = list(predict_fits(det, [*bad, good], skip_bad=True))
    assert [r.error is None for r in out] == [False, False, False, True]
    assert all(str(p) in r.error for p, r in zip(bad, out))


def test_cli_bad_fits_exit_2_naming_the_file(tmp_path, capsys):
    from gluon_rcnn.cli.predict import main

    for path, why in _bad_files(tmp_path).items():
        rc = main(["--model", "faster_rcnn_fpn_resnet18_v1b_rgz", "--random-weights", "--input", str(path),
                   "--output", str(tmp_path / "o"), "--device", "cpu"])
        err = capsys.readouterr().err
        assert rc == 2 and str(path) in err and why in err, err
    assert not (tmp_path / "o" / "catalogue.csv").exists()
    # --skip-bad-images: each bad file reported, the good one catalogued
    good = MIRABEST / f"{CUTOUTS[0]}.fits"
    rc = main(["--model", "faster_rcnn_fpn_resnet18_v1b_rgz", "--random-weights", "--input", *map(str, _bad_files(tmp_path / "b")),
               str(good), "--output", str(tmp_path / "o"), "--device", "cpu", "--skip-bad-images", "--score-thresh", "0",
               "--config", "TEST.RESULT_SCORE_THRESH=0.0", "TEST.RESULTS_PER_IM=2", "--format", "fits"])
    captured = capsys.readouterr()
    assert rc == 0 and "skipped 3 bad input file(s)" in captured.out and "truncated" in captured.out
    t = Table.read(tmp_path / "o" / "catalogue.fits")
    assert set(t["file"]) == {good.name} and len(t) >= 1


def test_tile_rendering_is_render_fits_for_one_tile(tmp_path):
    """A file that fits in one tile is rendered exactly as gluon_rcnn.radio.render_fits renders it
    (D1, and D3/D4 with an infrared image, here the radio image itself standing in)."""
    from gluon_rcnn.radio import render_fits

    good = need_first_fits(MIRABEST / f"{CUTOUTS[2]}.fits")
    ir = tmp_path / "ir"
    ir.mkdir()
    (ir / good.name).write_bytes(good.read_bytes())
    seen = {}

    class Spy(TruthDetector):
        def __call__(self, images, tiles):
            seen["rgb"] = images[0]
            return super().__call__(images, tiles)

    for render in ("D1", "D3", "D4"):
        list(predict_fits(Spy([], [], RGZ_CLASSES), [good], render=render, ir_dir=ir))
        want, _, _ = render_fits(good, render, ir)
        np.testing.assert_array_equal(seen["rgb"], want)


def test_cli_mosaic_with_the_model(mosaic, tmp_path, capsys):
    """The real (untrained) model end to end on the mosaic: tiles, merge, catalogue in every format."""
    from gluon_rcnn.cli.predict import main

    path = mosaic[0]
    out = tmp_path / "pred"
    rc = main(["--model", "faster_rcnn_fpn_resnet18_v1b_rgz", "--random-weights", "--input", str(path),
               "--output", str(out), "--device", "cpu", "--score-thresh", "0", "--config", "TEST.RESULT_SCORE_THRESH=0.0",
               "TEST.RESULTS_PER_IM=3", "--tile", "300", "--overlap", "96", "--format", "csv", "fits", "votable", "ds9"])
    assert rc == 0, capsys.readouterr().err
    t = Table.read(out / "catalogue.fits")
    assert len(t) >= 1 and t.meta["MODEL"] == "faster_rcnn_fpn_resnet18_v1b_rgz" and t.meta["WEIGHTS"] == "random"
    probs = np.stack([np.asarray(t[c]) for c in source_columns(RGZ_CLASSES) if c.startswith("prob_")], 1)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    for row in t:  # the score is the probability of the detection's class in its RoI's vector
        assert row["score"] == pytest.approx(row[f"prob_{row['class']}"], abs=1e-6)
    assert len(Table.read(out / "catalogue.vot")) == len(t)
    rows = list(csv.DictReader(line for line in open(out / "catalogue.csv") if not line.startswith("#")))
    assert len(rows) == len(t) and not list(out.glob("*.png"))  # a 12-tile mosaic gets no PNG
