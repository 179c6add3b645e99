"""Writes the zoo entries (one ``NAME.json`` each) and ``README.md`` in this folder.

The JSON files are the source of truth that ``gluon_rcnn.model_zoo`` reads; this file only keeps
them consistent. Run it after editing an entry here, and commit the JSON it writes:

    python bench/build_zoo.py            # (re)write every NAME.json and README.md
    python bench/build_zoo.py --check    # exit 1 if a file differs from what it would write

Reference numbers are the *publishers'* (tensorpack, GluonCV, torchvision, detectron2, ClaRAN), copied from their stored
tables; they are not results of this library. Where a number could not be read from the stored
source text it is ``null`` and the note says "unverified".
"""
from __future__ import annotations

import ast
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gluon_rcnn.convert.tensorpack import TENSORPACK_KINDS, TENSORPACK_RULES, URL as TP_NPZ_URL  # noqa: E402
from gluon_rcnn.convert.detectron2 import DETECTRON2_COMMIT, DETECTRON2_KINDS, detectron2_overrides  # noqa: E402

HERE = Path(__file__).resolve().parents[1] / "model_zoo"
R18, R50, R101 = [2, 2, 2, 2], [3, 4, 6, 3], [3, 4, 23, 3]
FLIP = "flip"
TRAINAUG = "flip + multi-scale short edge 640-800"
NO_WEIGHTS = {"url": "", "sha256": ""}
#: zoo entry -> tensorpack's published npz (convert/tensorpack.py TENSORPACK_KINDS)
TP_NPZ = {entry: kind for kind, (entry, _) in TENSORPACK_KINDS.items()}


def tensorpack_weights(kind):
    """``weights`` of an entry whose configuration tensorpack published a checkpoint of: the npz is
    downloaded and converted by ``get_model(name, pretrained=True)`` (gluon_rcnn/model_zoo.py)."""
    return {"url": TP_NPZ_URL.format(kind), "sha256": "", "format": "tensorpack-npz", "kind": kind,
            "note": "tensorpack's own file (examples/FasterRCNN/README.md table); the publisher gives no "
                    "checksum: the sha256 seen on the first download is recorded and checked afterwards"}


def _get(cfg, key, default):
    node = cfg
    for p in key.split("."):
        if not isinstance(node, dict) or p not in node:
            return default
        node = node[p]
    return node

# --------------------------------------------------------------------------------------------
# sources
# --------------------------------------------------------------------------------------------
TP_SRC = ("tensorpack examples/FasterRCNN/README.md 'Results' table, commit "
          "b28cfa8a50b732651b3711d09afd0818083861b2 (train2017, evaluated on val2017, mAP@IoU=0.50:0.95)")
TP_URL = ("https://github.com/tensorpack/tensorpack/blob/b28cfa8a50b732651b3711d09afd0818083861b2/"
          "examples/FasterRCNN/README.md")
GCV_DET_SRC = ("GluonCV docs/model_zoo/detection.rst and csv_tables/Detections/MSCOCO_Faster-RCNN.csv "
               "(train2017, val2017, Box AP 0.5:0.95/0.5/0.75)")
GCV_SEG_SRC = ("GluonCV docs/model_zoo/csv_tables/Segmentations/IS_MS-COCO.csv "
               "(train2017, val2017, Box AP and Segm AP 0.5:0.95/0.5/0.75)")
GCV_URL = "https://cv.gluon.ai/model_zoo/detection.html"
GCV_RECIPE = ("GluonCV's training commands (dmlc/web-data gluoncv/logs/{detection,instance}/*.sh and the "
              "Namespace line of their train logs): 8 GPUs x 1 image, lr 0.01, wd 1e-4, 26 epochs with x0.1 "
              "at epochs 17 and 23, 1000 warm-up iterations from lr/3")
# 26 / 17 / 23 epochs of COCO train2017 with empty images skipped (117,266 images) at 8 images an
# iteration: ceil(117266 / 8) = 14,659 iterations an epoch. Counted at a total batch of 8, as our
# TRAIN.LR_SCHEDULE is.
GCV_ITERS_PER_EPOCH = 14659
GCV_SCHEDULE = [17 * GCV_ITERS_PER_EPOCH, 23 * GCV_ITERS_PER_EPOCH, 26 * GCV_ITERS_PER_EPOCH]
CLARAN_URL = "https://github.com/chenwuperth/rgz_rcnn"


def ref(source, box=None, mask=None, note="", url="", metric="COCO AP@[.5:.95], val2017", **extra):
    r = {"source": source, "box_AP": box, "mask_AP": mask}
    r.update(extra)
    r.update({"metric": metric if source else "", "url": url, "note": note})
    return r


def entry(name, description, config, dataset, recipe, reference):
    return {"name": name, "description": description, "config": config, "dataset": dataset,
            "recipe": recipe, "reference": reference, "weights": dict(NO_WEIGHTS)}


# --------------------------------------------------------------------------------------------
# A. tensorpack's published table, row by row
# --------------------------------------------------------------------------------------------
def tp(name, description, mask, fpn, blocks=R50, extra=None, schedule="1x", total_batch=8,
       augmentation=FLIP, box=None, mask_ap=None, row="", detectron="", time=""):
    cfg = {"MODE_MASK": mask, "MODE_FPN": fpn,
           "BACKBONE": {"WEIGHTS": "", "RESNET_NUM_BLOCKS": blocks, "VARIANT": "v1b"}}
    for rule in TENSORPACK_RULES:  # tensorpack's training/inference rules (gluon_rcnn.convert.tensorpack)
        key, value = rule.split("=", 1)
        section, leaf = key.split(".")
        cfg.setdefault(section, {})[leaf] = ast.literal_eval(value) if value[:1] in "TF0123456789[-" else value
    for k, v in (extra or {}).items():
        if isinstance(v, dict):
            cfg.setdefault(k, {}).update(v)
        else:
            cfg[k] = v
    if schedule != "1x":
        cfg.setdefault("TRAIN", {})["LR_SCHEDULE"] = schedule
    scratch = _get(cfg, "BACKBONE.FREEZE_AT", 2) == 0
    weights = ("Trained from scratch: BACKBONE.WEIGHTS stays empty." if scratch else
               "BACKBONE.WEIGHTS is left empty: pass the ImageNet weights (torchvision-style state dict) "
               "yourself, e.g. BACKBONE.WEIGHTS=/path/resnet.pth.")
    note = (f"tensorpack row '{row}'. Detectron mAP in the same row: {detectron or 'none listed'}. "
            f"Training time: {time}. {weights}")
    e = entry(name, description, cfg, "coco",
              {"schedule": schedule, "total_batch": total_batch, "augmentation": augmentation,
               "source": "tensorpack README row configuration (8 V100s x 1 image unless noted)"},
              ref("tensorpack", box, mask_ap, note, TP_URL, source_detail=TP_SRC))
    if name in TP_NPZ:
        e["weights"] = tensorpack_weights(TP_NPZ[name])
    return e


