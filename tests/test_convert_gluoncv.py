"""The GluonCV importer against GluonCV's own outputs, without MXNet.

``tests/data/gluoncv_reference/mxnet_saved.params`` was written by MXNet 1.9.1's ``mx.nd.save`` (dense
float32/float16/float64/int32/uint8/int64 arrays, a row-sparse and a CSR array);
``mxnet_saved_expected.npz`` holds MXNet's ``asnumpy()`` of each: the reader must give the same bytes.

``faster_c4_s320.npz`` holds what ``bench/gluoncv_reference.py`` (GluonCV 0.10.5.post0's unmodified
``faster_rcnn_resnet50_v1b_coco``, seeded random weights, image 000000000089 of tests/data/coco_subset
through GluonCV's ``load_test`` at short 320 / max 512) produced: the resized image, the RPN's 1000
proposals and the final detections. The weights are not stored: ``gluoncv_weights.spread``
(tests/gluoncv_weights.py, which ``bench/gluoncv_reference.py`` drew them with) draws them again from the
parameter names, shapes, seed and classifier std in its meta (numpy ``RandomState(0)``). Regenerate with
``bench/gluoncv_reference.sh --short 320 --max-size 512 --images tests/data/coco_subset/train2017/000000000089.jpg``
and ``python bench/compare_gluoncv.py --write-test-reference faster_c4_s320 PREFIX.meta.json``.

``faster_fpn_s320.npz``, ``mask_fpn_s320.npz`` (R-50 v1b FPN), ``mask_fpn_r101v1d_s320.npz`` and
``mask_c4_r101v1d_s320.npz`` (R-101 v1d) are the same for the FPN nets and the deep-stem trunks, on the
same image (Mask R-CNN: the masks of the best 100 detections, float16).

``faster_c4_anchor_table.npz`` is the anchor table GluonCV stores in that run's ``.params``
(``rpn.anchor_generator.anchors``, (1, 1, 128, 128, 60) float32, whole numbers), kept losslessly as int16
second differences over (H, W) (``np.diff(np.diff(t, axis=0, prepend=0), axis=1, prepend=0)``).
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest

from gluon_rcnn.convert.gluoncv import GluonCVFormatError, legacy_anchor_cells, read_params
from gluon_rcnn.profiles import rule_names

import gluoncv_compare as cmp
from gluoncv_weights import spread

DATA = Path(__file__).parent / "data" / "gluoncv_reference"


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


#: committed GluonCV references (file stem -> detections per image GluonCV's net keeps: Faster R-CNN
#: post_nms=-1, all; Mask R-CNN rcnn_max_dets=1000)
REFERENCES = {"faster_c4_s320": 100000, "faster_fpn_s320": 100000, "mask_fpn_s320": 1000,
              "mask_fpn_r101v1d_s320": 1000, "mask_c4_r101v1d_s320": 1000}


# the R-101 C4 reference takes ~40 s on 2 cores: in `make slow` (its R-50 C4 sibling and both FPN nets,
# the card's headline mask_rcnn_fpn_resnet101_v1d_coco included, stay in `make test`)
SLOW_REFERENCES = {"mask_c4_r101v1d_s320"}


@pytest.mark.parametrize("stem", [pytest.param(s, marks=pytest.mark.slow) if s in SLOW_REFERENCES else s
                                  for s in sorted(REFERENCES)])
def test_detections_equal_gluoncv(stem):
    """Our converted model against GluonCV 0.10.5's own net (committed outputs, weights drawn again):
    the backbone is checked through the RPN's 1000 proposals (all paired within 0.01 px), then every
    final detection paired by label within 0.05 px and 1e-4 in score; masks (best 100, stored as float16) within 5e-4."""
    import torch
    path = DATA / f"{stem}.npz"
    z = np.load(path)
    meta = json.loads(str(z["meta_json"]))
    ref = {k: z[k] for k in z.files if k != "meta_json"}
    ref["ids"], ref["scores"], ref["bboxes"] = ref["ids"][:, None], ref["scores"][:, None], ref["bboxes"]
    weights = spread(meta["shapes"], meta["seed"], meta.get("classifier_std"))
    torch.set_num_threads(2)
    res = cmp.compare_arrays(meta, ref, weights, overrides=[f"TEST.RESULTS_PER_IM={REFERENCES[stem]}"])
    rows = {r[0]: r for r in res["rows"]}
    f = res["final"]
    print(stem, rows, f)
    props = rows["proposals (sets)"]
    assert props[3] == 0 and props[2] <= 0.01, props        # all 1000 proposals, within 0.01 px
    n = len(ref["ids"])
    assert n >= 1000                                        # a real test: a thousand detections or more
    assert f["box_px"] <= cmp.BOX_TOL and f["score"] <= cmp.SCORE_TOL, f
    # every detection paired: GluonCV's per-class NMS on unclipped boxes (its eval scripts clip afterwards)
    # is RULES.DETECTIONS='nms_then_clip' (with 'clip_then_nms', 43 of 7415 went unpaired for faster_c4_s320)
    assert f["unpaired"] == 0, f
    if "masks" in ref:
        # stored as float16 (its spacing is 4.9e-4 in [0.5, 1)): the float32 runs of the bench agree to ~2e-7
        assert len(ref["masks"]) == 100 and f["mask_prob"] <= 5e-4, f


def _anchor_table():
    """GluonCV's constant ``rpn.anchor_generator.anchors`` (1, 1, 128, 128, 60) of
    ``faster_rcnn_resnet50_v1b_coco`` (its .params as written by ``bench/gluoncv_reference.py``; the
    Mask R-CNN file's is the same), stored losslessly as int16 second differences over (H, W)."""
    z = np.load(DATA / "faster_c4_anchor_table.npz")
    d = z["second_differences"].astype(np.int64)
    return np.cumsum(np.cumsum(d, 0), 1).astype(np.float32).reshape(tuple(z["shape"]))


def test_legacy_anchor_rule_is_gluoncvs_table():
    """RULES.ANCHOR_CELLS='legacy' builds GluonCV's anchors from the config: cells equal legacy_anchor_cells
    and the file's table at (0, 0); every location of the 128x128 table equal, bit for bit."""
    import torch
    from gluon_rcnn.builders import build_rpn
    from gluon_rcnn.config import ConfigError, get_default_config
    from gluon_rcnn.convert.gluoncv import gluoncv_config
    from gluon_rcnn.rules.anchors import CELLS
    table = _anchor_table()
    cfg = gluoncv_config("faster_rcnn_resnet50_v1b_coco")
    assert rule_names(cfg)["ANCHOR_CELLS"] == "legacy" and rule_names(cfg)["ANCHOR_GRID"] == "fixed_stride"
    ag = build_rpn(cfg, 1024).anchor_generator
    assert ag.cells is CELLS["legacy"]
    np.testing.assert_array_equal(ag.cell_anchors[0].numpy().astype(np.float32), legacy_anchor_cells())
    np.testing.assert_array_equal(ag.cell_anchors[0].numpy().astype(np.float32), table[0, 0, 0, 0].reshape(-1, 4))
    ours = ag([(128, 128)], torch.device("cpu"))[0].numpy()
    np.testing.assert_array_equal(ours, table.reshape(-1, 4))
    # the two keys of an earlier version are one rule now: an override names it, a saved config is read into it
    with pytest.raises(ConfigError, match="RULES.ANCHOR_CELLS='legacy'"):
        get_default_config().update_args(["RPN.LEGACY_ANCHORS=True"])
    saved = get_default_config()
    saved.update_dict({"RPN": {"LEGACY_ANCHORS": True, "ANCHOR_ROUNDING": False}}, unknown="report")
    assert saved.RULES.ANCHOR_CELLS == "legacy"


def test_converted_model_round_trips_through_its_config(tmp_path):
    """from_gluoncv puts GluonCV's anchors in the config (nothing patched): the converted model's
    anchors are the file's table, and a checkpoint {model, config} loaded back through
    ``get_model(name, pretrained=path)`` gives the same detections."""
    import torch
    import gluon_rcnn
    from gluon_rcnn.convert.gluoncv import GluonCVConversionError, from_gluoncv
    z = np.load(DATA / "faster_c4_s320.npz")
    meta = json.loads(str(z["meta_json"]))
    name = meta["name"]
    params = spread(meta["shapes"], meta["seed"], meta.get("classifier_std"))
    table = _anchor_table()
    params["rpn.anchor_generator.anchors"] = table          # checked against the model's anchors
    torch.set_num_threads(2)
    model = from_gluoncv(params, name)
    assert rule_names(model.config)["ANCHOR_CELLS"] == "legacy"
    h, w = table.shape[2:4]
    ours = model.rpn.anchor_generator([(h, w)], torch.device("cpu"))[0].numpy()
    np.testing.assert_array_equal(ours, table.reshape(-1, 4))
    wrong = dict(params, **{"rpn.anchor_generator.anchors": table + 0.5})
    with pytest.raises(GluonCVConversionError, match="anchor table"):
        from_gluoncv(wrong, name)

    img = torch.from_numpy(np.ascontiguousarray(z["resized_uint8"])).permute(2, 0, 1)
    with torch.no_grad():
        want = model([img])[0]
    assert len(want["boxes"]) > 0
    path = tmp_path / "converted.pth"
    torch.save({"model": model.state_dict(), "config": model.config.to_dict()}, path)
    again = gluon_rcnn.get_model(name, pretrained=str(path)).eval()
    assert rule_names(again.config)["ANCHOR_CELLS"] == "legacy"
    for a, b in zip(again.rpn.anchor_generator.cell_anchors, model.rpn.anchor_generator.cell_anchors):
        assert torch.equal(a, b)
    with torch.no_grad():
        got = again([img])[0]
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k


@pytest.mark.parametrize("name", __import__("gluon_rcnn.convert.gluoncv", fromlist=["x"]).GLUONCV_NAMES)
def test_zoo_entry_is_the_converted_architecture(name):
    """get_model(name, pretrained=True) loads the converted checkpoint only if its saved config has the
    entry's architecture: every GluonCV option (P6 conv, RPN width, level rule, 14x14 + average pool,
    legacy anchors, clip) must be in the zoo entry itself, and every published name must map every
    tensor of the model it builds."""
    from gluon_rcnn.builders import build_model
    from gluon_rcnn.convert.gluoncv import gluoncv_config, name_map
    from gluon_rcnn.model_zoo import get_config
    from gluon_rcnn.zoo_check import architecture_differences
    cfg = gluoncv_config(name)
    assert architecture_differences(get_config(name), cfg) == []
    model = build_model(cfg)
    keys = {k for k in model.state_dict() if not k.endswith("num_batches_tracked")}
    mapped = [o for _, o in name_map(cfg)]
    assert len(mapped) == len(set(mapped)) and set(mapped) == keys


def test_gluoncv_evaluation_protocol(capsys):
    """GluonCV's eval thresholds (COCODetectionMetric 0.05; the Mask R-CNN decoder's 0.01) for its names
    only; scripts/eval.py --protocol gluoncv applies them and refuses other models."""
    from gluon_rcnn.cli.eval import main
    from gluon_rcnn.convert.gluoncv import gluoncv_eval_overrides
    from gluon_rcnn.model_zoo import get_config
    assert gluoncv_eval_overrides("faster_rcnn_fpn_resnet50_v1b_coco")[0] == "TEST.RESULT_SCORE_THRESH=0.05"
    assert gluoncv_eval_overrides("mask_rcnn_fpn_resnet101_v1d_coco")[0] == "TEST.RESULT_SCORE_THRESH=0.01"
    c = get_config("mask_rcnn_resnet50_v1b_coco", gluoncv_eval_overrides("mask_rcnn_resnet50_v1b_coco"))
    assert c.TEST.RESULTS_PER_IM == 100 and c.TEST.RESULT_SCORE_THRESH == 0.01
    with pytest.raises(KeyError):
        gluoncv_eval_overrides("tp_mask_rcnn_fpn_resnet50_1x_coco")
    with pytest.raises(SystemExit):
        main(["--annotations", "x.json", "--images", ".", "--model", "tp_mask_rcnn_fpn_resnet50_1x_coco",
              "--random-weights", "--protocol", "gluoncv"])
    assert "--protocol gluoncv needs --model one of" in capsys.readouterr().err


def test_decode_clamp_rule_takes_a_rule_name_or_a_number():
    """RULES.DECODE_CLAMP switches between a rule name and a number in either direction (GluonCV's profile
    holds 4.42; a checkpoint trained from a tensorpack entry brings 'log_max_size_over_16')."""
    import math
    from gluon_rcnn.builders import bbox_decode_clamp, max_size
    from gluon_rcnn.config import ConfigError
    from gluon_rcnn.model_zoo import get_config
    c = get_config("mask_rcnn_resnet101_v1d_coco", finalize=False)
    assert rule_names(c)["DECODE_CLAMP"] == 4.42 and bbox_decode_clamp(c.finalize()) == 4.42
    c = get_config("mask_rcnn_resnet101_v1d_coco", ["RULES.DECODE_CLAMP=log_max_size_over_16"])
    assert c.RULES.DECODE_CLAMP == "log_max_size_over_16" and bbox_decode_clamp(c) == math.log(max_size(c) / 16)
    c = get_config("tp_mask_rcnn_fpn_resnet50_1x_coco", ["RULES.DECODE_CLAMP=4"])
    assert c.RULES.DECODE_CLAMP == 4.0 and bbox_decode_clamp(c) == 4.0
    for bad in ("RULES.DECODE_CLAMP=-1", "RULES.DECODE_CLAMP=foo", "RULES.DECODE_CLAMP=[1]"):
        with pytest.raises(ConfigError, match="RULES.DECODE_CLAMP"):
            get_config("tp_mask_rcnn_fpn_resnet50_1x_coco", [bad])
