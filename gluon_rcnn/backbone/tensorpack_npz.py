"""tensorpack's ImageNet ResNets (``BACKBONE.WEIGHTS=ImageNet-R50-AlignPadding.npz``) → a torchvision-style
ResNet state dict, and the pieces of tensorpack's ``.npz`` format the detector importer builds on: reading
the file (:func:`read_npz`), the ResNet trunk's names (:func:`resnet_rows`), the trunk's layouts (HWIO
kernels, BGR ``conv0``: :func:`tensorpack_layout`) and applying a name map (:func:`map_rows`).

It sits in the backbone room because :func:`gluon_rcnn.backbone.pretrained.load_pretrained` reads an
ImageNet ``.npz`` as is, and the backbone may not import the converters (tests/test_layering.py). The
detector's full name map, its head layouts (FC, transposed conv, C4 anchor order) and the published
checkpoints' configs are in :mod:`gluon_rcnn.convert.tensorpack`.
"""
from __future__ import annotations

import re
from typing import Mapping

import numpy as np
import torch

from ..utils.io import save_torch
from .resnet import ResNet, check_norm_kinds

__all__ = ["TensorpackConversionError", "TENSORPACK_IMAGENET", "IMAGENET_CLASSIFIER", "PAD_REASON", "read_npz",
           "resnet_rows", "tensorpack_layout", "map_rows", "imagenet_name_map", "imagenet_state_dict", "save_backbone"]


class TensorpackConversionError(ValueError):
    """The file does not fit the model: names missing/unexpected, shapes, or an unsupported mode."""


_NORM = {"gamma": "weight", "beta": "bias", "mean/EMA": "running_mean", "variance/EMA": "running_var"}
#: tensorpack's ResNet rules (its profile in gluon_rcnn/profiles.py, which the backbone may not import): the
#: reference trunks built here only name the state dict, which no rule changes
_TENSORPACK_RULES = dict(zero_init_residual=True, freeze_affine=False, floor_stride2=True, stride_1x1=False)


def _norm_leaf(cfg_norm: str) -> list[str]:
    return ["gamma", "beta", "mean/EMA", "variance/EMA"] if cfg_norm in ("FreezeBN", "BN", "SyncBN") else \
        (["gamma", "beta"] if cfg_norm == "GN" else [])


def _conv_unit(tp: str, ours_conv: str, ours_norm: str, norm: str, layout: str = "conv") -> list:
    """a backbone Conv2D (no bias) whose activation is get_norm(): '<tp>/W', '<tp>/{bn,gn}/...'"""
    rows = [(f"{tp}/W", f"{ours_conv}.weight", layout)]
    scope = "gn" if norm == "GN" else "bn"
    rows += [(f"{tp}/{scope}/{leaf}", f"{ours_norm}.{_NORM[leaf]}", "vec") for leaf in _norm_leaf(norm)]
    return rows


def resnet_rows(blocks, norm: str, stem: str, stage_prefix) -> list:
    """tensorpack's ResNet trunk (conv0, group{g}/block{b}/conv{1,2,3}, convshortcut in block 0; the
    norm inside each conv's scope) → torchvision's names (``{stem}conv1``, ``{stem}bn1``,
    ``{stage_prefix(g)}.{b}.conv{k}``/``bn{k}``/``downsample.{0,1}``)."""
    rows = _conv_unit("conv0", f"{stem}conv1", f"{stem}bn1", norm, "conv_bgr")
    for g, n in enumerate(blocks):
        prefix = stage_prefix(g)
        for b in range(n):
            tp, ours = f"group{g}/block{b}", f"{prefix}.{b}"
            for k in (1, 2, 3):
                rows += _conv_unit(f"{tp}/conv{k}", f"{ours}.conv{k}", f"{ours}.bn{k}", norm)
            if b == 0:
                rows += _conv_unit(f"{tp}/convshortcut", f"{ours}.downsample.0", f"{ours}.downsample.1", norm)
    return rows


def tensorpack_layout(t: torch.Tensor, layout: str, cfg=None) -> torch.Tensor:
    """A tensorpack array in our layout: ``vec`` as is; ``conv`` HWIO → OIHW; ``conv_bgr`` the same with the
    input channels reversed (tensorpack feeds BGR, gluon_rcnn RGB). The detector importer adds the heads'
    layouts (:func:`gluon_rcnn.convert.tensorpack.tensorpack_detector_layout`); ``cfg`` is theirs."""
    if layout == "vec":
        return t
    if layout in ("conv", "conv_bgr"):
        if t.dim() != 4:
            raise TensorpackConversionError(f"expected a 4-d kernel, got shape {tuple(t.shape)}")
        t = t.permute(3, 2, 0, 1)  # HWIO → OIHW
        return t.flip(1) if layout == "conv_bgr" else t
    raise ValueError(f"unknown tensorpack layout {layout!r}")


