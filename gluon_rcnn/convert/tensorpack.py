"""Import tensorpack's published COCO Mask R-CNN checkpoints (``COCO-MaskRCNN-*.npz``) into gluon_rcnn.

The checkpoints of tensorpack's code at 02c38f26 (2019-02-19, :data:`TENSORPACK_2019_KINDS`:
``COCO-R50C4-MaskRCNN-Standard.npz`` ...) are kinds too, with the ``tensorpack-2019`` rule profile
(gluon_rcnn/profiles.py) and that code's config defaults. Also: 6-class radio checkpoints of the same format (:data:`RADIO_KINDS`: ClaRAN v0.2, which is this
tensorpack code trained on Radio Galaxy Zoo), and tensorpack's ImageNet backbones
(:data:`TENSORPACK_IMAGENET`, ``ImageNet-R{50,101}-AlignPadding.npz`` and ``-GroupNorm32-AlignPadding``)
as a torchvision-style ResNet state dict for ``BACKBONE.WEIGHTS`` (:func:`imagenet_state_dict`; the
loader takes the ``.npz`` as is too).

``tensorpack_config(kind)`` gives the gluon_rcnn config of one row of tensorpack's
examples/FasterRCNN/README.md table (its config string applied on tensorpack's defaults, with the
keys that select tensorpack's rules set: GN head order and conv bias, un-rounded anchors, accurate
mask paste, decode clamp, MAX_SIZE round-up, ...). ``from_tensorpack(npz, kind_or_config)`` builds
that model and loads every variable of the file into it, strictly (missing and unexpected names
listed).

Names and layouts (tensorpack's variable names come from examples/FasterRCNN/modeling/*.py and
tensorpack/models/*.py; ``dump_session_params`` saves them with TF's ``:0`` suffix, accepted with or
without it):

- ``conv0``, ``group{g}/block{b}/conv{1,2,3}``, ``.../convshortcut`` (backbone.py ``resnet_*``):
  ResNet convs, no bias; their norm is ``<conv>/bn/{gamma,beta,mean/EMA,variance/EMA}`` (FreezeBN)
  or ``<conv>/gn/{gamma,beta}`` (GN) (``get_norm``, used as the Conv2D activation, hence inside the
  conv's scope). ``group3`` is res5: the trunk's ``layer4`` in FPN, the box head's ``res5`` in C4
  (``resnet_conv5``, shared by the mask branch).
- Conv kernels ``W`` are HWIO (tf.layers.Conv2D) → OIHW. ``conv0``'s input channels are reversed:
  tensorpack feeds BGR (generalized_rcnn.py ``preprocess``: ``image_preprocess(image, bgr=True)``),
  gluon_rcnn RGB.
- ``fpn/lateral_1x1_c{2..5}``, ``fpn/posthoc_3x3_p{2..5}`` (+ ``fpn/gn_c*``, ``fpn/gn_p*``) (model_fpn.py
  ``fpn_model``) → ``backbone.fpn.inner_blocks.{i}.{0,1}``, ``layer_blocks.{i}.{0,1}``.
- ``rpn/conv0``, ``rpn/class``, ``rpn/box`` (model_rpn.py ``rpn_head``): box channels are
  anchor-major, 4 deltas (dx, dy, dw, dh) minor, as ours. C4's 15 anchors are in the order
  ``RULES.ANCHOR_ORDER`` names: size-major, ratio-minor since 141ab53c (modeling/model_rpn.py
  ``get_all_anchors``: ``for sz in sizes: for ratio in ratios``), whose output channels are permuted
  into ours (ratio-major); ratio-major at 02c38f26 (data.py ``get_all_anchors``: py-faster-rcnn's
  ``generate_anchors``), as ours. FPN has one size per level: no permutation.
- FullyConnected ``W`` is ``[in, out]`` → transposed. fc6/fc after a pooled NCHW feature flatten in
  C, H, W order (``batch_flatten`` of a channels_first tensor), as ``torch.flatten(1)``: no reorder.
- ``fastrcnn/fc6``, ``fc7`` (``fastrcnn_2fc_head``), ``fastrcnn/conv{k}``, ``gn{k}``, ``fc``
  (``fastrcnn_Xconv1fc_head``), ``fastrcnn/outputs/{class,box}`` (FPN) or ``fastrcnn/{class,box}`` (C4)
  (``fastrcnn_outputs``): class 0 is the background in both; box deltas ``[C+1, 4]`` class-major.
- Cascade: ``cascade_rcnn_stage{1,2,3}/head/...`` and ``.../outputs/{class,box}`` (model_cascade.py),
  box class-agnostic (4 outputs).
- ``maskrcnn/fcn{k}``, ``gn{k}``, ``deconv``, ``conv`` (model_mrcnn.py ``maskrcnn_upXconv_head``): the
  transposed conv kernel is ``[kh, kw, out, in]`` (tf.layers.Conv2DTranspose) → ``[in, out, kh, kw]``;
  ``conv`` predicts the 80 foreground classes, as ours.

Padding: tensorpack's ``BACKBONE.TF_PAD_MODE=False`` ("AlignPadding", config.py) pads the stride-2
convs 3/1 pixels top-left, as gluon_rcnn's symmetric padding; ``TF_PAD_MODE=True`` models are not
equivalent. The mode leaves no trace in the file (padding has no variables). Every published COCO
checkpoint of the README table uses the default ``TF_PAD_MODE=False`` (its training command starts
from ``ImageNet-R*-AlignPadding.npz``; the scratch model has no ImageNet start), so a ``kind``
implies it; for any other file the caller must state ``tf_pad_mode=False`` (``True`` is refused).
"""
from __future__ import annotations

