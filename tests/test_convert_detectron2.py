"""detectron2 zoo pickles → gluon_rcnn (gluon_rcnn/convert/detectron2.py), on synthetic files.

The manifests (tests/data/detectron2_manifests/<config path with '/' as '__'>.json) list every tensor a
detectron2 ``model_final_*.pkl`` of MODEL_ZOO.md holds, with its PyTorch shape, the file's URL and the
published AP. They are written by :func:`detectron2_variables` below, which follows detectron2's module
construction (modeling/backbone/resnet.py, fpn.py, proposal_generator/rpn.py, roi_heads/*.py,
layers/batch_norm.py at the commit in the manifest), not the converter; ``test_manifest_files_are_current``
keeps the JSON files equal to it. Regenerate with ``python tests/test_convert_detectron2.py``.

Every synthetic tensor holds its *global element index + 1* (int32, unique across the file; 0 is left for
elements no detectron2 tensor fills: the background's box rows), so after conversion each element says
which detectron2 tensor and position it came from; the test recomputes where each element must come from
(name rules written from our side) and counts misplaced elements: 0 for every model.
"""
from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gluon_rcnn.builders import build_model, build_preprocessor
from gluon_rcnn.convert.detectron2 import (DETECTRON2_COMMIT, DETECTRON2_KINDS, NOT_EXPRESSIBLE,
                                           Detectron2ConversionError, detectron2_config, detectron2_state_dict,
                                           from_detectron2, load_pkl)
from gluon_rcnn.profiles import rule_names

MANIFESTS = Path(__file__).parent / "data" / "detectron2_manifests"
ALL = sorted(DETECTRON2_KINDS)


def _file(kind):
    return MANIFESTS / (kind.replace("/", "__") + ".json")


