"""scripts/predict.py over real FITS cutouts: catalogue CSV with RA/Dec, one PNG per image."""
import csv
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, need_first_fits

RADIO = "FITS input needs the radio packages (astropy, scipy, reproject)"


def test_predict_fits_catalogue_radec(tmp_path):
    SkyCoord = pytest.importorskip("astropy.coordinates", reason=RADIO).SkyCoord
    pytest.importorskip("scipy", reason=RADIO)
    from astropy.table import Table

    from gluon_rcnn.radio import RGZ_CLASSES, read_fits
    from gluon_rcnn.radio.catalogue import source_columns
    from gluon_rcnn.radio.coords import iau_name

    files = sorted(need_first_fits().glob("*.fits"))[:5]
    out = tmp_path / "pred"
    # an untrained small model with no score cut still yields boxes whose sky positions can be checked
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "predict.py"), "--model", "faster_rcnn_fpn_resnet18_v1b_rgz",
                        "--random-weights", "--input", *map(str, files), "--output", str(out), "--score-thresh", "0",
                        "--config", "TEST.RESULT_SCORE_THRESH=0.0", "TEST.RESULTS_PER_IM=5", "--device", "cpu"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    # the CSV starts with '# KEY = value' provenance lines, then the header
    lines = open(out / "catalogue.csv").read().splitlines()
    assert "# MODEL = faster_rcnn_fpn_resnet18_v1b_rgz" in lines and "# WEIGHTS = random" in lines
    rows = list(csv.DictReader(line for line in lines if not line.startswith("#")))
    assert {row["file"] for row in rows} == {f.name for f in files}
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f.stem + ".png" for f in files)
    assert list(rows[0]) == source_columns(RGZ_CLASSES)
    for row in rows:
        f = next(p for p in files if p.name == row["file"])
        data, wcs, _ = read_fits(f)
        x1, y1, x2, y2 = (float(row[k]) for k in ("x1", "y1", "x2", "y2"))
        # boxes are in the FITS's own 0-based pixel grid, within the image
        assert -0.5 - 1e-6 <= x1 <= x2 <= data.shape[1] - 0.5 + 1e-6
        assert -0.5 - 1e-6 <= y1 <= y2 <= data.shape[0] - 0.5 + 1e-6
        sky = wcs.pixel_to_world((x1 + x2) / 2, (y1 + y2) / 2).icrs  # FIRST's FK5 J2000 -> the catalogue's ICRS
        assert isinstance(sky, SkyCoord)
        # the box centre's sky position, as astropy computes it (full precision in the CSV)
        assert abs(float(row["box_ra_deg"]) - sky.ra.deg) < 1e-9
        assert abs(float(row["box_dec_deg"]) - sky.dec.deg) < 1e-9
        # the source position: the flux-weighted centroid of its islands (those peaking in the box; the
        # box centre when there is none), and its IAU name
        xc, yc = float(row["x_cen"]), float(row["y_cen"])
        if row["n_components"] == "0":
            assert row["flag_no_island"] == "True" and abs(xc - (x1 + x2) / 2) < 1e-6 and abs(yc - (y1 + y2) / 2) < 1e-6
        else:
            assert 0 <= xc <= data.shape[1] - 1 and 0 <= yc <= data.shape[0] - 1 and float(row["island_flux_mjy"]) > 0
        cen = wcs.pixel_to_world(xc, yc).icrs
        assert abs(float(row["ra_deg"]) - cen.ra.deg) < 1e-9 and abs(float(row["dec_deg"]) - cen.dec.deg) < 1e-9
        assert row["name"] == iau_name([cen.ra.deg], [cen.dec.deg])[0]
        assert row["class"] in ("1C_1P", "1C_2P", "1C_3P", "2C_2P", "2C_3P", "3C_3P")
        probs = [float(row[c]) for c in source_columns(RGZ_CLASSES) if c.startswith("prob_")]
        assert abs(sum(probs) - 1) < 1e-5 and abs(float(row[f"prob_{row['class']}"]) - float(row["score"])) < 1e-6
    t = Table.read(out / "catalogue.fits")
    assert len(t) == len(rows) and t.meta["MODEL"] == "faster_rcnn_fpn_resnet18_v1b_rgz"
    assert len(Table.read(out / "catalogue.vot")) == len(rows)
    assert sum(line.startswith("box(") for line in open(out / "catalogue.reg")) == len(rows)


def test_predict_refuses_missing_input(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "predict.py"), "--model", "faster_rcnn_fpn_resnet18_v1b_rgz",
                        "--random-weights", "--input", str(tmp_path / "nope.fits"), "--output", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "nope.fits" in r.stderr


# ---------------------------------------------------------------------------------------------
# no weights, no catalogue: --weights FILE | --pretrained | --random-weights
# ---------------------------------------------------------------------------------------------
def test_predict_refuses_without_weights(tmp_path, capsys):
    """predict.py without weights used to write a catalogue of random detections without a word."""
    from gluon_rcnn.cli.predict import main

    base = ["--model", "faster_rcnn_fpn_resnet18_v1b_rgz", "--input", str(tmp_path), "--output", str(tmp_path / "o")]
    with pytest.raises(SystemExit) as e:
        main(base)
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "no weights" in err and "--weights FILE" in err and "--pretrained" in err and "--random-weights" in err
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as e:  # the entry has no published weights yet
        main(base + ["--pretrained"])
    assert e.value.code == 2 and "no published weights" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(base + ["--weights", "w.pth", "--random-weights"])
    assert e.value.code == 2 and "not allowed with" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0 and "refused (exit 2)" in capsys.readouterr().out
    # the script itself: exit status 2 and the reason on stderr
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "predict.py"), *base], capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2 and "no weights" in r.stderr and not (tmp_path / "o").exists()