GN = {"BACKBONE": {"NORM": "GN"},
      "FPN": {"NORM": "GN", "FRCNN_HEAD_FUNC": "fastrcnn_4conv1fc_gn_head",
              "MRCNN_HEAD_FUNC": "maskrcnn_up4conv_gn_head"}}
CASCADE = {"FPN": {"CASCADE": True}}
AUG = {"PREPROC": {"TRAIN_SHORT_EDGE_SIZE": [640, 800]}}


def merge(*dicts):
    out = {}
    for d in dicts:
        for k, v in d.items():
            if isinstance(v, dict):
                out.setdefault(k, {}).update(v)
            else:
                out[k] = v
    return out


TENSORPACK = [
    tp("tp_faster_rcnn_fpn_resnet50_1x_quick_coco",
       "tensorpack's 'super quick' R50-FPN Faster R-CNN: 64 RoIs per image, short edge 500-800, max 1024.",
       False, True, extra={"FRCNN": {"BATCH_PER_IM": 64},
                           "PREPROC": {"TRAIN_SHORT_EDGE_SIZE": [500, 800], "MAX_SIZE": 1024}},
       augmentation="flip + multi-scale short edge 500-800", box=34.8,
       row="R50-FPN | 34.8 | super quick: MODE_MASK=False FRCNN.BATCH_PER_IM=64 "
           "PREPROC.TRAIN_SHORT_EDGE_SIZE=[500,800] PREPROC.MAX_SIZE=1024", time="6.5h on 8 V100s"),
    tp("tp_faster_rcnn_c4_resnet50_1x_coco", "tensorpack's standard R50-C4 Faster R-CNN, 1x.",
       False, False, box=35.6, detectron="34.8", time="22.5h on 8 V100s",
       row="R50-C4 | 35.6 | standard: MODE_MASK=False MODE_FPN=False"),
    tp("tp_faster_rcnn_fpn_resnet50_1x_coco", "tensorpack's standard R50-FPN Faster R-CNN, 1x.",
       False, True, box=37.5, detectron="36.7", time="10.5h on 8 V100s",
       row="R50-FPN | 37.5 | standard: MODE_MASK=False"),
    tp("tp_mask_rcnn_c4_resnet50_1x_coco", "tensorpack's standard R50-C4 Mask R-CNN, 1x.",
       True, False, box=36.2, mask_ap=31.8, detectron="35.8;31.4", time="23h on 8 V100s",
       row="R50-C4 | 36.2;31.8 | standard: MODE_FPN=False"),
    tp("tp_mask_rcnn_fpn_resnet50_1x_coco", "tensorpack's default: R50-FPN Mask R-CNN, 1x.",
       True, True, box=38.2, mask_ap=34.8, detectron="37.7;33.9", time="12.5h on 8 V100s",
       row="R50-FPN | 38.2;34.8 | standard: this is the default"),
    tp("tp_mask_rcnn_fpn_resnet50_2x_coco", "tensorpack's R50-FPN Mask R-CNN, 2x schedule.",
       True, True, schedule="2x", box=38.9, mask_ap=35.4, detectron="38.6;34.5", time="24h on 8 V100s",
       row="R50-FPN | 38.9;35.4 | 2x: TRAIN.LR_SCHEDULE=2x"),
    tp("tp_mask_rcnn_fpn_gn_resnet50_2x_coco",
       "tensorpack's R50-FPN Mask R-CNN with GroupNorm in backbone, FPN and heads, 2x.",
       True, True, extra=GN, schedule="2x", box=40.4, mask_ap=36.3, detectron="40.3;35.7",
       time="29h on 8 V100s",
       row="R50-FPN-GN | 40.4;36.3 | 2x+GN: FPN.NORM=GN BACKBONE.NORM=GN "
           "FPN.FRCNN_HEAD_FUNC=fastrcnn_4conv1fc_gn_head FPN.MRCNN_HEAD_FUNC=maskrcnn_up4conv_gn_head "
           "TRAIN.LR_SCHEDULE=2x"),
    tp("tp_cascade_mask_rcnn_fpn_resnet50_1x_coco", "tensorpack's R50-FPN Cascade Mask R-CNN, 1x.",
       True, True, extra=CASCADE, box=41.7, mask_ap=36.2, time="16h on 8 V100s",
       row="R50-FPN | 41.7;36.2 | +Cascade: FPN.CASCADE=True"),
    tp("tp_cascade_mask_rcnn_fpn_gn_resnet50_4x_trainaug_coco",
       "tensorpack's R50-FPN-GN Cascade Mask R-CNN, 4x, multi-scale training (640-800).",
       True, True, extra=merge(CASCADE, GN, AUG), schedule="4x", total_batch=16, augmentation=TRAINAUG,
       box=46.1, mask_ap=40.1, time="36h on 16 V100s (total batch 16; LR_SCHEDULE is counted at batch 8 "
                                    "and rescaled, as in tensorpack)",
       row="R50-FPN-GN | 46.1;40.1 | 4x+GN+Cascade+TrainAug: FPN.CASCADE=True FPN.NORM=GN BACKBONE.NORM=GN "
           "FPN.FRCNN_HEAD_FUNC=fastrcnn_4conv1fc_gn_head FPN.MRCNN_HEAD_FUNC=maskrcnn_up4conv_gn_head "
           "PREPROC.TRAIN_SHORT_EDGE_SIZE=[640,800] TRAIN.LR_SCHEDULE=4x"),
    tp("tp_mask_rcnn_c4_resnet101_1x_coco", "tensorpack's standard R101-C4 Mask R-CNN, 1x.",
       True, False, blocks=R101, box=40.1, mask_ap=34.6, time="27h on 8 V100s",
       row="R101-C4 | 40.1;34.6 | standard: MODE_FPN=False BACKBONE.RESNET_NUM_BLOCKS=[3,4,23,3]"),
    tp("tp_mask_rcnn_fpn_resnet101_1x_coco", "tensorpack's standard R101-FPN Mask R-CNN, 1x.",
       True, True, blocks=R101, box=40.7, mask_ap=36.8, detectron="40.0;35.9", time="17h on 8 V100s",
       row="R101-FPN | 40.7;36.8 | standard: BACKBONE.RESNET_NUM_BLOCKS=[3,4,23,3]"),
    tp("tp_cascade_mask_rcnn_fpn_resnet101_3x_trainaug_coco",
       "tensorpack's R101-FPN Cascade Mask R-CNN, 3x, multi-scale training (640-800), score threshold 1e-4.",
       True, True, blocks=R101, extra=merge(CASCADE, AUG, {"TEST": {"RESULT_SCORE_THRESH": 1e-4}}),
       schedule="3x", augmentation=TRAINAUG, box=46.6, mask_ap=40.3, time="64h on 8 V100s",
       row="R101-FPN | 46.6;40.3 | 3x+Cascade+TrainAug: FPN.CASCADE=True BACKBONE.RESNET_NUM_BLOCKS=[3,4,23,3] "
           "TEST.RESULT_SCORE_THRESH=1e-4 PREPROC.TRAIN_SHORT_EDGE_SIZE=[640,800] TRAIN.LR_SCHEDULE=3x"),
    tp("tp_cascade_mask_rcnn_fpn_gn_resnet101_9x_scratch_coco",
       "tensorpack's R101-FPN-GN Cascade Mask R-CNN trained from scratch (no ImageNet weights, nothing "
       "frozen), 9x, multi-scale training (640-800).",
       True, True, blocks=R101, extra=merge(CASCADE, GN, AUG, {"BACKBONE": {"FREEZE_AT": 0}}),
       schedule="9x", total_batch=64, augmentation=TRAINAUG, box=47.7, mask_ap=41.7,
       detectron="47.4;40.5 (Fig. 5 of Rethinking ImageNet Pre-training)",
       time="28h on 64 V100s (total batch 64; LR_SCHEDULE is counted at batch 8 and rescaled)",
       row="R101-FPN-GN (From Scratch) | 47.7;41.7 | 9x+GN+Cascade+TrainAug: FPN.CASCADE=True "
           "BACKBONE.RESNET_NUM_BLOCKS=[3,4,23,3] FPN.NORM=GN BACKBONE.NORM=GN "
           "FPN.FRCNN_HEAD_FUNC=fastrcnn_4conv1fc_gn_head FPN.MRCNN_HEAD_FUNC=maskrcnn_up4conv_gn_head "
           "PREPROC.TRAIN_SHORT_EDGE_SIZE=[640,800] TRAIN.LR_SCHEDULE=9x BACKBONE.FREEZE_AT=0"),
]