def detectron2_variables(fpn, mask, depth=50, cascade=False, gn=False, num_classes=80):
    """[(name, shape, derivation)] of detectron2's GeneralizedRCNN state dict for these settings.

    fpn: Base-RCNN-FPN.yaml (build_resnet_fpn_backbone, StandardROIHeads) else Base-RCNN-C4.yaml
    (build_resnet_backbone with OUT_FEATURES ['res4'], Res5ROIHeads). gn: RESNETS.NORM=FPN.NORM=GN and
    the 4conv1fc GN box head and GN mask head (Misc/mask_rcnn_R_50_FPN_3x_gn.yaml); else FrozenBN trunk."""
    out = []
    leaves = ("weight", "bias") if gn else ("weight", "bias", "running_mean", "running_var")
    nwhy = "layers/wrappers.py Conv2d(norm=get_norm(...)); " + (
        "GroupNorm(32)" if gn else "layers/batch_norm.py FrozenBatchNorm2d buffers")

    def conv(name, cout, cin, k, bias, norm, why):
        out.append((f"{name}.weight", [cout, cin, k, k], why))
        if bias:
            out.append((f"{name}.bias", [cout], why))
        if norm:
            out.extend((f"{name}.norm.{leaf}", [cout], f"{why}; {nwhy if norm == 'trunk' else 'GroupNorm(32)'}")
                       for leaf in (leaves if norm == "trunk" else ("weight", "bias")))

    trunk = "backbone.bottom_up." if fpn else "backbone."
    rwhy = "modeling/backbone/resnet.py " + ("build_resnet_fpn_backbone → build_resnet_backbone" if fpn
                                             else "build_resnet_backbone")
    conv(trunk + "stem.conv1", 64, 3, 7, False, "trunk", rwhy + " BasicStem conv1")
    blocks = {50: [3, 4, 6, 3], 101: [3, 4, 23, 3]}[depth]
    cin = 64
    for s in range(4):
        bc, cout = 64 * 2 ** s, 256 * 2 ** s
        if s == 3 and not fpn:
            prefix, n = "roi_heads.res5", 3
            why = "modeling/roi_heads/roi_heads.py Res5ROIHeads._build_res5_block BottleneckBlock"
        else:
            prefix, n = f"{trunk}res{s + 2}", blocks[s]
            why = rwhy + " ResNet.make_stage BottleneckBlock"
        for b in range(n):
            if cin != cout:
                conv(f"{prefix}.{b}.shortcut", cout, cin, 1, False, "trunk", why + " shortcut")
            conv(f"{prefix}.{b}.conv1", bc, cin, 1, False, "trunk", why)
            conv(f"{prefix}.{b}.conv2", bc, bc, 3, False, "trunk", why)
            conv(f"{prefix}.{b}.conv3", cout, bc, 1, False, "trunk", why)
            cin = cout
    if fpn:
        why = "modeling/backbone/fpn.py FPN (use_bias = norm == '')"
        for lvl, c in zip(range(2, 6), (256, 512, 1024, 2048)):
            conv(f"backbone.fpn_lateral{lvl}", 256, c, 1, not gn, "gn" if gn else None, why)
            conv(f"backbone.fpn_output{lvl}", 256, 256, 3, not gn, "gn" if gn else None, why)
    c, na = (256, 3) if fpn else (1024, 15)
    why = "modeling/proposal_generator/rpn.py StandardRPNHead (anchor_generator.py: A = sizes x ratios per level)"
    conv("proposal_generator.rpn_head.conv", c, c, 3, True, None, why)
    conv("proposal_generator.rpn_head.objectness_logits", na, c, 1, True, None, why)
    conv("proposal_generator.rpn_head.anchor_deltas", 4 * na, c, 1, True, None, why)
    stages = [".0", ".1", ".2"] if cascade else [""]
    for sfx in stages:
        if fpn:
            why = "modeling/roi_heads/box_head.py FastRCNNConvFCHead" + (
                " (cascade_rcnn.py CascadeROIHeads: one per stage)" if cascade else "")
            d_in = 256 * 7 * 7
            if gn:
                for k in range(1, 5):
                    conv(f"roi_heads.box_head{sfx}.conv{k}", 256, 256, 3, False, "gn", why + " NUM_CONV=4 NORM=GN")
                out.extend([(f"roi_heads.box_head{sfx}.fc1.weight", [1024, d_in], why + " NUM_FC=1"),
                            (f"roi_heads.box_head{sfx}.fc1.bias", [1024], why + " NUM_FC=1")])
            else:
                for k, i in ((1, d_in), (2, 1024)):
                    out.extend([(f"roi_heads.box_head{sfx}.fc{k}.weight", [1024, i], why + " NUM_FC=2"),
                                (f"roi_heads.box_head{sfx}.fc{k}.bias", [1024], why + " NUM_FC=2")])
            dim = 1024
        else:
            dim = 2048
        why = ("modeling/roi_heads/fast_rcnn.py FastRCNNOutputLayers: cls_score num_classes + 1 (background "
               "last), bbox_pred " + ("1 x 4 (CLS_AGNOSTIC_BBOX_REG)" if cascade else "num_classes x 4"))
        out.extend([(f"roi_heads.box_predictor{sfx}.cls_score.weight", [num_classes + 1, dim], why),
                    (f"roi_heads.box_predictor{sfx}.cls_score.bias", [num_classes + 1], why)])
        nb = 4 if cascade else 4 * num_classes
        out.extend([(f"roi_heads.box_predictor{sfx}.bbox_pred.weight", [nb, dim], why),
                    (f"roi_heads.box_predictor{sfx}.bbox_pred.bias", [nb], why)])
    if mask:
        why = "modeling/roi_heads/mask_head.py MaskRCNNConvUpsampleHead"
        if fpn:
            for k in range(1, 5):
                conv(f"roi_heads.mask_head.mask_fcn{k}", 256, 256, 3, not gn, "gn" if gn else None, why + " NUM_CONV=4")
        cin = 256 if fpn else 2048
        out.extend([("roi_heads.mask_head.deconv.weight", [cin, 256, 2, 2], why + " ConvTranspose2d [in, out, kh, kw]"),
                    ("roi_heads.mask_head.deconv.bias", [256], why)])
        conv("roi_heads.mask_head.predictor", num_classes, 256, 1, True, None, why + " (num_classes, no background)")
    return out


def _settings(kind):
    m = DETECTRON2_KINDS[kind]
    n = 1230 if kind.startswith("LVIS") else len(m.classes)
    return dict(fpn=m.fpn, mask=m.mask, depth=m.depth, cascade=m.cascade, gn=m.gn, num_classes=n)


