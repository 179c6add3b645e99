"""Renders the model zoo's ``README.md`` tables from its entries (``model_zoo/*.json``).

The JSON files are the zoo, its only copy: edit an entry there (``gluon_rcnn.model_zoo`` reads them;
tests/test_model_zoo.py checks each one), then rerun this to refresh the README's tables:

    python bench/build_zoo.py            # rewrite model_zoo/README.md
    python bench/build_zoo.py --check    # exit 1 if README.md differs from what it would write

Reference numbers are the *publishers'* (tensorpack, GluonCV, torchvision, detectron2, ClaRAN), copied from
their tables into each entry's ``reference``; they are not results of this library.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gluon_rcnn.convert.detectron2 import DETECTRON2_COMMIT  # noqa: E402

HERE = Path(__file__).resolve().parents[1] / "model_zoo"
R18, R50, R101 = [2, 2, 2, 2], [3, 4, 6, 3], [3, 4, 23, 3]


def _get(cfg, key, default):
    node = cfg
    for p in key.split("."):
        if not isinstance(node, dict) or p not in node:
            return default
        node = node[p]
    return node


def entries() -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(HERE.glob("*.json"))]


def group(e) -> str:
    """Which table of the README an entry belongs to."""
    name = e["name"]
    if name.startswith("tp2019_"):
        return "tp2019"
    if name.startswith(("tp_", "tv_", "d2_")):
        return name[:2]
    return "small" if e["dataset"] == "rgz" or "resnet18" in name else "gluoncv"


def describe(e) -> dict:
    c = e["config"]
    mask, fpn = _get(c, "MODE_MASK", False), _get(c, "MODE_FPN", True)
    arch = ("Cascade " if _get(c, "FPN.CASCADE", False) else "") + ("Mask" if mask else "Faster") + " R-CNN"
    arch += " FPN" if fpn else " C4"
    blocks = tuple(_get(c, "BACKBONE.RESNET_NUM_BLOCKS", R50))
    depth = {tuple(R18): "R18", tuple(R50): "R50", tuple(R101): "R101"}[blocks]
    backbone = f"{depth}-{_get(c, 'BACKBONE.VARIANT', 'v1b')}"
    norm = _get(c, "BACKBONE.NORM", "FreezeBN")
    if fpn and _get(c, "FPN.NORM", "None") != "None":
        norm += f" (+FPN {_get(c, 'FPN.NORM', 'None')})"
    if _get(c, "BACKBONE.FREEZE_AT", 2) == 0:
        norm += ", nothing frozen"
    r = e["reference"]
    if r.get("source"):
        vals = []
        if r.get("box_AP") is not None:
            vals.append(f"{r['box_AP']}")
        if r.get("mask_AP") is not None:
            vals.append(f"{r['mask_AP']}")
        if r.get("box_mAP50") is not None:
            vals.append(f"mAP@0.5 {r['box_mAP50']}")
        refs = " / ".join(vals) + f" — reference ({r['source']}), not ours"
    else:
        refs = "—"
    w = e["weights"]
    if w.get("format") == "tensorpack-npz":
        weights = f"tensorpack: [npz]({w['url']}) (`{w['kind']}`, no checksum published)"
    elif w.get("format") == "gluoncv-params":
        weights = f"GluonCV: [params zip]({w['url']}) (sha1 `{w['sha1'][:8]}`)"
    elif w.get("format") == "torchvision-pth":
        weights = f"torchvision: [pth]({w['url']}) (sha256 prefix `{w['sha256_prefix']}`)"
    elif w.get("format") == "detectron2-pkl":
        weights = f"detectron2: [pkl]({w['url']}) (md5 prefix in the name)"
    elif w.get("url"):
        weights = f"[checkpoint]({w['url']})"
    else:
        weights = "none"
    return {"name": e["name"], "arch": arch, "backbone": backbone, "norm": norm,
            "schedule": e["recipe"]["schedule"], "batch": e["recipe"]["total_batch"],
            "aug": e["recipe"]["augmentation"], "ref": refs, "dataset": e["dataset"], "weights": weights,
            "protocol": r.get("metric") or "—", "reproduced": e["reproduced"]}


def readme() -> str:
    lines = [
        "# Model zoo",
        "",
        "One JSON file per named entry (`NAME.json`): the config overrides, the dataset that names the",
        "classes, the training recipe, the publisher's reference numbers and the published weights",
        "where there are any. Load one with `gluon_rcnn.model_zoo.get_config(NAME)` or",
        "`gluon_rcnn.get_model(NAME, pretrained=PATH)`; list them with `gluon_rcnn.list_models()`.",
        "",
        "**Published weights**: the entries whose configuration tensorpack published a COCO checkpoint",
        "of (`COCO-MaskRCNN-*.npz`, the nine `tp_` rows with a tensorpack link under `weights from`, and",
        "the seven `tp2019_` rows: `COCO-R50C4-MaskRCNN-Standard.npz` ... of its code at 02c38f26) load it with",
        "`gluon_rcnn.get_model(NAME, pretrained=True)`: the npz is downloaded once into",
        "`$GLUON_RCNN_HOME/weights/` (default `~/.cache/gluon_rcnn/weights/`), converted",
        "(`gluon_rcnn.convert.from_tensorpack`) and the converted checkpoint cached beside it.",
        "tensorpack publishes no checksum: the sha256 seen on the first download is printed, recorded",
        "in `<file>.npz.sha256` and checked on every later load. `python -m gluon_rcnn.cli.weights list`",
        "(or `gluon_rcnn.list_models(details=True)`) shows which entries have weights, from where, and",
        "the path where a file downloaded by hand is picked up. GluonCV's `faster_rcnn_resnet50_v1b_coco`",
        "and `mask_rcnn_resnet50_v1b_coco` load GluonCV's published `.params` the same way: the .zip is",
        "downloaded (`$GLUON_RCNN_GLUONCV_URL` replaces GluonCV's repository URL), the `.params` in it is",
        "checked against GluonCV's sha1, converted (`gluon_rcnn.convert.from_gluoncv`) and the",
        "converted checkpoint cached beside the .zip. torchvision's `tv_*` entries load its published",
        "`.pth` (its sha256 must start with the 8 hex in the file name, as torch.hub checks; loaded with",
        "`weights_only=True` into torchvision's model, converted with `gluon_rcnn.convert.from_torchvision`;",
        "`$GLUON_RCNN_TORCHVISION_URL` replaces `https://download.pytorch.org/models/`). detectron2's `d2_*`",
        "entries load its `model_final_*.pkl` (its md5 must start with the 6 hex in the file name, as",
        "MODEL_ZOO.md documents; read by a restricted unpickler, converted with",
        "`gluon_rcnn.convert.from_detectron2`; `$GLUON_RCNN_DETECTRON2_URL` replaces",
        "`https://dl.fbaipublicfiles.com/detectron2/`, keeping the path after it). Every other entry has no",
        "published weights (`weights.url` is empty, \"none\" below): pass `pretrained=PATH` to a checkpoint",
        "you trained.",
        "",
        "**reproduced here** says whether this library's outputs were compared numerically with the",
        "publisher's own code for that architecture (\"yes: ...\" names the comparison), only through another",
        "entry of the same family (\"architecture compared via ...\"), or not at all (\"no\"); \"pending: ...\"",
        "names a comparison under way. The same text is",
        "each JSON file's `reproduced` and `list_models(details=True)`'s `reproduced`.",
        "",
        "**The AP columns are other people's results**: tensorpack's, GluonCV's, torchvision's, detectron2's",
        "or ClaRAN's published numbers for the configuration the entry reproduces, copied from their stored",
        "tables (see each entry's `reference.note` for the exact row and source; the protocol column is",
        "`reference.metric`: the metric and the evaluation split). They are targets, not measurements of",
        "this library. `—` means no number was published or it could not be verified.",
        "",
        "`BACKBONE.WEIGHTS` is always empty: pass your ImageNet checkpoint (a torchvision-style state",
        "dict), e.g. `get_config(NAME, ['BACKBONE.WEIGHTS=/path/resnet50.pth'])`. Schedules are counted,",
        "as in tensorpack, in iterations at a total batch of 8 and rescaled to the real batch.",
        "",
        "The JSON files are the zoo: edit an entry there. The tables below are rendered from them by",
        "`python bench/build_zoo.py`.",
        "",
    ]
    groups = [("tensorpack's table (examples/FasterRCNN)", "tp"),
              ("tensorpack's 2019 table (examples/FasterRCNN at 02c38f26)", "tp2019"),
              ("GluonCV's R-CNN names", "gluoncv"),
              ("Small (CPU) models and ClaRAN-style radio-source detectors", "small"),
              ("torchvision's published detectors", "tv"),
              ("detectron2's MODEL_ZOO.md (the rows gluon_rcnn can build)", "d2")]
    zoo = entries()
    for title, key in groups:
        lines += [f"## {title}", "",
                  "| name | architecture | backbone | norm | schedule | total batch | augmentation | "
                  "reference box AP / mask AP | protocol | weights from | reproduced here |",
                  "| --- | --- | --- | --- | --- | ---: | --- | --- | --- | --- | --- |"]
        for e in (e for e in zoo if group(e) == key):
            d = describe(e)
            lines.append(f"| `{d['name']}` | {d['arch']} | {d['backbone']} | {d['norm']} | {d['schedule']} | "
                         f"{d['batch']} | {d['aug']} | {d['ref']} | {d['protocol']} | {d['weights']} | "
                         f"{d['reproduced']} |")
        lines.append("")
    lines += [
        "Notes:",
        "",
        "- tensorpack rows: train2017 / val2017, 8 V100s x 1 image unless the row says otherwise (the",
        "  R50-GN 4x row used 16 GPUs, the from-scratch R101 row 64). Source: tensorpack",
        "  `examples/FasterRCNN/README.md` at commit b28cfa8a50b732651b3711d09afd0818083861b2.",
        "- tensorpack 2019 rows (`tp2019_`): the seven checkpoints of `examples/FasterRCNN/README.md` at commit",
        "  02c38f26d938cf6cdad4a09ada754ed950d024d7 (2019-02-19; trainval35k / minival2014, 8 V100s unless the",
        "  row says otherwise: the from-scratch row used 48), the code ClaRAN v0.2 is built on. That code's",
        "  inference differs from later tensorpack (quantised anchors, ratio-major C4 anchors, zero-size",
        "  proposals removed, class-by-class NMS, Detectron-style mask paste): `RULES.PROFILE=tensorpack-2019`.",
        "  Names: `tp2019_` + architecture + the published name's last part in lower case, less its `GN`",
        "  (`standard`, `betterparams`, `scratch`) + `_coco`.",
        "- GluonCV rows: Box/Segm AP 0.5:0.95 on val2017 from `docs/model_zoo` (detection.rst and its CSV",
        "  tables). `faster_rcnn_fpn_syncbn_resnet50_v1b_coco` carries the number GluonCV published for the",
        "  same definition under its earlier name `faster_rcnn_fpn_bn_resnet50_v1b_coco`. The",
        "  `mask_rcnn_fpn_syncbn_resnet{50_v1b,101_v1d}_coco` names do not exist in GluonCV; they are the",
        "  Mask R-CNN twins of its Faster R-CNN SyncBN models.",
        "- ClaRAN: VOC mAP@0.5 of ClaRAN's released D4 model (VGG-16 C4), from its README. The paper's",
        "  v0.2 D1/D3 numbers (85.9 / 86.1) could not be verified from the stored sources.",
        "- torchvision rows: `meta['_metrics']['COCO-val2017']` of its `*_Weights.COCO_V1`. The `_v2` builders",
        "  (4 conv + BatchNorm box head, 2-conv RPN head, normalised FPN) and the MobileNetV3 ones cannot be",
        "  built by gluon_rcnn and have no entry.",
        "- detectron2 rows: MODEL_ZOO.md at commit " + DETECTRON2_COMMIT + "; LVIS v0.5 entries carry",
        "  1230 classes without names (`class_1..class_1230`); what gluon_rcnn cannot express is listed in",
        "  `gluon_rcnn.convert.detectron2.NOT_EXPRESSIBLE`.",
        "",
    ]
    return "\n".join(lines)


def main(argv) -> int:
    text, path = readme(), HERE / "README.md"
    if "--check" in argv:
        if path.read_text() != text:
            print(f"{path} is out of date: run python bench/build_zoo.py")
            return 1
        return 0
    path.write_text(text)
    print(f"wrote {path} ({len(entries())} entries)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
