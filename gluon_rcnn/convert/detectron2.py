"""Import detectron2's R-CNN model zoo (``model_final_*.pkl`` of its MODEL_ZOO.md) into gluon_rcnn.

``from_detectron2(pkl, kind_or_config)`` builds the gluon_rcnn model of a detectron2 zoo model
(:data:`DETECTRON2_KINDS`, named by its config path without ``.yaml``, e.g.
``'COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x'``) and loads every tensor of the file into it,
strictly (missing and unexpected names listed). ``detectron2_config(kind)`` is that model's config.

The file
--------
A detectron2 zoo file is a pickle of ``{"model": {name: numpy array}, "__author__": ...}`` in PyTorch
layout (detectron2/checkpoint/detection_checkpoint.py ``_load_file``: "model" and "__author__" mark
the detectron2 format). It is read by a *restricted* unpickler (:func:`load_pkl`): only numpy array
and scalar reconstruction, ``_codecs.encode`` (how protocol-2 pickles store bytes) and
``collections.OrderedDict`` may be named by the file; anything else (``os.system``, ``builtins.eval``,
...) is refused before it is called. Files without ``__author__`` are Caffe2/Detectron1-format
(another naming, ``matching_heuristics``): out of scope, refused with that reason.

Names (detectron2 sources at :data:`DETECTRON2_COMMIT`)
--------------------------------------------------------
- trunk (modeling/backbone/resnet.py): ``stem.conv1``, ``res{2..5}.{i}.conv{1,2,3}``, ``res{s}.0.shortcut``,
  each with ``.norm.{weight,bias,running_mean,running_var}`` (layers/batch_norm.py FrozenBatchNorm2d) or
  ``.norm.{weight,bias}`` (GroupNorm), under ``backbone.bottom_up.`` (FPN) or ``backbone.`` (C4, whose
  backbone is the ResNet up to res4) → ``backbone.body.conv1``/``bn1``, ``layer{s-1}.{i}.conv{k}``/``bn{k}``,
  ``downsample.{0,1}``. ``stem.conv1.weight``'s input channels are reversed (detectron2 feeds BGR,
  ``INPUT.FORMAT='BGR'``; gluon_rcnn RGB, with the means/stds reversed in the config: the same numbers).
- C4 head (modeling/roi_heads/roi_heads.py ``Res5ROIHeads``): ``roi_heads.res5.{i}.*`` →
  ``roi_heads.stages.0.head.res5.{i}.*``.
- FPN (modeling/backbone/fpn.py): ``backbone.fpn_lateral{2..5}``, ``backbone.fpn_output{2..5}`` (bias, or
  ``.norm`` with GN) → ``backbone.fpn.inner_blocks.{l-2}.{0,1}``, ``layer_blocks.{l-2}.{0,1}``.
- RPN (modeling/proposal_generator/rpn.py ``StandardRPNHead``): ``proposal_generator.rpn_head.{conv,
  objectness_logits,anchor_deltas}`` → ``rpn.head.{conv,cls_logits,bbox_pred}``. Deltas are anchor-major,
  4 minor, as ours. C4's 15 anchors are size-major (anchor_generator.py ``generate_cell_anchors``: ``for size
  in sizes: for aspect_ratio in aspect_ratios``), ours ratio-major: output channels permuted.
- box head (modeling/roi_heads/box_head.py ``FastRCNNConvFCHead``): ``roi_heads.box_head.fc{1,2}`` →
  ``head.fc6``/``fc7``; GN conv head ``conv{k}`` (no bias) + ``conv{k}.norm``, ``fc1`` → ``head.convs.{3(k-1)}``,
  ``convs.{3(k-1)+1}``, ``head.fc``. Cascade (cascade_rcnn.py): ``roi_heads.box_head.{s}.*``,
  ``roi_heads.box_predictor.{s}.*`` → ``roi_heads.stages.{s}.*``.
- predictor (modeling/roi_heads/fast_rcnn.py ``FastRCNNOutputLayers``): ``cls_score`` has C+1 outputs with
  the background LAST; ours has it FIRST: rows rolled by one. ``bbox_pred`` class-specific has 4*C outputs
  (no background box); ours 4*(C+1): the background's 4 rows are zeros (never read: detections are
  foreground). Class-agnostic (cascade): 4 outputs, as is.
- mask head (modeling/roi_heads/mask_head.py ``MaskRCNNConvUpsampleHead``): ``mask_fcn{1..4}`` (+ ``.norm``),
  ``deconv`` (ConvTranspose2d, same layout), ``predictor`` (C outputs, no background, as ours) →
  ``roi_heads.mask_head.convs.{3(k-1)}``/``.{3(k-1)+1}``, ``deconv``, ``predictor``.

Behaviour (the config of each kind, :func:`detectron2_overrides`)
------------------------------------------------------------------
``RULES.STRIDE_1X1=True`` for the models started from MSRA's R-50.pkl/R-101.pkl
(``RESNETS.STRIDE_IN_1X1=True``, detectron2's default); False for the GN ones. FrozenBN =
``FreezeBN`` with ``RULES.FREEZE_AFFINE=True``. Pixel mean/std are detectron2's, reversed to RGB
(``[123.675, 116.28, 103.53]``, std 1 or ``[58.395, 57.12, 57.375]``). RoIAlign ``ROIAlignV2``: aligned,
``FRCNN.ROI_SAMPLING_RATIO=0`` (adaptive, torchvision's roi_align). Un-rounded anchors at offset 0
(``RULES.ANCHOR_CELLS='exact'``), box decode clamp log(1000/16), PyTorch's symmetric padding
(``RULES.FLOOR_STRIDE2=False``), resize rule ``round`` (ResizeShortestEdge's ``int(x + 0.5)``), no MAX_SIZE round-up,
size divisibility 32 (FPN) / none (C4), per-level proposals (FPN), boxes rescaled per axis.

Not expressible / not reproduced (see :data:`NOT_EXPRESSIBLE` for the zoo models that cannot be built):
detectron2 resizes the uint8 image with PIL's bilinear filter (antialiased when shrinking, rounded to
uint8) before normalising; gluon_rcnn resizes the normalised float image with torch's bilinear filter.
The FPN level of a RoI is ``floor(4 + log2(sqrt(area)/224 + 1e-8))`` there, ``+ 1e-6`` outside the log
here (boundary cases only). Anchors are summed in float32 there, float64 here (< 1e-5 px measured).

Compared with detectron2 itself (``bench/detectron2_reference.sh``: detectron2 at :data:`DETECTRON2_COMMIT`
built from its source for the CPU; ``bench/compare_detectron2.py``, docs/results.md): Faster R-CNN R50-C4,
Mask R-CNN R50-FPN, Cascade Mask R-CNN R50-FPN and the from-scratch GN Mask R-CNN, with seeded weights in a
zoo-layout ``.pkl`` converted here, fed detectron2's resized image: every stage (features, RPN per level,
anchors, proposals, each box stage, mask logits, the final detections and the pasted masks) agrees to
float32 noise; tests/test_detectron2_reference.py keeps 320-px references of the four.
"""
from __future__ import annotations