def manifest(kind):
    m = DETECTRON2_KINDS[kind]
    return {"kind": kind, "config": f"configs/{kind}.yaml", "url": m.url(kind), "model_id": m.model_id,
            "published": {"box_AP": m.box_ap, "mask_AP": m.mask_ap, "where": "detectron2 MODEL_ZOO.md"},
            "detectron2_commit": DETECTRON2_COMMIT,
            "note": "names and PyTorch shapes of the pickle's 'model' dict; written by "
                    "tests/test_convert_detectron2.py detectron2_variables()",
            "variables": [{"name": n, "shape": s, "derived_from": w}
                          for n, s, w in detectron2_variables(**_settings(kind))]}


def _load_manifest(kind):
    return json.loads(_file(kind).read_text())


def test_manifest_files_are_current():
    assert sorted(p.name for p in MANIFESTS.glob("*.json")) == sorted(_file(k).name for k in ALL)
    for kind in ALL:
        assert _load_manifest(kind) == manifest(kind), kind


# ------------------------------------------------------------------------------------------------
# where every gluon_rcnn element must come from, written from our side
# ------------------------------------------------------------------------------------------------

def _expected_source(key: str, cfg) -> tuple[str, str]:
    trunk = "backbone.bottom_up." if cfg.MODE_FPN else "backbone."
    m = re.fullmatch(r"(?:backbone\.body\.layer(\d)|roi_heads\.stages\.0\.head\.res5)\.(\d+)\.(conv|bn|downsample\.)(\d)\.(\w+)",
                     key)
    if m:
        layer, block, part, idx, leaf = m.groups()
        stage = f"{trunk}res{int(layer) + 1}" if layer else "roi_heads.res5"
        if part == "downsample.":
            return (f"{stage}.{block}.shortcut." + ("weight" if idx == "0" else f"norm.{leaf}")), "same"
        return f"{stage}.{block}.conv{idx}." + (leaf if part == "conv" else f"norm.{leaf}"), "same"
    if key == "backbone.body.conv1.weight":
        return trunk + "stem.conv1.weight", "bgr"
    m = re.fullmatch(r"backbone\.body\.bn1\.(\w+)", key)
    if m:
        return f"{trunk}stem.conv1.norm.{m.group(1)}", "same"
    m = re.fullmatch(r"backbone\.fpn\.(inner|layer)_blocks\.(\d)\.(\d)\.(\w+)", key)
    if m:
        which, i, j, leaf = m.groups()
        base = f"backbone.fpn_{'lateral' if which == 'inner' else 'output'}{int(i) + 2}"
        return (f"{base}.{leaf}" if j == "0" else f"{base}.norm.{leaf}"), "same"
    m = re.fullmatch(r"rpn\.head\.(conv|cls_logits|bbox_pred)\.(weight|bias)", key)
    if m:
        part, leaf = m.groups()
        name = {"conv": "conv", "cls_logits": "objectness_logits", "bbox_pred": "anchor_deltas"}[part]
        lay = f"anchors_{part}" if (part != "conv" and not cfg.MODE_FPN) else "same"
        return f"proposal_generator.rpn_head.{name}.{leaf}", lay
    m = re.fullmatch(r"roi_heads\.stages\.(\d)\.(head|predictor)\.(\w+?)(?:\.(\d+))?\.(weight|bias)", key)
    if m:
        s, part, mod, idx, leaf = m.groups()
        sfx = f".{s}" if cfg.FPN.CASCADE else ""
        if part == "predictor":
            lay = "bg_first" if mod == "cls_score" else ("same" if cfg.FPN.CASCADE else "bg_box")
            return f"roi_heads.box_predictor{sfx}.{mod}.{leaf}", lay
        if mod in ("fc6", "fc7", "fc"):
            return f"roi_heads.box_head{sfx}.{ {'fc6': 'fc1', 'fc7': 'fc2', 'fc': 'fc1'}[mod] }.{leaf}", "same"
        k, r = divmod(int(idx), 3)
        return f"roi_heads.box_head{sfx}.conv{k + 1}." + (leaf if r == 0 else f"norm.{leaf}"), "same"
    m = re.fullmatch(r"roi_heads\.mask_head\.(\w+?)(?:\.(\d+))?\.(weight|bias)", key)
    if m:
        mod, idx, leaf = m.groups()
        if mod == "convs":
            k, r = divmod(int(idx), 3)
            return f"roi_heads.mask_head.mask_fcn{k + 1}." + (leaf if r == 0 else f"norm.{leaf}"), "same"
        return f"roi_heads.mask_head.{mod}.{leaf}", "same"
    raise AssertionError(f"no rule for {key}")


