"""The model zoo entries (model_zoo/*.json, the zoo's only copy): schema, configs, weights, reference
numbers, README, builds."""
from __future__ import annotations

import json
import numbers
import re
from pathlib import Path

import pytest

from gluon_rcnn.config import schedule_steps
import torch

from gluon_rcnn import model_zoo
from gluon_rcnn.builders import build_model
from gluon_rcnn.convert.source import file_name, weight_source
from gluon_rcnn.zoo_check import signature

REPO = Path(__file__).resolve().parents[1]
ZOO = REPO / "model_zoo"
FILES = sorted(ZOO.glob("*.json"))

TENSORPACK = [
    "tp_faster_rcnn_fpn_resnet50_1x_quick_coco", "tp_faster_rcnn_c4_resnet50_1x_coco",
    "tp_faster_rcnn_fpn_resnet50_1x_coco", "tp_mask_rcnn_c4_resnet50_1x_coco", "tp_mask_rcnn_fpn_resnet50_1x_coco",
    "tp_mask_rcnn_fpn_resnet50_2x_coco", "tp_mask_rcnn_fpn_gn_resnet50_2x_coco",
    "tp_cascade_mask_rcnn_fpn_resnet50_1x_coco", "tp_cascade_mask_rcnn_fpn_gn_resnet50_4x_trainaug_coco",
    "tp_mask_rcnn_c4_resnet101_1x_coco", "tp_mask_rcnn_fpn_resnet101_1x_coco",
    "tp_cascade_mask_rcnn_fpn_resnet101_3x_trainaug_coco", "tp_cascade_mask_rcnn_fpn_gn_resnet101_9x_scratch_coco",
]
#: tensorpack's code at 02c38f26 (2019-02-19): the seven checkpoints of its README
TENSORPACK_2019 = [
    "tp2019_mask_rcnn_c4_resnet50_standard_coco", "tp2019_mask_rcnn_fpn_resnet50_standard_coco",
    "tp2019_mask_rcnn_fpn_gn_resnet50_standard_coco", "tp2019_mask_rcnn_c4_resnet101_standard_coco",
    "tp2019_mask_rcnn_fpn_resnet101_standard_coco", "tp2019_cascade_mask_rcnn_fpn_resnet101_betterparams_coco",
    "tp2019_cascade_mask_rcnn_fpn_gn_resnet101_scratch_coco",
]
GLUONCV = [
    "faster_rcnn_resnet50_v1b_coco", "faster_rcnn_resnet101_v1d_coco", "faster_rcnn_fpn_resnet50_v1b_coco",
    "faster_rcnn_fpn_resnet101_v1d_coco", "faster_rcnn_fpn_syncbn_resnet50_v1b_coco",
    "faster_rcnn_fpn_syncbn_resnet101_v1d_coco", "mask_rcnn_resnet50_v1b_coco", "mask_rcnn_fpn_resnet50_v1b_coco",
    "mask_rcnn_resnet101_v1d_coco", "mask_rcnn_fpn_resnet101_v1d_coco", "mask_rcnn_fpn_syncbn_resnet50_v1b_coco",
    "mask_rcnn_fpn_syncbn_resnet101_v1d_coco",
]
SMALL = ["faster_rcnn_fpn_resnet18_v1b_coco", "mask_rcnn_fpn_resnet18_v1b_coco",
         "faster_rcnn_fpn_resnet18_v1b_rgz", "mask_rcnn_fpn_resnet18_v1b_rgz"]
RGZ = ["faster_rcnn_fpn_resnet50_v1b_rgz", "mask_rcnn_fpn_resnet50_v1b_rgz",
       "faster_rcnn_fpn_resnet18_v1b_rgz", "mask_rcnn_fpn_resnet18_v1b_rgz"]