import logging
from typing import Mapping

import torch

from ..structures.categories import COCO_CLASSES, RGZ_CLASSES
from ..builders import build_model
from ..backbone.tensorpack_npz import (PAD_REASON, TENSORPACK_IMAGENET, TensorpackConversionError, imagenet_name_map,
                                       imagenet_state_dict, map_rows, read_npz, resnet_rows, save_backbone,
                                       tensorpack_layout)
from ..config import get_default_config
from .checkpoint import save_checkpoint  # noqa: F401 - re-exported: loadable by get_model(entry, pretrained=path)
from .mapping import c4_anchor_perm, check_mapping
from ..detector import GeneralizedRCNN
from .source import WeightSource, register
from .tf_checkpoint import is_tf_checkpoint, read_tensorpack_checkpoint

logger = logging.getLogger(__name__)

__all__ = ["from_tensorpack", "tensorpack_config", "tensorpack_state_dict", "tensorpack_overrides",
           "TENSORPACK_KINDS", "TENSORPACK_RULES", "TensorpackConversionError", "COCO_CLASS_NAMES",
           "RADIO_KINDS", "TENSORPACK_2019_KINDS", "TENSORPACK_IMAGENET", "imagenet_state_dict", "imagenet_name_map", "save_backbone",
           "kind_name", "name_map", "tensorpack_detector_layout"]

URL = "http://models.tensorpack.com/FasterRCNN/{}.npz"

_R101 = "BACKBONE.RESNET_NUM_BLOCKS=[3,4,23,3]"
_GN = ("FPN.NORM=GN", "BACKBONE.NORM=GN", "FPN.FRCNN_HEAD_FUNC=fastrcnn_4conv1fc_gn_head",
       "FPN.MRCNN_HEAD_FUNC=maskrcnn_up4conv_gn_head")
_AUG = "PREPROC.TRAIN_SHORT_EDGE_SIZE=[640,800]"

