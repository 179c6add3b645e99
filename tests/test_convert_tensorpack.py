"""tensorpack COCO checkpoints → gluon_rcnn (gluon_rcnn/convert/tensorpack.py), on synthetic files.

The manifests (tests/data/tensorpack_manifests/<npz name>.json) list every variable a published
``COCO-MaskRCNN-*.npz`` holds, with its TF shape. They are written by :func:`tensorpack_variables`
below, which follows tensorpack's graph construction (examples/FasterRCNN/modeling/*.py, the
Conv2D/FullyConnected/Conv2DTranspose/BatchNorm variable names of tensorpack/models/*.py), not the
converter; ``test_manifest_files_are_current`` keeps the JSON files equal to it. Regenerate with
``python tests/test_convert_tensorpack.py``.

Every synthetic tensor holds the *global element index* (int32, unique across the whole file), so
after conversion each element of each gluon_rcnn tensor says which tensorpack variable and which
position it came from; the test recomputes, independently of the converter, where each element must
come from (name rules written from our side, layouts from TF's conventions) and counts misplaced
elements: 0 for every kind.
"""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gluon_rcnn.builders import build_model
from gluon_rcnn.convert.tensorpack import (RADIO_KINDS, TENSORPACK_IMAGENET, TENSORPACK_KINDS,
                                           TensorpackConversionError, from_tensorpack, imagenet_state_dict,
                                           tensorpack_config, tensorpack_overrides, tensorpack_state_dict)
from gluon_rcnn.profiles import PROFILES, rule_names

MANIFESTS = Path(__file__).parent / "data" / "tensorpack_manifests"

# the README row's settings that change which variables exist (the rest are training/test knobs)
_README = {
    "COCO-MaskRCNN-R50C41x": dict(fpn=False, blocks=[3, 4, 6, 3]),
    "COCO-MaskRCNN-R50FPN2x": dict(),
    "COCO-MaskRCNN-R50FPN2xGN": dict(gn=True),
    "COCO-MaskRCNN-R50FPN1xCas": dict(cascade=True),
    "COCO-MaskRCNN-R50FPN4xGNCasAug": dict(cascade=True, gn=True),
    "COCO-MaskRCNN-R101C41x": dict(fpn=False, blocks=[3, 4, 23, 3]),
    "COCO-MaskRCNN-R101FPN1x": dict(blocks=[3, 4, 23, 3]),
    "COCO-MaskRCNN-R101FPN3xCasAug": dict(blocks=[3, 4, 23, 3], cascade=True),
    "COCO-MaskRCNN-R101FPN9xGNCasAugScratch": dict(blocks=[3, 4, 23, 3], cascade=True, gn=True),
    # ClaRAN v0.2 (chenwuperth/claran README/slurm_train.sh: MODE_MASK=False MODE_FPN=True, R50 default;
    # dataset.py: 6 RGZ classes)
    "ClaRAN-v0.2-FasterRCNN-R50FPN": dict(mask=False, num_category=6, src="claran"),
    # tensorpack at 02c38f26 (its README's table; the same scopes, in basemodel.py/train.py/model_*.py)
    "COCO-R50C4-MaskRCNN-Standard": dict(fpn=False, blocks=[3, 4, 6, 3], src="tensorpack-2019"),
    "COCO-R50FPN-MaskRCNN-Standard": dict(src="tensorpack-2019"),
    "COCO-R50FPN-MaskRCNN-StandardGN": dict(gn=True, src="tensorpack-2019"),
    "COCO-R101C4-MaskRCNN-Standard": dict(fpn=False, blocks=[3, 4, 23, 3], src="tensorpack-2019"),
    "COCO-R101FPN-MaskRCNN-Standard": dict(blocks=[3, 4, 23, 3], src="tensorpack-2019"),
    "COCO-R101FPN-MaskRCNN-BetterParams": dict(blocks=[3, 4, 23, 3], cascade=True, src="tensorpack-2019"),
    "COCO-R101FPN-MaskRCNN-ScratchGN": dict(blocks=[3, 4, 23, 3], cascade=True, gn=True, src="tensorpack-2019"),
}
# tensorpack's ImageNet ResNets (examples/FasterRCNN/README.md, ppwwyyxx/GroupNorm-reproduce README.md)
_IMAGENET = {
    "ImageNet-R50-AlignPadding": dict(blocks=[3, 4, 6, 3], gn=False),
    "ImageNet-R101-AlignPadding": dict(blocks=[3, 4, 23, 3], gn=False),
    "ImageNet-R50-GroupNorm32-AlignPadding": dict(blocks=[3, 4, 6, 3], gn=True),
    "ImageNet-R101-GroupNorm32-AlignPadding": dict(blocks=[3, 4, 23, 3], gn=True),
}
ALL_MANIFESTS = sorted(TENSORPACK_KINDS) + sorted(RADIO_KINDS) + sorted(_IMAGENET)