REQUIRED = sorted(set(TENSORPACK + TENSORPACK_2019 + GLUONCV + SMALL + RGZ))
from gluon_rcnn.convert.gluoncv import GLUONCV_NAMES  # noqa: E402 - GluonCV published these names' weights
METRICS = ("box_AP", "mask_AP", "box_mAP50")
SOURCES = ("tensorpack", "GluonCV", "ClaRAN", "torchvision", "detectron2")


def _flat(d: dict, prefix: str = ""):
    for k, v in d.items():
        if isinstance(v, dict):
            yield from _flat(v, prefix + k + ".")
        else:
            yield prefix + k, v


def _load(path: Path) -> dict:
    return json.loads(path.read_text())


def test_list_models_has_every_named_entry():
    names = model_zoo.list_models()
    missing = [n for n in REQUIRED if n not in names]
    assert not missing, missing
    assert names == sorted(p.stem for p in FILES)


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_entry_schema(path):
    e = _load(path)
    assert set(e) == {"name", "description", "config", "dataset", "recipe", "reference", "weights", "reproduced"}
    assert e["name"] == path.stem
    assert isinstance(e["description"], str) and e["description"]
    # the dataset names the classes, or the entry's config carries them (torchvision's 90 COCO ids, VOC, LVIS)
    assert e["dataset"] in model_zoo.DATASET_CLASSES or "NUM_CATEGORY" in e["config"].get("DATA", {})
    assert e["reproduced"] == "no" or e["reproduced"].startswith(("yes: ", "no: ", "architecture compared via ",
                                                                  "pending: "))
    r = e["recipe"]
    assert isinstance(r["schedule"], str) and r["schedule"]
    assert isinstance(r["total_batch"], int) and r["total_batch"] > 0
    assert isinstance(r["augmentation"], str) and r["augmentation"].startswith("flip")
    from gluon_rcnn.convert.tensorpack import TENSORPACK_KINDS, URL
    kind = {entry: k for k, (entry, _) in TENSORPACK_KINDS.items()}.get(e["name"])
    if kind:  # tensorpack published this configuration's checkpoint; no checksum given
        assert {k: v for k, v in e["weights"].items() if k != "note"} == {
            "url": URL.format(kind), "sha256": "", "format": "tensorpack-npz", "kind": kind}
    elif e["name"] in GLUONCV_NAMES:
        # GluonCV published these .params (zip); sha1 is GluonCV's, of the .params in the zip
        w = e["weights"]
        assert w["format"] == "gluoncv-params" and w["name"] == e["name"] and len(w["sha1"]) == 40
        assert w["url"].endswith(f"/gluon/models/{e['name']}-{w['sha1'][:8]}.zip")
    elif e["name"].startswith("tv_"):  # torchvision's .pth (tests/test_zoo_pretrained_torchvision.py)
        w = e["weights"]
        assert w["format"] == "torchvision-pth" and w["url"].endswith(f"-{w['sha256_prefix']}.pth")
    elif e["name"].startswith("d2_"):  # detectron2's model_final_<md5[:6]>.pkl (tests/test_zoo_pretrained_detectron2.py)
        w = e["weights"]
        assert w["format"] == "detectron2-pkl" and w["url"].startswith("https://dl.fbaipublicfiles.com/detectron2/")
    else:
        assert e["weights"] == {"url": "", "sha256": ""}  # nothing published
    # weight paths are the user's: never baked into an entry
    assert e["config"]["BACKBONE"]["WEIGHTS"] == ""
    # the mode flags are explicit (our defaults differ from tensorpack's MODE_MASK=True)
    assert isinstance(e["config"]["MODE_MASK"], bool) and isinstance(e["config"]["MODE_FPN"], bool)


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_entry_config_loads_and_matches_file(path):
    e = _load(path)
    cfg = model_zoo.get_config(e["name"])                # validates keys, types and the combination
    for key, want in _flat(e["config"]):
        got = cfg.get_key(key)
        if isinstance(want, list):
            assert list(got) == want, key
        elif isinstance(want, float):
            assert got == pytest.approx(want), key
        else:
            assert got == want, key
    if "NUM_CATEGORY" in e["config"].get("DATA", {}):  # the entry states its classes (LVIS: a count, no names)
        n = e["config"]["DATA"]["NUM_CATEGORY"]
        assert cfg.DATA.NUM_CATEGORY == n and len(cfg.DATA.CLASS_NAMES) in (0, n)
    else:
        n = len(model_zoo.DATASET_CLASSES[e["dataset"]])
        assert cfg.DATA.NUM_CATEGORY == n and len(cfg.DATA.CLASS_NAMES) == n
    assert schedule_steps(cfg.TRAIN.LR_SCHEDULE, 8)     # the schedule is well formed


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_reference_numbers_are_null_or_sourced(path):
    ref = _load(path)["reference"]
    assert {"source", "box_AP", "mask_AP", "note"} <= set(ref)
    assert isinstance(ref["note"], str) and ref["note"]
    values = [ref.get(k) for k in METRICS]
    for v in values:
        assert v is None or (isinstance(v, numbers.Real) and not isinstance(v, bool) and 0 < v < 100), v
    if any(v is not None for v in values):
        assert ref["source"] in SOURCES
        assert ref["url"].startswith("https://") and ref["metric"]
    else:
        assert ref["source"] is None


