"""gluon_rcnn.engine.evaluate and scripts/eval.py: COCO AP (against pycocotools run directly),
VOC per-class AP@0.5, results conversion/validation, and inference plumbing."""
from __future__ import annotations

import contextlib
import copy
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from gluon_rcnn.data.coco import COCODetection
from gluon_rcnn.engine.evaluate import (COCO_METRICS, ResultsError, coco_evaluate, detections_to_coco, load_results,
                                        print_ap_table, voc_ap, voc_ap_per_class)
from gluon_rcnn.engine.inference import evaluate_distributed

from conftest import COCO_ANN, need

REPO = Path(__file__).resolve().parents[1]
EVAL_PY = REPO / "scripts" / "eval.py"


def gt_as_detections(ann_file, shift_frac=0.0):
    data = json.loads(Path(ann_file).read_text())
    out = []
    for a in data["annotations"]:
        if a.get("iscrowd", 0):
            continue
        x, y, w, h = a["bbox"]
        out.append({"image_id": a["image_id"], "category_id": a["category_id"],
                    "bbox": [x + shift_frac * w, y, w, h], "score": 1.0})
    return out


def run_eval_py(*args):
    p = subprocess.run([sys.executable, str(EVAL_PY), *map(str, args)], capture_output=True, text=True,
                       cwd=str(REPO), timeout=300)
    return p


def parse_table(stdout: str, row: str) -> dict:
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if cells[0] == row:
            return {k: (float(v) if v != "n/a" else None) for k, v in zip(COCO_METRICS, cells[1:])}
    raise AssertionError(f"no {row!r} row in:\n{stdout}")


def parse_map(stdout: str) -> float:
    for line in stdout.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if cells[0] == "mAP":
            return float(cells[1])
    raise AssertionError(f"no mAP row in:\n{stdout}")


# --------------------------------------------------------------------------------------------
# scripts/eval.py --results on the COCO subset (tests/data/coco_subset)
# --------------------------------------------------------------------------------------------
def test_eval_py_ground_truth_as_detections_gives_ap_1(tmp_path):
    need(COCO_ANN)
    res = tmp_path / "gt.json"
    res.write_text(json.dumps(gt_as_detections(COCO_ANN)))
    p = run_eval_py("--annotations", COCO_ANN, "--results", res, "--voc")
    assert p.returncode == 0, p.stderr
    bbox = parse_table(p.stdout, "bbox")
    assert bbox["AP"] == 1.0 and bbox["AP50"] == 1.0 and bbox["AP75"] == 1.0
    assert parse_map(p.stdout) == 1.0
    assert "person" in p.stdout  # per-class rows are named


def test_eval_py_matches_pycocotools_on_shifted_boxes(tmp_path):
    need(COCO_ANN)
    dets = gt_as_detections(COCO_ANN, shift_frac=0.10)
    res = tmp_path / "shifted.json"
    res.write_text(json.dumps(dets))
    p = run_eval_py("--annotations", COCO_ANN, "--results", res)
    assert p.returncode == 0, p.stderr
    printed = parse_table(p.stdout, "bbox")

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(COCO_ANN))
        ev = COCOeval(gt, gt.loadRes(copy.deepcopy(dets)), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    for k, v in zip(COCO_METRICS, ev.stats[:6]):
        assert printed[k] == (None if v < 0 else round(float(v), 3)), k
    assert 0.3 < printed["AP"] < 0.9  # a 10% shift hurts at high IoU, not at 0.5
    assert printed["AP50"] == 1.0


def test_eval_py_reports_bad_results_entry(tmp_path):
    need(COCO_ANN)
    dets = gt_as_detections(COCO_ANN)[:5]
    dets[3]["bbox"] = [1, 2, 3]
    res = tmp_path / "bad.json"
    res.write_text(json.dumps(dets))
    p = run_eval_py("--annotations", COCO_ANN, "--results", res)
    assert p.returncode == 2
    assert "entry 3" in p.stderr and str(res) in p.stderr


def test_eval_py_usage_errors():
    p = run_eval_py("--results", "x.json")
    assert p.returncode != 0 and "--annotations" in p.stderr


# --------------------------------------------------------------------------------------------
# a small synthetic ground truth
# --------------------------------------------------------------------------------------------
def make_gt(tmp_path, anns, cats=((1, "a"), (2, "b")), n_images=2, h=50, w=60):
    images = [{"id": i + 1, "file_name": f"{i + 1}.png", "height": h, "width": w} for i in range(n_images)]
    for i, a in enumerate(anns):
        a.setdefault("id", i + 1)
        a.setdefault("iscrowd", 0)
        a.setdefault("area", a["bbox"][2] * a["bbox"][3])
    data = {"images": images, "annotations": anns, "categories": [{"id": c, "name": n} for c, n in cats]}
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(data))
    imgdir = tmp_path / "img"
    imgdir.mkdir(exist_ok=True)
    for im in images:
        cv2.imwrite(str(imgdir / im["file_name"]), np.full((h, w, 3), 128, np.uint8))
    return COCODetection(path, imgdir, train=False)


