"""The GluonCV importer against GluonCV's own outputs, without MXNet.

``tests/data/gluoncv_reference/mxnet_saved.params`` was written by MXNet 1.9.1's ``mx.nd.save`` (dense
float32/float16/float64/int32/uint8/int64 arrays, a row-sparse and a CSR array);
``mxnet_saved_expected.npz`` holds MXNet's ``asnumpy()`` of each: the reader must give the same bytes.

``faster_c4_s320.npz`` holds what ``bench/gluoncv_reference.py`` (GluonCV 0.10.5.post0's unmodified
``faster_rcnn_resnet50_v1b_coco``, seeded random weights, coco128 image 9 through GluonCV's
``load_test`` at short 320 / max 512) produced: the resized image, the RPN's 1000 proposals and the
final detections. The weights are not stored: ``gluoncv_reference.spread`` draws them again from the
parameter names and shapes in its meta (numpy ``RandomState(0)``). Regenerate with
``bench/gluoncv_reference.sh --short 320 --max-size 512 --images .../000000000009.jpg`` and
``python bench/compare_gluoncv.py --write-test-reference faster_c4_s320 PREFIX.meta.json``.
"""
from __future__ import annotations

import importlib.util
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from gluon_rcnn.convert.gluoncv import GluonCVFormatError, legacy_anchor_cells, read_params

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data" / "gluoncv_reference"


def _load_bench(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "bench" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_reader_equals_mxnet_bit_for_bit():
    got = read_params(DATA / "mxnet_saved.params")
    want = np.load(DATA / "mxnet_saved_expected.npz")
    assert set(got) == set(want.files)
    for k in want.files:
        assert got[k].dtype == want[k].dtype, k
        assert got[k].shape == want[k].shape, k
        assert got[k].tobytes() == want[k].tobytes(), k


def test_reader_errors_name_the_problem(tmp_path):
    raw = (DATA / "mxnet_saved.params").read_bytes()
    with pytest.raises(GluonCVFormatError, match="truncated"):
        read_params(raw[:-3])
    with pytest.raises(GluonCVFormatError, match="truncated"):
        read_params(raw[:200])
    with pytest.raises(GluonCVFormatError, match="not an MXNet NDArray file"):
        read_params(b"PK\x03\x04" + raw[4:])
    with pytest.raises(GluonCVFormatError, match="shorter than"):
        read_params(b"\x12\x01")
    with pytest.raises(GluonCVFormatError, match="trailing bytes"):
        read_params(raw + b"\0")
    bad = bytearray(raw)
    bad[24:28] = struct.pack("<I", 0xDEADBEEF)  # the first array's magic
    with pytest.raises(GluonCVFormatError, match="bad array magic"):
        read_params(bytes(bad))
    p = tmp_path / "x.params"
    p.write_bytes(raw[:100])
    with pytest.raises(GluonCVFormatError, match="x.params"):
        read_params(p)


def test_legacy_anchors_are_gluoncvs():
    """GluonCV rpn/anchor.py for stride 16, scales (2..32) x 16, ratios (0.5, 1, 2) (hand-checked rows)."""
    a = legacy_anchor_cells()
    assert a.shape == (15, 4)
    np.testing.assert_array_equal(a[0], [-15, -4, 30, 19])      # ratio 0.5, size 32
    np.testing.assert_array_equal(a[5], [-8, -8, 23, 23])       # ratio 1, size 32
    np.testing.assert_array_equal(a[14], [-168, -344, 183, 359])


def test_detections_equal_gluoncv():
    import torch
    cmp = _load_bench("compare_gluoncv")
    spread = _load_bench("gluoncv_reference").spread
    z = np.load(DATA / "faster_c4_s320.npz")
    meta = json.loads(str(z["meta_json"]))
    ref = {k: z[k] for k in z.files if k != "meta_json"}
    ref["ids"], ref["scores"], ref["bboxes"] = ref["ids"][:, None], ref["scores"][:, None], ref["bboxes"]
    weights = spread(meta["shapes"], meta["seed"])
    torch.set_num_threads(2)
    res = cmp.compare_arrays(meta, ref, weights, overrides=["TEST.RESULTS_PER_IM=100000"])
    rows = {r[0]: r for r in res["rows"]}
    f = res["final"]
    print(rows, f)
    props = rows["proposals (sets)"]
    assert props[3] == 0 and props[2] <= 0.01, props        # all 1000 proposals, within 0.01 px
    n = len(ref["ids"])
    assert n >= 1000                                        # a real test: thousands of detections
    assert f["box_px"] <= cmp.BOX_TOL and f["score"] <= cmp.SCORE_TOL, f
    # every detection paired: GluonCV's per-class NMS on unclipped boxes (its eval scripts clip afterwards)
    # is TEST.CLIP_BEFORE_NMS=False (with True, 43 of 7415 went unpaired)
    assert f["unpaired"] == 0, f