def test_tensorpack_rows():
    def cfg(name):
        return model_zoo.get_config(name)

    for name in TENSORPACK:
        e = model_zoo.get_entry(name)
        assert e["reference"]["source"] == "tensorpack" and e["reference"]["box_AP"] is not None
        assert e["recipe"]["total_batch"] in (8, 16, 64)
    c = cfg("tp_mask_rcnn_fpn_resnet50_1x_coco")
    assert c.MODE_MASK and c.MODE_FPN and not c.FPN.CASCADE and c.TRAIN.LR_SCHEDULE == "1x"
    r = model_zoo.get_entry("tp_mask_rcnn_fpn_resnet50_1x_coco")["reference"]
    assert (r["box_AP"], r["mask_AP"]) == (38.2, 34.8)
    c = cfg("tp_faster_rcnn_c4_resnet50_1x_coco")
    assert not c.MODE_MASK and not c.MODE_FPN
    c = cfg("tp_cascade_mask_rcnn_fpn_resnet101_3x_trainaug_coco")
    assert c.FPN.CASCADE and list(c.BACKBONE.RESNET_NUM_BLOCKS) == [3, 4, 23, 3]
    assert c.TEST.RESULT_SCORE_THRESH == pytest.approx(1e-4) and list(c.PREPROC.TRAIN_SHORT_EDGE_SIZE) == [640, 800]
    assert c.TRAIN.LR_SCHEDULE == "3x" and c.BACKBONE.NORM == "FreezeBN"
    r = model_zoo.get_entry("tp_cascade_mask_rcnn_fpn_resnet101_3x_trainaug_coco")["reference"]
    assert (r["box_AP"], r["mask_AP"]) == (46.6, 40.3)
    c = cfg("tp_cascade_mask_rcnn_fpn_gn_resnet101_9x_scratch_coco")
    assert c.FPN.CASCADE and c.BACKBONE.NORM == "GN" and c.FPN.NORM == "GN" and c.BACKBONE.FREEZE_AT == 0
    assert c.FPN.FRCNN_HEAD_FUNC == "fastrcnn_4conv1fc_gn_head" and c.FPN.MRCNN_HEAD_FUNC == "maskrcnn_up4conv_gn_head"
    assert c.TRAIN.LR_SCHEDULE == "9x" and list(c.PREPROC.TRAIN_SHORT_EDGE_SIZE) == [640, 800]
    c = cfg("tp_mask_rcnn_fpn_gn_resnet50_2x_coco")
    assert c.BACKBONE.NORM == "GN" and c.TRAIN.LR_SCHEDULE == "2x" and not c.FPN.CASCADE