def tensorpack_variables(fpn=True, blocks=(3, 4, 6, 3), gn=False, cascade=False, num_category=80, mask=True,
                         src="tensorpack"):
    """[(name, shape, derivation)] of tensorpack's Mask R-CNN (MODE_MASK=True) for these settings.

    gn: BACKBONE.NORM=FPN.NORM=GN and the *_gn_head functions; else BACKBONE.NORM=FreezeBN.
    mask: False for a Faster R-CNN (MODE_MASK=False: no maskrcnn/*). src: 'claran' cites ClaRAN v0.2's
    copy of the code (basemodel.py for backbone.py, train.py for generalized_rcnn.py, same names),
    'tensorpack-2019' the same files of tensorpack at 02c38f26.
    Shapes are TF's: Conv2D kernel [kh, kw, in, out] (tf.layers.Conv2D), FullyConnected [in, out],
    Conv2DTranspose [kh, kw, out, in]."""
    if src in ("claran", "tensorpack-2019"):  # the code of early 2019: backbone in basemodel.py, model in train.py
        out = _Cited("chenwuperth/claran " if src == "claran" else "tensorpack 02c38f26 ",
                     {"backbone.py": "basemodel.py", "generalized_rcnn.py": "train.py"})
        _body(out, fpn, blocks, gn, cascade, num_category, mask)
        return list(out)
    out = []
    _body(out, fpn, blocks, gn, cascade, num_category, mask)
    return out


class _Cited(list):
    """a list whose appended derivations name another repository's files"""

    def __init__(self, prefix, renames):
        super().__init__()
        self.prefix, self.renames = prefix, renames

    def _cite(self, why):
        for a, b in self.renames.items():
            why = why.replace(a, b)
        return self.prefix + why

    def append(self, item):
        name, shape, why = item
        super().append((name, shape, self._cite(why)))

    def extend(self, items):
        for item in items:
            self.append(item)


def _body(out, fpn, blocks, gn, cascade, num_category, mask):

    def conv(scope, k, cin, cout, bias, why):
        out.append((f"{scope}/W", [k, k, cin, cout], why))
        if bias:
            out.append((f"{scope}/b", [cout], why))

    def norm(scope, c, why):  # backbone.py get_norm(): the Conv2D activation, inside the conv's scope
        if gn:
            out.extend([(f"{scope}/gn/gamma", [c], why + "; backbone.py GroupNorm"),
                        (f"{scope}/gn/beta", [c], why + "; backbone.py GroupNorm")])
        else:
            out.extend([(f"{scope}/bn/{v}", [c], why + "; tensorpack/models/batch_norm.py BatchNorm")
                        for v in ("gamma", "beta", "mean/EMA", "variance/EMA")])

    def groupnorm(scope, c, why):
        out.extend([(f"{scope}/gamma", [c], why), (f"{scope}/beta", [c], why)])

    def fc(scope, cin, cout, why):
        out.extend([(f"{scope}/W", [cin, cout], why), (f"{scope}/b", [cout], why)])

    bb = "backbone.py resnet_fpn_backbone" if fpn else "backbone.py resnet_c4_backbone"
    conv("conv0", 7, 3, 64, False, bb + " Conv2D('conv0') use_bias=False (backbone_scope)")
    norm("conv0", 64, bb)
    cin = 64
    for g, n in enumerate(blocks):
        ch = 64 * 2 ** g
        why = ("backbone.py resnet_conv5 (C4 head)" if (g == 3 and not fpn) else bb) + \
            f" resnet_group('group{g}') resnet_bottleneck"
        for b in range(n):
            s = f"group{g}/block{b}"
            conv(f"{s}/conv1", 1, cin, ch, False, why); norm(f"{s}/conv1", ch, why)
            conv(f"{s}/conv2", 3, ch, ch, False, why); norm(f"{s}/conv2", ch, why)
            conv(f"{s}/conv3", 1, ch, 4 * ch, False, why); norm(f"{s}/conv3", 4 * ch, why)
            if cin != 4 * ch:
                conv(f"{s}/convshortcut", 1, cin, 4 * ch, False, why + " resnet_shortcut")
                norm(f"{s}/convshortcut", 4 * ch, why + " resnet_shortcut")
            cin = 4 * ch
    if fpn:
        why = "model_fpn.py fpn_model('fpn') use_bias=True"
        for i, c in enumerate([256, 512, 1024, 2048]):
            conv(f"fpn/lateral_1x1_c{i + 2}", 1, c, 256, True, why)
        if gn:
            for i in range(4):
                groupnorm(f"fpn/gn_c{i + 2}", 256, why + " GroupNorm")
        for i in range(4):
            conv(f"fpn/posthoc_3x3_p{i + 2}", 3, 256, 256, True, why)
        if gn:
            for i in range(4):
                groupnorm(f"fpn/gn_p{i + 2}", 256, why + " GroupNorm")
    rpn_in, na = (256, 3) if fpn else (1024, 15)
    rpn_dim = 256 if fpn else 1024  # FPN.NUM_CHANNEL / RPN.HEAD_DIM
    why = "model_rpn.py rpn_head('rpn') (generalized_rcnn.py rpn(); shared over FPN levels)"
    conv("rpn/conv0", 3, rpn_in, rpn_dim, True, why)
    conv("rpn/class", 1, rpn_dim, na, True, why)
    conv("rpn/box", 1, rpn_dim, 4 * na, True, why)
    C = num_category + 1
    if fpn:
        stages = ([(f"cascade_rcnn_stage{s}/head", f"cascade_rcnn_stage{s}/outputs", 1) for s in (1, 2, 3)]
                  if cascade else [("fastrcnn", "fastrcnn/outputs", C)])
        for head, outs, nbox in stages:
            why = ("model_cascade.py CascadeRCNNHead.run_head" if cascade else "generalized_rcnn.py roi_heads")
            if gn:
                for k in range(4):
                    conv(f"{head}/conv{k}", 3, 256, 256, True, why + " model_frcnn.py fastrcnn_Xconv1fc_head")
                    groupnorm(f"{head}/gn{k}", 256, why + " model_frcnn.py fastrcnn_Xconv1fc_head")
                fc(f"{head}/fc", 256 * 7 * 7, 1024, why + " model_frcnn.py fastrcnn_Xconv1fc_head")
            else:
                fc(f"{head}/fc6", 256 * 7 * 7, 1024, why + " model_frcnn.py fastrcnn_2fc_head")
                fc(f"{head}/fc7", 1024, 1024, why + " model_frcnn.py fastrcnn_2fc_head")
            fc(f"{outs}/class", 1024, C, why + " model_frcnn.py fastrcnn_outputs")
            fc(f"{outs}/box", 1024, 4 * nbox, why + " model_frcnn.py fastrcnn_outputs")
        if not mask:
            return
        why = "model_mrcnn.py maskrcnn_upXconv_head('maskrcnn', num_convs=4)"
        for k in range(4):
            conv(f"maskrcnn/fcn{k}", 3, 256, 256, True, why)
            if gn:
                groupnorm(f"maskrcnn/gn{k}", 256, why)
        mask_in = 256
    else:
        why = "generalized_rcnn.py ResNetC4Model.roi_heads fastrcnn_outputs('fastrcnn', gap)"
        fc("fastrcnn/class", 2048, C, why)
        fc("fastrcnn/box", 2048, 4 * C, why)
        if not mask:
            return
        why = "model_mrcnn.py maskrcnn_upXconv_head('maskrcnn', num_convs=0) on resnet_conv5"
        mask_in = 2048
    out.append(("maskrcnn/deconv/W", [2, 2, 256, mask_in], why + " Conv2DTranspose [kh,kw,out,in]"))
    out.append(("maskrcnn/deconv/b", [256], why))
    conv("maskrcnn/conv", 1, 256, num_category, True, why)