#: npz name → (gluon_rcnn zoo entry, the README row's tensorpack config string, as KEY=VALUE list)
TENSORPACK_KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "COCO-MaskRCNN-R50C41x": ("tp_mask_rcnn_c4_resnet50_1x_coco", ("MODE_FPN=False",)),
    "COCO-MaskRCNN-R50FPN2x": ("tp_mask_rcnn_fpn_resnet50_2x_coco", ("TRAIN.LR_SCHEDULE=2x",)),
    "COCO-MaskRCNN-R50FPN2xGN": ("tp_mask_rcnn_fpn_gn_resnet50_2x_coco", _GN + ("TRAIN.LR_SCHEDULE=2x",)),
    "COCO-MaskRCNN-R50FPN1xCas": ("tp_cascade_mask_rcnn_fpn_resnet50_1x_coco", ("FPN.CASCADE=True",)),
    "COCO-MaskRCNN-R50FPN4xGNCasAug": ("tp_cascade_mask_rcnn_fpn_gn_resnet50_4x_trainaug_coco",
                                       ("FPN.CASCADE=True",) + _GN + (_AUG, "TRAIN.LR_SCHEDULE=4x")),
    "COCO-MaskRCNN-R101C41x": ("tp_mask_rcnn_c4_resnet101_1x_coco", ("MODE_FPN=False", _R101)),
    "COCO-MaskRCNN-R101FPN1x": ("tp_mask_rcnn_fpn_resnet101_1x_coco", (_R101,)),
    "COCO-MaskRCNN-R101FPN3xCasAug": ("tp_cascade_mask_rcnn_fpn_resnet101_3x_trainaug_coco",
                                      ("FPN.CASCADE=True", _R101, "TEST.RESULT_SCORE_THRESH=1e-4", _AUG,
                                       "TRAIN.LR_SCHEDULE=3x")),
    "COCO-MaskRCNN-R101FPN9xGNCasAugScratch": ("tp_cascade_mask_rcnn_fpn_gn_resnet101_9x_scratch_coco",
                                               ("FPN.CASCADE=True", _R101) + _GN +
                                               (_AUG, "TRAIN.LR_SCHEDULE=9x", "BACKBONE.FREEZE_AT=0")),
}

#: tensorpack's examples/FasterRCNN at 02c38f26 (2019-02-19): its README's table published these seven
#: (http://models.tensorpack.com/FasterRCNN/<name>.npz); the same format and variable names as the kinds above
#: (its train.py builds the same scopes). npz name → (zoo entry, the README row's config string at that commit).
#: The zoo entries are named ``tp2019_`` + architecture (``[cascade_]mask_rcnn_{c4,fpn}[_gn]_resnet{50,101}``) +
#: the published name's last part in lower case, less its ``GN`` (``standard``, ``betterparams``, ``scratch``)
#: + ``_coco``. That code's defaults (config.py) on top of which a row applies: :data:`_TENSORPACK_2019_BASE`.
TENSORPACK_2019_KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "COCO-R50C4-MaskRCNN-Standard": ("tp2019_mask_rcnn_c4_resnet50_standard_coco", ()),  # "this is the default"
    "COCO-R50FPN-MaskRCNN-Standard": ("tp2019_mask_rcnn_fpn_resnet50_standard_coco", ("MODE_FPN=True",)),
    "COCO-R50FPN-MaskRCNN-StandardGN": ("tp2019_mask_rcnn_fpn_gn_resnet50_standard_coco", ("MODE_FPN=True",) + _GN),
    "COCO-R101C4-MaskRCNN-Standard": ("tp2019_mask_rcnn_c4_resnet101_standard_coco", (_R101,)),
    "COCO-R101FPN-MaskRCNN-Standard": ("tp2019_mask_rcnn_fpn_resnet101_standard_coco", ("MODE_FPN=True", _R101)),
    "COCO-R101FPN-MaskRCNN-BetterParams": ("tp2019_cascade_mask_rcnn_fpn_resnet101_betterparams_coco",
                                           ("MODE_FPN=True", "FPN.CASCADE=True", _R101, "TEST.RESULT_SCORE_THRESH=1e-4",
                                            _AUG, "TRAIN.LR_SCHEDULE=[420000,500000,540000]")),
    "COCO-R101FPN-MaskRCNN-ScratchGN": ("tp2019_cascade_mask_rcnn_fpn_gn_resnet101_scratch_coco",
                                        ("MODE_FPN=True", "FPN.CASCADE=True", _R101) + _GN +
                                        (_AUG, "TRAIN.LR_SCHEDULE=[1500000,1580000,1620000]", "BACKBONE.FREEZE_AT=0")),
}
TENSORPACK_KINDS.update(TENSORPACK_2019_KINDS)