def det(image_id, cat, bbox, score):
    return {"image_id": image_id, "category_id": cat, "bbox": list(map(float, bbox)), "score": score}


def test_voc_ap_perfect_and_hand_made(tmp_path):
    ds = make_gt(tmp_path, [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
        {"image_id": 1, "category_id": 1, "bbox": [20, 20, 10, 10]},
        {"image_id": 2, "category_id": 2, "bbox": [5, 5, 20, 20]},
    ])
    perfect = [det(1, 1, [0, 0, 10, 10], 0.9), det(1, 1, [20, 20, 10, 10], 0.8), det(2, 2, [5, 5, 20, 20], 0.7)]
    aps, m = voc_ap_per_class(ds.coco, perfect)
    assert aps == {1: 1.0, 2: 1.0} and m == 1.0

    # class 1: TP (0.9), FP far away (0.8), TP (0.7) -> rec .5 .5 1, prec 1 .5 .667 -> AP = .5*1 + .5*2/3
    # class 2: a duplicate of a matched box is a false positive: TP (0.9), FP (0.5) -> AP 1
    dets = [det(1, 1, [0, 0, 10, 10], 0.9), det(1, 1, [40, 40, 5, 5], 0.8), det(1, 1, [21, 20, 10, 10], 0.7),
            det(2, 2, [5, 5, 20, 20], 0.9), det(2, 2, [5, 5, 20, 19], 0.5)]
    aps, m = voc_ap_per_class(ds.coco, dets)
    assert aps[1] == pytest.approx(5 / 6)
    assert aps[2] == pytest.approx(1.0)
    assert m == pytest.approx((5 / 6 + 1) / 2)

    # a miss: class 2's only detection is in the wrong image -> AP 0 (and class 1 has none -> 0)
    aps, _ = voc_ap_per_class(ds.coco, [det(1, 2, [5, 5, 20, 20], 0.9)])
    assert aps[2] == 0.0 and aps[1] == 0.0

    # IoU must exceed the threshold: a box with IoU exactly 0.5 is not a match
    aps, _ = voc_ap_per_class(ds.coco, [det(2, 2, [5, 5, 20, 10], 0.9)])  # IoU = 200/400
    assert aps[2] == 0.0
    aps, _ = voc_ap_per_class(ds.coco, [det(2, 2, [5, 5, 20, 10], 0.9)], iou=0.49)
    assert aps[2] == 1.0


def test_voc_ap_ignores_crowd_and_skips_classes_without_gt(tmp_path):
    ds = make_gt(tmp_path, [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]},
        {"image_id": 2, "category_id": 1, "bbox": [0, 0, 40, 40], "iscrowd": 1},
    ], cats=((1, "a"), (2, "b"), (3, "c")))
    # a detection on the crowd region is neither TP nor FP; the real box is found -> AP 1
    dets = [det(2, 1, [0, 0, 40, 40], 0.95), det(1, 1, [0, 0, 10, 10], 0.9)]
    aps, m = voc_ap_per_class(ds.coco, dets)
    assert aps[1] == 1.0
    assert math.isnan(aps[2]) and math.isnan(aps[3]) and m == 1.0
    buf = io.StringIO()
    print_ap_table(aps, m, {1: "a", 2: "b", 3: "c"}, file=buf)
    assert "n/a" in buf.getvalue() and "mAP" in buf.getvalue()