import collections
import io
import json
import logging
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from ..backbone.tensorpack_npz import map_rows
from ..builders import build_model
from ..config import get_default_config
from ..profiles import RULES as RULE_TABLE
from ..detector import GeneralizedRCNN
from ..structures.categories import COCO_CLASSES
from .checkpoint import save_checkpoint  # noqa: F401 - re-exported for scripts/convert_detectron2.py
from .mapping import c4_anchor_perm, check_mapping
from .source import WeightSource, check_name_digest, file_name, register
from ..download import file_digest

logger = logging.getLogger(__name__)

__all__ = ["from_detectron2", "detectron2_config", "detectron2_overrides", "detectron2_state_dict", "load_pkl",
           "name_map", "save_checkpoint", "zoo_entry", "DETECTRON2_KINDS", "NOT_EXPRESSIBLE", "Detectron2ConversionError",
           "DETECTRON2_COMMIT"]

#: the facebookresearch/detectron2 commit whose sources and MODEL_ZOO.md the names, configs and table come from
DETECTRON2_COMMIT = "02b5c4e295e990042a714712c21dc79b731e8833"


class Detectron2ConversionError(ValueError):
    """The file is not a detectron2 zoo pickle, is unsafe, or does not fit the model."""


# ------------------------------------------------------------------------------------------------
# the zoo (MODEL_ZOO.md rows whose architecture gluon_rcnn can build)
# ------------------------------------------------------------------------------------------------

#: detectron2/data/datasets/pascal_voc.py CLASS_NAMES; builtin_meta.py CITYSCAPES_THING_CLASSES
VOC_CLASSES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable",
               "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor")
CITYSCAPES_CLASSES = ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")


@dataclass(frozen=True)
class Detectron2Model:
    """One MODEL_ZOO.md row: where it is, what it scored, and the architecture its config builds."""

    model_id: int
    file: str                   # model_final_<md5 prefix>.pkl
    box_ap: float | None        # MODEL_ZOO.md "box AP" (VOC: its box AP column; Cityscapes: none given)
    mask_ap: float | None
    mask: bool
    fpn: bool
    depth: int = 50
    cascade: bool = False
    gn: bool = False
    stride_1x1: bool = True     # RESNETS.STRIDE_IN_1X1
    classes: tuple = tuple(COCO_CLASSES)
    extra: tuple = ()           # more KEY=VALUE overrides (sizes, thresholds, pixel std, FREEZE_AT)

    def url(self, kind: str) -> str:
        return f"https://dl.fbaipublicfiles.com/detectron2/{kind}/{self.model_id}/{self.file}"


