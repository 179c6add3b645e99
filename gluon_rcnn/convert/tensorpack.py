"""Import tensorpack's published COCO Mask R-CNN checkpoints (``COCO-MaskRCNN-*.npz``) into gluon_rcnn.

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
  anchor-major, 4 deltas (dx, dy, dw, dh) minor, as ours. C4's 15 anchors are size-major,
  ratio-minor (``get_all_anchors``: ``for sz in sizes: for ratio in ratios``); ours are
  ratio-major, so the output channels are permuted. FPN has one size per level: no permutation.
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

import re
from typing import Mapping

import numpy as np
import torch

from ..structures.categories import COCO_CLASSES
from ..builders import build_model
from ..config import get_default_config
from ..detector import GeneralizedRCNN

__all__ = ["from_tensorpack", "tensorpack_config", "tensorpack_state_dict", "tensorpack_overrides",
           "TENSORPACK_KINDS", "TENSORPACK_RULES", "TensorpackConversionError", "COCO_CLASS_NAMES"]

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

#: tensorpack's defaults (config.py) where they differ from ours, and the keys selecting its rules
_TENSORPACK_BASE = (
    "MODE_MASK=True",
    "BACKBONE.VARIANT=v1b",             # STRIDE_1X1=False: stride in the 3x3 conv
    "BACKBONE.FREEZE_AFFINE=False",     # config.py default
    "BACKBONE.ZERO_INIT_RESIDUAL=True",  # get_norm(zero_init=True) on conv3
    "RPN.ANCHOR_ROUNDING=False",
    "RPN.IGNORE_BORDER_ANCHORS=True",
    "RPN.LOW_QUALITY_MATCHES=tensorpack",
    "FRCNN.BBOX_DECODE_CLAMP=tensorpack",
    "PREPROC.MAX_SIZE_ROUND_UP=True",
    "MRCNN.ACCURATE_PASTE=True",
    "FPN.FC_INIT=tensorpack",
    "FPN.GN_HEAD_ORDER=conv_relu_gn",
    "FPN.GN_CONV_BIAS=True",
    "TRAIN.WARMUP_SCALES_WITH_BATCH=False",
)

#: tensorpack dataset/coco.py ``class_names`` (labels 1..80; 0 is "BG"): the same 80 names, same order
COCO_CLASS_NAMES = list(COCO_CLASSES)


class TensorpackConversionError(ValueError):
    """The file does not fit the model: names missing/unexpected, shapes, or an unsupported mode."""


def _kind_name(kind: str) -> str:
    base = kind.rsplit("/", 1)[-1]
    base = base[:-4] if base.endswith(".npz") else base
    if base in TENSORPACK_KINDS:
        return base
    for k, (entry, _) in TENSORPACK_KINDS.items():
        if base == entry:
            return k
    raise KeyError(f"unknown tensorpack checkpoint {kind!r}; known: {sorted(TENSORPACK_KINDS)} "
                   f"(or their zoo entries {sorted(e for e, _ in TENSORPACK_KINDS.values())})")


#: the keys that select tensorpack's rules (no model choice): what every ``tp_*`` zoo entry carries
TENSORPACK_RULES = tuple(o for o in _TENSORPACK_BASE if o.split("=")[0] not in ("MODE_MASK", "BACKBONE.VARIANT"))


def tensorpack_overrides(kind: str) -> list[str]:
    """``KEY=VALUE`` strings giving the config of ``kind`` (tensorpack's rules + the README row)."""
    return list(_TENSORPACK_BASE) + list(TENSORPACK_KINDS[_kind_name(kind)][1])


def tensorpack_config(kind: str):
    """The finalised gluon_rcnn config of the published checkpoint ``kind`` (npz name, e.g.
    ``'COCO-MaskRCNN-R50FPN2x'``, or its zoo entry name), with the 80 COCO class names."""
    cfg = get_default_config()
    cfg.update_args(tensorpack_overrides(kind))
    cfg.DATA.CLASS_NAMES = list(COCO_CLASS_NAMES)
    return cfg.finalize()


# ------------------------------------------------------------------------------------------------
# names
# ------------------------------------------------------------------------------------------------

_NORM = {"gamma": "weight", "beta": "bias", "mean/EMA": "running_mean", "variance/EMA": "running_var"}


def _norm_leaf(cfg_norm: str) -> list[str]:
    return ["gamma", "beta", "mean/EMA", "variance/EMA"] if cfg_norm in ("FreezeBN", "BN", "SyncBN") else \
        (["gamma", "beta"] if cfg_norm == "GN" else [])


def _conv_unit(tp: str, ours_conv: str, ours_norm: str, norm: str, layout: str = "conv") -> list:
    """a backbone Conv2D (no bias) whose activation is get_norm(): '<tp>/W', '<tp>/{bn,gn}/...'"""
    rows = [(f"{tp}/W", f"{ours_conv}.weight", layout)]
    scope = "gn" if norm == "GN" else "bn"
    rows += [(f"{tp}/{scope}/{leaf}", f"{ours_norm}.{_NORM[leaf]}", "vec") for leaf in _norm_leaf(norm)]
    return rows


def _wb(tp: str, ours: str, layout: str) -> list:
    bias = layout + "_bias" if layout.startswith("rpn_c4") else "vec"
    return [(f"{tp}/W", f"{ours}.weight", layout), (f"{tp}/b", f"{ours}.bias", bias)]


def _gn(tp: str, ours: str) -> list:
    return [(f"{tp}/gamma", f"{ours}.weight", "vec"), (f"{tp}/beta", f"{ours}.bias", "vec")]


def name_map(cfg) -> list[tuple[str, str, str]]:
    """(tensorpack variable name without ':0', gluon_rcnn state-dict key, layout) for ``cfg``.

    Layouts: ``conv`` HWIO→OIHW; ``conv_bgr`` the same with the input channels reversed; ``fc``
    [in,out]→[out,in]; ``deconv`` [kh,kw,out,in]→[in,out,kh,kw]; ``vec`` as is; ``rpn_c4_cls``/
    ``rpn_c4_box`` (+``_bias``) conv with the anchor channels permuted size-major → ratio-major."""
    norm = cfg.BACKBONE.NORM
    rows = _conv_unit("conv0", "backbone.body.conv1", "backbone.body.bn1", norm, "conv_bgr")
    blocks = list(cfg.BACKBONE.RESNET_NUM_BLOCKS)
    for g, n in enumerate(blocks):
        if g == 3 and not cfg.MODE_FPN:
            prefix = "roi_heads.stages.0.head.res5"
        else:
            prefix = f"backbone.body.layer{g + 1}"
        for b in range(n):
            tp, ours = f"group{g}/block{b}", f"{prefix}.{b}"
            for k in (1, 2, 3):
                rows += _conv_unit(f"{tp}/conv{k}", f"{ours}.conv{k}", f"{ours}.bn{k}", norm)
            if b == 0:
                rows += _conv_unit(f"{tp}/convshortcut", f"{ours}.downsample.0", f"{ours}.downsample.1", norm)
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


def _c4_anchor_perm(cfg) -> torch.Tensor:
    """perm[o] = tensorpack's anchor index for our anchor o (ours ratio-major, tensorpack size-major)."""
    S, R = len(cfg.RPN.ANCHOR_SIZES), len(cfg.RPN.ANCHOR_RATIOS)
    o = torch.arange(S * R)
    return (o % S) * R + o // S


def _transform(t: torch.Tensor, layout: str, cfg) -> torch.Tensor:
    if layout == "vec":
        return t
    if layout == "fc":
        return t.t()
    if layout in ("conv", "conv_bgr", "deconv", "rpn_c4_cls", "rpn_c4_box"):
        if t.dim() != 4:
            raise TensorpackConversionError(f"expected a 4-d kernel, got shape {tuple(t.shape)}")
        t = t.permute(3, 2, 0, 1)  # HWIO → OIHW; [kh,kw,out,in] → [in,out,kh,kw]
        if layout == "conv_bgr":
            t = t.flip(1)
        elif layout == "rpn_c4_cls":
            t = t[_c4_anchor_perm(cfg)]
        elif layout == "rpn_c4_box":
            t = t.reshape(-1, 4, *t.shape[1:])[_c4_anchor_perm(cfg)].reshape(t.shape)
        return t
    if layout == "rpn_c4_cls_bias":
        return t[_c4_anchor_perm(cfg)]
    if layout == "rpn_c4_box_bias":
        return t.reshape(-1, 4)[_c4_anchor_perm(cfg)].reshape(-1)
    raise ValueError(layout)


def _read(src) -> dict[str, np.ndarray]:
    if isinstance(src, Mapping):
        items = src.items()
    else:
        with np.load(str(src)) as z:
            items = [(k, z[k]) for k in z.files]
    out = {}
    for k, v in items:
        name = k[:-2] if k.endswith(":0") else k
        if name in out:
            raise TensorpackConversionError(f"variable {name} appears twice (with and without ':0')")
        out[name] = v
    return out


def _resolve_config(config, tf_pad_mode):
    if isinstance(config, str):
        if tf_pad_mode:
            raise TensorpackConversionError(
                f"{config} was trained with BACKBONE.TF_PAD_MODE=False (README table; AlignPadding)")
        return tensorpack_config(config)
    if tf_pad_mode is None:
        raise TensorpackConversionError(
            "the backbone's padding mode (tensorpack BACKBONE.TF_PAD_MODE) cannot be read from an npz file: "
            "padding has no variables. Pass tf_pad_mode=False for a model trained with AlignPadding (from "
            "ImageNet-R*-AlignPadding.npz or from scratch with the default TF_PAD_MODE=False); models with "
            "TF_PAD_MODE=True are not supported")
    if tf_pad_mode:
        raise TensorpackConversionError(
            "BACKBONE.TF_PAD_MODE=True models pad the stride-2 convs more on the bottom/right than gluon_rcnn's "
            "symmetric padding; they are not supported (only AlignPadding, TF_PAD_MODE=False)")
    return config.clone().finalize()


def tensorpack_state_dict(src, cfg, reference: Mapping[str, torch.Tensor], strict: bool = True):
    """Map tensorpack variables ``src`` (npz path or dict name → array) to gluon_rcnn keys.

    reference: our state dict (shapes checked against it). Returns (state, missing, unexpected):
    ``missing`` our keys with no tensorpack variable, ``unexpected`` tensorpack names not used.
    With ``strict`` either list non-empty raises :class:`TensorpackConversionError` listing them.
    The arrays keep their dtype (the model's load casts)."""
    tp = _read(src)
    rows = name_map(cfg)
    state, used, missing, problems = {}, set(), [], []
    mapped = {ours for _, ours, _ in rows}
    for name, ours, layout in rows:
        if ours not in reference:
            problems.append(f"{ours} (for {name}) is not a parameter of the model")
            continue
        if name not in tp:
            missing.append(f"{ours} (tensorpack {name})")
            continue
        used.add(name)
        t = _transform(torch.from_numpy(np.ascontiguousarray(tp[name])), layout, cfg).contiguous()
        if tuple(t.shape) != tuple(reference[ours].shape):
            problems.append(f"{name} {tuple(tp[name].shape)} → {ours}: got {tuple(t.shape)}, "
                            f"model has {tuple(reference[ours].shape)}")
            continue
        state[ours] = t
    missing += [f"{k} (no tensorpack name maps to it)" for k in reference if k not in mapped]
    unexpected = sorted(set(tp) - used)
    if problems:
        raise TensorpackConversionError("tensorpack conversion failed:\n  " + "\n  ".join(problems))
    if strict and (missing or unexpected):
        raise TensorpackConversionError(
            f"tensorpack file does not match the model: {len(missing)} missing, {len(unexpected)} unexpected\n"
            f"  missing: {missing}\n  unexpected: {unexpected}")
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


def save_checkpoint(model: GeneralizedRCNN, path: str) -> None:
    """``{"model": state_dict, "config": cfg}``, loadable by ``gluon_rcnn.get_model(entry, pretrained=path,
    overrides=tensorpack_overrides(kind))``."""
    torch.save({"model": model.state_dict(), "config": model.config.to_dict()}, path)