def map_rows(tp: Mapping, rows, reference: Mapping[str, torch.Tensor], cfg, transform, what: str = "model", *,
             source: str = "tensorpack"):
    """Apply the rows ``(foreign name, our key, layout)`` to the arrays ``tp``: ``(state, used, missing,
    problems)``; shapes are checked against ``reference`` (our state dict, ``what`` names it).
    ``transform(tensor, layout, cfg)`` gives our layout (e.g. :func:`tensorpack_layout`); ``source`` names the
    publisher in the messages. Shared by this ImageNet reader and the tensorpack and detectron2 importers."""
    state, used, missing, problems = {}, set(), [], []
    for name, ours, layout in rows:
        if ours not in reference:
            problems.append(f"{ours} (for {name}) is not a parameter of the {what}")
            continue
        if name not in tp:
            missing.append(f"{ours} ({source} {name})")
            continue
        used.add(name)
        arr = np.ascontiguousarray(tp[name])
        try:
            t = transform(torch.from_numpy(arr), layout, cfg).contiguous()
        except (RuntimeError, IndexError):  # a shape the layout cannot take
            t = None
        if t is None or tuple(t.shape) != tuple(reference[ours].shape):
            problems.append(f"{name} {tuple(arr.shape)} → {ours}: got {None if t is None else tuple(t.shape)}, "
                            f"{what} has {tuple(reference[ours].shape)}")
            continue
        state[ours] = t
    return state, used, missing, problems


def read_npz(src) -> dict[str, np.ndarray]:
    """name → array of a tensorpack ``.npz`` path (or of a dict name → array), TF's ``:0`` suffix dropped."""
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


#: why TF_PAD_MODE=True weights are refused (tensorpack config.py BACKBONE.TF_PAD_MODE, backbone.py
#: maybe_reverse_pad; examples/ResNet's resnet_backbone uses TF's 'SAME' padding)
PAD_REASON = (
    "BACKBONE.TF_PAD_MODE=True models (TF's 'SAME' padding) pad the stride-2 convs more on the bottom/right "
    "(conv0 2/3 pixels, the 3x3 convs 0/1) than gluon_rcnn's symmetric padding (3/3, 1/1, tensorpack's "
    "AlignPadding, TF_PAD_MODE=False): their features would be shifted by a pixel at every stride-2 layer, so "
    "they are not supported")


#: tensorpack's ImageNet ResNets for examples/FasterRCNN's ``BACKBONE.WEIGHTS``
#: (http://models.tensorpack.com/FasterRCNN/<name>.npz): name → (RESNET_NUM_BLOCKS, norm, where named).
#: "-AlignPadding" marks TF_PAD_MODE=False (tensorpack examples/FasterRCNN/config.py). Their variable
#: names are those of examples/ResNet/resnet_model.py ``resnet_backbone`` (BN: ``BNReLU``/``get_bn``,
#: 'bn' inside each conv's scope; ``FullyConnected('linear', 1000)``) and, for GroupNorm32, of
#: ppwwyyxx/GroupNorm-reproduce ImageNet-ResNet-TensorFlow/resnet_model.py (``GroupNorm('gn')``); the
#: FasterRCNN backbone (modeling/backbone.py) loads them by name. Trained on BGR input (imagenet_utils.py
#: ``image_bgr = True``, cv2.imread).
TENSORPACK_IMAGENET: dict[str, tuple[tuple[int, ...], str, str]] = {
    "ImageNet-R50-AlignPadding": ((3, 4, 6, 3), "BN",
                                  "tensorpack examples/FasterRCNN/README.md (BACKBONE.WEIGHTS=/path/to/"
                                  "ImageNet-R50-AlignPadding.npz); chenwuperth/claran README.md"),
    "ImageNet-R101-AlignPadding": ((3, 4, 23, 3), "BN",
                                   "models.tensorpack.com/FasterRCNN/ImageNet-R101-AlignPadding.npz, linked by "
                                   "HeTu-v1.0's README (a ClaRAN derivative); tensorpack's README points to "
                                   "models.tensorpack.com/#FasterRCNN"),
    "ImageNet-R50-GroupNorm32-AlignPadding": ((3, 4, 6, 3), "GN",
                                              "ppwwyyxx/GroupNorm-reproduce ImageNet-ResNet-TensorFlow/README.md"),
    "ImageNet-R101-GroupNorm32-AlignPadding": ((3, 4, 23, 3), "GN",
                                               "ppwwyyxx/GroupNorm-reproduce ImageNet-ResNet-TensorFlow/README.md"),
}