_CITY = ("PREPROC.TRAIN_SHORT_EDGE_SIZE=[800,1024]", "PREPROC.TEST_SHORT_EDGE_SIZE=1024", "PREPROC.MAX_SIZE=2048")
_LVIS = ("TEST.RESULT_SCORE_THRESH=0.0001", "TEST.RESULTS_PER_IM=300")
_GN = dict(gn=True, stride_1x1=False)
_SCRATCH = ("BACKBONE.FREEZE_AT=0",)

#: config path (without .yaml) → the MODEL_ZOO.md row (model id, file, published APs) and its architecture
DETECTRON2_KINDS: dict[str, Detectron2Model] = {
    "COCO-Detection/faster_rcnn_R_50_C4_1x": Detectron2Model(137257644, "model_final_721ade.pkl", 35.7, None, False, False),
    "COCO-Detection/faster_rcnn_R_50_FPN_1x": Detectron2Model(137257794, "model_final_b275ba.pkl", 37.9, None, False, True),
    "COCO-Detection/faster_rcnn_R_50_C4_3x": Detectron2Model(137849393, "model_final_f97cb7.pkl", 38.4, None, False, False),
    "COCO-Detection/faster_rcnn_R_50_FPN_3x": Detectron2Model(137849458, "model_final_280758.pkl", 40.2, None, False, True),
    "COCO-Detection/faster_rcnn_R_101_C4_3x": Detectron2Model(138204752, "model_final_298dad.pkl", 41.1, None, False,
                                                              False, 101),
    "COCO-Detection/faster_rcnn_R_101_FPN_3x": Detectron2Model(137851257, "model_final_f6e8b1.pkl", 42.0, None, False,
                                                               True, 101),
    "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x": Detectron2Model(137259246, "model_final_9243eb.pkl", 36.8, 32.2,
                                                                      True, False),
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x": Detectron2Model(137260431, "model_final_a54504.pkl", 38.6, 35.2,
                                                                       True, True),
    "COCO-InstanceSegmentation/mask_rcnn_R_50_C4_3x": Detectron2Model(137849525, "model_final_4ce675.pkl", 39.8, 34.4,
                                                                      True, False),
    "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x": Detectron2Model(137849600, "model_final_f10217.pkl", 41.0, 37.2,
                                                                       True, True),
    "COCO-InstanceSegmentation/mask_rcnn_R_101_C4_3x": Detectron2Model(138363239, "model_final_a2914c.pkl", 42.6, 36.7,
                                                                       True, False, 101),
    "COCO-InstanceSegmentation/mask_rcnn_R_101_FPN_3x": Detectron2Model(138205316, "model_final_a3ec72.pkl", 42.9, 38.6,
                                                                        True, True, 101),
    "Misc/cascade_mask_rcnn_R_50_FPN_1x": Detectron2Model(138602847, "model_final_e9d89b.pkl", 42.1, 36.4, True, True,
                                                          cascade=True),
    "Misc/cascade_mask_rcnn_R_50_FPN_3x": Detectron2Model(144998488, "model_final_480dd8.pkl", 44.3, 38.5, True, True,
                                                          cascade=True),
    "Misc/mask_rcnn_R_50_FPN_3x_gn": Detectron2Model(138602888, "model_final_dc5d9e.pkl", 42.6, 38.6, True, True, **_GN),
    "Misc/scratch_mask_rcnn_R_50_FPN_3x_gn": Detectron2Model(138602908, "model_final_01ca85.pkl", 39.9, 36.6, True, True,
                                                             extra=_SCRATCH, **_GN),
    "Misc/scratch_mask_rcnn_R_50_FPN_9x_gn": Detectron2Model(
        183808979, "model_final_da7b4c.pkl", 43.7, 39.6, True, True,
        extra=_SCRATCH + ("PREPROC.PIXEL_STD=[58.395,57.12,57.375]",), **_GN),  # its PIXEL_STD, reversed to RGB
    "LVISv0.5-InstanceSegmentation/mask_rcnn_R_50_FPN_1x": Detectron2Model(
        144219072, "model_final_571f7c.pkl", 23.6, 24.4, True, True, classes=(), extra=("DATA.NUM_CATEGORY=1230",) + _LVIS),
    "LVISv0.5-InstanceSegmentation/mask_rcnn_R_101_FPN_1x": Detectron2Model(
        144219035, "model_final_824ab5.pkl", 25.6, 25.9, True, True, 101, classes=(),
        extra=("DATA.NUM_CATEGORY=1230",) + _LVIS),
    "Cityscapes/mask_rcnn_R_50_FPN": Detectron2Model(142423278, "model_final_af9cf5.pkl", None, 36.5, True, True,
                                                     classes=CITYSCAPES_CLASSES, extra=_CITY),
    "PascalVOC-Detection/faster_rcnn_R_50_C4": Detectron2Model(142202221, "model_final_b1acc2.pkl", 51.9, None, False,
                                                               False, classes=VOC_CLASSES,
                                                               extra=("PREPROC.TRAIN_SHORT_EDGE_SIZE=[480,800]",)),
}