def imagenet_variables(blocks=(3, 4, 6, 3), gn=False):
    """[(name, shape, derivation)] of a tensorpack ImageNet ResNet (v1b: stride in the 3x3 conv).

    BN: tensorpack examples/ResNet/resnet_model.py resnet_backbone + resnet_bottleneck (conv activation
    BNReLU / get_bn: BatchNorm('bn') inside the conv's scope). GN: ppwwyyxx/GroupNorm-reproduce
    ImageNet-ResNet-TensorFlow/resnet_model.py (GNReLU / get_gn: GroupNorm('gn')). Both end with
    GlobalAvgPooling('gap') + FullyConnected('linear', 1000)."""
    if gn:
        src = "ppwwyyxx/GroupNorm-reproduce ImageNet-ResNet-TensorFlow/resnet_model.py"
        nwhy = " GNReLU/get_gn GroupNorm('gn') (variables beta, gamma)"
    else:
        src = "tensorpack examples/ResNet/resnet_model.py"
        nwhy = " BNReLU/get_bn BatchNorm('bn'); tensorpack/models/batch_norm.py"
    out = []

    def unit(scope, k, cin, cout, why):
        out.append((f"{scope}/W", [k, k, cin, cout], f"{src} {why} Conv2D use_bias=False"))
        leaves = ("gamma", "beta") if gn else ("gamma", "beta", "mean/EMA", "variance/EMA")
        out.extend((f"{scope}/{'gn' if gn else 'bn'}/{v}", [cout], f"{src} {why}{nwhy}") for v in leaves)

    unit("conv0", 7, 3, 64, "resnet_backbone Conv2D('conv0', 64, 7, strides=2)")
    cin = 64
    for g, n in enumerate(blocks):
        ch = 64 * 2 ** g
        for b in range(n):
            s, why = f"group{g}/block{b}", f"resnet_group('group{g}') resnet_bottleneck"
            unit(f"{s}/conv1", 1, cin, ch, why)
            unit(f"{s}/conv2", 3, ch, ch, why)
            unit(f"{s}/conv3", 1, ch, 4 * ch, why)
            if cin != 4 * ch:
                unit(f"{s}/convshortcut", 1, cin, 4 * ch, why + " resnet_shortcut")
            cin = 4 * ch
    why = f"{src} resnet_backbone FullyConnected('linear', 1000) (the ImageNet classifier)"
    out.extend([("linear/W", [cin, 1000], why), ("linear/b", [1000], why)])
    return out


_NOTE = ("names as tensorpack's dump_session_params writes them, less ':0'; shapes TF's; "
         "written by tests/test_convert_tensorpack.py {}()")


def manifest(kind):
    if kind in _IMAGENET:
        blocks, norm, where = TENSORPACK_IMAGENET[kind]
        return {"kind": kind, "url": f"http://models.tensorpack.com/FasterRCNN/{kind}.npz", "named_in": where,
                "backbone": {"RESNET_NUM_BLOCKS": list(blocks), "NORM": norm, "TF_PAD_MODE": False},
                "note": _NOTE.format("imagenet_variables"),
                "variables": [{"name": n, "shape": s, "derived_from": w}
                              for n, s, w in imagenet_variables(**_IMAGENET[kind])]}
    if kind in RADIO_KINDS:
        head = {"kind": kind, "url": None,
                "published": "ClaRAN README: a TF checkpoint (model-70000.data-00000-of-00001, Google Drive), not an "
                             "npz; tensorpack's scripts/dump-model-params.py (with --meta) writes this npz from it",
                "config": list(RADIO_KINDS[kind][1])}
    else:
        head = {"kind": kind, "url": f"http://models.tensorpack.com/FasterRCNN/{kind}.npz",
                "readme_config": list(TENSORPACK_KINDS[kind][1])}
    return {**head, "note": _NOTE.format("tensorpack_variables"),
            "variables": [{"name": n, "shape": s, "derived_from": w} for n, s, w in tensorpack_variables(**_README[kind])]}