#: the ImageNet classifier (``FullyConnected('linear', 1000)``): no detector part, reported as unused
IMAGENET_CLASSIFIER = ("linear/W", "linear/b")


def _base_name(path) -> str:
    base = str(path).replace("\\", "/").rsplit("/", 1)[-1]
    return base[:-4] if base.endswith(".npz") else base


def _file_norm(tp: Mapping) -> str:
    """'GN', 'BN' or 'None' from the trunk's norm scopes (``conv0/gn/...`` or ``conv0/bn/...``)."""
    scopes = {n.split("/")[-2] for n in tp if n.startswith(("conv0/", "group")) and n.endswith(("/gamma", "/beta"))}
    if scopes == {"gn"}:
        return "GN"
    if scopes == {"bn"}:
        return "BN"
    if not scopes:
        return "None"
    raise TensorpackConversionError(f"the file mixes norm scopes {sorted(scopes)} in its ResNet trunk")


def _file_blocks(tp: Mapping) -> list[int]:
    blocks = [0, 0, 0, 0]
    for n in tp:
        m = re.match(r"group([0-3])/block(\d+)/", n)
        if m:
            g, b = int(m.group(1)), int(m.group(2))
            blocks[g] = max(blocks[g], b + 1)
    return blocks


def imagenet_name_map(blocks, norm: str) -> list[tuple[str, str, str]]:
    """(tensorpack name, torchvision-style ResNet key, layout) of a tensorpack ImageNet ResNet: the
    names :func:`gluon_rcnn.backbone.pretrained.load_pretrained` takes (``conv1``, ``bn1``, ``layer{1..4}.*``;
    a C4 model's res5 head reads ``layer4.*``). ``norm``: 'BN' (any BatchNorm kind) or 'GN'."""
    return resnet_rows(blocks, "GN" if norm == "GN" else ("FreezeBN" if norm != "None" else "None"), "",
                        lambda g: f"layer{g + 1}")


def _norm_needs(norm: str) -> str:
    names = [k + ".npz" for k, (_, n, _) in TENSORPACK_IMAGENET.items() if (n == "GN") == (norm == "GN")]
    return " or ".join(names)