#: MODEL_ZOO.md rows gluon_rcnn's architecture cannot express, and why
NOT_EXPRESSIBLE: dict[str, str] = {
    "*_DC5_* (faster/mask R50 1x, 3x, R101 3x)": "dilated res5 (RES5_DILATION=2, res5 at stride 16) with the box "
                                                 "head on it: gluon_rcnn's ResNet has no dilation",
    "*_X_101_32x8d_* (faster, mask, LVIS, keypoint)": "ResNeXt (grouped 3x3 convs, NUM_GROUPS=32): not a gluon_rcnn trunk",
    "COCO-Detection/retinanet_*": "one-stage RetinaNet: no RPN/RoI heads here",
    "COCO-Detection/rpn_R_50_{C4,FPN}_1x": "RPN only (PROPOSAL_GENERATOR without ROI heads)",
    "COCO-Detection/fast_rcnn_R_50_FPN_1x": "precomputed proposals (PrecomputedProposals, no RPN weights)",
    "COCO-Keypoints/*": "keypoint head",
    "COCO-PanopticSegmentation/*, Misc/panoptic_fpn_R_101_dconv_cascade_gn_3x": "semantic segmentation head "
                                                                                "(and deformable convs)",
    "Misc/mask_rcnn_R_50_FPN_{1x,3x}_dconv_c3-c5": "deformable convs in res3-res5",
    "Misc/mask_rcnn_R_50_FPN_3x_syncbn, Misc/scratch_mask_rcnn_R_50_FPN_9x_syncbn": "BatchNorm in the FPN and the "
        "box/mask heads (gluon_rcnn's FPN.NORM and heads take GN or nothing; foldable into the convs at "
        "inference, not done)",
    "new_baselines/*_LSJ": "SyncBN in FPN and heads, a 2-conv RPN head (CONV_DIMS=[-1,-1]); RegNet trunks",
    "Misc/cascade_mask_rcnn_X_152_32x8d_FPN_IN5k_gn_dconv": "ResNeXt-152 with deformable convs",
}

#: zoo entries of the same detector type; detectron2_overrides() sets every architecture key on top
_BASE_ENTRY = {(False, False, False): "faster_rcnn_resnet50_v1b_coco", (False, True, False): "faster_rcnn_fpn_resnet50_v1b_coco",
               (True, False, False): "mask_rcnn_resnet50_v1b_coco", (True, True, False): "mask_rcnn_fpn_resnet50_v1b_coco",
               (True, True, True): "tp_cascade_mask_rcnn_fpn_resnet50_1x_coco"}

#: detectron2's config/defaults.py and Base-RCNN-*.yaml in gluon_rcnn keys: the ``detectron2`` rule profile
#: (gluon_rcnn.profiles: FrozenBN, no zero-init, no MAX_SIZE round-up, every anchor labelled, low-quality
#: matches, un-rounded anchors at offset 0, log(1000/16) clamp, ROIAlignV2, conv-GN-ReLU heads without bias,
#: binary polygon mask targets, sub-pixel paste, per-axis box rescale, ceil padding) with every rule
#: deviation of the base entry cleared, then detectron2's knobs
_BASE = ("RULES.PROFILE=detectron2",) + tuple(f"RULES.{rule}=None" for rule in RULE_TABLE) + (
    "BACKBONE.VARIANT=v1b", "FPN.NUM_CHANNEL=256", "RPN.HEAD_DIM=1024",
    "RPN.ANCHOR_SIZES=[32,64,128,256,512]", "RPN.ANCHOR_RATIOS=[0.5,1.0,2.0]",
    "RPN.BBOX_REG_WEIGHTS=[1.0,1.0,1.0,1.0]", "RPN.SMOOTH_L1_BETA=0.0",
    "FRCNN.ROI_SAMPLING_RATIO=0",      # POOLER_SAMPLING_RATIO=0
    "FRCNN.BBOX_REG_WEIGHTS=[10.0,10.0,5.0,5.0]", "FRCNN.SMOOTH_L1_BETA=0.0",
    "CASCADE.IOUS=[0.5,0.6,0.7]", "CASCADE.BBOX_REG_WEIGHTS=[[10.0,10.0,5.0,5.0],[20.0,20.0,10.0,10.0],[30.0,30.0,15.0,15.0]]",
    "FPN.FRCNN_FC_HEAD_DIM=1024", "FPN.FRCNN_CONV_HEAD_DIM=256", "MRCNN.HEAD_DIM=256", "MRCNN.RESOLUTION=28",
    "PREPROC.PIXEL_MEAN=[123.675,116.28,103.53]", "PREPROC.PIXEL_STD=[1.0,1.0,1.0]",  # BGR [103.53,...], reversed
    "PREPROC.TRAIN_SHORT_EDGE_SIZE=[640,800]", "PREPROC.TEST_SHORT_EDGE_SIZE=800", "PREPROC.MAX_SIZE=1333",
    "PREPROC.SIZE_DIVISIBILITY=0",
    "TEST.FRCNN_NMS_THRESH=0.5", "TEST.RESULT_SCORE_THRESH=0.05", "TEST.RESULTS_PER_IM=100",
)