def test_tensorpack_2019_rows():
    """The seven checkpoints of tensorpack's README at 02c38f26: each entry is its kind's config exactly
    (the 2019 code's defaults, the row's settings, RULES.PROFILE=tensorpack-2019) and carries the AP the
    README reports."""
    from gluon_rcnn.convert.tensorpack import TENSORPACK_2019_KINDS, tensorpack_config

    assert sorted(e for e, _ in TENSORPACK_2019_KINDS.values()) == sorted(TENSORPACK_2019)
    ap = {"COCO-R50C4-MaskRCNN-Standard": (38.2, 33.3), "COCO-R50FPN-MaskRCNN-Standard": (38.4, 35.1),
          "COCO-R50FPN-MaskRCNN-StandardGN": (40.0, 36.2), "COCO-R101C4-MaskRCNN-Standard": (41.4, 35.2),
          "COCO-R101FPN-MaskRCNN-Standard": (40.4, 36.6), "COCO-R101FPN-MaskRCNN-BetterParams": (46.5, 40.1),
          "COCO-R101FPN-MaskRCNN-ScratchGN": (47.5, 41.2)}  # the README's "mAP (box;mask)" column
    for kind, (name, _) in TENSORPACK_2019_KINDS.items():
        e = model_zoo.get_entry(name)
        r = e["reference"]
        assert (r["source"], r["box_AP"], r["mask_AP"]) == ("tensorpack", *ap[kind])
        assert "02c38f26d938cf6cdad4a09ada754ed950d024d7" in r["url"] and e["config"]["RULES"] == {
            "PROFILE": "tensorpack-2019"}
        assert model_zoo.get_config(name).to_dict() == tensorpack_config(kind).to_dict(), name
    c = model_zoo.get_config("tp2019_mask_rcnn_c4_resnet50_standard_coco")
    assert c.MODE_MASK and not c.MODE_FPN and list(c.TRAIN.LR_SCHEDULE) == [240000, 320000, 360000]
    c = model_zoo.get_config("tp2019_cascade_mask_rcnn_fpn_gn_resnet101_scratch_coco")
    assert c.FPN.CASCADE and c.BACKBONE.NORM == c.FPN.NORM == "GN" and c.BACKBONE.FREEZE_AT == 0
    assert model_zoo.get_entry("tp2019_cascade_mask_rcnn_fpn_gn_resnet101_scratch_coco")["recipe"]["total_batch"] == 48
    c = model_zoo.get_config("tp2019_cascade_mask_rcnn_fpn_resnet101_betterparams_coco")
    assert c.TEST.RESULT_SCORE_THRESH == pytest.approx(1e-4) and list(c.PREPROC.TRAIN_SHORT_EDGE_SIZE) == [640, 800]


def test_gluoncv_entries():
    for name in GLUONCV:
        c = model_zoo.get_config(name)
        assert c.MODE_MASK == name.startswith("mask_rcnn")
        assert c.MODE_FPN == ("_fpn_" in name)
        assert c.BACKBONE.VARIANT == ("v1d" if "v1d" in name else "v1b")
        assert list(c.BACKBONE.RESNET_NUM_BLOCKS) == ([3, 4, 23, 3] if "resnet101" in name else [3, 4, 6, 3])
        if "syncbn" in name:
            assert c.BACKBONE.NORM == "SyncBN" and c.BACKBONE.FREEZE_AT == 0
            assert list(c.PREPROC.TRAIN_SHORT_EDGE_SIZE) == [640, 800]
        else:
            assert c.BACKBONE.NORM == "FreezeBN" and c.BACKBONE.FREEZE_AT == 2
    r = model_zoo.get_entry("mask_rcnn_fpn_resnet101_v1d_coco")["reference"]
    assert (r["source"], r["box_AP"], r["mask_AP"]) == ("GluonCV", 42.3, 37.7)