#: 6-class radio checkpoints of tensorpack's format. ClaRAN v0.2 (github.com/chenwuperth/claran, Wu et al.
#: 2019) is tensorpack's examples/FasterRCNN at 02c38f26 (basemodel.py, model_fpn.py, model_rpn.py,
#: model_frcnn.py, train.py: the same variable names) trained on Radio Galaxy Zoo. Its README's and
#: slurm_train.sh's command: ``MODE_MASK=False MODE_FPN=True BACKBONE.WEIGHTS=ImageNet-R50-AlignPadding.npz
#: PREPROC.TRAIN_SHORT_EDGE_SIZE=600,600 PREPROC.TEST_SHORT_EDGE_SIZE=600 TRAIN.LR_SCHEDULE=20000,30000,40000``
#: on its config.py defaults (R50 [3,4,6,3], FreezeBN, TF_PAD_MODE=False, STRIDE_1X1=False, anchors
#: 32..512 x ratios 0.5/1/2, MAX_SIZE 1333, 2fc head); dataset.py's class names ``['1C_1P', '1C_2P',
#: '1C_3P', '2C_2P', '2C_3P', '3C_3P']`` + BG: heads of 7 outputs (class) and 28 (box, class-specific).
#: The zoo entry is the base architecture (Faster R-CNN R50-v1b FPN, RGZ classes); ``tensorpack_overrides``
#: gives ClaRAN's anchor sizes/ratios, image sizes and that code's rules on top of it: the ``tensorpack-2019``
#: profile (:data:`_TENSORPACK_2019_BASE`), whose anchors are data.py ``get_all_anchors``'s (py-faster-rcnn's
#: ``generate_anchors``, x2, y2 += 1: ``RULES.ANCHOR_CELLS='legacy_end_plus_one'``; tests/test_claran_checkpoint.py).
#: ClaRAN's model_*.py/basemodel.py are byte-identical to 02c38f26's; a model converted with this kind gives
#: ClaRAN's own graph's detections on real FIRST cutouts (bench/compare_claran.py, docs/claran.md).
RADIO_KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "ClaRAN-v0.2-FasterRCNN-R50FPN": (
        "faster_rcnn_fpn_resnet50_v1b_rgz",
        ("MODE_MASK=False", "MODE_FPN=True", "BACKBONE.RESNET_NUM_BLOCKS=[3,4,6,3]",
         "DATA.NUM_CATEGORY=6", "RPN.ANCHOR_SIZES=[32,64,128,256,512]", "RPN.ANCHOR_RATIOS=[0.5,1.0,2.0]",
         "PREPROC.TRAIN_SHORT_EDGE_SIZE=[600,600]", "PREPROC.TEST_SHORT_EDGE_SIZE=600", "PREPROC.MAX_SIZE=1333",
         "FRCNN.BATCH_PER_IM=512", "TEST.FRCNN_NMS_THRESH=0.5", "TEST.RESULT_SCORE_THRESH=0.05",
         "TRAIN.LR_SCHEDULE=[20000,30000,40000]")),
}