def _kind_name(kind) -> str:
    k = str(kind).replace("\\", "/")
    k = k[len("configs/"):] if k.startswith("configs/") else k
    k = k[:-5] if k.endswith(".yaml") else k
    if k in DETECTRON2_KINDS:
        return k
    raise KeyError(f"unknown detectron2 zoo model {kind!r}; known (config paths): {sorted(DETECTRON2_KINDS)}. Not "
                   f"expressible here: {sorted(NOT_EXPRESSIBLE)}")


def detectron2_overrides(kind: str) -> list[str]:
    """``KEY=VALUE`` strings giving the gluon_rcnn config of detectron2 zoo model ``kind``."""
    m = DETECTRON2_KINDS[_kind_name(kind)]
    out = list(_BASE) + [
        f"MODE_MASK={m.mask}", f"MODE_FPN={m.fpn}", f"FPN.CASCADE={m.cascade}",
        "BACKBONE.RESNET_NUM_BLOCKS=" + ("[3,4,6,3]" if m.depth == 50 else "[3,4,23,3]"),
        f"BACKBONE.NORM={'GN' if m.gn else 'FreezeBN'}",
        # MSRA's R-50.pkl/R-101.pkl trunks: the stride in the 1x1 conv, a deviation from the profile
        *(["RULES.STRIDE_1X1=True"] if m.stride_1x1 else []),
        f"FPN.NORM={'GN' if m.gn else 'None'}",
        "FPN.FRCNN_HEAD_FUNC=" + ("fastrcnn_4conv1fc_gn_head" if m.gn else "fastrcnn_2fc_head"),
        "FPN.MRCNN_HEAD_FUNC=" + ("maskrcnn_up4conv_gn_head" if m.gn else "maskrcnn_up4conv_head"),
        # Base-RCNN-FPN.yaml: PRE_NMS_TOPK_{TRAIN,TEST} 2000/1000 per level, POST_NMS_TOPK 1000/1000 (cascade:
        # POST_NMS_TOPK_TRAIN 2000); Base-RCNN-C4.yaml / defaults.py: 12000/6000 before NMS, 2000/1000 after
        "FPN.PROPOSAL_MODE=Level", "RPN.TRAIN_PER_LEVEL_NMS_TOPK=2000", "RPN.TEST_PER_LEVEL_NMS_TOPK=1000",
        "RPN.TRAIN_PRE_NMS_TOPK=12000", "RPN.TEST_PRE_NMS_TOPK=6000", "RPN.TEST_POST_NMS_TOPK=1000",
        f"RPN.TRAIN_POST_NMS_TOPK={2000 if (m.cascade or not m.fpn) else 1000}",
    ]
    if m.classes:
        out.append(f"DATA.NUM_CATEGORY={len(m.classes)}")
    # names keep their spaces ('traffic light'); no space between items. LVIS: [] (class_1..class_1230)
    out.append("DATA.CLASS_NAMES=" + json.dumps(list(m.classes), separators=(",", ":")))
    return out + list(m.extra)


def detectron2_config(kind: str):
    """The finalised gluon_rcnn config of detectron2 zoo model ``kind`` with its class names (LVIS: none
    recorded here, ``class_1..class_1230``; pass ``classes=`` to :func:`from_detectron2`)."""
    kind = _kind_name(kind)
    cfg = get_default_config()
    cfg.update_args(detectron2_overrides(kind))
    return cfg.finalize()


def zoo_entry(kind: str) -> str:
    """A gluon_rcnn zoo entry of the same detector type (the overrides set every architecture key)."""
    m = DETECTRON2_KINDS[_kind_name(kind)]
    return _BASE_ENTRY[(m.mask, m.fpn, m.cascade)]