# --------------------------------------------------------------------------------------------
# B. GluonCV's R-CNN names
# --------------------------------------------------------------------------------------------
def gcv(name, description, mask, fpn, blocks, variant, *, syncbn=False, box=None, mask_ap=None,
        ap_detail="", ref_note="", src=None):
    cfg = {"MODE_MASK": mask, "MODE_FPN": fpn,
           "BACKBONE": {"WEIGHTS": "", "RESNET_NUM_BLOCKS": blocks, "VARIANT": variant},
           "TRAIN": {"LR_SCHEDULE": list(GCV_SCHEDULE), "WARMUP_INIT_LR": round(0.01 / 3, 6)},
           # RPNProposal drops x2 - x1 + 1 < rpn_min_size (1): our w < 0 (bench/compare_gluoncv.py)
           "RPN": {"MIN_SIZE": 0.0},
           # GluonCV's train scripts: RCNN box loss HuberLoss(rho=1), RPN rho=1/9 (our default);
           # F.contrib.ROIAlign's aligned defaults to False
           "FRCNN": {"SMOOTH_L1_BETA": 1.0, "ROI_ALIGNED": False},
           # MultiPerClassDecoder(thresh=0.01)
           "TEST": {"RESULT_SCORE_THRESH": 0.01, "CLIP_BEFORE_NMS": False}}  # NMS, then clipper()
    cfg["BACKBONE"]["FLOOR_STRIDE2"] = False  # symmetric padding (resnetv1b): ceil(n/2)
    # rpn/anchor.py generate_base_anchors: Detectron-1 legacy anchors (size 32 at stride 16: [-8, -8, 23, 23]),
    # per FPN level from a (0, 0, stride-1, stride-1) window
    cfg["RPN"]["LEGACY_ANCHORS"] = True
    if mask:  # get_mask_rcnn(clip=4.42): the cap on dw, dh of the RPN's and the box head's decoders
        cfg["FRCNN"]["BBOX_DECODE_CLAMP"] = 4.42
    if not fpn:
        cfg["FRCNN"]["BATCH_PER_IM"] = 128          # num_sample=128 for GluonCV's C4 models
    else:
        cfg["FRCNN"]["BBOX_DECODE_CLAMP"] = 4.42 if mask else 4.14
        cfg["FPN"] = {
            "PROPOSAL_MODE": "Joint",     # RPN(multi_level=True, per_level_nms=False): one top-6000 + NMS
            "TOP_BLOCK": "conv",          # FPNFeatureExpander(use_p6=True, p6_conv=True): P6_conv1
            "ROI_LEVEL_RULE": "gluoncv",  # _pyramid_roi_feats: w = x2 - x1 + 1
            "RPN_HEAD_DIM": 256 if syncbn else 1024}  # rpn_channel
        if mask:  # roi_size=(14, 14); box_features = [AvgPool2D(3, 2, 1), Dense, Dense]
            cfg["FPN"]["FRCNN_POOL_AVG"] = True
        # no padding: GluonCV feeds the resized image as it is (the top-down path crops, slice_like)
        cfg["PREPROC"] = {"SIZE_DIVISIBILITY": 1}
    diffs = []
    aug = FLIP
    if syncbn:
        cfg["BACKBONE"].update({"NORM": "SyncBN", "FREEZE_AT": 0})
        cfg.setdefault("PREPROC", {})["TRAIN_SHORT_EDGE_SIZE"] = [640, 800]
        cfg.setdefault("FPN", {})["FRCNN_HEAD_FUNC"] = "fastrcnn_4conv1fc_head"
        cfg["FPN"].pop("FRCNN_POOL_AVG", None)
        aug = TRAINAUG
        diffs.append("GluonCV's SyncBN models also put SyncBN in the FPN and the box head "
                     "(ResNet-50: 1 conv + 1 fc; ResNet-101: 4 conv + 1 fc); this config has no BN "
                     "option there, so the FPN is unnormalised and the box head is "
                     "fastrcnn_4conv1fc_head without a norm. Every backbone BN (stem included) is "
                     "trained, as GluonCV's train_patterns '(?!.*moving)'.")
    else:
        diffs.append("backbone BN frozen (use_global_stats=True) and stem + layer1 not trained "
                     "(train_patterns), i.e. FreezeBN with FREEZE_AT=2.")
    if variant == "v1d":
        diffs.append("v1d = deep 3x3 stem (width 32) + average-pool shortcut, BACKBONE.VARIANT='v1d'.")
    recipe = {"schedule": "26 epochs, x0.1 at 17 and 23", "total_batch": 8, "augmentation": aug,
              "iterations_at_batch_8": list(GCV_SCHEDULE),
              "source": GCV_RECIPE + f"; {GCV_ITERS_PER_EPOCH} iterations an epoch (117,266 train2017 "
                                     "images with annotations / 8)"}
    note = " ".join(filter(None, [ap_detail, ref_note, "Differences from GluonCV's definition "
                                  "(gluoncv/model_zoo/rcnn/*/predefined_models.py): " + " ".join(diffs),
                                  "BACKBONE.WEIGHTS is left empty: pass the ImageNet weights yourself."]))
    has_ref = box is not None or mask_ap is not None
    return entry(name, description, cfg, "coco", recipe,
                 ref("GluonCV" if has_ref else None, box, mask_ap, note, GCV_URL if has_ref else "",
                     source_detail=(src or "") if has_ref else ""))


