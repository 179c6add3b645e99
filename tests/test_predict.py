"""scripts/predict.py over real FITS cutouts: catalogue CSV with RA/Dec, one PNG per image."""
import csv
import subprocess
import sys

import numpy as np
import pytest
from astropy.coordinates import SkyCoord

from conftest import MIRABEST, REPO, need
from gluon_rcnn.data.rgz import read_fits


def test_predict_fits_catalogue_radec(tmp_path):
    files = sorted(need(MIRABEST).glob("*.fits"))[:5]
    out = tmp_path / "pred"
    # an untrained small model with no score cut still yields boxes whose sky positions can be checked
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "predict.py"), "--model", "faster_rcnn_fpn_resnet18_v1b_rgz",
                        "--input", *map(str, files), "--output", str(out), "--score-thresh", "0",
                        "--config", "TEST.RESULT_SCORE_THRESH=0.0", "TEST.RESULTS_PER_IM=5", "--device", "cpu"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = list(csv.DictReader(open(out / "catalogue.csv")))
    assert {row["file"] for row in rows} == {f.name for f in files}
    assert sorted(p.name for p in out.glob("*.png")) == sorted(f.stem + ".png" for f in files)
    assert set(rows[0]) == {"file", "class", "score", "x1", "y1", "x2", "y2", "ra_deg", "dec_deg"}
    for row in rows:
        f = next(p for p in files if p.name == row["file"])
        data, wcs, _ = read_fits(f)
        x1, y1, x2, y2 = (float(row[k]) for k in ("x1", "y1", "x2", "y2"))
        # boxes are in the FITS's own 0-based pixel grid, within the image
        assert -0.5 - 1e-6 <= x1 <= x2 <= data.shape[1] - 0.5 + 1e-6
        assert -0.5 - 1e-6 <= y1 <= y2 <= data.shape[0] - 0.5 + 1e-6
        sky = wcs.pixel_to_world((x1 + x2) / 2, (y1 + y2) / 2)
        assert isinstance(sky, SkyCoord)
        # CSV keeps 6 decimals: 1e-6 deg = 3.6 mas, far below FIRST's 1.8" pixels
        assert abs(float(row["ra_deg"]) - sky.ra.deg) < 2e-6
        assert abs(float(row["dec_deg"]) - sky.dec.deg) < 2e-6
        assert row["class"] in ("1C_1P", "1C_2P", "1C_3P", "2C_2P", "2C_3P", "3C_3P")


def test_predict_refuses_missing_input(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "predict.py"), "--model", "faster_rcnn_fpn_resnet18_v1b_rgz",
                        "--input", str(tmp_path / "nope.fits"), "--output", str(tmp_path / "o")],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "nope.fits" in r.stderr