# ------------------------------------------------------------------------------------------------
# the file: a restricted unpickler
# ------------------------------------------------------------------------------------------------

def _allowed_globals() -> dict:
    recon = np.zeros(1).__reduce__()[0]          # numpy(._core).multiarray._reconstruct, whatever numpy's version
    scalar = np.float32(0).__reduce__()[0]       # numpy(._core).multiarray.scalar
    frombuffer = np.zeros(2).__reduce_ex__(5)[0]  # numpy(._core).numeric._frombuffer (pickle protocol 5)
    import codecs
    allowed = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("_codecs", "encode"): codecs.encode, ("collections", "OrderedDict"): collections.OrderedDict}
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[(mod, "_reconstruct")] = recon
        allowed[(mod, "scalar")] = scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):
        allowed[(mod, "_frombuffer")] = frombuffer
    return allowed


class _RestrictedUnpickler(pickle.Unpickler):
    """Reconstructs numpy arrays, numpy scalars and builtin containers; refuses every other global."""

    _ALLOWED = _allowed_globals()

    def find_class(self, module, name):
        obj = self._ALLOWED.get((module, name))
        if obj is None:
            raise Detectron2ConversionError(
                f"refusing to load {module}.{name} from the pickle: a detectron2 zoo file holds only numpy arrays in "
                f"dicts; anything else could run code (only numpy array/scalar reconstruction, _frombuffer, "
                f"_codecs.encode and collections.OrderedDict are allowed)")
        return obj

    def persistent_load(self, pid):
        raise Detectron2ConversionError("refusing a pickle with persistent ids (not a detectron2 zoo file)")


def load_pkl(src) -> dict[str, np.ndarray]:
    """``{name: array}`` of a detectron2 zoo ``.pkl`` (path or bytes), read by a restricted unpickler.

    Refuses: unsafe pickles (:class:`Detectron2ConversionError` naming the global), Caffe2/Detectron1-format
    files (no ``__author__``, or ``matching_heuristics``), entries that are not numpy arrays."""
    data = src if isinstance(src, (bytes, bytearray)) else Path(src).read_bytes()
    label = "the pickle" if isinstance(src, (bytes, bytearray)) else str(src)
    try:
        obj = _RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Detectron2ConversionError as e:
        raise Detectron2ConversionError(f"{label}: {e}") from None
    except Exception as e:  # a truncated or non-pickle file
        raise Detectron2ConversionError(f"{label} is not a readable pickle: {type(e).__name__}: {e}") from None
    return _model_dict(obj, label)


def _model_dict(obj, label: str) -> dict[str, np.ndarray]:
    if not isinstance(obj, Mapping) or "model" not in obj or "__author__" not in obj:
        raise Detectron2ConversionError(
            f"{label} is not in detectron2's model-zoo format ({{'model': ..., '__author__': ...}}, "
            f"detection_checkpoint.py); Caffe2/Detectron1-format files (other names, loaded by detectron2 with "
            f"matching heuristics) are not supported")
    if obj.get("matching_heuristics"):
        raise Detectron2ConversionError(f"{label} asks for name-matching heuristics (a Caffe2/pycls-format file): "
                                        f"only detectron2-native zoo files are supported")
    model = obj["model"]
    bad = [k for k, v in model.items() if not isinstance(k, str) or not isinstance(v, np.ndarray)]
    if bad:
        raise Detectron2ConversionError(f"{label}: entries that are not named numpy arrays: {bad[:6]}")
    return dict(model)


def _read(src) -> dict:
    if isinstance(src, Mapping):
        return _model_dict(src, "the dict") if "model" in src else dict(src)
    return load_pkl(src)


# ------------------------------------------------------------------------------------------------
# names and layouts
# ------------------------------------------------------------------------------------------------

_FROZEN_BN = ("weight", "bias", "running_mean", "running_var")


def _conv_norm(d2: str, ours_conv: str, ours_norm: str, leaves, layout: str = "same") -> list:
    rows = [(f"{d2}.weight", f"{ours_conv}.weight", layout)]
    return rows + [(f"{d2}.norm.{leaf}", f"{ours_norm}.{leaf}", "same") for leaf in leaves]


def _wb(d2: str, ours: str, layout: str = "same") -> list:
    return [(f"{d2}.weight", f"{ours}.weight", layout), (f"{d2}.bias", f"{ours}.bias", layout)]


