"""Every command line stops on a user's mistake with exit status 2 and one line saying what is wrong
(``error: ...`` on stderr, naming the file, key or name), never a Python traceback.

Each case runs the real script in a subprocess: training (Faster and Mask R-CNN), evaluation,
prediction and the weights tool, over the known user errors (a missing file, an unknown config
key, an unknown zoo name, a checkpoint of another architecture, a bad image, a bad mask)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import COCO_ANN, COCO_IMAGES, REPO, need

SMALL = ["BACKBONE.RESNET_NUM_BLOCKS=[2,2,2,2]", "FPN.NUM_CHANNEL=32", "FPN.FRCNN_FC_HEAD_DIM=64",
         "PREPROC.TEST_SHORT_EDGE_SIZE=64", "PREPROC.MAX_SIZE=96"]
ENTRY = "faster_rcnn_fpn_resnet18_v1b_coco"
OTHER = "mask_rcnn_resnet101_v1d_coco"  # another architecture than the checkpoint's


@pytest.fixture(scope="module")
def files(module_tmp):
    """A small checkpoint of ENTRY, a truncated JPEG, and an annotation file with one RLE mask of the
    wrong size (the issue's example: half the image's size, counts that do not cover it)."""
    import torch

    from gluon_rcnn import model_zoo
    from gluon_rcnn.convert.checkpoint import save_checkpoint

    root = module_tmp("cli_errors")
    torch.manual_seed(0)
    save_checkpoint(model_zoo.get_model(ENTRY, classes=["a", "b"], overrides=SMALL), root / "ckpt.pth")
    data = json.loads(need(COCO_ANN).read_text())
    (root / "bad_images").mkdir()
    raw = (COCO_IMAGES / data["images"][0]["file_name"]).read_bytes()
    (root / "bad_images" / "cut.jpg").write_bytes(raw[: len(raw) // 7])
    im = data["images"][0]
    ann = next(a for a in data["annotations"] if a["image_id"] == im["id"] and not a.get("iscrowd"))
    ann["segmentation"] = {"size": [im["height"] // 2, im["width"] // 2], "counts": [0, 100, 10000]}
    (root / "bad_rle.json").write_text(json.dumps(data))
    (root / "not_a_checkpoint.pth").write_text("a text file saved under a .pth name\n")
    return {"root": root, "ckpt": str(root / "ckpt.pth"), "not_ckpt": str(root / "not_a_checkpoint.pth"), "bad_image": str(root / "bad_images" / "cut.jpg"),
            "bad_rle": str(root / "bad_rle.json"), "image_id": im["id"], "ann_id": ann["id"]}


def _script(name: str) -> list[str]:
    return [str(REPO / "scripts" / name)]


def _cases(f, tmp: Path) -> dict:
    """case -> (command line after the interpreter, substrings the error line must hold)."""
    ann, imgs = str(COCO_ANN), str(COCO_IMAGES)
    missing = str(tmp / "nope")
    out = ["--output", str(tmp / "out")]
    train = _script("train_faster_rcnn.py") + ["--images", imgs, *out, "--max-iter", "1", "--no-eval"]
    ev = _script("eval.py") + ["--annotations", ann, "--images", imgs, "--no-progress", *out[:1], str(tmp / "r.json")]
    pred = _script("predict.py") + ["--input", imgs, *out, "--device", "cpu"]
    return {
        "train: missing annotation file": (train + ["--annotations", missing + ".json"],
                                           [missing + ".json", "not found"]),
        "train: unknown config key": (train + ["--annotations", ann, "--config", "TRAIN.NO_SUCH_KEY=1"],
                                      ["TRAIN.NO_SUCH_KEY"]),
        "train: unknown model name": (train + ["--annotations", ann, "--model", "no_such_model"],
                                      ["no_such_model"]),
        "train_mask: RLE of another size": (
            _script("train_mask_rcnn.py") + ["--annotations", f["bad_rle"], "--images", imgs, *out, "--max-iter", "1",
                                             "--no-eval"],
            [f["bad_rle"], f"image id={f['image_id']}", f"annotation id={f['ann_id']}", "size"]),
        "eval: checkpoint of another architecture": (ev + ["--model", OTHER, "--weights", f["ckpt"]],
                                                     [OTHER, f["ckpt"], "MODE_MASK"]),
        "eval: weights file that is no checkpoint": (ev + ["--model", ENTRY, "--weights", f["not_ckpt"]],
                                                     [f["not_ckpt"], "not a PyTorch checkpoint"]),
        "predict: weights file that is no checkpoint": (pred + ["--model", ENTRY, "--weights", f["not_ckpt"]],
                                                        [f["not_ckpt"], "not a PyTorch checkpoint"]),
        "eval: unknown model name": (ev + ["--model", "no_such_model", "--random-weights"], ["no_such_model"]),
        "eval: missing weights file": (ev + ["--model", ENTRY, "--weights", missing + ".pth"], [missing + ".pth"]),
        "eval: unknown config key": (ev + ["--model", ENTRY, "--weights", f["ckpt"], "--config", "TEST.NO_SUCH_KEY=1"],
                                     ["TEST.NO_SUCH_KEY"]),
        "eval: missing results file": (_script("eval.py") + ["--annotations", ann, "--results", missing + ".json"],
                                       [missing + ".json"]),
        "predict: checkpoint of another architecture": (pred + ["--model", OTHER, "--weights", f["ckpt"]],
                                                        [OTHER, f["ckpt"]]),
        "predict: unknown model name": (pred + ["--model", "no_such_model", "--random-weights"], ["no_such_model"]),
        "predict: missing weights file": (pred + ["--model", ENTRY, "--weights", missing + ".pth"],
                                          [missing + ".pth"]),
        "predict: bad image": (_script("predict.py") + ["--input", f["bad_image"], *out, "--model", ENTRY, "--weights",
                                                        f["ckpt"], "--device", "cpu", "--config", *SMALL],
                               [f["bad_image"], "truncated"]),
        "weights: unknown model name": (["-m", "gluon_rcnn.cli.weights", "fetch", "no_such_model"], ["no_such_model"]),
    }


CASES = list(_cases({"bad_rle": "", "image_id": 0, "ann_id": 0, "ckpt": "", "bad_image": "", "not_ckpt": ""},
                    Path("/")))


@pytest.mark.parametrize("case", CASES)
def test_user_error_is_one_line_and_exit_2(files, tmp_path, case):
    argv, expected = _cases(files, tmp_path)[case]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", GLUON_RCNN_HOME=str(tmp_path / "home"))
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(k, None)
    r = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    shown = f"exit {r.returncode}\nstdout: {r.stdout[-1500:]}\nstderr: {r.stderr[-3000:]}"
    assert "Traceback" not in r.stdout + r.stderr, shown
    assert r.returncode == 2, shown
    errors = [ln for ln in r.stderr.splitlines() if "error:" in ln]
    assert len(errors) == 1, shown
    line = r.stderr.strip().splitlines()[-1]
    assert line == errors[0] and line.split("error: ", 1)[0] in ("", "predict.py: ", "eval.py: "), shown
    for s in expected:
        assert s in line, f"{s!r} not in the error line: {line}"