NO_REF = "No published number found for this name in the stored GluonCV tables: reference left null."
GLUONCV = [
    gcv("faster_rcnn_resnet50_v1b_coco", "GluonCV's Faster R-CNN, ResNet-50 v1b, C4.",
        False, False, R50, "v1b", box=37.0, ap_detail="GluonCV Box AP 37.0/57.8/39.6.", src=GCV_DET_SRC),
    gcv("faster_rcnn_resnet101_v1d_coco", "GluonCV's Faster R-CNN, ResNet-101 v1d, C4.",
        False, False, R101, "v1d", box=40.1, ap_detail="GluonCV Box AP 40.1/60.9/43.3.", src=GCV_DET_SRC),
    gcv("faster_rcnn_fpn_resnet50_v1b_coco", "GluonCV's Faster R-CNN, ResNet-50 v1b, FPN.",
        False, True, R50, "v1b", box=38.4, ap_detail="GluonCV Box AP 38.4/60.2/41.6.", src=GCV_DET_SRC),
    gcv("faster_rcnn_fpn_resnet101_v1d_coco", "GluonCV's Faster R-CNN, ResNet-101 v1d, FPN.",
        False, True, R101, "v1d", box=40.8, ap_detail="GluonCV Box AP 40.8/62.4/44.7.", src=GCV_DET_SRC),
    gcv("faster_rcnn_fpn_syncbn_resnet50_v1b_coco",
        "GluonCV's Faster R-CNN, ResNet-50 v1b, FPN, SyncBN trained end to end, multi-scale training.",
        False, True, R50, "v1b", syncbn=True, box=39.3,
        ap_detail=("GluonCV Box AP 39.3/61.3/42.9, published under the model's earlier name "
                   "faster_rcnn_fpn_bn_resnet50_v1b_coco (same definition: SyncBN backbone and FPN, "
                   "1 conv + 1 fc SyncBN box head, short (640, 800), all parameters trained; it differed "
                   "only in rpn_channel 1024 vs 256); its train log shows batch 8, 26 epochs, "
                   "decay at 17,23. GluonCV's current table has no row under the new name."),
        src=GCV_DET_SRC + " (row faster_rcnn_fpn_bn_resnet50_v1b_coco)"),
    gcv("faster_rcnn_fpn_syncbn_resnet101_v1d_coco",
        "GluonCV's Faster R-CNN, ResNet-101 v1d, FPN, SyncBN trained end to end, multi-scale training.",
        False, True, R101, "v1d", syncbn=True, ref_note=NO_REF + " Recipe assumed as the other SyncBN model."),
    gcv("mask_rcnn_resnet50_v1b_coco", "GluonCV's Mask R-CNN, ResNet-50 v1b, C4.",
        True, False, R50, "v1b", box=38.3, mask_ap=33.1,
        ap_detail="GluonCV Box AP 38.3/58.7/41.4, Segm AP 33.1/54.8/35.0.", src=GCV_SEG_SRC),
    gcv("mask_rcnn_fpn_resnet50_v1b_coco", "GluonCV's Mask R-CNN, ResNet-50 v1b, FPN.",
        True, True, R50, "v1b", box=39.2, mask_ap=35.4,
        ap_detail="GluonCV Box AP 39.2/61.2/42.2, Segm AP 35.4/57.5/37.3.", src=GCV_SEG_SRC),
    gcv("mask_rcnn_resnet101_v1d_coco", "GluonCV's Mask R-CNN, ResNet-101 v1d, C4.",
        True, False, R101, "v1d", box=41.3, mask_ap=35.2,
        ap_detail="GluonCV Box AP 41.3/61.7/44.4, Segm AP 35.2/57.8/36.9.", src=GCV_SEG_SRC),
    gcv("mask_rcnn_fpn_resnet101_v1d_coco", "GluonCV's Mask R-CNN, ResNet-101 v1d, FPN.",
        True, True, R101, "v1d", box=42.3, mask_ap=37.7,
        ap_detail="GluonCV Box AP 42.3/63.9/46.2, Segm AP 37.7/60.5/40.0.", src=GCV_SEG_SRC),
    gcv("mask_rcnn_fpn_syncbn_resnet50_v1b_coco",
        "Mask R-CNN, ResNet-50 v1b, FPN, SyncBN end to end: the Mask R-CNN twin of GluonCV's "
        "faster_rcnn_fpn_syncbn_resnet50_v1b_coco.",
        True, True, R50, "v1b", syncbn=True,
        ref_note=("GluonCV defines no model of this name (its SyncBN Mask R-CNNs are "
                  "mask_rcnn_fpn_syncbn_resnet18_v1b_coco and mask_rcnn_fpn_syncbn_mobilenet1_0_coco); "
                  "this entry follows its Faster R-CNN SyncBN twin. No reference.")),
    gcv("mask_rcnn_fpn_syncbn_resnet101_v1d_coco",
        "Mask R-CNN, ResNet-101 v1d, FPN, SyncBN end to end: the Mask R-CNN twin of GluonCV's "
        "faster_rcnn_fpn_syncbn_resnet101_v1d_coco.",
        True, True, R101, "v1d", syncbn=True,
        ref_note=("GluonCV defines no model of this name (its SyncBN Mask R-CNNs are "
                  "mask_rcnn_fpn_syncbn_resnet18_v1b_coco and mask_rcnn_fpn_syncbn_mobilenet1_0_coco); "
                  "this entry follows its Faster R-CNN SyncBN twin. No reference.")),
]

