"""The one evaluation driver (gluon_rcnn.engine.inference.evaluate_distributed), shared by the
trainer and scripts/eval.py:

* a failure on any rank (rank 0's scoring, or one rank's inference) ends every rank within
  seconds with an error naming it, instead of leaving the others in a collective until the
  process-group timeout;
* bad images the loader skips are counted and left out of the score;
* the AP and results JSON the trainer logs for its final checkpoint are exactly what
  scripts/eval.py gives for that checkpoint, in one process and under torchrun.
"""
from __future__ import annotations

import datetime
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from gluon_rcnn.data.coco import COCODetection
from gluon_rcnn.engine.inference import EvaluationError, evaluate_distributed

from conftest import COCO_ANN, COCO_IMAGES, need

REPO = Path(__file__).resolve().parents[1]
H, W = 20, 30


# --------------------------------------------------------------------------------------------
# a tiny synthetic dataset and a stand-in model (batches are opaque: len, image_ids, .to)
# --------------------------------------------------------------------------------------------
def make_gt(root: Path, n_images: int = 4) -> tuple[str, str]:
    """n H x W gray images, each with one box of category 5 covering the whole image."""
    images = [{"id": i + 1, "file_name": f"{i + 1}.png", "height": H, "width": W} for i in range(n_images)]
    anns = [{"id": i + 1, "image_id": i + 1, "category_id": 5, "bbox": [0, 0, W, H], "area": W * H, "iscrowd": 0}
            for i in range(n_images)]
    root.mkdir(parents=True, exist_ok=True)
    (root / "gt.json").write_text(json.dumps({"images": images, "annotations": anns,
                                              "categories": [{"id": 5, "name": "five"}]}))
    (root / "img").mkdir(exist_ok=True)
    for im in images:
        cv2.imwrite(str(root / "img" / im["file_name"]), np.full((H, W, 3), 128, np.uint8))
    return str(root / "gt.json"), str(root / "img")


def small_cfg():
    from gluon_rcnn.config import get_default_config

    cfg = get_default_config()
    cfg.update_args([f"PREPROC.TEST_SHORT_EDGE_SIZE={H}", f"PREPROC.MAX_SIZE={W}", "TEST.IMS_PER_GPU=1"])
    return cfg


class WholeImageModel(torch.nn.Module):
    """One whole-image detection (label 1) per image; ``fail_on_rank`` raises in its forward there."""

    def __init__(self, fail_on_rank: int | None = None):
        super().__init__()
        self.cfg = small_cfg()
        self.fail_on_rank = fail_on_rank

    def forward(self, batch):
        from gluon_rcnn.engine import dist

        if self.fail_on_rank == dist.get_rank():
            raise RuntimeError(f"boom in the forward pass on rank {dist.get_rank()}")
        return [{"boxes": torch.tensor([[0.0, 0.0, float(W), float(H)]]), "scores": torch.tensor([0.9]),
                 "labels": torch.tensor([1])} for _ in range(len(batch))]


# --------------------------------------------------------------------------------------------
# failures on one rank end every rank
# --------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _dist_worker(rank: int, world: int, port: int, ann: str, imgs: str, mode: str, out_dir: str) -> None:
    """One rank of a gloo world: evaluate, write what happened to out_dir/rank<r>.json, then keep
    the process group up until every rank has reported (as a trainer that logs an error and goes
    on would: nothing but the driver itself may unblock the others)."""
    import torch.distributed as tdist

    torch.set_num_threads(1)
    tdist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                             timeout=datetime.timedelta(seconds=300))
    ds = COCODetection(ann, imgs, train=False)
    if mode == "scoring":  # label 1 -> category 999, which the ground truth lacks: rank 0's scoring raises
        model, l2c = WholeImageModel(), {1: 999}
    else:  # rank 1's forward pass raises
        model, l2c = WholeImageModel(fail_on_rank=1), None
    t0 = time.monotonic()
    try:
        evaluate_distributed(model, ds, label_to_cat_id=l2c, progress=False, verbose=False)
        outcome = {"type": None, "msg": ""}
    except Exception as e:  # noqa: BLE001
        outcome = {"type": type(e).__name__, "msg": str(e), "is_runtime_error": isinstance(e, RuntimeError),
                   "is_evaluation_error": isinstance(e, EvaluationError)}
    outcome["seconds"] = time.monotonic() - t0
    path = Path(out_dir) / f"rank{rank}.json"
    path.with_suffix(".tmp").write_text(json.dumps(outcome))
    os.replace(path.with_suffix(".tmp"), path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not all((Path(out_dir) / f"rank{r}.json").exists() for r in range(world)):
        time.sleep(0.1)
    tdist.destroy_process_group()


def _run_two_ranks(tmp_path: Path, mode: str, timeout: float = 90.0) -> list[dict]:
    ann, imgs = make_gt(tmp_path / "data")
    out = tmp_path / "out"
    out.mkdir()
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_dist_worker, args=(r, 2, port, ann, imgs, mode, str(out))) for r in range(2)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(10)
    reports = {r: json.loads((out / f"rank{r}.json").read_text()) for r in range(2) if (out / f"rank{r}.json").exists()}
    assert not hung and len(reports) == 2, (f"rank(s) {hung} still running after {timeout:.0f} s (blocked in a "
                                            f"collective?); reports: {reports}")
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return [reports[0], reports[1]]