def name_map(cfg) -> list[tuple[str, str, str]]:
    """(detectron2 name, gluon_rcnn state-dict key, layout) for ``cfg``. Layouts (all PyTorch): ``same``;
    ``bgr`` input channels reversed; ``cls`` rows rolled (background last → first); ``box`` 4 zero rows
    (the background's) before the 4*C rows; ``rpn_c4_cls``/``rpn_c4_box`` anchor rows size-major → ratio-major."""
    leaves = ("weight", "bias") if cfg.BACKBONE.NORM == "GN" else _FROZEN_BN
    trunk = "backbone.bottom_up." if cfg.MODE_FPN else "backbone."
    rows = _conv_norm(trunk + "stem.conv1", "backbone.body.conv1", "backbone.body.bn1", leaves, "bgr")
    for s, n in enumerate(cfg.BACKBONE.RESNET_NUM_BLOCKS):
        if s == 3 and not cfg.MODE_FPN:
            d2, ours = "roi_heads.res5", "roi_heads.stages.0.head.res5"
        else:
            d2, ours = f"{trunk}res{s + 2}", f"backbone.body.layer{s + 1}"
        for b in range(n):
            for k in (1, 2, 3):
                rows += _conv_norm(f"{d2}.{b}.conv{k}", f"{ours}.{b}.conv{k}", f"{ours}.{b}.bn{k}", leaves)
            if b == 0:
                rows += _conv_norm(f"{d2}.{b}.shortcut", f"{ours}.{b}.downsample.0", f"{ours}.{b}.downsample.1", leaves)
    gn_fpn = cfg.MODE_FPN and cfg.FPN.NORM == "GN"
    if cfg.MODE_FPN:
        for lvl in range(2, 6):
            for d2, ours in (("fpn_lateral", "inner_blocks"), ("fpn_output", "layer_blocks")):
                base, mine = f"backbone.{d2}{lvl}", f"backbone.fpn.{ours}.{lvl - 2}"
                rows += (_conv_norm(base, f"{mine}.0", f"{mine}.1", ("weight", "bias")) if gn_fpn
                         else _wb(base, f"{mine}.0"))
    c4_rpn = not cfg.MODE_FPN and len(cfg.RPN.ANCHOR_SIZES) > 1 and len(cfg.RPN.ANCHOR_RATIOS) > 1
    rows += _wb("proposal_generator.rpn_head.conv", "rpn.head.conv")
    rows += _wb("proposal_generator.rpn_head.objectness_logits", "rpn.head.cls_logits", "rpn_c4_cls" if c4_rpn else "same")
    rows += _wb("proposal_generator.rpn_head.anchor_deltas", "rpn.head.bbox_pred", "rpn_c4_box" if c4_rpn else "same")
    nstages = len(cfg.CASCADE.IOUS) if (cfg.MODE_FPN and cfg.FPN.CASCADE) else 1
    agnostic = bool(cfg.MODE_FPN and cfg.FPN.CASCADE)
    for s in range(nstages):
        sfx = f".{s}" if agnostic else ""
        head, pred, ours = f"roi_heads.box_head{sfx}", f"roi_heads.box_predictor{sfx}", f"roi_heads.stages.{s}"
        if cfg.MODE_FPN:
            if cfg.FPN.FRCNN_HEAD_FUNC == "fastrcnn_2fc_head":
                rows += _wb(f"{head}.fc1", f"{ours}.head.fc6") + _wb(f"{head}.fc2", f"{ours}.head.fc7")
            else:
                gn = cfg.FPN.FRCNN_HEAD_FUNC.endswith("_gn_head")
                for k in range(4):
                    conv = f"{ours}.head.convs.{3 * k}"
                    rows += (_conv_norm(f"{head}.conv{k + 1}", conv, f"{ours}.head.convs.{3 * k + 1}", ("weight", "bias"))
                             if gn else _wb(f"{head}.conv{k + 1}", conv))
                rows += _wb(f"{head}.fc1", f"{ours}.head.fc")
        rows += _wb(f"{pred}.cls_score", f"{ours}.predictor.cls_score", "cls")
        rows += _wb(f"{pred}.bbox_pred", f"{ours}.predictor.bbox_pred", "same" if agnostic else "box")
    if cfg.MODE_MASK:
        if cfg.MODE_FPN:
            gn = cfg.FPN.MRCNN_HEAD_FUNC.endswith("_gn_head")
            for k in range(4):
                conv = f"roi_heads.mask_head.convs.{3 * k}"
                rows += (_conv_norm(f"roi_heads.mask_head.mask_fcn{k + 1}", conv,
                                    f"roi_heads.mask_head.convs.{3 * k + 1}", ("weight", "bias"))
                         if gn else _wb(f"roi_heads.mask_head.mask_fcn{k + 1}", conv))
        rows += _wb("roi_heads.mask_head.deconv", "roi_heads.mask_head.deconv")
        rows += _wb("roi_heads.mask_head.predictor", "roi_heads.mask_head.predictor")
    return rows