def _load_manifest(kind):
    return json.loads((MANIFESTS / f"{kind}.json").read_text())

def _convert_with_script(kind, rng, npz, out):
    """A random npz of ``kind``'s manifest (positive variances) converted by scripts/convert_tensorpack.py."""
    src = {v["name"] + ":0": rng.standard_normal(v["shape"], dtype=np.float32) * 0.01
           for v in _load_manifest(kind)["variables"]}
    for k in src:
        if k.endswith("variance/EMA:0"):
            src[k] = np.abs(src[k]) + 1.0
    np.savez(npz, **src)
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "scripts" / "convert_tensorpack.py"), str(npz), str(out),
                        "--kind", kind], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return src, out



def test_manifest_files_are_current():
    assert sorted(p.stem for p in MANIFESTS.glob("*.json")) == sorted(ALL_MANIFESTS)
    assert sorted(_IMAGENET) == sorted(TENSORPACK_IMAGENET)
    for kind in ALL_MANIFESTS:
        assert _load_manifest(kind) == manifest(kind), kind


# ------------------------------------------------------------------------------------------------
# the expected source of every gluon_rcnn key, written from our side (not the converter's table)
# ------------------------------------------------------------------------------------------------

def _expected_source(key: str, cfg) -> tuple[str, str]:
    """(tensorpack name, layout) that must fill gluon_rcnn ``key``."""
    leafs = {"weight": ("W", "gamma"), "bias": ("b", "beta"), "running_mean": (None, "mean/EMA"),
             "running_var": (None, "variance/EMA")}
    gn = cfg.BACKBONE.NORM == "GN"
    nscope = "gn" if gn else "bn"
    m = re.fullmatch(r"(?:backbone\.body\.layer(\d)|roi_heads\.stages\.0\.head\.res5)\.(\d+)\.(\w+?)(\d?)\.(\w+)", key)
    if m:
        layer, block, kind, idx, leaf = m.groups()
        g = int(layer) - 1 if layer else 3
        base = f"group{g}/block{block}"
        if kind == "conv":
            return f"{base}/conv{idx}/W", "conv"
        if kind == "bn":
            return f"{base}/conv{idx}/{nscope}/{leafs[leaf][1]}", "vec"
    m = re.fullmatch(r"(?:backbone\.body\.layer(\d)|roi_heads\.stages\.0\.head\.res5)\.(\d+)\.downsample\.(\d)\.(\w+)", key)
    if m:
        layer, block, i, leaf = m.groups()
        g = int(layer) - 1 if layer else 3
        base = f"group{g}/block{block}/convshortcut"
        return (f"{base}/W", "conv") if i == "0" else (f"{base}/{nscope}/{leafs[leaf][1]}", "vec")
    if key == "backbone.body.conv1.weight":
        return "conv0/W", "conv_bgr"
    m = re.fullmatch(r"backbone\.body\.bn1\.(\w+)", key)
    if m:
        return f"conv0/{nscope}/{leafs[m.group(1)][1]}", "vec"
    m = re.fullmatch(r"backbone\.fpn\.(inner|layer)_blocks\.(\d)\.(\d)\.(\w+)", key)
    if m:
        which, i, j, leaf = m.groups()
        lvl = int(i) + 2
        if j == "0":
            name = f"fpn/lateral_1x1_c{lvl}" if which == "inner" else f"fpn/posthoc_3x3_p{lvl}"
            return f"{name}/{leafs[leaf][0]}", "conv" if leaf == "weight" else "vec"
        return f"fpn/gn_{'c' if which == 'inner' else 'p'}{lvl}/{leafs[leaf][1]}", "vec"
    m = re.fullmatch(r"rpn\.head\.(conv|cls_logits|bbox_pred)\.(weight|bias)", key)
    if m:
        part, leaf = m.groups()
        name = {"conv": "rpn/conv0", "cls_logits": "rpn/class", "bbox_pred": "rpn/box"}[part]
        lay = "conv" if leaf == "weight" else "vec"
        if part != "conv" and not cfg.MODE_FPN:
            lay = f"anchors_{part}_{leaf}"
        return f"{name}/{leafs[leaf][0]}", lay
    m = re.fullmatch(r"roi_heads\.stages\.(\d)\.(head|predictor)\.(\w+?)(?:\.(\d+))?\.(weight|bias)", key)
    if m:
        s, part, mod, idx, leaf = m.groups()
        if not cfg.MODE_FPN:
            head, outs = None, "fastrcnn"
        elif cfg.FPN.CASCADE:
            head, outs = f"cascade_rcnn_stage{int(s) + 1}/head", f"cascade_rcnn_stage{int(s) + 1}/outputs"
        else:
            head, outs = "fastrcnn", "fastrcnn/outputs"
        if part == "predictor":
            return f"{outs}/{'class' if mod == 'cls_score' else 'box'}/{leafs[leaf][0]}", "fc" if leaf == "weight" else "vec"
        if mod in ("fc6", "fc7", "fc"):
            return f"{head}/{mod}/{leafs[leaf][0]}", "fc" if leaf == "weight" else "vec"
        k, r = divmod(int(idx), 3)
        if r == 0:
            return f"{head}/conv{k}/{leafs[leaf][0]}", "conv" if leaf == "weight" else "vec"
        return f"{head}/gn{k}/{leafs[leaf][1]}", "vec"
    m = re.fullmatch(r"roi_heads\.mask_head\.(\w+?)(?:\.(\d+))?\.(weight|bias)", key)
    if m:
        mod, idx, leaf = m.groups()
        if mod == "convs":
            k, r = divmod(int(idx), 3)
            if r == 0:
                return f"maskrcnn/fcn{k}/{leafs[leaf][0]}", "conv" if leaf == "weight" else "vec"
            return f"maskrcnn/gn{k}/{leafs[leaf][1]}", "vec"
        name = {"deconv": "maskrcnn/deconv", "predictor": "maskrcnn/conv"}[mod]
        return f"{name}/{leafs[leaf][0]}", ("deconv" if mod == "deconv" else "conv") if leaf == "weight" else "vec"
    raise AssertionError(f"no rule for {key}")


