"""Publisher rules as components (gluon_rcnn/rules/*, gluon_rcnn/profiles.py): every profile names a
valid choice for every rule, the config's RULES section resolves to those objects, configs saved by
the previous version (with the old per-publisher keys) read back to the same rules as the zoo's
entries now give, and no forward path branches on a publisher's name."""
from __future__ import annotations

import ast
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gluon_rcnn.config import ConfigError, get_default_config
from gluon_rcnn.model_zoo import get_config
from gluon_rcnn.profiles import PROFILES, RULES, check_rule, get_profile, resolve_rules, rule_names
from gluon_rcnn.rules import anchors, box_coding, matching, paste, rescale, resize

REPO = Path(__file__).resolve().parents[1]
LEGACY = REPO / "tests" / "data" / "legacy_configs" / "zoo_configs_v0.1.json"


# ---------------------------------------------------------------------------------------------- profiles
@pytest.mark.parametrize("name", sorted(PROFILES))
def test_every_profile_names_a_valid_choice_for_every_rule(name):
    p = get_profile(name)
    assert set(p.choices) == set(RULES)
    rules = p.rules()
    for rule, value in p.choices.items():
        check_rule(rule, value)
        obj = getattr(rules, rule.lower())
        if RULES[rule][0] is not None and rule != "DECODE_CLAMP":
            assert obj is RULES[rule][0][value]


def test_unknown_profile_rule_and_choice_are_clear_errors():
    with pytest.raises(ValueError, match="unknown rule profile 'mmdet'.*tensorpack"):
        get_profile("mmdet")
    with pytest.raises(ValueError, match=r"RULES.ANCHOR_CELLS='quantised' is not one of \['exact', 'legacy'"):
        get_profile("tensorpack").rules(ANCHOR_CELLS="quantised")
    with pytest.raises(ValueError, match="must be True or False"):
        check_rule("FLOOR_STRIDE2", "yes")
    cfg = get_default_config()
    cfg.update_args(["RULES.PROFILE=mmdet"])
    with pytest.raises(ConfigError, match="unknown rule profile 'mmdet'"):
        cfg.finalize()
    cfg = get_default_config()
    cfg.update_args(["RULES.LOW_QUALITY_MATCHES=torchvision"])
    with pytest.raises(ConfigError, match="RULES.LOW_QUALITY_MATCHES='torchvision' is not one of"):
        cfg.finalize()


def test_old_keys_name_their_replacement():
    cfg = get_default_config()
    with pytest.raises(ConfigError, match=r"RPN.LOW_QUALITY_MATCHES.*RULES.LOW_QUALITY_MATCHES='keep_best'"):
        cfg.update_args(["RPN.LOW_QUALITY_MATCHES=torchvision"])
    with pytest.raises(ConfigError, match=r"RULES.DETECTIONS='nms_then_clip'"):
        cfg.update_args(["TEST.CLIP_BEFORE_NMS=False"])
    with pytest.raises(ConfigError, match="torchrun"):
        cfg.update_args(["TRAINER=horovod"])


def test_config_deviation_overrides_the_profile_and_none_restores_it():
    cfg = get_default_config()
    cfg.update_args(["RULES.PROFILE=torchvision", "RULES.ANCHOR_CELLS=legacy", "RULES.DECODE_CLAMP=4.42"])
    cfg.finalize()
    rules = resolve_rules(cfg)
    assert rules.anchor_cells is anchors.CELLS["legacy"]
    assert rules.decode_clamp.value(1333) == pytest.approx(4.42)
    assert rules.border_anchors is matching.BORDER["label_all"]  # the profile's
    cfg.update_args(["RULES.ANCHOR_CELLS=None"])
    assert resolve_rules(cfg).anchor_cells is anchors.CELLS["rounded"]


# ------------------------------------------------------------------------------- configs of 0.1 read back
def _legacy_configs():
    return json.loads(LEGACY.read_text())["configs"]