#: GluonCV's published .params of the names gluon_rcnn.convert.gluoncv converts (GLUONCV_NAMES), from its
#: model_store.py: ``_model_sha1`` (the sha1 of the extracted ``<name>-<sha1[:8]>.params``, as its
#: ``get_model_file`` checks it), ``apache_repo_url`` + ``_url_format`` (a .zip holding that file)
GCV_REPO_URL = "https://apache-mxnet.s3-accelerate.dualstack.amazonaws.com/"
GCV_SHA1 = {"faster_rcnn_resnet50_v1b_coco": "5b4690fb7c5b62c44fb36c67d0642b633697f1bb",
            "faster_rcnn_resnet101_v1d_coco": "a465eca35e78aba6ebdf99bf52031a447e501063",
            "faster_rcnn_fpn_resnet50_v1b_coco": "233572743bc537291590f4edf8a0c17c14b234bb",
            "faster_rcnn_fpn_resnet101_v1d_coco": "1194ab4ec6e06386aadd55820add312c8ef59c74",
            "mask_rcnn_resnet50_v1b_coco": "a3527fdc2cee5b1f32a61e5fd7cda8fb673e86e5",
            "mask_rcnn_resnet101_v1d_coco": "4a3249c584f81c2a9b5d852b742637cd692ebdcb",
            "mask_rcnn_fpn_resnet50_v1b_coco": "1364d0afe4de575af5d4389d50c2dbf22449ceac",
            "mask_rcnn_fpn_resnet101_v1d_coco": "89c7d8669b677a05c6eaa25375ead9a174109c69"}


def gluoncv_weights(name):
    sha1 = GCV_SHA1[name]
    return {"url": f"{GCV_REPO_URL}gluon/models/{name}-{sha1[:8]}.zip", "sha256": "", "sha1": sha1,
            "format": "gluoncv-params", "name": name,
            "note": "GluonCV's own file (gluoncv/model_zoo/model_store.py): a .zip holding "
                    f"{name}-{sha1[:8]}.params; sha1 is GluonCV's checksum of that .params file"}


for _e in GLUONCV:
    if _e["name"] in GCV_SHA1:
        _e["weights"] = gluoncv_weights(_e["name"])


# --------------------------------------------------------------------------------------------
# C. small CPU models and ClaRAN
# --------------------------------------------------------------------------------------------
def small(mask, *, short, max_size, extra=None):
    """ResNet-18-FPN from scratch with GroupNorm everywhere (BN statistics are useless at 1-2
    images per step; FreezeBN would freeze random statistics), cheap 2fc box head."""
    cfg = {"MODE_MASK": mask, "MODE_FPN": True,
           "BACKBONE": {"WEIGHTS": "", "RESNET_NUM_BLOCKS": R18, "VARIANT": "v1b", "NORM": "GN",
                        "FREEZE_AT": 0},
           "FPN": {"NORM": "GN", "FRCNN_HEAD_FUNC": "fastrcnn_2fc_head",
                   "MRCNN_HEAD_FUNC": "maskrcnn_up4conv_gn_head"},
           "PREPROC": {"TRAIN_SHORT_EDGE_SIZE": [short, short], "TEST_SHORT_EDGE_SIZE": short,
                       "MAX_SIZE": max_size},
           "RPN": {"TRAIN_PER_LEVEL_NMS_TOPK": 1000, "TEST_PER_LEVEL_NMS_TOPK": 500,
                   "TRAIN_POST_NMS_TOPK": 1000, "TEST_POST_NMS_TOPK": 500},
           "FRCNN": {"BATCH_PER_IM": 256},
           "TRAIN": {"IMS_PER_GPU": 2}}
    return merge(cfg, extra or {})


SMALL_NOTE = ("Ours, sized to train on a CPU: ResNet-18 from scratch with GroupNorm in backbone and FPN "
              "(BACKBONE.WEIGHTS empty; an ImageNet BN checkpoint does not fit GN layers), fewer proposals, "
              "256 RoIs per image. No reference number: nobody published this configuration.")

CLARAN_NOTE = (
    "ClaRAN (Wu et al. 2019, MNRAS 482, 1211; github.com/chenwuperth/rgz_rcnn) is a VGG-16 C4 Faster R-CNN "
    "with STN RoI pooling, so its numbers are a yardstick, not the same model. Verified from its stored "
    "README: the released D4 model reaches mAP 83.6% (VOC AP@0.5, 2010+ metric, 4,603 test images; per "
    "class 1C_1P 0.8784, 1C_2P 0.7074, 1C_3P 0.8941, 2C_2P 0.8200, 2C_3P 0.7916, 3C_3P 0.9269). The "
    "paper's ClaRAN v0.2 figures of 85.9 (D1) / 86.1 (D3) mAP are unverified here (the paper text was "
    "not readable from the stored sources). Its recipe, from lib/fast_rcnn/config.py, "
    "experiments/cfgs/faster_rcnn_end2end.yml, lib/networks/factory.py and "
    "experiments/scripts/example_train_slurm.sh: short edge 600, max 1000, flips, 1 image an iteration, "
    "lr 0.001 x0.1 at 50k, 80k iterations, 128 RoIs an image, RPN 256 anchors, anchors of one ratio (1:1) "
    "and sizes 16 x [1, 2, 4, 8, 16, 32] = 16..512 px on stride 16, test NMS 0.3. Mapped here to FPN: "
    "one size per level, 16, 32, 64, 128, 256 (512 dropped: FPN has five levels), ratio 1:1.")

CLARAN_RECIPE_NOTE = ("Random rotation (PREPROC.ROTATE_PROB 0.5, up to 90 degrees) is this library's "
                      "choice for radio images, which have no preferred orientation; ClaRAN's stored "
                      "training code flips only.")


def claran_r50(mask):
    cfg = {"MODE_MASK": mask, "MODE_FPN": True,
           "BACKBONE": {"WEIGHTS": "", "RESNET_NUM_BLOCKS": R50, "VARIANT": "v1b"},
           "PREPROC": {"TRAIN_SHORT_EDGE_SIZE": [600, 600], "TEST_SHORT_EDGE_SIZE": 600, "MAX_SIZE": 1000,
                       "ROTATE_PROB": 0.5, "ROTATE_MAX": 90.0},
           "RPN": {"ANCHOR_SIZES": [16, 32, 64, 128, 256], "ANCHOR_RATIOS": [1.0]},
           "FRCNN": {"BATCH_PER_IM": 128},
           "TEST": {"FRCNN_NMS_THRESH": 0.3},
           # ClaRAN: 1 image, lr 0.001, x0.1 at 50k, stop at 80k. Counted at batch 8 as our schedule
           # is: [50000, 80000] / 8; BASE_LR 0.008 at batch 8 is 0.001 at batch 1.
           "TRAIN": {"IMS_PER_GPU": 1, "BASE_LR": 0.008, "LR_SCHEDULE": [6250, 10000]}}
    return cfg