def _anchor_order_perm(cfg):
    """perm[o] = tensorpack anchor index of our anchor o, matched by (size, ratio)."""
    sizes, ratios = list(cfg.RPN.ANCHOR_SIZES), list(cfg.RPN.ANCHOR_RATIOS)
    theirs = [(sz, r) for sz in sizes for r in ratios]      # model_rpn.py get_all_anchors loops
    rules = getattr(cfg, "RULES", None)  # (an ImageNet backbone's cfg has none)
    if rules is not None and rules.PROFILE == "tensorpack-2019":  # 02c38f26 data.py get_all_anchors: ratio-major
        theirs = [(sz, r) for r in ratios for sz in sizes]
    ours = [(sz, r) for r in ratios for sz in sizes]        # gluon_rcnn/rpn.py AnchorGenerator: ratio-major
    return np.array([theirs.index(a) for a in ours])


def _expected_ids(ids: np.ndarray, layout: str, cfg) -> np.ndarray:
    """Where each element of the converted tensor must come from, from the tensorpack id array."""
    if layout == "vec":
        return ids
    if layout == "fc":
        return ids.T
    perm = _anchor_order_perm(cfg)
    if layout == "anchors_cls_logits_bias":
        return ids[perm]
    if layout == "anchors_bbox_pred_bias":
        return ids.reshape(-1, 4)[perm].reshape(-1)
    t = ids.transpose(3, 2, 0, 1)  # HWIO → OIHW, and [kh,kw,out,in] → [in,out,kh,kw]
    if layout in ("conv", "deconv"):
        return t
    if layout == "conv_bgr":
        return t[:, ::-1]
    if layout == "anchors_cls_logits_weight":
        return t[perm]
    if layout == "anchors_bbox_pred_weight":
        return t.reshape(-1, 4, *t.shape[1:])[perm].reshape(t.shape)
    raise AssertionError(layout)


def _synthetic(kind):
    """name → int32 array of global element indices, in manifest order; and the offsets."""
    arrays, offset = {}, 0
    for v in _load_manifest(kind)["variables"]:
        n = int(np.prod(v["shape"]))
        arrays[v["name"] + ":0"] = np.arange(offset, offset + n, dtype=np.int32).reshape(v["shape"])
        offset += n
    assert offset < 2 ** 31
    return arrays


@pytest.mark.parametrize("kind", sorted(TENSORPACK_KINDS) + sorted(RADIO_KINDS))
def test_every_element_lands_where_it_belongs(kind):
    cfg = tensorpack_config(kind)
    with torch.device("meta"):
        ref = build_model(cfg).state_dict()
    src = _synthetic(kind)
    state, missing, unexpected = tensorpack_state_dict(src, cfg, ref, strict=True)
    assert missing == [] and unexpected == []
    assert set(state) == set(ref)
    misplaced, used = 0, set()
    for key, t in state.items():
        name, layout = _expected_source(key, cfg)
        used.add(name)
        exp = _expected_ids(src[name + ":0"], layout, cfg)
        assert tuple(t.shape) == tuple(ref[key].shape) == exp.shape, key
        misplaced += int((t.numpy() != exp).sum())
    print(f"{kind}: {len(state)} tensors, {sum(t.numel() for t in state.values())} elements, {misplaced} misplaced")
    assert misplaced == 0
    assert used == {k[:-2] for k in src}  # every tensorpack variable used, each by one key
    assert len(used) == len(state)
    del src, state