@pytest.mark.parametrize("name", sorted(json.loads(LEGACY.read_text())["configs"]))
def test_a_checkpoint_config_of_the_previous_version_reads_to_the_entrys_rules(name):
    """The configs saved by 0.1 carry every old rule key; read as a checkpoint's config they give
    exactly the rules the migrated zoo entry gives now (the same model, the same numbers)."""
    old = _legacy_configs()[name]
    cfg = get_default_config()
    skipped = cfg.update_dict(old, unknown="report")
    assert skipped == []
    cfg.finalize()
    old_rules, new_rules = rule_names(cfg), rule_names(get_config(name))
    if not cfg.MODE_FPN:  # a C4 model has no FPN levels, P6 or FPN box head: those rules are not used
        for rule in ("ROI_LEVELS", "P6", "BOX_HEAD_POOL"):
            old_rules.pop(rule), new_rules.pop(rule)
    # a rule added since 0.1 that a profile sets to what its publisher does where 0.1 did otherwise: the old
    # checkpoint keeps 0.1's computation (proposal sides >= RPN.MIN_SIZE kept), the detectron2 entries follow
    # detectron2 (Boxes.nonempty: sides > MIN_SIZE, so zero-size proposals go)
    if name.startswith("d2_"):
        assert (old_rules.pop("PROPOSAL_MIN_SIZE"), new_rules.pop("PROPOSAL_MIN_SIZE")) == ("at_least", "above")
    # ANCHOR_ORDER is the publisher's RPN channel order, read by the importers only: a checkpoint holds ours
    old_rules.pop("ANCHOR_ORDER"), new_rules.pop("ANCHOR_ORDER")
    # RESAMPLE: 0.1 resized every image as float bilinear, and its checkpoints keep that; the entry follows its
    # publisher (tensorpack: OpenCV on uint8)
    assert old_rules.pop("RESAMPLE") == "float_bilinear"
    assert new_rules.pop("RESAMPLE") == get_profile(get_config(name).RULES.PROFILE).choices["RESAMPLE"]
    assert old_rules == new_rules
    # the old keys really are gone from the tree
    assert "LOW_QUALITY_MATCHES" not in cfg.RPN and "CLIP_BEFORE_NMS" not in cfg.TEST and "TRAINER" not in cfg


def test_a_users_config_file_with_an_old_key_is_refused(tmp_path):
    p = tmp_path / "c.json"
    p.write_text(json.dumps({"RPN": {"LEGACY_ANCHORS": True}}))
    with pytest.raises(ConfigError, match=r"RULES.ANCHOR_CELLS='legacy'"):
        get_default_config().update_file(str(p))


# ----------------------------------------------------------------------------------------- rule modules
def test_anchor_cells_hand_values():
    # size 32, ratio 1 (the middle cell of ratios 0.5/1/2)
    assert anchors.CELLS["exact"](4, [32], [0.5, 1, 2])[1].tolist() == [-16, -16, 16, 16]
    assert anchors.CELLS["legacy"](16, [32], [0.5, 1, 2])[1].tolist() == [-8, -8, 23, 23]
    assert anchors.CELLS["legacy_end_plus_one"](4, [32], [0.5, 1, 2])[1].tolist() == [-14, -14, 18, 18]
    # exact ratio 0.5: w = sqrt(32^2 / 0.5) = 45.25..., h = 22.62...
    w = math.sqrt(32 * 32 / 0.5)
    np.testing.assert_allclose(anchors.CELLS["exact"](4, [32], [0.5])[0].numpy(), [-w / 2, -w / 4, w / 2, w / 4])
    # rounded: torchvision's rule, integers
    r = anchors.CELLS["rounded"](4, [32], [0.5, 1, 2])
    assert torch.equal(r, r.round()) and r[1].tolist() == [-16, -16, 16, 16] and r.dtype == torch.float32


def test_anchor_grids():
    assert anchors.GRIDS["fixed_stride"].steps(64, (13, 21), (800, 1344)) == (64, 64)
    assert anchors.GRIDS["stride_from_size"].steps(64, (13, 21), (800, 1344)) == (61, 64)
    with pytest.raises(ValueError, match="padded batch"):
        anchors.GRIDS["stride_from_size"].steps(64, (13, 21), None)


def test_low_quality_and_border_rules():
    iou = torch.tensor([[0.2, 0.0], [0.05, 0.1], [0.8, 0.0]])
    label = torch.tensor([1, 1, 1], dtype=torch.int8)  # every anchor a best match or >= fg
    assert matching.LOW_QUALITY["keep_best"](label, iou, 0.3).tolist() == [1, 1, 1]
    assert matching.LOW_QUALITY["best_unless_negative"](label, iou, 0.3).tolist() == [0, 0, 1]
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [-1.0, 0.0, 5.0, 5.0], [0.0, 0.0, 20.0, 11.0]])
    assert matching.BORDER["label_all"].inside(boxes, (10, 20)) is None
    assert matching.BORDER["ignore_outside"].inside(boxes, (10, 20)).tolist() == [True, False, False]
    assert matching.anchors_inside(boxes, (11, 20)).tolist() == [True, False, True]


def test_decode_clamps():
    assert box_coding.DECODE_CLAMP["log_1000_over_16"].value(1344) == pytest.approx(math.log(1000 / 16))
    assert box_coding.DECODE_CLAMP["log_max_size_over_16"].value(1344) == pytest.approx(math.log(84))
    assert box_coding.decode_clamp(4.14).value(1344) == 4.14
    with pytest.raises(ValueError):
        box_coding.decode_clamp("big")