def rgz_small_extra():
    return {"PREPROC": {"ROTATE_PROB": 0.5, "ROTATE_MAX": 90.0},
            "RPN": {"ANCHOR_SIZES": [8, 16, 32, 64, 128]},
            "FRCNN": {"BATCH_PER_IM": 128},
            # batch-8 units: x4 at the 2 images an iteration these use -> 6000 / 8000 / 9000
            # iterations, about 75 / 100 / 112 epochs of the 160-image demo training split
            "TRAIN": {"LR_SCHEDULE": [1500, 2000, 2250], "WARMUP": 100}}


RGZ_SMALL_SOURCE = ("ours (untuned), sized for the 160-image demo split: about 1 s an iteration on 2 CPU "
                    "cores for the Faster R-CNN (measured on 150 px inputs, so about 2.5 h; the Mask twin is "
                    "slower). " + CLARAN_RECIPE_NOTE)

SMALL = [
    entry("faster_rcnn_fpn_resnet18_v1b_coco",
          "Small Faster R-CNN, ResNet-18 v1b FPN with GroupNorm, from scratch, 320 px: trains on a CPU.",
          small(False, short=320, max_size=512), "coco",
          {"schedule": "1x", "total_batch": 2, "augmentation": FLIP,
           "source": "ours (untuned); from-scratch models usually need longer schedules (tensorpack's "
                     "scratch row used 9x)"},
          ref(None, note=SMALL_NOTE)),
    entry("mask_rcnn_fpn_resnet18_v1b_coco",
          "Small Mask R-CNN, ResNet-18 v1b FPN with GroupNorm, from scratch, 320 px: trains on a CPU.",
          small(True, short=320, max_size=512), "coco",
          {"schedule": "1x", "total_batch": 2, "augmentation": FLIP,
           "source": "ours (untuned); from-scratch models usually need longer schedules (tensorpack's "
                     "scratch row used 9x)"},
          ref(None, note=SMALL_NOTE + " GluonCV publishes a model of this name (800 px, ImageNet "
                                      "backbone, FreezeBN) at Box AP 34.9 / Segm AP 30.4; it is a "
                                      "different recipe and not a reference for this entry.")),
    entry("faster_rcnn_fpn_resnet50_v1b_rgz",
          "ClaRAN-style radio-source detector: Faster R-CNN, ResNet-50 v1b FPN, 600 px, small square "
          "anchors, rotation augmentation, ClaRAN's schedule.",
          claran_r50(False), "rgz",
          {"schedule": "80k iterations at batch 1, x0.1 at 50k (ClaRAN)", "total_batch": 1,
           "augmentation": "flip + rotation (p=0.5, up to 90 degrees)", "source": CLARAN_RECIPE_NOTE},
          ref("ClaRAN", box_mAP50=83.6, url=CLARAN_URL, source_detail="chenwuperth/rgz_rcnn README.md",
              metric="VOC AP@0.5 over the six classes (ClaRAN's released D4 model)", note=CLARAN_NOTE)),
    entry("mask_rcnn_fpn_resnet50_v1b_rgz",
          "Mask R-CNN twin of faster_rcnn_fpn_resnet50_v1b_rgz: segments each source's radio components.",
          claran_r50(True), "rgz",
          {"schedule": "80k iterations at batch 1, x0.1 at 50k (ClaRAN)", "total_batch": 1,
           "augmentation": "flip + rotation (p=0.5, up to 90 degrees)", "source": CLARAN_RECIPE_NOTE},
          ref("ClaRAN", box_mAP50=83.6, url=CLARAN_URL, source_detail="chenwuperth/rgz_rcnn README.md",
              metric="VOC AP@0.5 over the six classes (ClaRAN's released D4 model; box only, ClaRAN has "
                     "no masks)", note=CLARAN_NOTE)),
    entry("faster_rcnn_fpn_resnet18_v1b_rgz",
          "Small radio-source detector for 150-300 px radio images on a CPU: ResNet-18 v1b FPN with "
          "GroupNorm, from scratch, 256 px, anchors 8-128 px, rotation augmentation.",
          small(False, short=256, max_size=512, extra=rgz_small_extra()), "rgz",
          {"schedule": "[1500, 2000, 2250] at batch 8 = 6000/8000/9000 iterations at batch 2",
           "total_batch": 2, "augmentation": "flip + rotation (p=0.5, up to 90 degrees)",
           "source": RGZ_SMALL_SOURCE},
          ref(None, note=SMALL_NOTE + " Anchors keep three ratios (ClaRAN used 1:1 only).")),
    entry("mask_rcnn_fpn_resnet18_v1b_rgz",
          "Mask R-CNN twin of faster_rcnn_fpn_resnet18_v1b_rgz (segments radio components), CPU-sized.",
          small(True, short=256, max_size=512, extra=rgz_small_extra()), "rgz",
          {"schedule": "[1500, 2000, 2250] at batch 8 = 6000/8000/9000 iterations at batch 2",
           "total_batch": 2, "augmentation": "flip + rotation (p=0.5, up to 90 degrees)",
           "source": RGZ_SMALL_SOURCE},
          ref(None, note=SMALL_NOTE + " Anchors keep three ratios (ClaRAN used 1:1 only).")),
]



# --------------------------------------------------------------------------------------------
# D. torchvision's published detectors (gluon_rcnn.convert.torchvision converts them)
# --------------------------------------------------------------------------------------------
def config_dict(cfg) -> dict:
    """The keys of ``cfg`` that differ from the default config, nested as an entry's ``config``; the
    mode flags always, ``BACKBONE.WEIGHTS`` always empty (the whole model comes from the weights)."""
    from gluon_rcnn.config import get_default_config

    default = get_default_config().finalize()
    out = {"MODE_MASK": bool(cfg.MODE_MASK), "MODE_FPN": bool(cfg.MODE_FPN), "BACKBONE": {"WEIGHTS": ""}}
    for key, value in cfg.flat_items():
        if key == "BACKBONE.WEIGHTS" or value == default.get_key(key):
            continue
        *sections, leaf = key.split(".")
        node = out
        for sec in sections:
            node = node.setdefault(sec, {})
        node[leaf] = json.loads(json.dumps(value))  # tuples → lists
    return out