def test_rank0_scoring_failure_ends_every_rank(tmp_path):
    """Rank 0's pycocotools scoring raises (a category id the ground truth lacks): rank 0 raises
    its own error, rank 1 a RuntimeError naming it, both within seconds (rank 1 used to wait in
    the metrics broadcast until the 30-minute process-group timeout)."""
    r0, r1 = _run_two_ranks(tmp_path, "scoring")
    assert r0["type"] == "ResultsError" and "category_id 999 is not a category" in r0["msg"], r0
    assert r1["is_runtime_error"] and r1["is_evaluation_error"], r1
    assert "rank 0" in r1["msg"] and "ResultsError" in r1["msg"] and "category_id 999" in r1["msg"], r1
    assert r0["seconds"] < 30 and r1["seconds"] < 30, (r0, r1)


def test_inference_failure_on_one_rank_ends_every_rank(tmp_path):
    """Rank 1's forward pass raises: rank 1 raises it, rank 0 (which used to wait in the results
    gather) raises a RuntimeError naming rank 1's error."""
    r0, r1 = _run_two_ranks(tmp_path, "inference")
    assert r1["type"] == "RuntimeError" and "boom in the forward pass on rank 1" in r1["msg"], r1
    assert r0["is_evaluation_error"] and "rank 1" in r0["msg"] and "boom in the forward pass" in r0["msg"], r0
    assert r0["seconds"] < 30 and r1["seconds"] < 30, (r0, r1)


def test_single_process_failure_raises_the_original_error(tmp_path):
    from gluon_rcnn.engine.evaluate import ResultsError

    ann, imgs = make_gt(tmp_path)
    with pytest.raises(ResultsError, match="category_id 999"):
        evaluate_distributed(WholeImageModel(), COCODetection(ann, imgs, train=False), label_to_cat_id={1: 999},
                             progress=False, verbose=False)


# --------------------------------------------------------------------------------------------
# bad images: skipped by the dataset + collate, counted, not scored
# --------------------------------------------------------------------------------------------
def test_skipped_bad_images_are_counted_and_not_scored(tmp_path, capsys):
    ann, imgs = make_gt(tmp_path, n_images=4)
    (Path(imgs) / "3.png").write_bytes(b"not an image at all")
    ds = COCODetection(ann, imgs, train=False, skip_bad_images=True)
    out = evaluate_distributed(WholeImageModel(), ds, batch_size=2, progress=False, verbose=False,
                               label_to_cat_id={1: 5})
    assert out.image_ids == [1, 2, 4] and len(out.skipped) == 1 and "3.png" in out.skipped[0]
    assert sorted({r["image_id"] for r in out.results}) == [1, 2, 4]
    assert out.metrics["bbox"]["AP"] == 1.0  # image 3's box is not counted as missed

    # eval.py says how many it skipped (DATA.SKIP_BAD_IMAGES from --config or the checkpoint)
    import gluon_rcnn.cli.eval as ev

    model = WholeImageModel()
    model.cfg.update_args(["DATA.SKIP_BAD_IMAGES=True"])
    model.classes = ("five",)
    orig = ev._load_model
    ev._load_model = lambda name, weights, config: model
    try:
        rc = ev.main(["--annotations", ann, "--images", imgs, "--model", "m", "--random-weights", "--output",
                      str(tmp_path / "r.json"), "--no-progress", "--num-workers", "0", "--device", "cpu"])
    finally:
        ev._load_model = orig
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    assert "evaluated 3 images" in stdout and "skipped 1 bad image(s)" in stdout and "3.png" in stdout


# --------------------------------------------------------------------------------------------
# the trainer's logged AP and results == scripts/eval.py on the final checkpoint
# --------------------------------------------------------------------------------------------
# one class (person) so that even 2 iterations give a (tiny) non-zero AP to compare; score
# threshold 0 so that there are detections at all
TRAIN_CFG = ["PREPROC.TRAIN_SHORT_EDGE_SIZE=[128,128]", "PREPROC.TEST_SHORT_EDGE_SIZE=128", "PREPROC.MAX_SIZE=213",
             "TRAIN.IMS_PER_GPU=2", "TEST.RESULT_SCORE_THRESH=0.0", "TEST.RESULTS_PER_IM=50", "DATA.NUM_WORKERS=0",
             "TRAIN.LOG_PERIOD=1", "DATA.CLASS_NAMES=['person']", "DATA.NUM_CATEGORY=1"]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = "1"
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _coco128_subset(path: Path, first: int, n: int) -> Path:
    """Images first..first+n-1 (by id) of the COCO subset's images showing a person, with all their
    annotations and all 80 categories."""
    d = json.loads(need(COCO_ANN).read_text())
    person = next(c["id"] for c in d["categories"] if c["name"] == "person")
    has = {a["image_id"] for a in d["annotations"] if not a.get("iscrowd") and a["category_id"] == person}
    imgs = sorted((im for im in d["images"] if im["id"] in has), key=lambda im: im["id"])[first:first + n]
    ids = {im["id"] for im in imgs}
    path.write_text(json.dumps({"images": imgs, "annotations": [a for a in d["annotations"] if a["image_id"] in ids],
                                "categories": d["categories"]}))
    return path


