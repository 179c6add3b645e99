"""Rule profiles: one named choice per publisher rule.

A *rule* is a step that publishers compute differently (anchor cells, low-quality matching, RoI
level mapping, mask paste, ...); its choices are small objects in :mod:`gluon_rcnn.rules`. A
*profile* names one choice per rule: ``tensorpack`` (examples/FasterRCNN since May 2019, to
1547a54e, 2023), ``tensorpack-2019`` (examples/FasterRCNN at 02c38f26, 2019-02-19: the code of
tensorpack's older published checkpoints and of ClaRAN v0.2), ``torchvision``, ``gluoncv`` and
``detectron2``. The config holds ``RULES.PROFILE`` and, per rule,
``RULES.<RULE>``: ``None`` (the profile's choice, the default) or a choice name (a deviation). A
zoo entry names its profile and only its deviations.

:func:`resolve_rules` turns a config into a :class:`RuleSet` of objects; the builders hand them to
the components' constructors. A model built by hand takes the same objects::

    from gluon_rcnn.profiles import get_profile
    rules = get_profile("tensorpack").rules()          # or .rules(ANCHOR_CELLS="legacy")
    AnchorGenerator(sizes, ratios, strides, cells=rules.anchor_cells, grid=rules.anchor_grid)

Adding a rule: its module in ``gluon_rcnn/rules/``, a row of :data:`RULES`, a value in each
profile of :data:`PROFILES`, the component that takes it, and a test. Adding a publisher era: a
profile.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

from .rules import (anchors, box_coding, detections, init, levels, mask_targets, matching, paste, proposals, rescale,
                    resize)

__all__ = ["RULES", "PROFILES", "Profile", "RuleSet", "get_profile", "resolve_rules", "rule_names", "check_rule"]

BOOL = MappingProxyType({True: True, False: False})


def _names(*names: str) -> Mapping[str, str]:
    """A rule whose choices are plain names the component reads (structural, e.g. P6's block)."""
    return MappingProxyType({n: n for n in names})


#: rule (config key ``RULES.<rule>``) -> (its choices ``{name: object}``, what it decides)
RULES: dict[str, tuple[Mapping[str, Any], str]] = {
    # anchors and RPN labelling
    "ANCHOR_CELLS": (anchors.CELLS, "shape and quantisation of one location's anchors (rules/anchors.py)"),
    "ANCHOR_GRID": (anchors.GRIDS, "where each level's anchors sit (rules/anchors.py)"),
    "ANCHOR_ORDER": (anchors.ORDERS, "the publisher's order of one location's anchors in its RPN channels (C4; "
                                     "importers permute by it) (rules/anchors.py)"),
    "LOW_QUALITY_MATCHES": (matching.LOW_QUALITY, "RPN: what happens to each GT's best anchors (rules/matching.py)"),
    "BORDER_ANCHORS": (matching.BORDER, "RPN: anchors crossing the image border (rules/matching.py)"),
    "DECODE_CLAMP": (box_coding.DECODE_CLAMP, "cap on decoded dw, dh; or a positive number (rules/box_coding.py)"),
    "PROPOSAL_MIN_SIZE": (proposals.MIN_SIZE, "RPN: clipped proposals too small for NMS, against RPN.MIN_SIZE "
                                              "(rules/proposals.py)"),
    # RoI pooling and heads
    "ROI_LEVELS": (levels.CHOICES, "which FPN level a RoI is pooled from (rules/levels.py)"),
    "ROI_ALIGNED": (BOOL, "RoIAlign with the half-pixel offset (aligned=True)"),
    "P6": (_names("maxpool", "conv"), "FPN P6: stride-2 subsampling of P5, or a 3x3/2 conv on C5's lateral"),
    "BOX_HEAD_POOL": (_names("pool7", "pool14_avg3x3s2"),
                      "2fc box head input: RoIs pooled 7x7, or 14x14 then a 3x3/2 average pool"),
    "FC_INIT": (init.CHOICES, "init of the box heads' fc layers (rules/init.py)"),
    "GN_HEAD_ORDER": (_names("conv_gn_relu", "conv_relu_gn"), "GN heads: conv (no bias)-GN-ReLU or conv-ReLU-GN"),
    "GN_CONV_BIAS": (BOOL, "FPN with GN: its convs keep a bias"),
    "MASK_TARGETS": (mask_targets.CHOICES, "mask head training targets (rules/mask_targets.py)"),
    "MASK_PASTE": (paste.MASK_PASTE, "pasting M x M masks into the image (rules/paste.py)"),
    "DETECTIONS": (detections.CHOICES, "final boxes: clip then NMS, or NMS then clip; NMS by class offsets or "
                                       "class by class (rules/detections.py)"),
    # pre/post-processing
    "RESIZE": (resize.RESIZE, "the size an image is resized to (rules/resize.py)"),
    "RESAMPLE": (resize.RESAMPLE, "how the pixels are resized: float bilinear, or OpenCV's fixed point on uint8 "
                                  "(rules/resize.py)"),
    "MAX_SIZE_ROUND_UP": (BOOL, "FPN: the long-edge cap rounded up to a multiple of 32 (1333 -> 1344)"),
    "RESCALE_BOXES": (rescale.RESCALE_BOXES, "detections back to original pixels (rules/rescale.py)"),
    # backbone
    "STRIDE_1X1": (BOOL, "a stage's stride in the first block's 1x1 conv (MSRA ResNets), not its 3x3"),
    "FLOOR_STRIDE2": (BOOL, "a stride-2 layer on n pixels gives floor(n/2) outputs (AlignPadding), not ceil"),
    "FREEZE_AFFINE": (BOOL, "FreezeBN also freezes gamma/beta"),
    "ZERO_INIT_RESIDUAL": (BOOL, "each residual block's last norm weight starts at 0 (from scratch only)"),
    # training schedule
    "WARMUP_SCALES_WITH_BATCH": (BOOL, "warm-up counted at a batch of 8, not in iterations of any batch"),
    "ACCUMULATE_TO_8": (BOOL, "gradients accumulated to 8 images per optimiser step when the batch is smaller"),
}

#: the attribute of :class:`RuleSet` for each rule
_ATTR = {k: k.lower() for k in RULES}


@dataclass(frozen=True)
class Profile:
    """A named choice per rule (:data:`RULES`): ``choices[rule]`` is a choice name (or bool / number)."""

    name: str
    choices: Mapping[str, Any]
    description: str = ""

    def __post_init__(self):
        missing = sorted(set(RULES) - set(self.choices))
        extra = sorted(set(self.choices) - set(RULES))
        if missing or extra:
            raise ValueError(f"profile {self.name!r}: rules missing {missing}, unknown {extra}")
        for rule, value in self.choices.items():
            check_rule(rule, value)

    def rules(self, **deviations) -> "RuleSet":
        """The rule objects of this profile, with ``RULE=choice`` deviations."""
        names = dict(self.choices)
        for rule, value in deviations.items():
            check_rule(rule, value)
            names[rule] = value
        return RuleSet(self.name, names)


def check_rule(rule: str, value) -> None:
    """A ValueError naming the rule and its choices unless ``value`` is one of them."""
    if rule not in RULES:
        raise ValueError(f"unknown rule {rule!r}; rules: {sorted(RULES)}")
    choices = RULES[rule][0]
    if rule == "DECODE_CLAMP" and isinstance(value, (int, float)) and not isinstance(value, bool):
        if value > 0:
            return
        raise ValueError(f"RULES.DECODE_CLAMP={value!r}: a number must be positive")
    if choices is BOOL:
        if not isinstance(value, bool):
            raise ValueError(f"RULES.{rule}={value!r} must be True or False")
        return
    if not isinstance(value, str) or value not in choices:
        extra = " or a positive number" if rule == "DECODE_CLAMP" else ""
        raise ValueError(f"RULES.{rule}={value!r} is not one of {sorted(choices)}{extra}")


class RuleSet:
    """The chosen rule objects, one attribute per rule (``anchor_cells``, ``roi_levels``, ...);
    ``names`` keeps the choice names (what the config records)."""

    def __init__(self, profile: str, names: Mapping[str, Any]):
        self.profile = profile
        self.names = MappingProxyType(dict(names))
        for rule, value in names.items():
            if rule == "DECODE_CLAMP":
                obj = box_coding.decode_clamp(value)
            else:
                obj = RULES[rule][0][value]
            setattr(self, _ATTR[rule], obj)

    def __repr__(self) -> str:
        return f"RuleSet({self.profile!r}, {dict(self.names)})"


_TENSORPACK = {
    "ANCHOR_CELLS": "exact", "ANCHOR_GRID": "fixed_stride", "ANCHOR_ORDER": "size_major",
    "LOW_QUALITY_MATCHES": "best_unless_negative", "BORDER_ANCHORS": "ignore_outside",
    "DECODE_CLAMP": "log_max_size_over_16", "PROPOSAL_MIN_SIZE": "at_least",
    "ROI_LEVELS": "sqrt_area", "ROI_ALIGNED": True, "P6": "maxpool", "BOX_HEAD_POOL": "pool7",
    "FC_INIT": "fan_in_truncated_normal", "GN_HEAD_ORDER": "conv_relu_gn", "GN_CONV_BIAS": True,
    "MASK_TARGETS": "bitmap_crop", "MASK_PASTE": "subpixel", "DETECTIONS": "clip_then_nms",
    "RESIZE": "round", "RESAMPLE": "uint8_fixed_point", "MAX_SIZE_ROUND_UP": True,
    "RESCALE_BOXES": "mean_scale_clipped",
    "STRIDE_1X1": False, "FLOOR_STRIDE2": True, "FREEZE_AFFINE": False, "ZERO_INIT_RESIDUAL": True,
    "WARMUP_SCALES_WITH_BATCH": False, "ACCUMULATE_TO_8": True,
}

_TORCHVISION = {
    "ANCHOR_CELLS": "rounded", "ANCHOR_GRID": "stride_from_size", "ANCHOR_ORDER": "ratio_major",
    "LOW_QUALITY_MATCHES": "keep_best", "BORDER_ANCHORS": "label_all", "DECODE_CLAMP": "log_1000_over_16",
    "PROPOSAL_MIN_SIZE": "at_least",
    "ROI_LEVELS": "sqrt_area", "ROI_ALIGNED": False, "P6": "maxpool", "BOX_HEAD_POOL": "pool7",
    "FC_INIT": "torch_default", "GN_HEAD_ORDER": "conv_gn_relu", "GN_CONV_BIAS": False,
    "MASK_TARGETS": "polygon_bins", "MASK_PASTE": "integer_box", "DETECTIONS": "clip_then_nms",
    "RESIZE": "floor", "RESAMPLE": "float_bilinear", "MAX_SIZE_ROUND_UP": False, "RESCALE_BOXES": "per_axis",
    "STRIDE_1X1": False, "FLOOR_STRIDE2": False, "FREEZE_AFFINE": True, "ZERO_INIT_RESIDUAL": False,
    "WARMUP_SCALES_WITH_BATCH": True, "ACCUMULATE_TO_8": False,
}

#: detectron2 (config/defaults.py, Base-RCNN-*.yaml): torchvision's training rules, with un-rounded
#: anchors at offset 0 on a fixed grid, size-major (DefaultAnchorGenerator: product(sizes, ratios)),
#: ROIAlignV2, proposals of a side <= MIN_SIZE (0) dropped (proposal_utils.py find_top_rpn_proposals:
#: Boxes.nonempty), sub-pixel paste (grid_sample), round-half-up sizes and Pillow's bilinear on uint8 pixels
#: (data/transforms ResizeTransform.apply_image)
_DETECTRON2 = dict(_TORCHVISION, ANCHOR_CELLS="exact", ANCHOR_GRID="fixed_stride", ANCHOR_ORDER="size_major",
                   ROI_ALIGNED=True, PROPOSAL_MIN_SIZE="above", MASK_PASTE="subpixel", RESIZE="round",
                   RESAMPLE="uint8_pil_bilinear")

#: GluonCV's R-CNN nets at test time (gluoncv/model_zoo/rcnn/*: Detectron-1 legacy anchors, ratio-major, MXNet's
#: ROIAlign aligned=False, symmetric padding, RoI levels from (w+1)(h+1), NMS before clipping, P6 by a
#: conv, 14x14 pool + average pool before fc6, OpenCV's bicubic on uint8 pixels). The training-side rules (anchor
#: labelling, fc init, mask targets) are tensorpack's: they have not been compared with GluonCV's training code.
_GLUONCV = dict(_TENSORPACK, ANCHOR_CELLS="legacy", ANCHOR_ORDER="ratio_major", ROI_ALIGNED=False,
                FLOOR_STRIDE2=False, ROI_LEVELS="sqrt_area_plus_one", DETECTIONS="nms_then_clip", P6="conv",
                BOX_HEAD_POOL="pool14_avg3x3s2", DECODE_CLAMP=4.42, PROPOSAL_MIN_SIZE="at_least",
                RESAMPLE="opencv_bicubic")

#: tensorpack's examples/FasterRCNN at 02c38f26 (2019-02-19), at inference: what differs from the
#: code since May 2019 (141ab53c, 1aaadca9, 2c6af2d1, 82a8953e): py-faster-rcnn's quantised anchors
#: centred on stride/2 (data.py get_all_anchors + utils/generate_anchors.py), ratio-major in C4; RPN
#: proposals of a clipped side <= RPN.MIN_SIZE (0) removed before NMS (model_rpn.py
#: generate_rpn_proposals); the final NMS class by class (model_frcnn.py fastrcnn_predictions); the
#: Detectron-style paste into the box rounded to whole pixels (eval.py _paste_mask). Everything else
#: read the same in both trees (preprocessing, MAX_SIZE round-up in FPN, decoding and its clamp, level
#: mapping, RoIAlign, cascade weights, heads); its config defaults that differ (MODE_FPN=False, the 2x
#: schedule) are the converter's (convert/tensorpack.py). The training-side rules are the later code's:
#: not compared with the 2019 training code.
_TENSORPACK_2019 = dict(_TENSORPACK, ANCHOR_CELLS="legacy_end_plus_one", ANCHOR_ORDER="ratio_major",
                        PROPOSAL_MIN_SIZE="above", DETECTIONS="clip_then_per_class_nms", MASK_PASTE="rounded_box")

PROFILES: dict[str, Profile] = {p.name: p for p in (
    Profile("tensorpack", _TENSORPACK, "tensorpack examples/FasterRCNN (the library's default)"),
    Profile("tensorpack-2019", _TENSORPACK_2019, "tensorpack examples/FasterRCNN at 02c38f26 (2019-02-19)"),
    Profile("torchvision", _TORCHVISION, "torchvision.models.detection"),
    Profile("detectron2", _DETECTRON2, "detectron2 (model zoo configs)"),
    Profile("gluoncv", _GLUONCV, "GluonCV 0.10 R-CNN nets (test time)"),
)}


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown rule profile {name!r}; profiles: {sorted(PROFILES)}") from None


def rule_names(cfg) -> dict[str, Any]:
    """The choice name of every rule for ``cfg``: ``RULES.PROFILE``'s, then the config's deviations."""
    names = dict(get_profile(cfg.RULES.PROFILE).choices)
    for rule in RULES:
        value = cfg.RULES[rule]
        if value is not None:
            names[rule] = value
    return names


def resolve_rules(cfg) -> RuleSet:
    """The rule objects ``cfg`` builds a model with."""
    names = rule_names(cfg)
    for rule, value in names.items():
        check_rule(rule, value)
    return RuleSet(cfg.RULES.PROFILE, names)