def _anchor_order_perm(cfg):
    sizes, ratios = list(cfg.RPN.ANCHOR_SIZES), list(cfg.RPN.ANCHOR_RATIOS)
    theirs = [(sz, r) for sz in sizes for r in ratios]   # anchor_generator.py generate_cell_anchors loops
    ours = [(sz, r) for r in ratios for sz in sizes]     # gluon_rcnn/rpn.py AnchorGenerator: ratio-major
    return np.array([theirs.index(a) for a in ours])


def _expected_ids(ids: np.ndarray, layout: str, cfg) -> np.ndarray:
    if layout == "same":
        return ids
    if layout == "bgr":
        return ids[:, ::-1]
    if layout == "bg_first":
        return np.concatenate([ids[-1:], ids[:-1]])
    if layout == "bg_box":
        return np.concatenate([np.zeros((4,) + ids.shape[1:], ids.dtype), ids])  # no source: zeros
    perm = _anchor_order_perm(cfg)
    if layout == "anchors_cls_logits":
        return ids[perm]
    if layout == "anchors_bbox_pred":
        return ids.reshape(len(perm), 4, *ids.shape[1:])[perm].reshape(ids.shape)
    raise AssertionError(layout)


def _synthetic(kind):
    arrays, offset = {}, 1
    for v in _load_manifest(kind)["variables"]:
        n = int(np.prod(v["shape"]))
        arrays[v["name"]] = np.arange(offset, offset + n, dtype=np.int32).reshape(v["shape"])
        offset += n
    assert offset < 2 ** 31
    return {"model": arrays, "__author__": "Detectron2 Model Zoo"}


@pytest.mark.parametrize("kind", ALL)
def test_every_element_lands_where_it_belongs(kind):
    cfg = detectron2_config(kind)
    with torch.device("meta"):
        ref = build_model(cfg).state_dict()
    src = _synthetic(kind)
    state, missing, unexpected = detectron2_state_dict(src, cfg, ref, strict=True)
    assert missing == [] and unexpected == [] and set(state) == set(ref)
    misplaced, used = 0, set()
    for key, t in state.items():
        name, layout = _expected_source(key, cfg)
        used.add(name)
        exp = _expected_ids(src["model"][name], layout, cfg)
        assert tuple(t.shape) == tuple(ref[key].shape) == exp.shape, key
        misplaced += int((t.numpy() != exp).sum())
    print(f"{kind}: {len(state)} tensors, {sum(t.numel() for t in state.values())} elements, {misplaced} misplaced")
    assert misplaced == 0
    assert used == set(src["model"]) and len(used) == len(state)  # every tensor used, each by one key


# ------------------------------------------------------------------------------------------------
# hand-made cases
# ------------------------------------------------------------------------------------------------