def _transform(t: torch.Tensor, layout: str, cfg) -> torch.Tensor:
    if layout == "same":
        return t
    if layout == "bgr":
        return t.flip(1)
    if layout == "cls":  # [C+1, ...] background last → first
        return torch.cat([t[-1:], t[:-1]])
    if layout == "box":  # [4C, ...] → [4(C+1), ...], the background's 4 rows zero
        return torch.cat([t.new_zeros((4,) + tuple(t.shape[1:])), t])
    perm = c4_anchor_perm(cfg)  # perm[o] = detectron2's anchor for our anchor o (both size-major → ratio-major)
    if layout == "rpn_c4_cls":
        return t[perm]
    if layout == "rpn_c4_box":
        return t.reshape(len(perm), 4, *t.shape[1:])[perm].reshape(t.shape)
    raise ValueError(layout)


def detectron2_state_dict(src, cfg, reference: Mapping[str, torch.Tensor], strict: bool = True):
    """Map detectron2 tensors ``src`` (a ``.pkl`` path, the loaded ``{"model": ...}`` dict, or name → array)
    to gluon_rcnn keys. reference: our state dict (shapes checked against it).

    Returns (state, missing, unexpected): ``missing`` our keys with no detectron2 tensor, ``unexpected``
    detectron2 names not used. With ``strict`` either list non-empty raises :class:`Detectron2ConversionError`
    listing them. Arrays keep their dtype (the model's load casts)."""
    d2 = _read(src)
    rows = name_map(cfg)
    state, used, missing, problems = map_rows(d2, rows, reference, cfg, _transform, source="detectron2")
    missing, unexpected = check_mapping(d2, rows, reference, state, used, missing, problems, source="detectron2",
                                        error=Detectron2ConversionError, strict=strict)
    return state, missing, unexpected


@torch.no_grad()
def from_detectron2(src, config, *, strict: bool = True, classes=None) -> GeneralizedRCNN:
    """The gluon_rcnn model holding detectron2's weights ``src`` (a zoo ``.pkl`` path, or its loaded dict), eval mode.

    config: a kind of :data:`DETECTRON2_KINDS` (config path, e.g. ``'COCO-Detection/faster_rcnn_R_50_FPN_3x'``) or
    a gluon_rcnn config (the file does not record STRIDE_IN_1X1, the pixel statistics or the input sizes:
    the config must state them, see :func:`detectron2_overrides`)."""
    cfg = detectron2_config(config) if isinstance(config, str) else config.clone().finalize()
    model = build_model(cfg, classes)
    ref = model.state_dict()
    state, missing, unexpected = detectron2_state_dict(src, cfg, ref, strict=strict)
    model.load_state_dict({k: state.get(k, v) for k, v in ref.items()}, strict=True)
    model.detectron2_missing, model.detectron2_unexpected = missing, unexpected
    return model.eval()


# ------------------------------------------------------------------------------------------------
# the zoo's published models (weights.format "detectron2-pkl")
# ------------------------------------------------------------------------------------------------

_MD5_IN_NAME = re.compile(r"_([a-f0-9]{6})\.pkl$")  # MODEL_ZOO.md: "its md5 prefix in its file name"


@register
class Detectron2Source(WeightSource):
    """``{"url": "https://dl.fbaipublicfiles.com/detectron2/<config path>/<model id>/model_final_<md5[:6]>.pkl",
    "format": "detectron2-pkl", "kind": "<config path>"}`` (the rows of :data:`DETECTRON2_KINDS`): the file's
    md5 must start with the 6 hex in its name (MODEL_ZOO.md: "any model on this page contains its md5 prefix in
    its file name"); it is read by :func:`load_pkl`'s restricted unpickler and converted by
    :func:`from_detectron2`; its sha256 is recorded at the first download and checked afterwards.
    ``$GLUON_RCNN_DETECTRON2_URL`` replaces ``https://dl.fbaipublicfiles.com/detectron2/``, keeping the path
    after it."""

    format, label, field, what = "detectron2-pkl", "detectron2 pkl", "kind", "detectron2's {} model"
    url_env, base = "GLUON_RCNN_DETECTRON2_URL", "https://dl.fbaipublicfiles.com/detectron2/"

    def url(self, weights):
        base, url = os.environ.get(self.url_env, "").strip(), weights.get("url") or ""
        if url and base and url.startswith(self.base):
            return base.rstrip("/") + "/" + url[len(self.base):]
        return url

    def convert(self, path, weights, url, digest, dest):
        kind = weights["kind"]
        check_name_digest(file_digest(path, "md5"), file_name(url), "md5", _MD5_IN_NAME, "detectron2")
        logger.info("converting detectron2's %s (%s) into %s", path, kind, dest)
        return save_checkpoint(from_detectron2(str(path), kind), dest, {"url": url, "kind": kind, "pkl_sha256": digest})