TV_REPRODUCED = "yes: equal to torchvision's model (tests/test_torchvision_equivalence.py)"
TV_RECIPE_URL = "https://github.com/pytorch/vision/tree/main/references/detection"
#: zoo entry -> (torchvision builder, its weights enum). The *_v2 builders (fasterrcnn_resnet50_fpn_v2,
#: maskrcnn_resnet50_fpn_v2) are not here: their box head is 4 conv + BatchNorm + 1 fc, their RPN head two
#: convs and their FPN normalised (torchvision/models/detection/faster_rcnn.py FastRCNNConvFCHead,
#: RPNHead(conv_depth=2)); gluon_rcnn's heads have no BN option and its RPN head one conv. The
#: MobileNetV3 ones have no ResNet trunk.
TORCHVISION = {"tv_faster_rcnn_fpn_resnet50_coco": ("fasterrcnn_resnet50_fpn", "FasterRCNN_ResNet50_FPN_Weights"),
               "tv_mask_rcnn_fpn_resnet50_coco": ("maskrcnn_resnet50_fpn", "MaskRCNN_ResNet50_FPN_Weights")}


def tv(name):
    import torch
    import torchvision.models.detection as tvd
    from gluon_rcnn.convert.torchvision import torchvision_config
    from gluon_rcnn.model_zoo import torchvision_model

    arch, enum = TORCHVISION[name]
    weights = getattr(tvd, enum).COCO_V1
    metrics = weights.meta["_metrics"]["COCO-val2017"]
    with torch.device("meta"):  # the settings only, no memory
        cfg = torchvision_config(torchvision_model(arch))
    mask = bool(cfg.MODE_MASK)
    prefix = re.search(r"-([a-f0-9]+)\.", weights.url).group(1)
    note = (f"torchvision {enum}.COCO_V1 meta['_metrics']['COCO-val2017'] (torchvision "
            f"models/detection/{'mask_rcnn' if mask else 'faster_rcnn'}.py). The config is torchvision_config() "
            "of torchvision's model as its builder makes it for these weights (FrozenBatchNorm2d with eps 0, folded "
            "into running_var on conversion, 3 trainable trunk layers); the 90 labels are torchvision's COCO "
            "category ids, 'N/A' gaps included.")
    e = entry(name, f"torchvision's {arch} (COCO_V1 weights): {'Mask' if mask else 'Faster'} R-CNN, ResNet-50 FPN.",
              config_dict(cfg), "coco",
              {"schedule": "26 epochs, lr x0.1 at 16 and 22", "total_batch": 16, "augmentation": "flip",
               "source": f"torchvision references/detection README ({weights.meta['recipe']}): 8 GPUs x 2 "
                         "images, lr 0.02, --aspect-ratio-group-factor 3"},
              ref("torchvision", metrics["box_map"], metrics.get("mask_map"), note, TV_RECIPE_URL,
                  source_detail=f"torchvision {enum}.COCO_V1 meta"))
    e["weights"] = {"url": weights.url, "sha256": "", "sha256_prefix": prefix, "format": "torchvision-pth",
                    "arch": arch,
                    "note": "torchvision's own file (its weights enum); the sha256 of the file must start with "
                            f"{prefix}, the prefix in its name (torch.hub's check_hash); the full sha256 seen on "
                            "the first download is recorded and checked afterwards"}
    e["reproduced"] = TV_REPRODUCED
    return e


# --------------------------------------------------------------------------------------------
# E. detectron2's MODEL_ZOO.md (gluon_rcnn.convert.detectron2 converts the rows it can build)
# --------------------------------------------------------------------------------------------
D2_URL = f"https://github.com/facebookresearch/detectron2/blob/{DETECTRON2_COMMIT}/MODEL_ZOO.md"
D2_REPRODUCED = ("no: detectron2 is not installable here; names/shapes/layouts checked by manifests "
                 "(tests/test_convert_detectron2.py)")
D2_DATASETS = {"COCO": "coco", "Misc": "coco", "LVISv0.5": "lvis", "Cityscapes": "cityscapes", "PascalVOC": "voc"}
D2_METRIC = {
    "coco": "COCO AP@[.5:.95], val2017",
    "lvis": "LVIS v0.5 AP@[.5:.95], val (LVIS API)",
    "cityscapes": "Cityscapes mask AP (val, fine annotations)",
    "voc": "VOC2007 test, AP averaged over IoU .50:.95, 11-point interpolated (detectron2 PascalVOCDetectionEvaluator)",
}


def d2_name(kind) -> str:
    """``d2_<config file name, lower case>_<dataset>``, e.g. ``d2_mask_rcnn_r_50_fpn_3x_coco``."""
    folder, file = kind.split("/")
    return f"d2_{file.lower()}_{D2_DATASETS[folder.split('-')[0]]}"


def d2(kind):
    from gluon_rcnn.config import get_default_config

    m = DETECTRON2_KINDS[kind]
    dataset = D2_DATASETS[kind.split("/")[0].split("-")[0]]
    cfg = get_default_config()
    cfg.update_args(detectron2_overrides(kind))
    cfg.finalize()
    sched = re.search(r"_(\d+x)(_|$)", kind)
    short = cfg.PREPROC.TRAIN_SHORT_EDGE_SIZE
    arch = ("Cascade " if m.cascade else "") + ("Mask" if m.mask else "Faster") + " R-CNN"
    note = (f"detectron2 MODEL_ZOO.md (commit {DETECTRON2_COMMIT}) row of configs/{kind}.yaml, model id "
            f"{m.model_id}. The config is gluon_rcnn.convert.detectron2.detectron2_overrides('{kind}'); what it "
            "cannot express is listed in that module's docstring.")
    e = entry(d2_name(kind), f"detectron2's {kind} ({arch}, ResNet-{m.depth} {'FPN' if m.fpn else 'C4'}"
                             f"{', GN' if m.gn else ''}).",
              config_dict(cfg), dataset,
              {"schedule": sched.group(1) if sched else "the config's (see MODEL_ZOO.md)", "total_batch": 16,
               "augmentation": f"flip + multi-scale short edge {short[0]}-{short[1]}",
               "source": "detectron2 configs (IMS_PER_BATCH 16; 1x = 90k iterations)"},
              ref("detectron2", m.box_ap, m.mask_ap, note, D2_URL, metric=D2_METRIC[dataset],
                  source_detail=f"detectron2 MODEL_ZOO.md, configs/{kind}.yaml"))
    e["weights"] = {"url": m.url(kind), "sha256": "", "format": "detectron2-pkl", "kind": kind,
                    "note": "detectron2's own file (MODEL_ZOO.md: 'any model on this page contains its md5 prefix in "
                            f"its file name'): the md5 of the file must start with {m.file[12:18]}; the sha256 seen "
                            "on the first download is recorded and checked afterwards"}
    e["reproduced"] = D2_REPRODUCED
    return e