def test_class_order_background_last_to_first_by_hand():
    """3 classes: detectron2's cls_score rows [a, b, c, BG] → ours [BG, a, b, c]; bbox_pred rows
    [a0..a3, b0..b3, c0..c3] → ours [0,0,0,0, a0..a3, b0..b3, c0..c3]."""
    cfg = detectron2_config("COCO-Detection/faster_rcnn_R_50_FPN_1x").clone()
    cfg.DATA.NUM_CATEGORY, cfg.DATA.CLASS_NAMES = 3, ["a", "b", "c"]
    cfg.finalize()
    with torch.device("meta"):
        ref = build_model(cfg).state_dict()
    src = {"roi_heads.box_predictor.cls_score.weight": np.array([[1, 1], [2, 2], [3, 3], [9, 9]], np.float32),
           "roi_heads.box_predictor.cls_score.bias": np.array([1, 2, 3, 9], np.float32),
           "roi_heads.box_predictor.bbox_pred.weight": np.arange(1, 12 * 2 + 1, dtype=np.float32).reshape(12, 2),
           "roi_heads.box_predictor.bbox_pred.bias": np.arange(1, 13, dtype=np.float32)}
    src = {k: (np.ascontiguousarray(np.broadcast_to(v[:, :1], (v.shape[0], 1024))) if v.ndim == 2 else v)
           for k, v in src.items()}
    state, missing, _ = detectron2_state_dict(src, cfg, ref, strict=False)
    p = "roi_heads.stages.0.predictor."
    assert state[p + "cls_score.bias"].tolist() == [9, 1, 2, 3]
    assert state[p + "cls_score.weight"][:, 0].tolist() == [9, 1, 2, 3]
    assert state[p + "bbox_pred.bias"].tolist() == [0, 0, 0, 0] + list(range(1, 13))
    assert state[p + "bbox_pred.weight"][:, 0].tolist() == [0, 0, 0, 0] + list(range(1, 25, 2))
    assert not any(p in m for m in missing)


def test_stride_1x1_by_hand():
    """A stride-2 bottleneck on a 6x6 ramp, conv1/conv3 sums, conv2 reading only the top-left tap:
    stride in the 3x3 gives y[2i-1, 2j-1]; stride in the 1x1 gives y[2i-2, 2j-2] (0 where padded)."""
    from gluon_rcnn.backbone.resnet import Bottleneck, _downsample
    x = torch.arange(1, 37, dtype=torch.float32).reshape(1, 1, 6, 6)
    outs = {}
    for s1 in (False, True):
        down = _downsample(1, 4, 2, "v1b", "None", freeze_affine=True)  # no norm: freeze_affine changes nothing
        blk = Bottleneck(1, 1, 2, down, "None", freeze_affine=True, stride_1x1=s1)
        with torch.no_grad():
            for m in blk.modules():
                if isinstance(m, torch.nn.Conv2d):
                    m.weight.zero_()
                    m.bias.zero_()
            blk.conv1.weight.fill_(1)
            blk.conv2.weight[0, 0, 0, 0] = 1
            blk.conv3.weight.fill_(1)
            outs[s1] = blk(x)[0, 0]
    assert blk.conv1.stride == (2, 2) and blk.conv2.stride == (1, 1)
    assert outs[False].tolist() == [[0, 0, 0], [0, 8, 10], [0, 20, 22]]
    assert outs[True].tolist() == [[0, 0, 0], [0, 1, 3], [0, 13, 15]]
    # the config key reaches every stage and the C4 head's res5
    with torch.device("meta"):
        m = build_model(detectron2_config("COCO-InstanceSegmentation/mask_rcnn_R_50_C4_1x"))
        gn = build_model(detectron2_config("Misc/mask_rcnn_R_50_FPN_3x_gn"))
    assert m.backbone.body.layer3[0].conv1.stride == (2, 2) and m.backbone.body.layer3[0].conv2.stride == (1, 1)
    assert m.roi_heads.stages[0].head.res5[0].conv1.stride == (2, 2)
    assert gn.backbone.body.layer2[0].conv1.stride == (1, 1) and gn.backbone.body.layer2[0].conv2.stride == (2, 2)
    from gluon_rcnn.config import ConfigError, get_default_config
    assert rule_names(get_default_config())["STRIDE_1X1"] is False
    c = get_default_config()
    c.update_args(["RULES.STRIDE_1X1=True", "BACKBONE.RESNET_NUM_BLOCKS=[2,2,2,2]"])
    with pytest.raises(ConfigError, match="bottleneck"):
        c.finalize()