@pytest.fixture(scope="module")
def trained(module_tmp):
    """2 iterations of the small zoo Faster R-CNN (person only) on 4 real COCO images, validated on 4 others."""
    root = module_tmp("train_eval")
    train = _coco128_subset(root / "train.json", 0, 4)
    val = _coco128_subset(root / "val.json", 4, 4)
    out = root / "run"
    cmd = [sys.executable, str(REPO / "scripts" / "train_faster_rcnn.py"), "--annotations", str(train), "--images",
           str(COCO_IMAGES), "--val-annotations", str(val), "--val-images", str(COCO_IMAGES),
           "--output", str(out), "--model", "faster_rcnn_fpn_resnet18_v1b_coco", "--max-iter", "2", "--seed", "0",
           "--config", *TRAIN_CFG]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300, cwd=str(REPO))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    evals = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"eval"' in line]
    assert evals and evals[-1]["iteration"] == 2, evals
    return {"val": val, "out": out, "logged": evals[-1]["eval"],
            "results": json.loads((out / "eval_0000002.json").read_text())}


def _eval_py(trained, out_json: Path, nproc: int = 1) -> subprocess.CompletedProcess:
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                                    f"--nproc_per_node={nproc}"]
    cmd = [*launcher, str(REPO / "scripts" / "eval.py"), "--annotations", str(trained["val"]), "--images",
           str(COCO_IMAGES), "--model", "faster_rcnn_fpn_resnet18_v1b_coco", "--weights",
           str(trained["out"] / "model_final.pth"), "--output", str(out_json), "--num-workers", "0", "--no-progress"]
    return subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300, cwd=str(REPO))


def _printed_metrics(stdout: str) -> dict:
    lines = [line for line in stdout.splitlines() if line.startswith("metrics: ")]
    assert len(lines) == 1, stdout
    return json.loads(lines[0][len("metrics: "):])


def _printed_table_ap(stdout: str) -> float:
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if cells[0] == "bbox":
            return float(cells[1])
    raise AssertionError(f"no bbox row in:\n{stdout}")


def test_eval_py_equals_the_trainers_final_evaluation(trained, tmp_path):
    """scripts/eval.py on the final checkpoint (its config, carried in the checkpoint, sets the
    test size and the score threshold) writes exactly the trainer's eval JSON and prints the AP
    the trainer logged."""
    r = _eval_py(trained, tmp_path / "r.json")
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    results = json.loads((tmp_path / "r.json").read_text())
    assert len(results) > 0, "no detections: the comparison would prove nothing"
    assert results == trained["results"]
    printed = _printed_metrics(r.stdout)
    assert printed == trained["logged"]
    assert _printed_table_ap(r.stdout) == round(trained["logged"]["bbox/AP"], 3)
    print(f"\n{len(results)} detections, identical; bbox/AP logged {trained['logged']['bbox/AP']!r}, "
          f"printed {printed['bbox/AP']!r}")


def test_eval_py_under_torchrun_equals_the_trainer(trained, tmp_path):
    r = _eval_py(trained, tmp_path / "r2.json", nproc=2)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    assert "on 2 processes" in r.stdout
    results = json.loads((tmp_path / "r2.json").read_text())
    assert len(results) > 0 and results == trained["results"]
    assert _printed_metrics(r.stdout) == trained["logged"]


def test_eval_py_optimize_flags_reach_the_model(tmp_path, capsys):
    """--optimize bf16 [--box-head-bf16] calls optimize_for_inference with the box head's precision;
    --box-head-bf16 alone is refused."""
    import gluon_rcnn.cli.eval as ev

    ann, imgs = make_gt(tmp_path, n_images=2)
    args = ["--annotations", ann, "--images", imgs, "--model", "m", "--random-weights", "--no-progress",
            "--num-workers", "0", "--device", "cpu"]
    with pytest.raises(SystemExit) as e:
        ev.main(args + ["--box-head-bf16"])
    assert e.value.code == 2 and "--box-head-bf16 goes with --optimize bf16" in capsys.readouterr().err
    calls = []
    model = WholeImageModel()
    model.classes = ("five",)
    model.optimize_for_inference = lambda precision, fp32_box_head=True: calls.append((precision, fp32_box_head))
    orig = ev._load_model
    ev._load_model = lambda name, weights, config: model
    try:
        for extra in (["--optimize", "bf16"], ["--optimize", "bf16", "--box-head-bf16"], ["--optimize", "fp32"]):
            assert ev.main(args + extra + ["--output", str(tmp_path / "r.json")]) == 0
    finally:
        ev._load_model = orig
    assert calls == [("bf16", True), ("bf16", False), ("fp32", True)]