def test_voc_ap_all_points():
    assert voc_ap(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 2 / 3])) == pytest.approx(5 / 6)
    assert voc_ap(np.array([0.25, 0.5]), np.array([1.0, 1.0])) == pytest.approx(0.5)
    assert voc_ap(np.array([]), np.array([])) == 0.0
    # TP FP FP TP TP with 3 positives: the precision envelope lifts 0.5 to 0.6 on the middle step
    rec = np.array([1, 1, 1, 2, 3]) / 3
    prec = np.array([1, 1 / 2, 1 / 3, 2 / 4, 3 / 5])
    assert voc_ap(rec, prec) == pytest.approx((1 + 0.6 + 0.6) / 3)


def test_coco_evaluate_empty_results_prints_zeros(tmp_path, capsys):
    ds = make_gt(tmp_path, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]}])
    m = coco_evaluate(ds.coco, [], ("bbox", "segm"))
    assert m == {t: {k: 0.0 for k in COCO_METRICS} for t in ("bbox", "segm")}
    out = capsys.readouterr().out
    assert parse_table(out, "bbox")["AP"] == 0.0 and parse_table(out, "segm")["AP"] == 0.0


def test_coco_evaluate_rejects_unknown_ids(tmp_path):
    ds = make_gt(tmp_path, [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 10]}])
    with pytest.raises(ResultsError, match="entry 1: image_id 99"):
        coco_evaluate(ds.coco, [det(1, 1, [0, 0, 1, 1], 1.0), det(99, 1, [0, 0, 1, 1], 1.0)])
    with pytest.raises(ResultsError, match="category_id 7"):
        coco_evaluate(ds.coco, [det(1, 7, [0, 0, 1, 1], 1.0)])


def test_load_results_names_bad_entry(tmp_path):
    good = det(1, 1, [0, 0, 10, 10], 0.5)
    p = tmp_path / "r.json"
    p.write_text(json.dumps([good, good, {k: v for k, v in good.items() if k != "score"}]))
    with pytest.raises(ResultsError, match=r"entry 2 has no 'score'"):
        load_results(str(p))
    p.write_text(json.dumps([good, dict(good, bbox=[0, 0, -1, 3])]))
    with pytest.raises(ResultsError, match="entry 1"):
        load_results(str(p))
    p.write_text(json.dumps({"not": "a list"}))
    with pytest.raises(ResultsError, match="list"):
        load_results(str(p))
    p.write_text(json.dumps([good]))
    assert load_results(str(p)) == [good]


def test_detections_to_coco_boxes_labels_masks_and_segm_ap(tmp_path):
    h, w = 50, 60
    m1 = np.zeros((h, w), np.uint8)
    m1[10:30, 5:25] = 1
    m2 = np.zeros((h, w), np.uint8)
    m2[30:45, 40:58] = 1
    polys = [[5, 10, 25, 10, 25, 30, 5, 30], [40, 30, 58, 30, 58, 45, 40, 45]]
    ds = make_gt(tmp_path, [
        {"image_id": 1, "category_id": 7, "bbox": [5, 10, 20, 20], "segmentation": [polys[0]]},
        {"image_id": 1, "category_id": 3, "bbox": [40, 30, 18, 15], "segmentation": [polys[1]]},
    ], cats=((3, "cat"), (7, "dog")), n_images=1, h=h, w=w)
    probs = torch.from_numpy(np.stack([m1, m2])[:, None].astype(np.float32)) * 0.9 + 0.05  # 0.95 / 0.05
    outputs = [{"boxes": torch.tensor([[5.0, 10, 25, 30], [40, 30, 58, 45]]), "scores": torch.tensor([0.9, 0.8]),
                "labels": torch.tensor([2, 1]), "masks": probs}]
    res = detections_to_coco(outputs, [1], ds.label_to_cat_id)
    assert [r["category_id"] for r in res] == [7, 3]
    assert res[0]["bbox"] == [5.0, 10.0, 20.0, 20.0] and res[0]["score"] == pytest.approx(0.9)
    assert isinstance(res[0]["segmentation"]["counts"], str)
    np.testing.assert_array_equal(mask_utils.decode(res[1]["segmentation"]), m2)
    json.dumps(res)  # serialisable as is
    m = coco_evaluate(ds.coco, res, ("bbox", "segm"), verbose=False)
    assert m["bbox"]["AP"] == pytest.approx(1.0) and m["segm"]["AP"] == pytest.approx(1.0)  # same pixels
    # masks off: no segmentation; an unknown label is an error
    assert "segmentation" not in detections_to_coco(outputs, [1], ds.label_to_cat_id, with_masks=False)[0]
    with pytest.raises(ValueError, match="label 5"):
        detections_to_coco([dict(outputs[0], labels=torch.tensor([5, 1]))], [1], ds.label_to_cat_id)
    assert detections_to_coco([{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0),
                                "masks": torch.zeros(0, 1, h, w)}], [1], ds.label_to_cat_id) == []