@pytest.mark.parametrize("hw", [(480, 640), (427, 640), (640, 383), (333, 500), (1, 5000), (801, 799)])
def test_resize_rules(hw):
    h, w = hw
    nh, nw = resize.RESIZE["round"](h, w, 800, 1333)
    scale = min(800 / min(h, w), 1333 / max(h, w))
    assert (nh, nw) == (max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5)))
    if min(h, w) > 1:
        fh, fw = resize.RESIZE["floor"](h, w, 800, 1333)  # the installed torchvision's own arithmetic
        assert abs(fh - h * scale) < 1 and abs(fw - w * scale) < 1


def test_rescale_rules_hand_computed():
    boxes = torch.tensor([[10.0, 20.0, 110.0, 220.0], [1066.0, 0.0, 1067.0, 800.0]])
    per_axis = rescale.RESCALE_BOXES["per_axis"](boxes, (800, 1067), (480, 640))
    np.testing.assert_allclose(per_axis[0].numpy(), [10 * 640 / 1067, 20 * 480 / 800, 110 * 640 / 1067, 220 * 480 / 800],
                               rtol=1e-6)
    mean = rescale.RESCALE_BOXES["mean_scale_clipped"](boxes, (800, 1067), (480, 640))
    s = math.sqrt(800 / 480 * 1067 / 640)
    np.testing.assert_allclose(mean[0].numpy(), (boxes[0] / s).numpy(), rtol=1e-6)
    assert float(mean[1, 2]) == 640.0 and float(mean[1, 0]) <= 640.0  # clamped into the image


def test_paste_rules_differ_and_keep_mass_inside_the_box():
    masks = torch.rand(3, 28, 28, generator=torch.Generator().manual_seed(0))
    boxes = torch.tensor([[3.3, 4.7, 20.2, 30.9], [0.0, 0.0, 39.0, 29.0], [10.5, 10.5, 12.5, 13.5]])
    a = paste.MASK_PASTE["integer_box"](masks, boxes, (30, 40))
    b = paste.MASK_PASTE["subpixel"](masks, boxes, (30, 40))
    assert a.shape == b.shape == (3, 1, 30, 40)
    assert not torch.allclose(a, b)
    assert float(b[0, 0, :4].abs().sum()) == 0.0 and float(b[0, 0, :, :3].abs().sum()) == 0.0


# ------------------------------------------------------------------------- no publisher in a forward path
FORWARD_CODE = ["gluon_rcnn/rpn.py", "gluon_rcnn/preprocess.py", "gluon_rcnn/detector.py"] + [
    str(p.relative_to(REPO)) for d in ("roi_heads", "backbone", "structures", "rules")
    for p in sorted((REPO / "gluon_rcnn" / d).glob("*.py"))]
PUBLISHERS = ("tensorpack", "torchvision", "gluoncv", "detectron", "detectron2", "torch", "polygon")


def test_no_forward_path_compares_against_a_publishers_name():
    """A rule branch looks like ``x == "tensorpack"`` or ``x in ("tensorpack", ...)``: no such
    comparison remains in the model's forward code (the rules are objects the builders pass in)."""
    found = []
    for rel in FORWARD_CODE:
        tree = ast.parse((REPO / rel).read_text())
        for node in ast.walk(tree):
            if not isinstance(node, ast.Compare):
                continue
            for c in [node.left, *node.comparators]:
                consts = [c] if isinstance(c, ast.Constant) else list(getattr(c, "elts", []))
                for k in consts:
                    if isinstance(k, ast.Constant) and isinstance(k.value, str) and k.value.lower() in PUBLISHERS:
                        found.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
    assert found == [], "publisher-named rule branches:\n" + "\n".join(found)


