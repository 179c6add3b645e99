"""A truncated JPEG in training, evaluation and prediction: a non-zero exit and a message naming the
file (and image id); with the documented skip option, each bad file is reported and the run goes on.
Real coco128 images, the real command lines, one of the images cut to 1/7 of its bytes."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import COCO_ANN, COCO_IMAGES, REPO, need

SMALL = ["BACKBONE.RESNET_NUM_BLOCKS=[2,2,2,2]", "FPN.NUM_CHANNEL=32", "FPN.FRCNN_FC_HEAD_DIM=64",
         "RPN.TRAIN_PER_LEVEL_NMS_TOPK=100", "RPN.TEST_PER_LEVEL_NMS_TOPK=50", "RPN.BATCH_PER_IM=64",
         "FRCNN.BATCH_PER_IM=32", "PREPROC.TRAIN_SHORT_EDGE_SIZE=[64,64]", "PREPROC.TEST_SHORT_EDGE_SIZE=64",
         "PREPROC.MAX_SIZE=96", "TRAIN.IMS_PER_GPU=2", "TRAIN.LOG_PERIOD=1"]
MODEL = "faster_rcnn_fpn_resnet18_v1b_coco"


@pytest.fixture(scope="module")
def bad_set(module_tmp):
    """4 landscape COCO images (one batch-aligned epoch of 2 batches of 2) with the third truncated."""
    root = module_tmp("bad_set")
    data = json.loads(need(COCO_ANN).read_text())
    imgs = [im for im in data["images"] if im["width"] > im["height"]
            and any(a["image_id"] == im["id"] and not a.get("iscrowd") for a in data["annotations"])][:4]
    ids = {im["id"] for im in imgs}
    (root / "images").mkdir()
    for im in imgs:
        raw = (COCO_IMAGES / im["file_name"]).read_bytes()
        (root / "images" / im["file_name"]).write_bytes(raw)
    bad = imgs[2]
    path = root / "images" / bad["file_name"]
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 7])
    ann = {"images": imgs, "annotations": [a for a in data["annotations"] if a["image_id"] in ids],
           "categories": data["categories"]}
    (root / "ann.json").write_text(json.dumps(ann))
    return str(root / "ann.json"), str(root / "images"), path, bad["id"]


def _run(cmd, timeout=240):
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    return subprocess.run([sys.executable, *cmd], env=env, capture_output=True, text=True, timeout=timeout,
                          cwd=str(REPO))


def _train(ann, imgs, out, *config):
    return _run([str(REPO / "scripts" / "train_faster_rcnn.py"), "--annotations", ann, "--images", imgs,
                 "--output", str(out), "--model", MODEL, "--max-iter", "2", "--no-eval", "--config", *SMALL, *config])


@pytest.mark.parametrize("workers", [0, 1])
def test_training_stops_naming_the_truncated_file(bad_set, tmp_path, workers):
    ann, imgs, bad, bad_id = bad_set
    r = _train(ann, imgs, tmp_path / "run", f"DATA.NUM_WORKERS={workers}")
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(bad) in last and f"image id {bad_id}" in last, last
    assert "truncated" in last, last


def test_training_skips_bad_images_when_told(bad_set, tmp_path):
    ann, imgs, bad, _ = bad_set
    r = _train(ann, imgs, tmp_path / "run", "DATA.NUM_WORKERS=0", "DATA.SKIP_BAD_IMAGES=True")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert str(bad) in r.stderr  # each bad file is logged ...
    assert "1 bad image(s) were skipped during training" in r.stderr  # ... and counted at the end
    assert (tmp_path / "run" / "model_final.pth").is_file()


def _eval(ann, imgs, out, *extra):
    return _run([str(REPO / "scripts" / "eval.py"), "--annotations", ann, "--images", imgs, "--model", MODEL,
                 "--random-weights", "--output", str(out), "--num-workers", "1", "--no-progress",
                 "--config", *SMALL, *extra])


def test_evaluation_stops_naming_the_truncated_file(bad_set, tmp_path):
    ann, imgs, bad, bad_id = bad_set
    r = _eval(ann, imgs, tmp_path / "r.json")
    assert r.returncode != 0, r.stdout[-2000:]
    assert str(bad) in r.stderr and f"image id {bad_id}" in r.stderr, r.stderr[-3000:]
    assert not (tmp_path / "r.json").exists()


def test_evaluation_skips_bad_images_when_told(bad_set, tmp_path):
    ann, imgs, bad, bad_id = bad_set
    r = _eval(ann, imgs, tmp_path / "r.json", "DATA.SKIP_BAD_IMAGES=True")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "evaluated 3 images" in r.stdout and "skipped 1 bad image(s)" in r.stdout, r.stdout
    assert str(bad) in r.stdout
    assert bad_id not in {d["image_id"] for d in json.loads((tmp_path / "r.json").read_text())}


def test_prediction_stops_naming_the_truncated_file_or_skips_it(bad_set, tmp_path):
    _, imgs, bad, _ = bad_set
    cmd = [str(REPO / "scripts" / "predict.py"), "--model", MODEL, "--random-weights", "--input", imgs,
           "--config", *SMALL]
    r = _run(cmd + ["--output", str(tmp_path / "p")])
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and str(bad) in last and "truncated" in last, last
    assert not (tmp_path / "p" / "catalogue.csv").exists()  # nothing half-written
    r = _run(cmd + ["--output", str(tmp_path / "q"), "--skip-bad-images"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "skipped 1 bad input file(s)" in r.stdout and str(bad) in r.stdout, r.stdout
    assert len(list((tmp_path / "q").glob("*.png"))) == 3


def test_training_with_only_bad_images_stops_instead_of_spinning(bad_set, tmp_path):
    """With skipping on and no decodable image at all (e.g. a wrong --images folder), training used to
    loop for ever over empty batches; a whole epoch without one good image is an error."""
    ann, imgs, _, _ = bad_set
    empty = tmp_path / "no_images"
    empty.mkdir()
    r = _train(ann, str(empty), tmp_path / "run", "DATA.NUM_WORKERS=0", "DATA.SKIP_BAD_IMAGES=True")
    assert r.returncode == 2, r.stdout[-2000:] + r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert "no decodable image in 2 consecutive training batches" in last and str(empty) in last, last