def test_segm_area_ranges_use_the_mask_area(tmp_path):
    """A false positive with a small mask but a huge box must count among the small objects."""
    h = w = 120
    ds = make_gt(tmp_path, [{"image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 10],
                             "segmentation": [[5, 5, 15, 5, 15, 15, 5, 15]], "area": 100}],
                 cats=((1, "a"),), n_images=1, h=h, w=w)
    far = np.zeros((h, w), np.uint8)
    far[80:90, 80:90] = 1
    gt_mask = ds.coco.annToMask(ds.coco.dataset["annotations"][0])
    masks = torch.from_numpy(np.stack([far, gt_mask])[:, None].astype(np.float32))
    res = detections_to_coco([{"boxes": torch.tensor([[0.0, 0, 110, 110], [5, 5, 15, 15]]),
                               "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([1, 1]),
                               "masks": masks}], [1], ds.label_to_cat_id)
    m = coco_evaluate(ds.coco, res, ("segm",), verbose=False)["segm"]
    assert m["AP"] == pytest.approx(0.5) and m["APs"] == pytest.approx(0.5)


def small_test_cfg(h=20, w=30, ims_per_gpu=1):
    """A config whose test resize leaves h x w images as they are."""
    from gluon_rcnn.config import get_default_config

    cfg = get_default_config()
    cfg.update_args([f"PREPROC.TEST_SHORT_EDGE_SIZE={min(h, w)}", f"PREPROC.MAX_SIZE={max(h, w)}",
                     f"TEST.IMS_PER_GPU={ims_per_gpu}"])
    return cfg


class WholeImageModel(torch.nn.Module):
    """One detection per image, the whole (h x w) image with label 1, whatever the batch layout;
    records the image ids of each batch it saw. The driver treats batches as opaque (``len``,
    ``image_ids``, ``.to``), and so does this stand-in."""

    def __init__(self, h=20, w=30, cfg=None):
        super().__init__()
        self.h, self.w = h, w
        self.cfg = cfg if cfg is not None else small_test_cfg(h, w)
        self.calls = []

    def forward(self, batch):
        assert not self.training
        self.calls.append(list(batch.image_ids))
        return [{"boxes": torch.tensor([[0.0, 0.0, float(self.w), float(self.h)]]), "scores": torch.tensor([0.5]),
                 "labels": torch.tensor([1])} for _ in range(len(batch))]


def test_driver_batches_maps_labels_and_limits(tmp_path):
    ds = make_gt(tmp_path, [{"image_id": 1, "category_id": 9, "bbox": [0, 0, 10, 10]}],
                 cats=((9, "nine"), (4, "four")), n_images=3, h=20, w=30)
    model = WholeImageModel().train()
    out = evaluate_distributed(model, ds, batch_size=2, device="cpu", progress=False, verbose=False)
    assert model.training  # restored
    assert model.calls == [[1, 2], [3]]
    metrics, res = out
    assert [r["image_id"] for r in res] == [1, 2, 3] and out.image_ids == [1, 2, 3] and out.skipped == []
    assert all(r["category_id"] == 4 and r["bbox"] == [0.0, 0.0, 30.0, 20.0] for r in res)  # label 1 = cat 4
    assert set(metrics) == {"bbox"}
    # TEST.IMS_PER_GPU is the default batch size; --limit runs and scores the first N images only
    model = WholeImageModel(cfg=small_test_cfg(ims_per_gpu=3))
    out = evaluate_distributed(model, ds, progress=False, verbose=False, limit=1)
    assert model.calls == [[1]] and out.image_ids == [1] and len(out.results) == 1