#: the code at 02c38f26: its config.py defaults where they differ from ours (MODE_FPN False: R50-C4; the
#: "2x" schedule, [240000, 320000, 360000]; warm-up from 1e-2 * 0.33), and its rules
_TENSORPACK_2019_BASE = (
    "MODE_MASK=True",
    "MODE_FPN=False",
    "BACKBONE.VARIANT=v1b",             # RULES.STRIDE_1X1=False: stride in the 3x3 conv
    "TRAIN.LR_SCHEDULE=[240000,320000,360000]",
    "TRAIN.WARMUP_INIT_LR=0.0033",
    "RULES.PROFILE=tensorpack-2019",
)

#: kind → class names (without BG), in label order
_CLASSES = {**{k: tuple(COCO_CLASSES) for k in TENSORPACK_KINDS}, **{k: tuple(RGZ_CLASSES) for k in RADIO_KINDS}}
_ALL_KINDS = {**TENSORPACK_KINDS, **RADIO_KINDS}

#: tensorpack's config.py defaults where they differ from ours, and its rules (the ``tensorpack``
#: profile, named explicitly so a converted checkpoint keeps it if the default profile moves).
_TENSORPACK_BASE = (
    "MODE_MASK=True",
    "BACKBONE.VARIANT=v1b",             # RULES.STRIDE_1X1=False: stride in the 3x3 conv
    "RULES.PROFILE=tensorpack",
)

#: tensorpack dataset/coco.py ``class_names`` (labels 1..80; 0 is "BG"): the same 80 names, same order
COCO_CLASS_NAMES = list(COCO_CLASSES)


def kind_name(kind: str) -> str:
    """The npz name (e.g. ``'COCO-MaskRCNN-R50FPN2x'``) of ``kind``: that name, a path or file name ending in
    it, or a COCO kind's zoo entry; KeyError naming the known ones otherwise."""
    base = kind.rsplit("/", 1)[-1]
    base = base[:-4] if base.endswith(".npz") else base
    if base in _ALL_KINDS:
        return base
    for k, (entry, _) in TENSORPACK_KINDS.items():  # a radio kind's entry is a base architecture, not a name
        if base == entry:
            return k
    hint = (f"; {base} is an ImageNet backbone: use imagenet_state_dict() or BACKBONE.WEIGHTS"
            if base in TENSORPACK_IMAGENET else "")
    raise KeyError(f"unknown tensorpack checkpoint {kind!r}; known: {sorted(TENSORPACK_KINDS)}, radio: "
                   f"{sorted(RADIO_KINDS)} (or the COCO ones' zoo entries "
                   f"{sorted(e for e, _ in TENSORPACK_KINDS.values())}){hint}")


#: the keys that select tensorpack's rules (no model choice): what every ``tp_*`` zoo entry carries
TENSORPACK_RULES = tuple(o for o in _TENSORPACK_BASE if o.split("=")[0] not in ("MODE_MASK", "BACKBONE.VARIANT"))


#: kind → the defaults and rules its row applies on: the code at 02c38f26 for its checkpoints and ClaRAN's
_BASE_OF = {k: _TENSORPACK_2019_BASE for k in (*TENSORPACK_2019_KINDS, *RADIO_KINDS)}


#: the sky scale a radio kind was trained at (gluon_rcnn.radio.survey.model_scale; not tensorpack config keys,
#: so not in the kind's row): ClaRAN's 132 px cutouts of 3' of FIRST (180/132 = 1.36"/px, 5.4" beam),
#: resized to 600 by PREPROC.TEST_SHORT_EDGE_SIZE (claran data_prep.py IMG_SIZE = 132)
RADIO_SCALES = {"ClaRAN-v0.2-FasterRCNN-R50FPN": (f"RADIO.PIXEL_SCALE={180.0 / 132!r}", "RADIO.TILE=132", "RADIO.BEAM=5.4")}