@pytest.mark.parametrize("kind", sorted(_IMAGENET))
def test_imagenet_backbone_every_element_lands_where_it_belongs(kind):
    """ImageNet npz → torchvision-style ResNet state dict (BACKBONE.WEIGHTS): 0 misplaced, conv0 BGR → RGB,
    the classifier reported as unused."""
    from types import SimpleNamespace

    from gluon_rcnn.backbone.resnet import ResNet
    src = _synthetic(kind)
    blocks, norm, _ = TENSORPACK_IMAGENET[kind]
    state, unused = imagenet_state_dict(src, name=kind)
    assert unused == ["linear/W", "linear/b"]
    with torch.device("meta"):
        # tensorpack's rules (they change no state-dict name)
        ref = ResNet(list(blocks), norm="GN" if norm == "GN" else "FreezeBN", zero_init_residual=True,
                     freeze_affine=False, floor_stride2=True, stride_1x1=False).state_dict()
    assert set(state) == {k for k in ref if not k.endswith("num_batches_tracked")}
    ours_cfg = SimpleNamespace(BACKBONE=SimpleNamespace(NORM=norm), MODE_FPN=True,
                               RPN=SimpleNamespace(ANCHOR_SIZES=[32], ANCHOR_RATIOS=[1.0]))  # no anchors here
    misplaced, used = 0, set()
    for key, t in state.items():
        name, layout = _expected_source("backbone.body." + key, ours_cfg)  # the same rules as the detector's trunk
        used.add(name)
        exp = _expected_ids(src[name + ":0"], layout, ours_cfg)
        assert tuple(t.shape) == tuple(ref[key].shape) == exp.shape, key
        misplaced += int((t.numpy() != exp).sum())
    print(f"{kind}: {len(state)} tensors, {sum(t.numel() for t in state.values())} elements, {misplaced} misplaced")
    assert misplaced == 0
    assert used | {"linear/W", "linear/b"} == {k[:-2] for k in src}
    # layouts on non-symmetric values, by hand: HWIO → OIHW, and conv0's input channels reversed
    w = src["conv0/W:0"]                                    # [7, 7, 3(BGR), 64]
    assert state["conv1.weight"][5, 0, 1, 2].item() == w[1, 2, 2, 5]     # our R = their channel 2
    assert state["conv1.weight"][5, 2, 1, 2].item() == w[1, 2, 0, 5]     # our B = their channel 0
    w = src["group1/block0/conv2/W:0"]                       # [3, 3, 128, 128]
    assert state["layer2.0.conv2.weight"][7, 3, 0, 2].item() == w[0, 2, 3, 7]
    leaf = "gn/gamma" if norm == "GN" else "bn/variance/EMA"
    key = "layer4.2.bn3." + ("weight" if norm == "GN" else "running_var")
    assert torch.equal(state[key], torch.from_numpy(src[f"group3/block2/conv3/{leaf}:0"]))


def _imagenet_npz(tmp_path, kind, fname=None):
    rng = np.random.default_rng(0)
    src = {v["name"]: rng.standard_normal(v["shape"], dtype=np.float32) * 0.05
           for v in _load_manifest(kind)["variables"]}
    for k in src:
        if k.endswith("variance/EMA"):
            src[k] = np.abs(src[k]) + 1.0
    path = tmp_path / f"{fname or kind}.npz"
    np.savez(path, **{k + ":0": v for k, v in src.items()})
    return path, src


def _cfg(*overrides):
    from gluon_rcnn.config import get_default_config
    c = get_default_config()
    c.update_args(list(overrides))
    return c.finalize()