def test_bgr_flip_of_conv1_equals_detectron2_input():
    """detectron2: conv1(W) on (BGR - mean_bgr) / std_bgr. Here: conv1(W flipped) on the Preprocessor's RGB
    normalisation with the reversed mean/std of the config: the same numbers (no resize)."""
    torch.manual_seed(0)
    for kind in ("COCO-Detection/faster_rcnn_R_50_FPN_1x", "Misc/scratch_mask_rcnn_R_50_FPN_9x_gn"):
        cfg = detectron2_config(kind)
        img = torch.randint(0, 256, (3, 37, 45), dtype=torch.uint8)  # RGB
        w = torch.randn(64, 3, 7, 7)
        with torch.device("meta"):
            ref = build_model(cfg).state_dict()
        state, _, _ = detectron2_state_dict({"backbone.bottom_up.stem.conv1.weight": w.numpy()}, cfg, ref, strict=False)
        mean_bgr = torch.tensor([103.530, 116.280, 123.675])   # detectron2 config/defaults.py
        std_bgr = torch.tensor([57.375, 57.120, 58.395]) if "9x" in kind else torch.ones(3)
        bgr = img.flip(0).float()
        theirs = torch.nn.functional.conv2d((bgr - mean_bgr[:, None, None]) / std_bgr[:, None, None], w,
                                            stride=2, padding=3)
        batch = build_preprocessor(cfg)([img], sizes=[(37, 45)])
        x = batch.tensor[:, :, :37, :45]
        ours = torch.nn.functional.conv2d(x, state["backbone.body.conv1.weight"], stride=2, padding=3)
        assert torch.allclose(ours[0], theirs, rtol=1e-5, atol=1e-3), (ours[0] - theirs).abs().max()


def test_pooler_gets_sampling_ratio_0():
    cfg = detectron2_config("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x")
    assert cfg.FRCNN.ROI_SAMPLING_RATIO == 0 and rule_names(cfg)["ROI_ALIGNED"] is True
    with torch.device("meta"):
        m = build_model(cfg)
    assert m.roi_heads.box_pooler.sampling_ratio == 0 and m.roi_heads.mask_pooler.sampling_ratio == 0


def test_restricted_unpickler_refuses_code(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    bad = pickle.dumps({"model": {"x": Evil()}, "__author__": "x"})
    with pytest.raises(Detectron2ConversionError, match=r"refusing to load (posix|nt|os)\.system"):
        load_pkl(bad)
    assert not marker.exists()
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(eval))  # builtins.eval
    with pytest.raises(Detectron2ConversionError, match=r"evil\.pkl.*builtins\.eval"):
        load_pkl(path)
    # a Caffe2-format file (no __author__) and a matching-heuristics one are out of scope
    with pytest.raises(Detectron2ConversionError, match="Caffe2"):
        load_pkl(pickle.dumps({"blobs": {"conv1_w": np.zeros(3, np.float32)}}))
    with pytest.raises(Detectron2ConversionError, match="heuristics"):
        load_pkl(pickle.dumps({"model": {}, "__author__": "Caffe2", "matching_heuristics": True}))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_real_pickle_round_trip(tmp_path, protocol):
    """A pickle file as detectron2 writes it (numpy arrays in dicts; protocol 2 stores bytes via
    _codecs.encode) loads through the restricted unpickler and converts strictly."""
    kind = "COCO-Detection/faster_rcnn_R_50_C4_1x"
    rng = np.random.default_rng(0)
    model = {v["name"]: rng.standard_normal(v["shape"]).astype(np.float32) for v in _load_manifest(kind)["variables"]}
    path = tmp_path / "model_final_721ade.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": model, "__author__": "Detectron2 Model Zoo"}, f, protocol=protocol)
    loaded = load_pkl(path)
    assert set(loaded) == set(model) and all(np.array_equal(loaded[k], model[k]) for k in model)
    if protocol == 2:
        assert b"_codecs" in path.read_bytes()