TORCHVISION_ENTRIES = [tv(name) for name in TORCHVISION]
DETECTRON2 = [d2(kind) for kind in DETECTRON2_KINDS]
ENTRIES = TENSORPACK + GLUONCV + SMALL + TORCHVISION_ENTRIES + DETECTRON2


# --------------------------------------------------------------------------------------------
# whether this library's outputs were compared numerically with the publisher's code
# --------------------------------------------------------------------------------------------
TP_REPRODUCED = ("yes: stage by stage against tensorpack's own graph (bench/compare_tensorpack.py, "
                 "tests/test_tensorpack_reference.py)")
_TP_FPN, _TP_C4, _TP_GNCAS = ("tp_mask_rcnn_fpn_resnet50_2x_coco", "tp_mask_rcnn_c4_resnet50_1x_coco",
                              "tp_cascade_mask_rcnn_fpn_gn_resnet50_4x_trainaug_coco")
#: the tensorpack architectures compared (tests/data/tensorpack_reference: small_fpn, small_c4,
#: small_gn_cascade) and, for the other tp_* entries, which of them covers their architecture
TP_COMPARED_VIA = {
    _TP_FPN: None, _TP_C4: None, _TP_GNCAS: None,
    "tp_faster_rcnn_fpn_resnet50_1x_quick_coco": f"{_TP_FPN} (its FPN trunk, RPN and box head)",
    "tp_faster_rcnn_c4_resnet50_1x_coco": f"{_TP_C4} (its C4 trunk, RPN and box head)",
    "tp_faster_rcnn_fpn_resnet50_1x_coco": f"{_TP_FPN} (its FPN trunk, RPN and box head)",
    "tp_mask_rcnn_fpn_resnet50_1x_coco": f"{_TP_FPN} (the same architecture, another schedule)",
    "tp_mask_rcnn_fpn_gn_resnet50_2x_coco": f"{_TP_GNCAS} (GN trunk, FPN and heads)",
    "tp_cascade_mask_rcnn_fpn_resnet50_1x_coco": f"{_TP_GNCAS} (cascade stages) and {_TP_FPN} (FPN without GN)",
    "tp_mask_rcnn_c4_resnet101_1x_coco": f"{_TP_C4} (ResNet-50 trunk: R101 has more blocks of the same kind)",
    "tp_mask_rcnn_fpn_resnet101_1x_coco": f"{_TP_FPN} (ResNet-50 trunk: R101 has more blocks of the same kind)",
    "tp_cascade_mask_rcnn_fpn_resnet101_3x_trainaug_coco": f"{_TP_GNCAS} (cascade stages) and {_TP_FPN} "
                                                           "(FPN without GN)",
    "tp_cascade_mask_rcnn_fpn_gn_resnet101_9x_scratch_coco": f"{_TP_GNCAS} (ResNet-50 trunk)",
}
#: GluonCV names whose outputs were compared with GluonCV's own model (name -> text)
_GCV_YES = "yes: against GluonCV 0.10.5's own net (bench/compare_gluoncv.py"
GCV_REPRODUCED = {
    "faster_rcnn_resnet50_v1b_coco": _GCV_YES + ", tests/test_convert_gluoncv.py)",
    "mask_rcnn_resnet50_v1b_coco": _GCV_YES + ")",
    "faster_rcnn_resnet101_v1d_coco": _GCV_YES + ")",
    "mask_rcnn_resnet101_v1d_coco": _GCV_YES + ", tests/test_convert_gluoncv.py)",
    "faster_rcnn_fpn_resnet50_v1b_coco": _GCV_YES + ", tests/test_convert_gluoncv.py)",
    "mask_rcnn_fpn_resnet50_v1b_coco": _GCV_YES + ", tests/test_convert_gluoncv.py)",
    "mask_rcnn_fpn_resnet101_v1d_coco": _GCV_YES + ", tests/test_convert_gluoncv.py)",
    "faster_rcnn_fpn_resnet101_v1d_coco": "architecture compared via faster_rcnn_fpn_resnet50_v1b_coco (FPN Faster "
                                          "R-CNN) and mask_rcnn_fpn_resnet101_v1d_coco (R-101 v1d FPN trunk)",
}


def reproduced(name) -> str:
    if name in TP_COMPARED_VIA:
        via = TP_COMPARED_VIA[name]
        return TP_REPRODUCED if via is None else f"architecture compared via {via}"
    return GCV_REPRODUCED.get(name, "no")


for _e in ENTRIES:
    _e.setdefault("reproduced", reproduced(_e["name"]))


# --------------------------------------------------------------------------------------------
# README
# --------------------------------------------------------------------------------------------
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
        "of (`COCO-MaskRCNN-*.npz`, the nine rows with a tensorpack link under `weights from`) load it with",
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
        "entry of the same family (\"architecture compared via ...\"), or not at all (\"no\"). The same text is",
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
        "This file and the JSON files are written by `python bench/build_zoo.py`.",
        "",
    ]
    groups = [("tensorpack's table (examples/FasterRCNN)", TENSORPACK),
              ("GluonCV's R-CNN names", GLUONCV),
              ("Small (CPU) models and ClaRAN-style radio-source detectors", SMALL),
              ("torchvision's published detectors", TORCHVISION_ENTRIES),
              ("detectron2's MODEL_ZOO.md (the rows gluon_rcnn can build)", DETECTRON2)]
    for title, entries in groups:
        lines += [f"## {title}", "",
                  "| name | architecture | backbone | norm | schedule | total batch | augmentation | "
                  "reference box AP / mask AP | protocol | weights from | reproduced here |",
                  "| --- | --- | --- | --- | --- | ---: | --- | --- | --- | --- | --- |"]
        for e in entries:
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


def render_all() -> dict[Path, str]:
    names = [e["name"] for e in ENTRIES]
    assert len(names) == len(set(names)), "duplicate entry names"
    out = {HERE / f"{e['name']}.json": json.dumps(e, indent=2) + "\n" for e in ENTRIES}
    out[HERE / "README.md"] = readme()
    return out


def main(argv) -> int:
    files = render_all()
    if "--check" in argv:
        bad = [p.name for p, text in files.items() if not p.exists() or p.read_text() != text]
        stale = [p.name for p in HERE.glob("*.json") if p not in files]
        if bad or stale:
            print("out of date:", bad, "not generated:", stale)
            return 1
        return 0
    for p, text in files.items():
        p.write_text(text)
    print(f"wrote {len(files) - 1} entries and README.md to {HERE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