def test_readme_lists_every_entry_and_labels_references():
    text = (ZOO / "README.md").read_text()
    for p in FILES:
        assert f"`{p.stem}`" in text, p.stem
    assert "reference (tensorpack), not ours" in text and "reference (GluonCV), not ours" in text


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_entry_file_is_canonical_json(path):
    """Each file is written as ``json.dumps(entry, indent=2)`` plus a newline: scripts that edit entries
    rewrite them the same way, and diffs stay one line per value."""
    text = path.read_text()
    assert text == json.dumps(json.loads(text), indent=2) + "\n"


HEX = re.compile(r"[0-9a-f]+")


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_entry_weights_are_well_formed(path):
    """Published weights: an http(s) URL ending in a file name, checksums of the right length in lower-case
    hex, a registered format with the field its source converts by, a file name in the cache."""
    w = _load(path)["weights"]
    for key, n in (("sha256", 64), ("sha1", 40), ("sha256_prefix", 8)):
        if w.get(key):
            assert len(w[key]) == n and HEX.fullmatch(w[key]), (key, w[key])
    if not w["url"]:
        assert not w.get("format") and not w["sha256"]
        return
    assert w["url"].startswith(("https://", "http://")) and file_name(w["url"]), w["url"]
    source = weight_source(w.get("format"))
    if source is None:  # a gluon_rcnn checkpoint: its sha256 guards it
        assert "format" not in w and w["sha256"]
        return
    assert w[source.field], source.field
    assert source.url(w) == w["url"]  # no mirror variable set: the publisher's URL
    if source.format == "detectron2-pkl":  # model_final_<md5[:6]>.pkl under detectron2's base URL
        assert re.search(r"/model_final_[0-9a-f]{6}\.pkl$", w["url"]) and w["url"].startswith(source.base)
    if source.format == "gluoncv-params":
        assert w["url"].startswith(source.base)


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_entry_builds(path):
    """Every entry's model builds (on the meta device: names and shapes, no memory), with its classes."""
    cfg = model_zoo.get_config(path.stem)
    sig = signature(cfg)
    assert sig and all(d > 0 for shape in sig.values() for d in shape)
    with torch.device("meta"):
        model = build_model(cfg)
    assert len(model.classes) == cfg.DATA.NUM_CATEGORY


@pytest.mark.parametrize("name", ["faster_rcnn_fpn_resnet18_v1b_rgz", "mask_rcnn_fpn_resnet18_v1b_coco"])
def test_small_entries_build_and_run(name):
    torch.manual_seed(0)
    cfg = model_zoo.get_config(name)
    model = build_model(cfg).eval()
    classes = model_zoo.DATASET_CLASSES[model_zoo.get_entry(name)["dataset"]]
    assert model.classes == tuple(classes)
    with torch.no_grad():
        out = model([torch.rand(3, 96, 128)])
    assert out[0]["boxes"].shape[-1] == 4 and out[0]["boxes"].shape[0] <= cfg.TEST.RESULTS_PER_IM
    if cfg.MODE_MASK:
        assert out[0]["masks"].shape[-2:] == (96, 128)


def test_small_rgz_entry_trains_a_step():
    torch.manual_seed(0)
    model = build_model(model_zoo.get_config("faster_rcnn_fpn_resnet18_v1b_rgz")).train()
    images = [torch.rand(3, 150, 150), torch.rand(3, 150, 150)]
    targets = [{"boxes": torch.tensor([[20.0, 30.0, 60.0, 90.0]]), "labels": torch.tensor([1])} for _ in images]
    losses = model(images, targets)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()


def test_get_model_refuses_pretrained_true_without_weights():
    with pytest.raises(model_zoo.ZooError, match="no published weights"):
        model_zoo.get_model("faster_rcnn_fpn_resnet18_v1b_rgz", pretrained=True)
