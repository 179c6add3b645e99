"""The detectron2 importer and the ``detectron2`` rule profile against detectron2's own models, without detectron2.

``tests/data/detectron2_reference/*.npz`` hold small outputs of detectron2's unmodified model (commit 02b5c4e2,
built from its source for the CPU by ``bench/detectron2_reference.sh``; ``DefaultPredictor``'s steps, its test
transform at short edge 320 / max 512, 200 proposals instead of 1000 to keep the test fast) for four zoo
configs: Faster R-CNN R50-C4, Mask R-CNN R50-FPN, Cascade
Mask R-CNN R50-FPN and the from-scratch GN Mask R-CNN; the resized images (detectron2's PIL resize, lossless
PNG) beside them. Each holds the run's proposals, its final boxes, scores and classes (resized and original
pixels), the first box stage's class logits on the first 64 proposals, one channel of p3 (or res4), and
the detections' mask probabilities and pasted masks (the first few), plus the state dict's names and shapes.

The weights are not stored: the reference drew them with :func:`detectron2_weights.spread` (numpy
``RandomState(seed)``, names in sorted order) and wrote them as a zoo-layout ``.pkl``; this test draws the same
numbers, pickles them in that layout, and converts them with :func:`gluon_rcnn.convert.from_detectron2` into
the matching ``d2_*`` zoo entry's config (strict), then runs the comparison of ``bench/compare_detectron2.py``
(tests/detectron2_compare.py). The full stage-by-stage comparison (every feature map, the RPN per level,
anchors, every cascade stage, mask logits) at 800/1333 on three images is in docs/results.md; regenerate
these files with ``python bench/compare_detectron2.py --write-test-reference NAME PREFIX.meta.json``.
"""
from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import detectron2_compare as cmp
from detectron2_weights import spread

DATA = Path(__file__).parent / "data" / "detectron2_reference"
MANIFESTS = Path(__file__).parent / "data" / "detectron2_manifests"

#: reference file → the detectron2 config it was run with
CASES = {"faster_c4": "COCO-Detection/faster_rcnn_R_50_C4_1x.yaml",
         "mask_fpn": "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml",
         "cascade_mask_fpn": "Misc/cascade_mask_rcnn_R_50_FPN_3x.yaml",
         "scratch_gn_mask_fpn": "Misc/scratch_mask_rcnn_R_50_FPN_9x_gn.yaml"}


def _load(name):
    path = DATA / f"{name}.npz"
    if not path.exists():
        pytest.fail(f"{path} is missing")
    z = np.load(path)
    ref = {k: z[k] for k in z.files if k != "meta_json"}
    meta = json.loads(str(z["meta_json"]))
    ref["resized_bgr"] = np.asarray(Image.open(DATA / meta["image"]).convert("RGB"))[:, :, ::-1]
    return meta, ref


def _zoo_pickle(meta) -> bytes:
    """The reference's weights, drawn again, in the published files' layout (read by the restricted unpickler)."""
    values = spread(meta["shapes"], meta["seed"], meta["input_std"])
    return pickle.dumps({"model": values, "__author__": "Detectron2 Model Zoo"}, protocol=2)


@pytest.mark.parametrize("name", sorted(CASES))
def test_reference_is_the_case(name):
    meta, _ = _load(name)
    assert meta["config"] == CASES[name]
    assert meta["min_size_test"] == 320 and meta["detectron2_commit"] == "02b5c4e2"
    assert meta["post_nms_topk_test"] == 200  # fewer RoIs than the zoo's 1000: the heads dominate the test's time


@pytest.mark.parametrize("name", sorted(CASES))
def test_manifest_lists_what_detectron2_builds(name):
    """The hand-derived manifest of the published .pkl = the state dict of detectron2's own model."""
    meta, _ = _load(name)
    manifest = json.loads((MANIFESTS / (cmp.kind_of(meta["config"]).replace("/", "__") + ".json")).read_text())
    listed = {v["name"]: list(v["shape"]) for v in manifest["variables"]}
    assert sorted(set(listed) ^ set(meta["shapes"])) == []
    assert {k: s for k, s in meta["shapes"].items() if listed[k] != s} == {}


@pytest.mark.parametrize("name", sorted(CASES))
def test_detections_equal_detectron2(name):
    meta, ref = _load(name)
    res = cmp.compare_arrays(meta, ref, _zoo_pickle(meta), from_d2_proposals=False)
    rows = {r[0]: r for r in res["rows"]}
    f = res["final"]
    print(name, res["entry"], rows["proposals (sets)"], f)
    props = rows["proposals (sets)"]
    assert props[3] == 0 and props[2] <= 0.01, props              # every proposal found, within 0.01 px
    feat = "p3 (channel 0)" if "p3_ch0" in ref else "res4 (channel 0)"
    assert rows[feat][3] <= 1e-5, rows[feat]                      # float32 noise, relative to the largest value
    assert rows["stage 0 class logits"][3] <= 1e-5, rows["stage 0 class logits"]
    assert len(ref["boxes"]) >= 50                                # a real test: many detections
    assert f["unpaired"] == 0, f
    assert f["box_px"] <= cmp.BOX_TOL and f["box_px_orig"] <= cmp.BOX_TOL, f
    assert f["score"] <= cmp.SCORE_TOL, f
    if "mask_probs" in ref:
        assert f["mask_prob"] <= 1e-3, f                          # stored as float16 (3 significant digits)
        # a pasted pixel may fall on the other side of 0.5 only where the probability is 0.5 to float noise
        assert f["mask_differ_margin"] <= 1e-4, f
    assert cmp.passed(res)


def test_spread_rule():
    """Hand-checked draws: names in sorted order, one rule per kind of tensor."""
    shapes = {"a.norm.weight": (3,), "b.stem.conv1.weight": (2, 3, 7, 7), "c.cls_score.weight": (5, 4),
              "d.deconv.weight": (8, 2, 2, 2), "e.bias": (2,)}
    w = spread(shapes, 0, input_std=58.0)
    rng = np.random.RandomState(0)
    np.testing.assert_array_equal(w["a.norm.weight"], rng.uniform(0.5, 1.0, size=3).astype("float32"))
    np.testing.assert_array_equal(w["b.stem.conv1.weight"],
                                  rng.normal(0, np.sqrt(1 / 147) / 58, size=(2, 3, 7, 7)).astype("float32"))
    np.testing.assert_array_equal(w["c.cls_score.weight"],
                                  rng.normal(0, 4 * np.sqrt(1 / 4), size=(5, 4)).astype("float32"))
    np.testing.assert_array_equal(w["d.deconv.weight"],
                                  rng.normal(0, np.sqrt(1 / 32), size=(8, 2, 2, 2)).astype("float32"))
    np.testing.assert_array_equal(w["e.bias"], rng.normal(0, 0.1, size=2).astype("float32"))