class _FixedDetector:
    """Three detections per image, scores 0.9 / 0.6 / 0.3; its config draws from 0.55."""

    classes = ("1C_1P", "1C_2P")

    def __init__(self, vis=0.55, attr="cfg"):
        from types import SimpleNamespace
        setattr(self, attr, SimpleNamespace(TEST=SimpleNamespace(RESULT_SCORE_THRESH_VIS=vis)))

    def __call__(self, images):
        import torch
        return [{"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0], [2.0, 2.0, 8.0, 8.0], [3.0, 3.0, 7.0, 7.0]]),
                 "scores": torch.tensor([0.9, 0.6, 0.3]), "labels": torch.tensor([1, 2, 1])} for _ in images]


def _predict_with(monkeypatch, tmp_path, model, *extra):
    import cv2

    import gluon_rcnn
    from gluon_rcnn.cli.predict import main

    seen = {}

    def fake_get_model(name, pretrained=None, **kw):
        seen["pretrained"] = pretrained
        return model

    monkeypatch.setattr(gluon_rcnn, "get_model", fake_get_model)
    (tmp_path / "in").mkdir(exist_ok=True)
    cv2.imwrite(str(tmp_path / "in" / "a.png"), np.full((12, 12, 3), 90, np.uint8))
    out = tmp_path / "out"
    rc = main(["--model", "faster_rcnn_fpn_resnet18_v1b_rgz", "--input", str(tmp_path / "in"), "--output", str(out),
               "--device", "cpu", *extra])
    assert rc == 0
    rows = list(csv.DictReader(open(out / "catalogue.csv")))
    return seen, sorted(float(r["score"]) for r in rows)


def test_predict_random_weights_warns_once(tmp_path, monkeypatch, capsys):
    seen, scores = _predict_with(monkeypatch, tmp_path, _FixedDetector(), "--random-weights")
    assert seen["pretrained"] is None  # random init, asked for
    warning = [line for line in capsys.readouterr().err.splitlines() if "WARNING" in line]
    assert len(warning) == 1 and "--random-weights" in warning[0] and "noise" in warning[0]


def test_predict_score_thresh_defaults_to_the_models_vis_threshold(tmp_path, monkeypatch, capsys):
    """TEST.RESULT_SCORE_THRESH_VIS of the model's config is the default --score-thresh."""
    _, scores = _predict_with(monkeypatch, tmp_path, _FixedDetector(vis=0.55), "--weights", "w.pth")
    assert scores == [0.6, 0.9]
    _, scores = _predict_with(monkeypatch, tmp_path, _FixedDetector(vis=0.75), "--weights", "w.pth")
    assert scores == [0.9]
    # a read-only ``model.config`` (the newer name) wins over ``model.cfg``
    both = _FixedDetector(vis=0.95)
    both.config = _FixedDetector(vis=0.2).cfg
    _, scores = _predict_with(monkeypatch, tmp_path, both, "--weights", "w.pth")
    assert scores == [0.3, 0.6, 0.9]
    # an explicit --score-thresh wins
    _, scores = _predict_with(monkeypatch, tmp_path, _FixedDetector(vis=0.55), "--weights", "w.pth",
                              "--score-thresh", "0.1")
    assert scores == [0.3, 0.6, 0.9]
    assert "WARNING" not in capsys.readouterr().err


def test_predict_optimize_flags_reach_the_model(tmp_path, monkeypatch, capsys):
    """--optimize bf16 [--box-head-bf16] calls optimize_for_inference with the box head's precision;
    --box-head-bf16 alone is refused (exit 2)."""
    calls = []
    det = _FixedDetector()
    det.optimize_for_inference = lambda precision, fp32_box_head=True: calls.append((precision, fp32_box_head))
    for extra in ((), ("--optimize", "bf16"), ("--optimize", "bf16", "--box-head-bf16"), ("--optimize", "fp32")):
        _, scores = _predict_with(monkeypatch, tmp_path, det, "--weights", "w.pth", *extra)
        assert scores == [0.6, 0.9]
    assert calls == [("bf16", True), ("bf16", False), ("fp32", True)]
    from gluon_rcnn.cli.predict import main
    with pytest.raises(SystemExit) as e:
        main(["--model", "faster_rcnn_fpn_resnet18_v1b_rgz", "--random-weights", "--input", str(tmp_path),
              "--output", str(tmp_path / "o2"), "--box-head-bf16"])
    assert e.value.code == 2 and "--box-head-bf16 goes with --optimize bf16" in capsys.readouterr().err


def test_vis_score_thresh_reads_the_model_config():
    from gluon_rcnn import get_model
    from gluon_rcnn.viz import vis_score_thresh

    assert vis_score_thresh(get_model("faster_rcnn_fpn_resnet18_v1b_rgz")) == 0.5  # the config's default
    model = get_model("faster_rcnn_fpn_resnet18_v1b_rgz", overrides=["TEST.RESULT_SCORE_THRESH_VIS=0.7"])
    assert vis_score_thresh(model) == pytest.approx(0.7)
    assert vis_score_thresh(object()) == 0.5  # a model without a gluon_rcnn config