def tensorpack_overrides(kind: str) -> list[str]:
    """``KEY=VALUE`` strings giving the config of ``kind`` (its code's defaults and rules + the README row,
    and for a radio kind the sky scale it was trained at, :data:`RADIO_SCALES`)."""
    kind = kind_name(kind)
    return (list(_BASE_OF.get(kind, _TENSORPACK_BASE)) + list(_ALL_KINDS[kind][1])
            + list(RADIO_SCALES.get(kind, ())))


def tensorpack_config(kind: str):
    """The finalised gluon_rcnn config of the published checkpoint ``kind`` (npz name, e.g.
    ``'COCO-MaskRCNN-R50FPN2x'``, or its zoo entry name; or a :data:`RADIO_KINDS` name), with its class
    names (the 80 COCO ones, or the 6 radio classes)."""
    kind = kind_name(kind)
    cfg = get_default_config()
    cfg.update_args(tensorpack_overrides(kind))
    cfg.DATA.CLASS_NAMES = list(_CLASSES[kind])
    return cfg.finalize()


# ------------------------------------------------------------------------------------------------
# names
# ------------------------------------------------------------------------------------------------


def _wb(tp: str, ours: str, layout: str) -> list:
    bias = layout + "_bias" if layout.startswith("rpn_c4") else "vec"
    return [(f"{tp}/W", f"{ours}.weight", layout), (f"{tp}/b", f"{ours}.bias", bias)]


def _gn(tp: str, ours: str) -> list:
    return [(f"{tp}/gamma", f"{ours}.weight", "vec"), (f"{tp}/beta", f"{ours}.bias", "vec")]


def tensorpack_detector_layout(t: torch.Tensor, layout: str, cfg) -> torch.Tensor:
    """A tensorpack array in our layout: the trunk's layouts (:func:`~gluon_rcnn.backbone.tensorpack_npz.
    tensorpack_layout`) and the heads': ``fc`` [in,out] → [out,in]; ``deconv`` [kh,kw,out,in] → [in,out,kh,kw];
    ``rpn_c4_cls``/``rpn_c4_box`` (+``_bias``) a conv with the anchor channels permuted size-major →
    ratio-major (:func:`~gluon_rcnn.convert.mapping.c4_anchor_perm`)."""
    if layout == "fc":
        return t.t()
    if layout in ("deconv", "rpn_c4_cls", "rpn_c4_box"):
        t = tensorpack_layout(t, "conv", cfg)  # [kh,kw,out,in] → [in,out,kh,kw] is the same permutation
        if layout == "rpn_c4_cls":
            t = t[c4_anchor_perm(cfg)]
        elif layout == "rpn_c4_box":
            t = t.reshape(-1, 4, *t.shape[1:])[c4_anchor_perm(cfg)].reshape(t.shape)
        return t
    if layout == "rpn_c4_cls_bias":
        return t[c4_anchor_perm(cfg)]
    if layout == "rpn_c4_box_bias":
        return t.reshape(-1, 4)[c4_anchor_perm(cfg)].reshape(-1)
    return tensorpack_layout(t, layout, cfg)