class _FakeBatch:
    def __init__(self, ids, skipped=()):
        self.image_ids, self.skipped = list(ids), list(skipped)

    def __len__(self):
        return len(self.image_ids)

    def to(self, device, non_blocking=False):
        return _FakeBatch(self.image_ids)  # as ImageList.to would, minus the tensors


def test_driver_scores_only_evaluated_images_and_reports_skipped(tmp_path, monkeypatch, caplog):
    """Bad images the loader dropped (``batch.skipped``) are counted, not scored: their ground truth
    does not count as missed, and n_evaluated + n_skipped must equal the dataset's length."""
    import gluon_rcnn.engine.inference as inf

    anns = [{"image_id": i, "category_id": 1, "bbox": [0, 0, 30, 20]} for i in (1, 2, 3)]
    ds = make_gt(tmp_path, anns, cats=((1, "a"),), n_images=3, h=20, w=30)
    batches = [(_FakeBatch([1], skipped=["img/2.png: cannot decode the image file (image id 2)"]), []),
               (_FakeBatch([3]), [])]
    monkeypatch.setattr(inf, "build_test_loader", lambda *a, **k: batches)
    model = WholeImageModel()
    with caplog.at_level("WARNING", logger="gluon_rcnn.engine.inference"):
        out = evaluate_distributed(model, ds, progress=False, verbose=False)
    assert model.calls == [[1], [3]]
    assert out.image_ids == [1, 3] and out.skipped == ["img/2.png: cannot decode the image file (image id 2)"]
    assert out.metrics["bbox"]["AP"] == 1.0  # image 2's box is not a miss: it was never evaluated
    assert "1 bad image(s) skipped" in caplog.text
    # a loader that loses images without saying so is an error
    monkeypatch.setattr(inf, "build_test_loader", lambda *a, **k: [(_FakeBatch([1]), []), (_FakeBatch([3]), [])])
    with pytest.raises(RuntimeError, match="evaluated 2 images and skipped 0, but the dataset has 3"):
        evaluate_distributed(model, ds, progress=False, verbose=False)


def test_main_runs_a_model_and_maps_its_class_names(tmp_path, monkeypatch, capsys):
    """eval.py's model path with a stand-in for get_model: class names decide the category ids."""
    import gluon_rcnn.cli.eval as ev

    ds = make_gt(tmp_path, [{"image_id": i, "category_id": 9, "bbox": [0, 0, 30, 20]} for i in (1, 2, 3)],
                 cats=((4, "four"), (9, "nine")), n_images=3, h=20, w=30)
    model = WholeImageModel()
    model.classes = ("nine", "four")  # label 1 = 'nine' = category 9, not the id-order category 4
    seen = {}

    def fake_load(name, weights, config):
        seen.update(name=name, weights=weights, config=config)
        return model

    monkeypatch.setattr(ev, "_load_model", fake_load)
    out = tmp_path / "dets.json"
    rc = ev.main(["--annotations", str(ds.annotation_file), "--images", str(ds.image_dir), "--model", "m",
                  "--weights", "w.pth", "--config", "TEST.IMS_PER_GPU=2", "--output", str(out), "--voc",
                  "--no-progress", "--num-workers", "0", "--device", "cpu", "--batch-size", "2"])
    assert rc == 0
    assert seen == {"name": "m", "weights": "w.pth", "config": ["TEST.IMS_PER_GPU=2"]}
    dets = load_results(str(out))
    assert [d["category_id"] for d in dets] == [9, 9, 9]
    stdout = capsys.readouterr().out
    assert parse_table(stdout, "bbox")["AP"] == 1.0 and parse_map(stdout) == 1.0

    # --limit scores only the images that were run
    rc = ev.main(["--annotations", str(ds.annotation_file), "--images", str(ds.image_dir), "--model", "m",
                  "--random-weights", "--output", str(out), "--no-progress", "--num-workers", "0", "--device", "cpu",
                  "--limit", "1"])
    assert rc == 0 and len(load_results(str(out))) == 1
    assert parse_table(capsys.readouterr().out, "bbox")["AP"] == 1.0

    # a model whose classes cannot be lined up with the dataset is refused
    model.classes = ("x", "y", "z")
    assert ev.main(["--annotations", str(ds.annotation_file), "--images", str(ds.image_dir), "--model", "m",
                    "--random-weights", "--output", str(out), "--no-progress", "--num-workers", "0",
                    "--device", "cpu"]) == 2
    assert "3 classes" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# no weights, no detections: --weights FILE | --pretrained | --random-weights