def test_imagenet_npz_as_backbone_weights(tmp_path):
    """BACKBONE.WEIGHTS takes the tensorpack .npz as is: FPN trunk, and the C4 res5 head (layer4.*)."""
    path, src = _imagenet_npz(tmp_path, "ImageNet-R50-AlignPadding")
    conv0 = torch.from_numpy(src["conv0/W"]).permute(3, 2, 0, 1).flip(1)
    m = build_model(_cfg(f"BACKBONE.WEIGHTS={path}"))
    sd = m.state_dict()
    assert torch.equal(sd["backbone.body.conv1.weight"], conv0)
    assert torch.equal(sd["backbone.body.layer4.2.bn3.running_mean"],
                       torch.from_numpy(src["group3/block2/conv3/bn/mean/EMA"]))
    m = build_model(_cfg(f"BACKBONE.WEIGHTS={path}", "MODE_FPN=False"))
    sd = m.state_dict()
    w = torch.from_numpy(src["group3/block1/conv2/W"]).permute(3, 2, 0, 1)
    assert torch.equal(sd["roi_heads.stages.0.head.res5.1.conv2.weight"], w)
    assert torch.equal(sd["backbone.body.conv1.weight"], conv0)
    # the converted .pth (scripts/convert_tensorpack.py --backbone) loads the same
    out = tmp_path / "r50.pth"
    root = Path(__file__).resolve().parents[1]
    r = subprocess.run([sys.executable, str(root / "scripts" / "convert_tensorpack.py"), str(path), str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "linear/W" in r.stdout + r.stderr and "BACKBONE.WEIGHTS" in r.stdout
    assert torch.equal(torch.load(out, weights_only=True)["conv1.weight"], conv0)


def test_imagenet_gn_bn_refused(tmp_path):
    """A GN config given the BN file (and vice versa) refuses, naming the weights it needs."""
    bn, _ = _imagenet_npz(tmp_path, "ImageNet-R50-AlignPadding")
    gn, _ = _imagenet_npz(tmp_path, "ImageNet-R50-GroupNorm32-AlignPadding")
    gn_cfg = _cfg("BACKBONE.NORM=GN", "FPN.NORM=GN")
    with pytest.raises(TensorpackConversionError, match=r"(?s)BatchNorm weights.*GroupNorm.*"
                                                          r"needs ImageNet-R50-GroupNorm32-AlignPadding\.npz"):
        imagenet_state_dict(bn, gn_cfg)
    with pytest.raises(TensorpackConversionError,
                       match=r"(?s)no BatchNorm statistics.*needs ImageNet-R50-AlignPadding"):
        imagenet_state_dict(gn, _cfg())
    with pytest.raises(TensorpackConversionError, match=r"blocks \[3, 4, 6, 3\].*\[3, 4, 23, 3\]"):
        imagenet_state_dict(bn, _cfg("BACKBONE.RESNET_NUM_BLOCKS=[3,4,23,3]"))
    # through BACKBONE.WEIGHTS (gluon_rcnn.backbone.pretrained.load_pretrained's norm check)
    with pytest.raises(ValueError, match=r"(?s)BatchNorm weights.*GroupNorm-pretrained.*GroupNorm32-AlignPadding"):
        build_model(_cfg("BACKBONE.NORM=GN", "FPN.NORM=GN", f"BACKBONE.WEIGHTS={bn}"))
    with pytest.raises(ValueError, match=r"(?s)no BatchNorm statistics.*BACKBONE.NORM='GN'"):
        build_model(_cfg(f"BACKBONE.WEIGHTS={gn}"))
    state, _ = imagenet_state_dict(gn, gn_cfg)  # the right pair converts
    assert "bn1.running_mean" not in state and state["bn1.weight"].shape == (64,)


def test_imagenet_tf_pad_mode_refused_with_reason(tmp_path):
    path, _ = _imagenet_npz(tmp_path, "ImageNet-R50-AlignPadding", fname="ImageNet-ResNet50")  # examples/ResNet name
    with pytest.raises(TensorpackConversionError, match=r"(?s)ImageNet-ResNet50\.npz.*TF_PAD_MODE=True.*bottom/right"
                                                          r".*not supported"):
        imagenet_state_dict(path)
    with pytest.raises(TensorpackConversionError, match="TF_PAD_MODE=True"):
        build_model(_cfg(f"BACKBONE.WEIGHTS={path}"))
    with pytest.raises(TensorpackConversionError, match="not supported"):
        imagenet_state_dict(path, tf_pad_mode=True)
    state, _ = imagenet_state_dict(path, tf_pad_mode=False)  # stated by the caller
    assert "layer4.2.conv3.weight" in state


def test_imagenet_missing_and_unexpected_listed():
    kind = "ImageNet-R50-AlignPadding"
    src = {v["name"]: np.zeros(v["shape"], np.float32) for v in _load_manifest(kind)["variables"]}
    del src["group2/block3/conv2/bn/mean/EMA"]
    src["global_step"] = np.zeros((), np.int64)
    with pytest.raises(TensorpackConversionError, match=r"(?s)1 missing, 1 unexpected.*layer3\.3\.bn2\.running_mean"
                                                          r".*group2/block3/conv2/bn/mean/EMA.*global_step"):
        imagenet_state_dict(src, name=kind)
    state, unused = imagenet_state_dict(src, name=kind, strict=False)
    assert "layer3.3.bn2.running_mean" not in state and "global_step (unexpected)" in unused
    # a file of another depth than its name says
    with pytest.raises(TensorpackConversionError, match=r"should hold a BN ResNet \[3, 4, 23, 3\]"):
        imagenet_state_dict(src, name="ImageNet-R101-AlignPadding")


def test_radio_kind_config_and_heads():
    c = tensorpack_config("ClaRAN-v0.2-FasterRCNN-R50FPN")
    assert not c.MODE_MASK and c.MODE_FPN and c.DATA.NUM_CATEGORY == 6
    assert list(c.DATA.CLASS_NAMES) == ["1C_1P", "1C_2P", "1C_3P", "2C_2P", "2C_3P", "3C_3P"]  # claran dataset.py
    assert list(c.RPN.ANCHOR_SIZES) == [32, 64, 128, 256, 512] and list(c.RPN.ANCHOR_RATIOS) == [0.5, 1.0, 2.0]
    assert list(c.PREPROC.TRAIN_SHORT_EDGE_SIZE) == [600, 600] and c.PREPROC.TEST_SHORT_EDGE_SIZE == 600
    with torch.device("meta"):
        sd = build_model(c).state_dict()
    assert sd["roi_heads.stages.0.predictor.cls_score.weight"].shape == (7, 1024)
    assert sd["roi_heads.stages.0.predictor.bbox_pred.weight"].shape == (28, 1024)
    with pytest.raises(TensorpackConversionError, match=r"(?s)TF_PAD_MODE=False.*ClaRAN.*not supported"):
        from_tensorpack({}, "ClaRAN-v0.2-FasterRCNN-R50FPN", tf_pad_mode=True)
    with pytest.raises(KeyError, match="ImageNet backbone"):
        tensorpack_config("ImageNet-R50-AlignPadding")


def test_radio_convert_script_and_zoo_entry(tmp_path):
    """ClaRAN-format npz → scripts/convert_tensorpack.py --kind → get_model(rgz entry, overrides) → runs."""

    import gluon_rcnn
    from gluon_rcnn.convert.tensorpack import RADIO_KINDS
    kind = "ClaRAN-v0.2-FasterRCNN-R50FPN"
    rng = np.random.default_rng(1)
    src, out = _convert_with_script(kind, rng, tmp_path / "model-70000.npz", tmp_path / "claran.pth")
    entry = RADIO_KINDS[kind][0]
    model = gluon_rcnn.get_model(entry, pretrained=str(out), overrides=tensorpack_overrides(kind))
    sd = model.state_dict()
    assert torch.equal(sd["roi_heads.stages.0.predictor.cls_score.weight"],
                       torch.from_numpy(src["fastrcnn/outputs/class/W:0"]).t())
    assert list(model.config.DATA.CLASS_NAMES)[0] == "1C_1P"
    with torch.no_grad():
        model([torch.rand(3, 64, 96)])


def test_c4_anchor_permutation_by_hand():
    cfg = tensorpack_config("COCO-MaskRCNN-R50C41x")
    perm = _anchor_order_perm(cfg)
    # ours: (32,.5) (64,.5) ... (512,.5) (32,1) ...; tensorpack: (32,.5) (32,1) (32,2) (64,.5) ...
    assert perm[:6].tolist() == [0, 3, 6, 9, 12, 1]


def test_strict_lists_missing_and_unexpected():
    kind = "COCO-MaskRCNN-R50FPN2x"
    cfg = tensorpack_config(kind)
    with torch.device("meta"):
        ref = build_model(cfg).state_dict()
    src = {v["name"]: np.zeros(v["shape"], np.float32) for v in _load_manifest(kind)["variables"]}
    del src["fastrcnn/fc7/W"]
    src["global_step"] = np.zeros((), np.int64)
    with pytest.raises(TensorpackConversionError, match=r"1 missing, 1 unexpected(.|\n)*fastrcnn/fc7/W(.|\n)*global_step"):
        tensorpack_state_dict(src, cfg, ref)
    _, missing, unexpected = tensorpack_state_dict(src, cfg, ref, strict=False)
    assert len(missing) == 1 and "fc7.weight" in missing[0] and unexpected == ["global_step"]
    src["fastrcnn/fc7/W"] = np.zeros((1024, 1000), np.float32)
    del src["global_step"]
    with pytest.raises(TensorpackConversionError, match="fc7"):
        tensorpack_state_dict(src, cfg, ref)


def test_padding_mode_must_be_stated_for_a_custom_config():
    cfg = tensorpack_config("COCO-MaskRCNN-R50FPN2x")
    with pytest.raises(TensorpackConversionError, match="cannot be read"):
        from_tensorpack({}, cfg)
    with pytest.raises(TensorpackConversionError, match="not supported"):
        from_tensorpack({}, cfg, tf_pad_mode=True)
    with pytest.raises(TensorpackConversionError, match="TF_PAD_MODE=False"):
        from_tensorpack({}, "COCO-MaskRCNN-R50FPN2x", tf_pad_mode=True)


def test_config_of_each_kind():
    c = tensorpack_config("COCO-MaskRCNN-R101FPN9xGNCasAugScratch")
    assert c.MODE_MASK and c.MODE_FPN and c.FPN.CASCADE and c.BACKBONE.NORM == "GN" and c.FPN.NORM == "GN"
    assert list(c.BACKBONE.RESNET_NUM_BLOCKS) == [3, 4, 23, 3] and c.BACKBONE.FREEZE_AT == 0
    rules = rule_names(c)
    assert c.RULES.PROFILE == "tensorpack" and rules == dict(PROFILES["tensorpack"].choices)  # every rule tensorpack's
    assert rules["GN_HEAD_ORDER"] == "conv_relu_gn" and rules["GN_CONV_BIAS"] and rules["ANCHOR_CELLS"] == "exact"
    assert rules["MASK_PASTE"] == "subpixel" and rules["DECODE_CLAMP"] == "log_max_size_over_16"
    assert rules["MAX_SIZE_ROUND_UP"]
    assert list(c.PREPROC.TRAIN_SHORT_EDGE_SIZE) == [640, 800] and c.TRAIN.LR_SCHEDULE == "9x"
    c4 = tensorpack_config("tp_mask_rcnn_c4_resnet50_1x_coco")  # zoo name accepted
    assert not c4.MODE_FPN and c4.MODE_MASK and len(c4.DATA.CLASS_NAMES) == 80
    assert tensorpack_config("COCO-MaskRCNN-R101FPN3xCasAug").TEST.RESULT_SCORE_THRESH == 1e-4


def test_convert_script_writes_a_checkpoint_get_model_loads(tmp_path):
    """Full size R50-FPN: npz file → scripts/convert_tensorpack.py → get_model(entry, pretrained=...)."""

    import gluon_rcnn
    kind = "COCO-MaskRCNN-R50FPN2x"
    rng = np.random.default_rng(0)
    src, out = _convert_with_script(kind, rng, tmp_path / f"{kind}.npz", tmp_path / "out.pth")
    entry = TENSORPACK_KINDS[kind][0]
    model = gluon_rcnn.get_model(entry, pretrained=str(out))  # the tp_* entry carries tensorpack's rules
    sd = model.state_dict()
    w = torch.from_numpy(src["conv0/W:0"]).permute(3, 2, 0, 1).flip(1)
    assert torch.equal(sd["backbone.body.conv1.weight"], w)
    assert torch.equal(sd["roi_heads.stages.0.head.fc6.weight"], torch.from_numpy(src["fastrcnn/fc6/W:0"]).t())
    assert model.config.RULES.PROFILE == "tensorpack"
    rules = rule_names(model.config)
    assert rules["GN_HEAD_ORDER"] == "conv_relu_gn" and rules["ANCHOR_CELLS"] == "exact"
    with torch.no_grad():
        model([torch.rand(3, 64, 96)])  # runs


if __name__ == "__main__":  # regenerate the manifests
    MANIFESTS.mkdir(parents=True, exist_ok=True)
    for k in ALL_MANIFESTS:
        (MANIFESTS / f"{k}.json").write_text(json.dumps(manifest(k), indent=1) + "\n")
        print("wrote", MANIFESTS / f"{k}.json")