def name_map(cfg) -> list[tuple[str, str, str]]:
    """(tensorpack variable name without ':0', gluon_rcnn state-dict key, layout) for ``cfg``.

    Layouts: ``conv`` HWIO→OIHW; ``conv_bgr`` the same with the input channels reversed; ``fc``
    [in,out]→[out,in]; ``deconv`` [kh,kw,out,in]→[in,out,kh,kw]; ``vec`` as is; ``rpn_c4_cls``/
    ``rpn_c4_box`` (+``_bias``) conv with the anchor channels permuted size-major → ratio-major."""
    norm = cfg.BACKBONE.NORM
    res5 = "backbone.body.layer4" if cfg.MODE_FPN else "roi_heads.stages.0.head.res5"
    rows = resnet_rows(cfg.BACKBONE.RESNET_NUM_BLOCKS, norm, "backbone.body.",
                       lambda g: res5 if g == 3 else f"backbone.body.layer{g + 1}")
    if cfg.MODE_FPN:
        gn = cfg.FPN.NORM == "GN"
        for i in range(4):
            rows += _wb(f"fpn/lateral_1x1_c{i + 2}", f"backbone.fpn.inner_blocks.{i}.0", "conv")
            rows += _wb(f"fpn/posthoc_3x3_p{i + 2}", f"backbone.fpn.layer_blocks.{i}.0", "conv")
            if gn:
                rows += _gn(f"fpn/gn_c{i + 2}", f"backbone.fpn.inner_blocks.{i}.1")
                rows += _gn(f"fpn/gn_p{i + 2}", f"backbone.fpn.layer_blocks.{i}.1")
    rows += _wb("rpn/conv0", "rpn.head.conv", "conv")
    c4_rpn = not cfg.MODE_FPN and len(cfg.RPN.ANCHOR_SIZES) > 1 and len(cfg.RPN.ANCHOR_RATIOS) > 1
    rows += _wb("rpn/class", "rpn.head.cls_logits", "rpn_c4_cls" if c4_rpn else "conv")
    rows += _wb("rpn/box", "rpn.head.bbox_pred", "rpn_c4_box" if c4_rpn else "conv")
    if cfg.MODE_FPN:
        stages = ([(f"cascade_rcnn_stage{s + 1}/head", f"cascade_rcnn_stage{s + 1}/outputs") for s in range(3)]
                  if cfg.FPN.CASCADE else [("fastrcnn", "fastrcnn/outputs")])
        for s, (head, out) in enumerate(stages):
            ours = f"roi_heads.stages.{s}"
            if cfg.FPN.FRCNN_HEAD_FUNC == "fastrcnn_2fc_head":
                rows += _wb(f"{head}/fc6", f"{ours}.head.fc6", "fc") + _wb(f"{head}/fc7", f"{ours}.head.fc7", "fc")
            else:
                for k in range(4):
                    rows += _wb(f"{head}/conv{k}", f"{ours}.head.convs.{3 * k}", "conv")
                    if cfg.FPN.FRCNN_HEAD_FUNC.endswith("_gn_head"):
                        rows += _gn(f"{head}/gn{k}", f"{ours}.head.convs.{3 * k + 2}")
                rows += _wb(f"{head}/fc", f"{ours}.head.fc", "fc")
            rows += _wb(f"{out}/class", f"{ours}.predictor.cls_score", "fc")
            rows += _wb(f"{out}/box", f"{ours}.predictor.bbox_pred", "fc")
    else:
        rows += _wb("fastrcnn/class", "roi_heads.stages.0.predictor.cls_score", "fc")
        rows += _wb("fastrcnn/box", "roi_heads.stages.0.predictor.bbox_pred", "fc")
    if cfg.MODE_MASK:
        if cfg.MODE_FPN:
            for k in range(4):
                rows += _wb(f"maskrcnn/fcn{k}", f"roi_heads.mask_head.convs.{3 * k}", "conv")
                if cfg.FPN.MRCNN_HEAD_FUNC.endswith("_gn_head"):
                    rows += _gn(f"maskrcnn/gn{k}", f"roi_heads.mask_head.convs.{3 * k + 2}")
        rows += _wb("maskrcnn/deconv", "roi_heads.mask_head.deconv", "deconv")
        rows += _wb("maskrcnn/conv", "roi_heads.mask_head.predictor", "conv")
    return rows