# --------------------------------------------------------------------------------------------
def _eval_model_argv(ds, out, *extra):
    return ["--annotations", str(ds.annotation_file), "--images", str(ds.image_dir), "--model",
            "faster_rcnn_fpn_resnet18_v1b_rgz", "--output", str(out), "--no-progress", "--num-workers", "0",
            "--device", "cpu", *extra]


def _stand_in_loader(monkeypatch, model):
    import gluon_rcnn.cli.eval as ev

    seen = []

    def fake_load(name, weights, config):
        seen.append(weights)
        return model

    monkeypatch.setattr(ev, "_load_model", fake_load)
    return ev, seen


def test_eval_main_refuses_a_model_without_weights(tmp_path, monkeypatch, capsys):
    """eval.py --model without weights used to score a randomly initialised model without a word."""
    ds = make_gt(tmp_path, [det(1, 1, [0, 0, 30, 20], 1.0)], n_images=1)
    ev, seen = _stand_in_loader(monkeypatch, WholeImageModel())
    with pytest.raises(SystemExit) as e:
        ev.main(_eval_model_argv(ds, tmp_path / "d.json"))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "no weights" in err and "--weights FILE" in err and "--pretrained" in err and "--random-weights" in err
    assert seen == [] and not (tmp_path / "d.json").exists()  # refused before any model was built
    # the zoo entry has no published weights: --pretrained is refused too, naming the entry
    with pytest.raises(SystemExit) as e:
        ev.main(_eval_model_argv(ds, tmp_path / "d.json", "--pretrained"))
    assert e.value.code == 2 and "no published weights" in capsys.readouterr().err and seen == []
    # weights options are for model runs only, and exclusive
    with pytest.raises(SystemExit) as e:
        ev.main(["--annotations", str(ds.annotation_file), "--results", "r.json", "--random-weights"])
    assert e.value.code == 2 and "--random-weights" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        ev.main(_eval_model_argv(ds, tmp_path / "d.json", "--weights", "w.pth", "--random-weights"))
    assert e.value.code == 2 and "not allowed with" in capsys.readouterr().err
    # the refusal is documented in --help
    with pytest.raises(SystemExit) as e:
        ev.main(["--help"])
    assert e.value.code == 0 and "refused (exit 2)" in capsys.readouterr().out


def test_eval_main_random_weights_runs_with_a_loud_warning(tmp_path, monkeypatch, capsys):
    ds = make_gt(tmp_path, [det(1, 1, [0, 0, 30, 20], 1.0)], n_images=1, h=20, w=30)
    ev, seen = _stand_in_loader(monkeypatch, WholeImageModel())
    assert ev.main(_eval_model_argv(ds, tmp_path / "d.json", "--random-weights")) == 0
    assert seen == [None]  # get_model(pretrained=None): random init
    warning = [line for line in capsys.readouterr().err.splitlines() if "WARNING" in line]
    assert len(warning) == 1 and "--random-weights" in warning[0] and "noise" in warning[0]


def test_eval_main_pretrained_uses_the_entry_weights(tmp_path, monkeypatch, capsys):
    import gluon_rcnn.model_zoo as zoo

    ds = make_gt(tmp_path, [det(1, 1, [0, 0, 30, 20], 1.0)], n_images=1, h=20, w=30)
    ev, seen = _stand_in_loader(monkeypatch, WholeImageModel())
    entry = dict(zoo.get_entry("faster_rcnn_fpn_resnet18_v1b_rgz"), weights={"url": "https://x/w.pth", "sha256": ""})
    monkeypatch.setattr(zoo, "get_entry", lambda name: entry)
    assert ev.main(_eval_model_argv(ds, tmp_path / "d.json", "--pretrained")) == 0
    assert seen == [True]  # get_model(pretrained=True): the entry's published weights
    assert "WARNING" not in capsys.readouterr().err