@torch.no_grad()
def imagenet_state_dict(src, cfg=None, *, tf_pad_mode: bool | None = None, name: str | None = None,
                        strict: bool = True):
    """tensorpack ImageNet ResNet weights (``ImageNet-R*-AlignPadding.npz``, ``ImageNet-R*-GroupNorm32-
    AlignPadding.npz``, or a dict name → array) → a torchvision-style ResNet state dict, what
    ``BACKBONE.WEIGHTS`` takes (``conv1.weight`` with its input channels reversed BGR → RGB, ``bn1.*``,
    ``layer{1..4}.{b}.{conv,bn}{1,2,3}.*``, ``downsample.{0,1}.*``; BatchNorm statistics as
    ``running_mean``/``running_var``).

    Returns ``(state, unused)``: ``unused`` lists the file's variables that are no backbone part (the
    ImageNet classifier ``linear/W``, ``linear/b``): reported, not an error. Other unknown names, or
    trunk variables missing, raise :class:`TensorpackConversionError` (``strict``; else also in ``unused``).

    cfg: a gluon_rcnn config whose backbone must take these weights: RESNET_NUM_BLOCKS must match and
    BACKBONE.NORM must be of the file's kind (BN weights for FreezeBN/BN/SyncBN, GroupNorm weights for GN;
    refused otherwise, with the file that is needed). Padding: a file named ``*AlignPadding*`` (tensorpack's
    mark of TF_PAD_MODE=False) is taken; any other (e.g. examples/ResNet's ImageNet-ResNet50.npz,
    TF_PAD_MODE=True) is refused unless ``tf_pad_mode=False`` states it. ``name``: the file name when
    ``src`` is a dict."""
    base = name or (None if isinstance(src, Mapping) else _base_name(src))
    label = f"{base}.npz" if base else "tensorpack ImageNet weights"
    if tf_pad_mode:
        raise TensorpackConversionError(f"{label}: {PAD_REASON}")
    if tf_pad_mode is None and not (base and (base in TENSORPACK_IMAGENET or "AlignPadding" in base)):
        raise TensorpackConversionError(
            f"{label}: not an '-AlignPadding' file, tensorpack's mark of BACKBONE.TF_PAD_MODE=False (examples/"
            f"FasterRCNN/config.py: the other ResNet models of its zoo, e.g. examples/ResNet's ImageNet-ResNet50.npz, "
            f"use TF_PAD_MODE=True). {PAD_REASON}. Use {' / '.join(k + '.npz' for k in TENSORPACK_IMAGENET)}, or "
            f"pass tf_pad_mode=False if this file was trained with AlignPadding")
    if cfg is not None and cfg.BACKBONE.VARIANT != "v1b":
        raise TensorpackConversionError(f"{label} is a v1b ResNet (stride in the 3x3 conv, 7x7 stem); the config "
                                        f"asks BACKBONE.VARIANT={cfg.BACKBONE.VARIANT!r}")
    tp = read_npz(src)
    norm, blocks = _file_norm(tp), _file_blocks(tp)
    if base in TENSORPACK_IMAGENET:
        want_blocks, want_norm, _ = TENSORPACK_IMAGENET[base]
        if list(want_blocks) != blocks or want_norm != norm:
            raise TensorpackConversionError(f"{label} should hold a {want_norm} ResNet {list(want_blocks)}; the file "
                                            f"has a {norm} ResNet {blocks}")
    if cfg is not None and list(cfg.BACKBONE.RESNET_NUM_BLOCKS) != blocks:
        raise TensorpackConversionError(f"{label} is a ResNet with blocks {blocks}; the config's "
                                        f"BACKBONE.RESNET_NUM_BLOCKS is {list(cfg.BACKBONE.RESNET_NUM_BLOCKS)}")
    with torch.device("meta"):
        ref = ResNet(blocks, norm="GN" if norm == "GN" else ("FreezeBN" if norm == "BN" else "None"),
                     **_TENSORPACK_RULES).state_dict()
    state, used, missing, problems = map_rows(tp, imagenet_name_map(blocks, norm), ref, None, tensorpack_layout, "ResNet")
    classifier = [n for n in IMAGENET_CLASSIFIER if n in tp]
    unexpected = sorted(set(tp) - used - set(classifier))
    if problems:
        raise TensorpackConversionError(f"{label}: conversion failed:\n  " + "\n  ".join(problems))
    if strict and (missing or unexpected):
        raise TensorpackConversionError(
            f"{label} does not match a tensorpack ResNet {blocks}: {len(missing)} missing, {len(unexpected)} "
            f"unexpected\n  missing: {missing}\n  unexpected: {unexpected}")
    if cfg is not None:
        b = cfg.BACKBONE
        with torch.device("meta"):
            body = ResNet(list(b.RESNET_NUM_BLOCKS), variant=b.VARIANT, norm=b.NORM, freeze_at=0, stages=4,
                          **_TENSORPACK_RULES)
        try:
            check_norm_kinds(body, state, label)
        except ValueError as e:
            raise TensorpackConversionError(
                f"{e}. {label} holds {norm} weights; BACKBONE.NORM={b.NORM!r} needs {_norm_needs(b.NORM)}") from None
        keys = set(body.state_dict()) - {k for k in body.state_dict() if k.endswith("num_batches_tracked")}
        if set(state) != keys:
            raise TensorpackConversionError(
                f"{label} ({norm}) does not fit BACKBONE.NORM={b.NORM!r}: not in the file "
                f"{sorted(keys - set(state))[:6]}, not in the model {sorted(set(state) - keys)[:6]}; "
                f"it needs {_norm_needs(b.NORM)}")
    return state, classifier + ([f"{k} (unexpected)" for k in unexpected] if not strict else []) + \
        ([f"{k} (missing)" for k in missing] if not strict else [])


def save_backbone(state: Mapping[str, torch.Tensor], path: str) -> None:
    """Write an :func:`imagenet_state_dict` result as a ``.pth`` state dict for ``BACKBONE.WEIGHTS`` (atomically)."""
    save_torch(dict(state), path)