def test_strict_lists_missing_and_unexpected():
    kind = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x"
    cfg = detectron2_config(kind)
    with torch.device("meta"):
        ref = build_model(cfg).state_dict()
    src = {v["name"]: np.zeros(v["shape"], np.float32) for v in _load_manifest(kind)["variables"]}
    del src["roi_heads.box_head.fc2.weight"]
    src["roi_heads.keypoint_head.score_lowres.weight"] = np.zeros(3, np.float32)
    with pytest.raises(Detectron2ConversionError, match=r"(?s)1 missing, 1 unexpected.*head\.fc7\.weight \(detectron2 "
                                                          r"roi_heads\.box_head\.fc2\.weight\).*keypoint_head"):
        detectron2_state_dict(src, cfg, ref)
    _, missing, unexpected = detectron2_state_dict(src, cfg, ref, strict=False)
    assert len(missing) == 1 and unexpected == ["roi_heads.keypoint_head.score_lowres.weight"]
    src["roi_heads.box_head.fc2.weight"] = np.zeros((1024, 1000), np.float32)
    with pytest.raises(Detectron2ConversionError, match=r"fc2\.weight \(1024, 1000\)"):
        detectron2_state_dict(src, cfg, ref, strict=False)
    with pytest.raises(KeyError, match="DC5"):  # not expressible: the reason is listed
        detectron2_config("COCO-Detection/faster_rcnn_R_50_DC5_1x")
    assert any("DC5" in k for k in NOT_EXPRESSIBLE)


def _random_model(kind, seed):
    """Small random weights of ``kind``'s manifest (positive variances)."""
    rng = np.random.default_rng(seed)
    model = {v["name"]: (rng.standard_normal(v["shape"]) * 0.01).astype(np.float32)
             for v in _load_manifest(kind)["variables"]}
    return {k: (np.abs(v) + 1 if k.endswith("running_var") else v) for k, v in model.items()}


def test_convert_script_and_get_model(tmp_path, capsys):
    """pkl → scripts/convert_detectron2.py → gluon_rcnn.get_model(entry, pretrained, overrides) → runs."""
    import gluon_rcnn
    from gluon_rcnn.convert.detectron2 import detectron2_overrides, zoo_entry
    kind = "PascalVOC-Detection/faster_rcnn_R_50_C4"
    model = _random_model(kind, 1)
    src, out = tmp_path / "model_final_b1acc2.pkl", tmp_path / "voc.pth"
    src.write_bytes(pickle.dumps({"model": model, "__author__": "Detectron2 Model Zoo"}))
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "scripts" / "convert_detectron2.py"), str(src), str(out),
                        "--kind", kind], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert zoo_entry(kind) in r.stdout
    net = gluon_rcnn.get_model(zoo_entry(kind), pretrained=str(out), overrides=detectron2_overrides(kind))
    sd = net.state_dict()
    assert torch.equal(sd["backbone.body.conv1.weight"], torch.from_numpy(model["backbone.stem.conv1.weight"]).flip(1))
    assert torch.equal(sd["roi_heads.stages.0.head.res5.2.conv3.weight"],
                       torch.from_numpy(model["roi_heads.res5.2.conv3.weight"]))
    assert list(net.config.DATA.CLASS_NAMES)[0] == "aeroplane" and rule_names(net.config)["STRIDE_1X1"] is True
    # an unsafe file is refused by the script with the reason, exit code 2
    (tmp_path / "evil.pkl").write_bytes(pickle.dumps(eval))
    sys.path.insert(0, str(root / "scripts"))
    try:
        import convert_detectron2
    finally:
        sys.path.pop(0)
    assert convert_detectron2.main([str(tmp_path / "evil.pkl"), str(tmp_path / "x.pth"), "--kind", kind]) == 2
    assert "builtins.eval" in capsys.readouterr().err


def test_from_detectron2_cascade_runs():
    """A whole converted cascade Mask R-CNN loads strictly and runs on a small image (50 proposals)."""
    for kind in ("Misc/cascade_mask_rcnn_R_50_FPN_1x",):
        cfg = detectron2_config(kind).clone()
        cfg.RPN.TEST_POST_NMS_TOPK = 50
        model = _random_model(kind, 2)
        net = from_detectron2({"model": model, "__author__": "Detectron2 Model Zoo"}, cfg)
        assert net.detectron2_missing == [] and net.detectron2_unexpected == []
        with torch.no_grad():
            out = net([torch.rand(3, 64, 96)])
        assert set(out[0]) >= {"boxes", "scores", "labels", "masks"}


if __name__ == "__main__":  # regenerate the manifests
    MANIFESTS.mkdir(parents=True, exist_ok=True)
    for k in ALL:
        _file(k).write_text(json.dumps(manifest(k), indent=1) + "\n")
        print("wrote", _file(k))