# ---------------------------------------------------------------------------------------------- components
def _rule_arguments():
    """(constructor, {its argument: the rule it is}) for every component that takes a rule."""
    from gluon_rcnn.backbone.fpn import FPN
    from gluon_rcnn.backbone.resnet import BasicBlock, Bottleneck, ResNet, make_res5_stage, make_stage
    from gluon_rcnn.preprocess import Preprocessor
    from gluon_rcnn.roi_heads import BoxStage, CascadeROIHeads, Res5ROIHeads, StandardROIHeads
    from gluon_rcnn.roi_heads.box_head import FastRCNN2FCHead, FastRCNNConvFCHead, conv_norm_relu
    from gluon_rcnn.roi_heads.mask_head import MaskRCNNUpConvHead
    from gluon_rcnn.roi_heads.pooler import ROIPooler
    from gluon_rcnn.rpn import RPN, AnchorGenerator

    trunk = {"zero_init_residual": "ZERO_INIT_RESIDUAL", "freeze_affine": "FREEZE_AFFINE",
             "stride_1x1": "STRIDE_1X1"}
    heads = {"mask_targets": "MASK_TARGETS", "detections": "DETECTIONS"}
    return [
        (ResNet, {**trunk, "floor_stride2": "FLOOR_STRIDE2"}),
        (make_res5_stage, trunk),
        (make_stage, {"freeze_affine": "FREEZE_AFFINE", "stride_1x1": "STRIDE_1X1"}),
        (Bottleneck, {"freeze_affine": "FREEZE_AFFINE", "stride_1x1": "STRIDE_1X1"}),
        (BasicBlock, {"freeze_affine": "FREEZE_AFFINE"}),
        (FPN, {"top_block": "P6", "gn_conv_bias": "GN_CONV_BIAS"}),
        (FastRCNN2FCHead, {"fc_init": "FC_INIT", "avg_pool": "BOX_HEAD_POOL"}),
        (FastRCNNConvFCHead, {"fc_init": "FC_INIT", "gn_order": "GN_HEAD_ORDER"}),
        (conv_norm_relu, {"gn_order": "GN_HEAD_ORDER"}),
        (MaskRCNNUpConvHead, {"gn_order": "GN_HEAD_ORDER"}),
        (ROIPooler, {"aligned": "ROI_ALIGNED", "level_mapper": "ROI_LEVELS"}),
        (BoxStage, {"clip": "DECODE_CLAMP"}),
        (StandardROIHeads, heads), (CascadeROIHeads, heads), (Res5ROIHeads, heads),
        (AnchorGenerator, {"cells": "ANCHOR_CELLS", "grid": "ANCHOR_GRID"}),
        (RPN, {"border_anchors": "BORDER_ANCHORS", "low_quality": "LOW_QUALITY_MATCHES",
               "small_proposals": "PROPOSAL_MIN_SIZE"}),
        (Preprocessor, {"resize": "RESIZE", "resample": "RESAMPLE", "mask_paste": "MASK_PASTE",
                        "rescale_boxes": "RESCALE_BOXES"}),
    ]


def test_components_take_every_rule_keyword_only_without_a_default():
    """A component built by hand cannot silently follow another publisher than ``get_model``'s
    profile: each rule argument must be given, by name (issue 19)."""
    import inspect

    wrong = []
    for component, args in _rule_arguments():
        params = inspect.signature(component).parameters
        for arg, rule in args.items():
            assert rule in RULES, f"{component.__name__}({arg}=...): {rule} is no rule"
            p = params.get(arg)
            if p is None or p.kind is not inspect.Parameter.KEYWORD_ONLY or p.default is not inspect.Parameter.empty:
                default = "no default" if p is None or p.default is p.empty else f"default {p.default!r}"
                wrong.append(f"{component.__name__}({arg}): RULES.{rule} is "
                             + ("not an argument" if p is None else f"{p.kind.name}, {default}"))
    assert wrong == [], "rule arguments that are positional or have a default:\n" + "\n".join(wrong)


def test_every_rule_has_its_component():
    """Each rule is an argument of a component (or, ANCHOR_ORDER, read by the importers' C4 RPN
    permutation, gluon_rcnn.convert.mapping.c4_anchor_perm, from the config), or a config check's."""
    taken = {rule for _, args in _rule_arguments() for rule in args.values()}
    assert set(RULES) - taken == {"ANCHOR_ORDER", "MAX_SIZE_ROUND_UP", "WARMUP_SCALES_WITH_BATCH", "ACCUMULATE_TO_8"}


def test_anchor_order_is_what_the_importers_permute_by():
    from gluon_rcnn.convert.mapping import c4_anchor_perm

    for profile, first in (("tensorpack", [0, 3, 6, 9, 12, 1]), ("detectron2", [0, 3, 6, 9, 12, 1]),
                           ("tensorpack-2019", [0, 1, 2, 3, 4, 5]), ("torchvision", [0, 1, 2, 3, 4, 5])):
        cfg = get_default_config()
        cfg.update_args([f"RULES.PROFILE={profile}", "MODE_FPN=False"])
        assert c4_anchor_perm(cfg.finalize())[:6].tolist() == first, profile


def test_the_npz_readers_reference_resnet_uses_the_tensorpack_profiles_rules():
    """backbone/ may not import profiles (layering), so the ImageNet .npz reader writes tensorpack's four
    backbone rules out by hand: they must stay the profile's."""
    from gluon_rcnn.backbone import tensorpack_npz

    rules = get_profile("tensorpack").rules()
    assert tensorpack_npz._TENSORPACK_RULES == {k: getattr(rules, k) for k in tensorpack_npz._TENSORPACK_RULES}
    assert set(tensorpack_npz._TENSORPACK_RULES) == {"zero_init_residual", "freeze_affine", "floor_stride2",
                                                      "stride_1x1"}