def _resolve_config(config, tf_pad_mode):
    if isinstance(config, str):
        if tf_pad_mode:
            raise TensorpackConversionError(
                f"{config} was trained with BACKBONE.TF_PAD_MODE=False (AlignPadding: the README table's models, "
                f"and ClaRAN's, start from ImageNet-R*-AlignPadding.npz or from scratch with the default "
                f"TF_PAD_MODE=False); tf_pad_mode=True contradicts it. {PAD_REASON}")
        return tensorpack_config(config)
    if tf_pad_mode is None:
        raise TensorpackConversionError(
            "the backbone's padding mode (tensorpack BACKBONE.TF_PAD_MODE) cannot be read from an npz file: "
            "padding has no variables. Pass tf_pad_mode=False for a model trained with AlignPadding (from "
            "ImageNet-R*-AlignPadding.npz or from scratch with the default TF_PAD_MODE=False); models with "
            "TF_PAD_MODE=True are not supported")
    if tf_pad_mode:
        raise TensorpackConversionError(PAD_REASON + " (only AlignPadding, TF_PAD_MODE=False)")
    return config.clone().finalize()


def tensorpack_state_dict(src, cfg, reference: Mapping[str, torch.Tensor], strict: bool = True):
    """Map tensorpack variables ``src`` (npz path or dict name → array) to gluon_rcnn keys.

    reference: our state dict (shapes checked against it). Returns (state, missing, unexpected):
    ``missing`` our keys with no tensorpack variable, ``unexpected`` tensorpack names not used.
    With ``strict`` either list non-empty raises :class:`TensorpackConversionError` listing them.
    The arrays keep their dtype (the model's load casts)."""
    tp = read_npz(read_tensorpack_checkpoint(src) if is_tf_checkpoint(src) else src)  # or a TF checkpoint
    rows = name_map(cfg)
    state, used, missing, problems = map_rows(tp, rows, reference, cfg, tensorpack_detector_layout)
    missing, unexpected = check_mapping(tp, rows, reference, state, used, missing, problems, source="tensorpack",
                                        error=TensorpackConversionError, strict=strict)
    return state, missing, unexpected


@torch.no_grad()
def from_tensorpack(src, config, *, tf_pad_mode: bool | None = None, strict: bool = True,
                    classes=None) -> GeneralizedRCNN:
    """The gluon_rcnn model holding tensorpack's weights ``src`` (npz path or name → array dict), eval mode.

    config: a kind of :data:`TENSORPACK_KINDS` (npz or zoo name) or a gluon_rcnn config (then
    ``tf_pad_mode=False`` must be stated: the padding mode is not in the file)."""
    cfg = _resolve_config(config, tf_pad_mode)
    model = build_model(cfg, classes)
    ref = model.state_dict()
    state, missing, unexpected = tensorpack_state_dict(src, cfg, ref, strict=strict)
    full = {k: state.get(k, v) for k, v in ref.items()}
    model.load_state_dict(full, strict=True)
    model.tensorpack_missing, model.tensorpack_unexpected = missing, unexpected
    return model.eval()


# ------------------------------------------------------------------------------------------------
# the zoo's published checkpoints (weights.format "tensorpack-npz")
# ------------------------------------------------------------------------------------------------

@register
class TensorpackSource(WeightSource):
    """``{"url": ".../COCO-MaskRCNN-R50C41x.npz", "sha256": "", "format": "tensorpack-npz", "kind":
    "COCO-MaskRCNN-R50C41x"}``: tensorpack publishes no checksum, so the sha256 seen on the first download
    is recorded and later loads check the file against it; the conversion is cached under that sha256 (a
    different npz of the same name is converted again). ``$GLUON_RCNN_TENSORPACK_URL`` replaces
    ``http://models.tensorpack.com/FasterRCNN/``; the cached file keeps the published name."""

    format, label, field, what = "tensorpack-npz", "tensorpack npz", "kind", "tensorpack's {} checkpoint"
    url_env, base = "GLUON_RCNN_TENSORPACK_URL", URL.rsplit("/", 1)[0] + "/"

    def convert(self, path, weights, url, digest, dest):
        kind = weights["kind"]
        logger.info("converting tensorpack's %s (%s) into %s", path, kind, dest)
        return save_checkpoint(from_tensorpack(str(path), kind), dest, {"url": url, "kind": kind, "npz_sha256": digest})
