"""Import GluonCV's R-CNN ``.params`` files into gluon_rcnn, without MXNet.

:func:`read_params` reads MXNet's NDArray-list file (what ``mx.nd.save`` and Gluon's
``net.save_parameters`` write) with numpy alone. The format, from apache/mxnet
``src/ndarray/ndarray.cc`` (``NDArray::Save``/``Load``, the list ``Save``/``Load`` at
``kMXAPINDArrayListMagic``), ``include/mxnet/tuple.h`` (``Tuple::Save``), ``include/mxnet/base.h``
(``Context::Save``) and dmlc-core's serializer (vectors and strings: a ``uint64`` count, then the
items), all little-endian:

- file: ``uint64 0x112`` (kMXAPINDArrayListMagic), ``uint64 0`` (reserved), ``uint64 n`` arrays,
  ``n`` arrays, ``uint64 k`` names (``k`` is 0 or ``n``), each ``uint64 length`` + bytes;
- array, version 2 (``0xF993FAC9``) or 3 (``0xF993FACA``, numpy shape semantics): ``uint32 magic``,
  ``int32 storage type`` (0 dense, 1 row-sparse, 2 CSR), [sparse: the storage shape], the shape
  (``int32 ndim`` + ``ndim x int64``; ndim 0 in v2 or -1 in v3 = an empty array with nothing after),
  the context (``int32 dev_type, int32 dev_id``), ``int32 dtype flag`` (mshadow ``TypeFlag``),
  [sparse: per aux array ``int32 dtype`` + its shape], the data (``prod(shape)`` items, or
  ``prod(storage shape)`` for sparse), [sparse: the aux data];
- version 1 (``0xF993FAC8``): no storage type; the shape as above; then context, dtype, data;
- legacy (before version 1): the first ``uint32`` is ndim, then ``ndim x uint32`` dims, context,
  dtype, data.

Sparse arrays are densified (row-sparse: rows at the ``idx`` aux array; CSR: ``indptr``, ``idx``).
Any inconsistency (wrong magic, a truncated file, an unknown dtype, trailing bytes) raises
:class:`GluonCVFormatError` naming the file, the array and the byte offset.
"""
from __future__ import annotations

import logging
import os
import struct
from pathlib import Path
from typing import Mapping

import numpy as np

from ..profiles import resolve_rules
from .source import WeightSource, WeightSourceError, file_name, register

logger = logging.getLogger(__name__)

__all__ = ["read_params", "GluonCVFormatError", "LIST_MAGIC", "DTYPES", "from_gluoncv",
           "gluoncv_config", "gluoncv_state_dict", "GluonCVConversionError", "GLUONCV_C4", "GLUONCV_FPN", "GLUONCV_NAMES",
           "GLUONCV_TEST_OVERRIDES",
           "gluoncv_eval_overrides",
           "legacy_anchor_cells", "name_map"]

#: kMXAPINDArrayListMagic (ndarray.cc)
LIST_MAGIC = 0x112
NDARRAY_V1_MAGIC, NDARRAY_V2_MAGIC, NDARRAY_V3_MAGIC = 0xF993FAC8, 0xF993FAC9, 0xF993FACA

#: mshadow TypeFlag → numpy dtype (little-endian). 12 is bfloat16: widened to float32 exactly.
DTYPES = {0: "<f4", 1: "<f8", 2: "<f2", 3: "u1", 4: "<i4", 5: "i1", 6: "<i8", 7: "?", 8: "<i2",
          9: "<u2", 10: "<u4", 11: "<u8", 12: "<u2"}
_BFLOAT16 = 12
#: storage type → number of aux arrays (num_aux_data)
_NUM_AUX = {0: 0, 1: 1, 2: 2}
_MAX_NDIM = 32


class GluonCVFormatError(ValueError):
    """The file is not a valid MXNet NDArray list (``.params``)."""


class _Reader:
    def __init__(self, buf: bytes, name: str):
        self.buf, self.pos, self.name, self.what = memoryview(buf), 0, name, "header"

    def fail(self, msg: str):
        raise GluonCVFormatError(f"{self.name}: {msg} (reading {self.what}, byte offset {self.pos} of "
                                 f"{len(self.buf)})")

    def take(self, n: int) -> memoryview:
        if n < 0 or self.pos + n > len(self.buf):
            self.fail(f"truncated: {n} more bytes needed, {len(self.buf) - self.pos} left")
        out = self.buf[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str):
        return struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt)))

    def u32(self) -> int:
        return self.unpack("I")[0]

    def i32(self) -> int:
        return self.unpack("i")[0]

    def u64(self) -> int:
        return self.unpack("Q")[0]

    def shape(self, legacy_ndim: int | None = None) -> tuple[int, ...] | None:
        """Tuple::Load: int32 ndim, ndim x int64 (legacy: ndim given, uint32 dims). None = unknown (-1)."""
        if legacy_ndim is None:
            ndim = self.i32()
            if ndim == -1:
                return None
            if not 0 <= ndim <= _MAX_NDIM:
                self.fail(f"bad ndim {ndim}")
            dims = self.unpack(f"{ndim}q")
        else:
            dims = self.unpack(f"{legacy_ndim}I")
        if any(d < 0 for d in dims):
            self.fail(f"bad shape {dims}")
        return tuple(int(d) for d in dims)

    def data(self, flag: int, count: int) -> np.ndarray:
        if flag not in DTYPES:
            self.fail(f"unknown dtype flag {flag} (mshadow TypeFlag 0..12)")
        dt = np.dtype(DTYPES[flag])
        raw = self.take(count * dt.itemsize)
        arr = np.frombuffer(raw, dtype=dt, count=count).copy()
        if flag == _BFLOAT16:
            arr = (arr.astype(np.uint32) << 16).view(np.float32)
        return arr.astype(arr.dtype.newbyteorder("="), copy=False)


def _read_ndarray(r: _Reader) -> np.ndarray | None:
    magic = r.u32()
    if magic in (NDARRAY_V2_MAGIC, NDARRAY_V3_MAGIC):
        stype = r.i32()
        if stype not in _NUM_AUX:
            r.fail(f"unknown storage type {stype} (0 dense, 1 row-sparse, 2 CSR)")
        nad = _NUM_AUX[stype]
        sshape = r.shape() if nad else None
        shape = r.shape()
        if shape is None or (magic == NDARRAY_V2_MAGIC and len(shape) == 0):
            return None  # an empty (none) array: nothing follows
    else:
        stype, nad, sshape = 0, 0, None
        if magic == NDARRAY_V1_MAGIC:
            shape = r.shape()
        elif magic <= _MAX_NDIM:  # legacy: the magic is ndim
            shape = r.shape(legacy_ndim=magic)
        else:
            r.fail(f"bad array magic {magic:#x} (expected {NDARRAY_V2_MAGIC:#x}, {NDARRAY_V3_MAGIC:#x}, "
                   f"{NDARRAY_V1_MAGIC:#x} or a legacy ndim)")
        if shape is None or len(shape) == 0:
            return None
    dev_type, _dev_id = r.unpack("ii")
    if dev_type not in (1, 2, 3, 5):
        r.fail(f"bad context device type {dev_type}")
    flag = r.i32()
    aux = []
    for _ in range(nad):
        aflag = r.i32()
        aux.append((aflag, r.shape()))
    if nad:
        values = r.data(flag, int(np.prod(sshape)) if sshape else 0).reshape(sshape)
        aux_data = [r.data(f, int(np.prod(s))).reshape(s) for f, s in aux]
        dense = np.zeros(shape, dtype=values.dtype)
        if stype == 1:      # row-sparse: aux 0 = row indices
            dense[aux_data[0].astype(np.int64)] = values
        else:               # CSR: aux 0 = indptr, aux 1 = column indices
            indptr, idx = aux_data[0].astype(np.int64), aux_data[1].astype(np.int64)
            rows = np.repeat(np.arange(shape[0]), np.diff(indptr))
            dense[rows, idx] = values
        return dense
    return r.data(flag, int(np.prod(shape))).reshape(shape)


def read_params(src) -> dict[str, np.ndarray]:
    """The arrays of an MXNet ``.params`` / ``mx.nd.save`` file, name → numpy array, in file order.

    src: a path, the file's bytes, or a mapping (returned as numpy arrays, for callers that already
    hold the arrays). Bit-exact: each array has the saved dtype (bfloat16 widened to float32) and
    bytes. A file saved without names (``mx.nd.save`` of a list) gets the names ``'0'``, ``'1'``...
    Names keep MXNet's ``arg:``/``aux:`` prefixes when present (``Module``'s checkpoints); Gluon's
    ``save_parameters`` writes the structural names (``features.4.0.conv1.weight``)."""
    if isinstance(src, Mapping):
        return {str(k): np.asarray(v) for k, v in src.items()}
    if isinstance(src, (bytes, bytearray, memoryview)):
        buf, name = bytes(src), "<bytes>"
    else:
        name = os.fspath(src)
        with open(name, "rb") as f:
            buf = f.read()
    r = _Reader(buf, name)
    if len(buf) < 16:
        r.fail("not an MXNet NDArray file: shorter than its 16-byte header")
    header, reserved = r.u64(), r.u64()
    if header != LIST_MAGIC:
        r.pos = 0
        r.fail(f"not an MXNet NDArray file: header {header:#x}, expected {LIST_MAGIC:#x} (kMXAPINDArrayListMagic)")
    if reserved != 0:
        r.fail(f"reserved header field is {reserved}, expected 0")
    r.what = "the array count"
    n = r.u64()
    if n > len(buf):
        r.fail(f"array count {n} exceeds the file size")
    arrays = []
    for i in range(n):
        r.what = f"array {i} of {n}"
        arrays.append(_read_ndarray(r))
    r.what = "the name count"
    k = r.u64()
    if k not in (0, n):
        r.fail(f"{k} names for {n} arrays")
    names = []
    for i in range(k):
        r.what = f"name {i} of {k}"
        ln = r.u64()
        raw = bytes(r.take(ln))
        try:
            names.append(raw.decode("utf-8"))
        except UnicodeDecodeError:
            r.fail(f"name is not UTF-8: {raw[:40]!r}")
    if r.pos != len(buf):
        r.what = "the end of the file"
        r.fail(f"{len(buf) - r.pos} trailing bytes after the last name")
    if not names:
        names = [str(i) for i in range(n)]
    if len(set(names)) != len(names):
        raise GluonCVFormatError(f"{name}: duplicate array names")
    out = {}
    for nm, a in zip(names, arrays):
        out[nm] = a if a is not None else np.zeros((0,), np.float32)
    return out


# ------------------------------------------------------------------------------------------------
# GluonCV R-CNN → gluon_rcnn
# ------------------------------------------------------------------------------------------------

#: GluonCV model names this importer knows: those of its R-CNN nets with published COCO weights that
#: gluon_rcnn's zoo has an entry for (gluoncv/model_zoo/model_store.py); the zoo entry
#: (model_zoo/<name>.json) carries every architecture option
GLUONCV_C4 = ("faster_rcnn_resnet50_v1b_coco", "mask_rcnn_resnet50_v1b_coco",
              "faster_rcnn_resnet101_v1d_coco", "mask_rcnn_resnet101_v1d_coco")
GLUONCV_FPN = ("faster_rcnn_fpn_resnet50_v1b_coco", "mask_rcnn_fpn_resnet50_v1b_coco",
               "faster_rcnn_fpn_resnet101_v1d_coco", "mask_rcnn_fpn_resnet101_v1d_coco")
GLUONCV_NAMES = GLUONCV_C4 + GLUONCV_FPN

#: what our zoo entry must be told to compute what GluonCV's C4 nets compute at test time
#: (gluoncv/model_zoo/rcnn/{faster_rcnn,mask_rcnn}/predefined_models.py, rcnn.py, rpn/proposal.py;
#: MXNet's contrib.ROIAlign ``aligned=False`` default): keys that exist today.
GLUONCV_TEST_OVERRIDES = (
    "RULES.PROFILE=gluoncv",            # legacy anchors, ROIAlign aligned=False, ceil(n/2) padding, NMS then clip
    "TEST.RESULT_SCORE_THRESH=0.01",    # MultiPerClassDecoder(thresh=0.01): score > 0.01
    "RPN.MIN_SIZE=0.0",                 # RPNProposal: invalid if x2 - x1 + 1 < rpn_min_size (1)
)


def gluoncv_eval_overrides(name: str) -> list[str]:
    """GluonCV's COCO evaluation protocol for net ``name`` as KEY=VALUE overrides: its eval scripts score
    Faster R-CNN through ``COCODetectionMetric(score_thresh=0.05)`` and Mask R-CNN through
    ``COCOInstanceMetric(score_thresh=1e-3)`` after the net's own ``MultiPerClassDecoder(thresh=0.01)``
    (gluoncv/utils/metrics/coco_{detection,instance}.py); pycocotools' COCOeval keeps the best 100 per
    image (maxDets=100), so 100 detections per image give the same AP as GluonCV's 1000."""
    if name not in GLUONCV_NAMES:
        raise KeyError(f"{name!r} is not one of {GLUONCV_NAMES}")
    thresh = 0.01 if name.startswith("mask_rcnn") else 0.05
    return [f"TEST.RESULT_SCORE_THRESH={thresh}", "TEST.RESULTS_PER_IM=100"]


def _wb(gcv: str, ours: str) -> list[tuple[str, str]]:
    return [(f"{gcv}.weight", f"{ours}.weight"), (f"{gcv}.bias", f"{ours}.bias")]


def _bn(gcv: str, ours: str) -> list[tuple[str, str]]:
    return [(f"{gcv}.gamma", f"{ours}.weight"), (f"{gcv}.beta", f"{ours}.bias"),
            (f"{gcv}.running_mean", f"{ours}.running_mean"), (f"{gcv}.running_var", f"{ours}.running_var")]


def _bottlenecks(gcv: str, ours: str, n: int, v1d: bool) -> list[tuple[str, str]]:
    """Structural names (C4 nets: ``features.4.0.conv1.weight``)."""
    rows = []
    for b in range(n):
        g, o = f"{gcv}.{b}", f"{ours}.{b}"
        for k in (1, 2, 3):
            rows += [(f"{g}.conv{k}.weight", f"{o}.conv{k}.weight")] + _bn(f"{g}.bn{k}", f"{o}.bn{k}")
        if b == 0:  # v1b: downsample = [conv, bn]; v1d: [avgpool, conv, bn] (ours: the same indices)
            c, nb = (1, 2) if v1d else (0, 1)
            rows += [(f"{g}.downsample.{c}.weight", f"{o}.downsample.{c}.weight")] + \
                _bn(f"{g}.downsample.{nb}", f"{o}.downsample.{nb}")
    return rows


def _sym_bn(gcv: str, ours: str) -> list[tuple[str, str]]:
    return [(f"{gcv}_gamma", f"{ours}.weight"), (f"{gcv}_beta", f"{ours}.bias"),
            (f"{gcv}_running_mean", f"{ours}.running_mean"), (f"{gcv}_running_var", f"{ours}.running_var")]


def _sym_wb(gcv: str, ours: str) -> list[tuple[str, str]]:
    return [(f"{gcv}_weight", f"{ours}.weight"), (f"{gcv}_bias", f"{ours}.bias")]


def _fpn_trunk(blocks, v1d: bool, body: str) -> list[tuple[str, str]]:
    """MXNet symbol names of GluonCV's FPN trunks (``FPNFeatureExpander`` turns resnetv1b/v1d into a
    SymbolBlock: ``features.resnetv1b_layers{s}_conv{3b+k-1}_weight``, its BN ``batchnorm{3b+k-1}``,
    the shortcut ``down{s}_conv0``/``down{s}_batchnorm0``; stem ``conv0`` + ``batchnorm0`` (v1b) or
    ``conv0..2`` + ``batchnorm0..2`` (v1d: the deep stem, its last BN being the net's ``bn1``))."""
    p = "features.resnetv1d_" if v1d else "features.resnetv1b_"
    if v1d:
        rows = [(f"{p}conv0_weight", f"{body}.conv1.0.weight")] + _sym_bn(f"{p}batchnorm0", f"{body}.conv1.1")
        rows += [(f"{p}conv1_weight", f"{body}.conv1.3.weight")] + _sym_bn(f"{p}batchnorm1", f"{body}.conv1.4")
        rows += [(f"{p}conv2_weight", f"{body}.conv1.6.weight")] + _sym_bn(f"{p}batchnorm2", f"{body}.bn1")
    else:
        rows = [(f"{p}conv0_weight", f"{body}.conv1.weight")] + _sym_bn(f"{p}batchnorm0", f"{body}.bn1")
    for s, n in enumerate(blocks, start=1):
        for b in range(n):
            o = f"{body}.layer{s}.{b}"
            for k in (1, 2, 3):
                j = 3 * b + k - 1
                rows += [(f"{p}layers{s}_conv{j}_weight", f"{o}.conv{k}.weight")] + \
                    _sym_bn(f"{p}layers{s}_batchnorm{j}", f"{o}.bn{k}")
        c, nb = (1, 2) if v1d else (0, 1)
        rows += [(f"{p}down{s}_conv0_weight", f"{body}.layer{s}.0.downsample.{c}.weight")] + \
            _sym_bn(f"{p}down{s}_batchnorm0", f"{body}.layer{s}.0.downsample.{nb}")
    return rows


def name_map(cfg) -> list[tuple[str, str]]:
    """(GluonCV name, gluon_rcnn state-dict key) for a GluonCV config; every layout is already
    PyTorch's (OIHW convs, ``[out, in]`` Dense, ``[in, out, kh, kw]`` Conv2DTranspose).

    C4 nets (predefined_models.py): ``features = [conv1, bn1, relu, maxpool, layer1, layer2, layer3]``
    of resnet*_v1b/v1d (v1d: ``conv1`` is the deep stem ``[conv, bn, relu, conv, bn, relu, conv]``),
    ``top_features = [layer4]``, ``rpn.conv1.0``/``rpn.score``/``rpn.loc``; structural names.

    FPN nets: the trunk and the pyramid are one SymbolBlock (:func:`_fpn_trunk`; ``P{k}_conv_lat`` the
    laterals, ``P{k}_conv1`` the 3x3 outputs, ``P6_conv1`` P6's conv), ``rpn.rpn_head.conv1.0``/``score``/
    ``loc``, ``box_features.{i}`` the two Dense layers (``i`` = 0, 2; 1, 3 after Mask R-CNN's AvgPool2D),
    ``mask.deconv.{0,2,4,6}`` the four 3x3 convs, ``mask.deconv.8`` the 2x2 transposed conv."""
    blocks = cfg.BACKBONE.RESNET_NUM_BLOCKS
    v1d = cfg.BACKBONE.VARIANT == "v1d"
    body = "backbone.body"
    if cfg.MODE_FPN:
        rows = _fpn_trunk(blocks, v1d, body)
        for i in range(4):  # ours finest first: inner_blocks.0 = P2
            rows += _sym_wb(f"features.P{i + 2}_conv_lat", f"backbone.fpn.inner_blocks.{i}.0")
            rows += _sym_wb(f"features.P{i + 2}_conv1", f"backbone.fpn.layer_blocks.{i}.0")
        rows += _sym_wb("features.P6_conv1", "backbone.fpn.top_conv")
        rows += _wb("rpn.rpn_head.conv1.0", "rpn.head.conv") + _wb("rpn.rpn_head.score", "rpn.head.cls_logits") + \
            _wb("rpn.rpn_head.loc", "rpn.head.bbox_pred")
        first = 0 if resolve_rules(cfg).box_head_pool == "pool7" else 1
        rows += _wb(f"box_features.{first}", "roi_heads.stages.0.head.fc6") + \
            _wb(f"box_features.{first + 2}", "roi_heads.stages.0.head.fc7")
    else:
        if v1d:
            rows = [(f"features.0.{g}.weight", f"{body}.conv1.{g}.weight") for g in (0, 3, 6)]
            rows += _bn("features.0.1", f"{body}.conv1.1") + _bn("features.0.4", f"{body}.conv1.4")
        else:
            rows = [("features.0.weight", f"{body}.conv1.weight")]
        rows += _bn("features.1", f"{body}.bn1")
        for i in range(3):
            rows += _bottlenecks(f"features.{4 + i}", f"{body}.layer{i + 1}", blocks[i], v1d)
        rows += _bottlenecks("top_features.0", "roi_heads.stages.0.head.res5", blocks[3], v1d)
        rows += _wb("rpn.conv1.0", "rpn.head.conv") + _wb("rpn.score", "rpn.head.cls_logits") + \
            _wb("rpn.loc", "rpn.head.bbox_pred")
    rows += _wb("class_predictor", "roi_heads.stages.0.predictor.cls_score")
    rows += [("box_predictor.weight", "roi_heads.stages.0.predictor.bbox_pred.weight"),
             ("box_predictor.bias", "roi_heads.stages.0.predictor.bbox_pred.bias")]
    if cfg.MODE_MASK:
        if cfg.MODE_FPN:
            for i in range(4):
                rows += _wb(f"mask.deconv.{2 * i}", f"roi_heads.mask_head.convs.{3 * i}")
            rows += _wb("mask.deconv.8", "roi_heads.mask_head.deconv")
        else:
            rows += _wb("mask.deconv", "roi_heads.mask_head.deconv")
        rows += _wb("mask.mask", "roi_heads.mask_head.predictor")
    return rows


def _is_anchor_table(name: str) -> bool:
    """GluonCV's constant anchor tables: ``rpn.anchor_generator.anchors`` (C4), ``rpn.anchor_generator.{l}.anchors``
    (FPN level l)."""
    parts = name.split(".")
    return name.startswith("rpn.anchor_generator.") and parts[-1] == "anchors" and len(parts) in (3, 4)


def anchor_tables(params: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """The file's anchor tables, one per level (C4: one), each (1, 1, H, W, 4A) float32."""
    if "rpn.anchor_generator.anchors" in params:
        return [np.asarray(params["rpn.anchor_generator.anchors"], np.float32)]
    out, level = [], 0
    while f"rpn.anchor_generator.{level}.anchors" in params:
        out.append(np.asarray(params[f"rpn.anchor_generator.{level}.anchors"], np.float32))
        level += 1
    return out


def gluoncv_anchor_cells(params: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """GluonCV's anchors at location (0, 0), (A, 4) x1,y1,x2,y2, from the file's constant
    ``rpn.anchor_generator.anchors`` (1, 1, 128, 128, 4A), if it holds it."""
    a = params.get("rpn.anchor_generator.anchors")
    return None if a is None else np.asarray(a, np.float32)[0, 0, 0, 0].reshape(-1, 4)


def legacy_anchor_cells(stride: int = 16, sizes=(32, 64, 128, 256, 512), ratios=(0.5, 1, 2)) -> np.ndarray:
    """GluonCV's ``rpn/anchor.py`` ``generate_base_anchors`` (Detectron's legacy rule): a
    ``(0, 0, stride-1, stride-1)`` window, widths ``round(sqrt(area/ratio))``, heights
    ``round(w*ratio)`` (numpy's half-to-even), scaled, corners ``ctr ± (w-1)/2``; ratio-major."""
    out = []
    base = np.array([0, 0, stride - 1, stride - 1], np.float64)

    def whctr(a):
        w, h = a[2] - a[0] + 1, a[3] - a[1] + 1
        return w, h, a[0] + 0.5 * (w - 1), a[1] + 0.5 * (h - 1)

    def mk(ws, hs, x, y):
        return np.stack([x - 0.5 * (ws - 1), y - 0.5 * (hs - 1), x + 0.5 * (ws - 1), y + 0.5 * (hs - 1)], 1)

    w, h, x, y = whctr(base)
    ws = np.round(np.sqrt(w * h / np.asarray(ratios, np.float64)))
    hs = np.round(ws * np.asarray(ratios, np.float64))
    for r in mk(ws, hs, x, y):
        w, h, x, y = whctr(r)
        sc = np.asarray(sizes, np.float64) / stride
        out.append(mk(w * sc, h * sc, x, y))
    return np.concatenate(out).astype(np.float32)


class GluonCVConversionError(ValueError):
    """The GluonCV file does not match the model."""


def gluoncv_state_dict(src, cfg, reference: Mapping, strict: bool = True):
    """Map GluonCV parameters ``src`` (.params path/bytes or name → array) to gluon_rcnn keys.

    The box predictor has no background row in GluonCV (``Dense(num_class * 4)``, class-major, the 4
    deltas minor; ``box_decoder`` is applied to ``box_pred.reshape(N, C, 4)``): a zero row block is put
    in front for our label 0. The class predictor has ``num_class + 1`` outputs, background first
    (``MultiPerClassDecoder`` drops column 0), as ours. Returns (state, missing, unexpected)."""
    import torch
    p = read_params(src)
    rows = name_map(cfg)
    state, problems, used = {}, [], set()
    for g, o in rows:
        if g not in p:
            continue
        if o not in reference:
            problems.append(f"{o}: not in the model (from {g})")
            continue
        a = p[g]
        if o.endswith("predictor.bbox_pred.weight") or o.endswith("predictor.bbox_pred.bias"):
            a = np.concatenate([np.zeros((4,) + a.shape[1:], a.dtype), a], 0)
        if tuple(a.shape) != tuple(reference[o].shape):
            problems.append(f"{g} {tuple(p[g].shape)} → {o} {tuple(reference[o].shape)}: shape differs")
            continue
        state[o] = torch.from_numpy(np.ascontiguousarray(a))
        used.add(g)
    mapped = {o for _, o in rows}
    missing = sorted([o for _, o in rows if o in reference and o not in state] +
                     [f"{k} (no GluonCV name maps to it)" for k in reference if k not in mapped
                      and not k.endswith("num_batches_tracked")])
    unexpected = sorted(k for k in set(p) - used if not _is_anchor_table(k))
    if problems:
        raise GluonCVConversionError("GluonCV conversion failed:\n  " + "\n  ".join(problems))
    if strict and (missing or unexpected):
        raise GluonCVConversionError(f"GluonCV file does not match the model: {len(missing)} missing, "
                                     f"{len(unexpected)} unexpected\n  missing: {missing}\n  unexpected: {unexpected}")
    return state, missing, unexpected


def _entry_config(name: str) -> dict:
    """The zoo entry's config dict (read as ``model_zoo.get_config`` does: the face is above convert/)."""
    import json
    from pathlib import Path
    pkg = Path(__file__).resolve().parents[1]
    zoo = pkg / "zoo_entries" if (pkg / "zoo_entries").is_dir() else pkg.parent / "model_zoo"
    return json.loads((zoo / f"{name}.json").read_text())["config"]


def gluoncv_config(name: str, overrides=()):
    """The finalised config of GluonCV net ``name``: our zoo entry of that name (COCO classes) +
    :data:`GLUONCV_TEST_OVERRIDES` + ``overrides``."""
    from ..config import get_default_config
    from ..structures.categories import COCO_CLASSES
    if name not in GLUONCV_NAMES:
        raise KeyError(f"{name!r} is not a GluonCV R-CNN net with published weights that gluon_rcnn converts: "
                       f"{GLUONCV_NAMES}")
    cfg = get_default_config()
    cfg.update_dict(_entry_config(name))
    cfg.DATA.NUM_CATEGORY = len(COCO_CLASSES)
    cfg.DATA.CLASS_NAMES = list(COCO_CLASSES)
    cfg.update_args(list(GLUONCV_TEST_OVERRIDES) + list(overrides))
    return cfg.finalize()


def from_gluoncv(src, name: str, *, overrides=(), strict: bool = True, gluoncv_anchors: bool = True):
    """The gluon_rcnn model of GluonCV net ``name`` (a zoo entry of the same name) holding the
    parameters of the GluonCV ``.params`` file ``src``, in eval mode.

    gluoncv_anchors: GluonCV's anchors (Detectron-1 legacy anchors, ``RULES.ANCHOR_CELLS='legacy'``, the
    ``gluoncv`` profile's); False builds un-quantised anchors instead (``RULES.ANCHOR_CELLS='exact'``).
    With them and ``strict``, the model's anchors are checked equal to the file's anchor table
    (``rpn.anchor_generator.anchors``) when it holds one. Everything is in ``model.config``: a
    checkpoint ``{"model": state_dict, "config": model.config.to_dict()}`` rebuilds the same model."""
    import torch
    from ..builders import build_model
    cfg = gluoncv_config(name, list(overrides) + ([] if gluoncv_anchors else ["RULES.ANCHOR_CELLS=exact"]))
    model = build_model(cfg)
    ref = model.state_dict()
    params = read_params(src)
    state, missing, unexpected = gluoncv_state_dict(params, cfg, ref, strict=strict)
    model.load_state_dict({k: state.get(k, v) for k, v in ref.items()}, strict=True)
    tables = anchor_tables(params)
    if resolve_rules(cfg).anchor_cells.name == "legacy" and strict and tables:
        shapes = [(t.shape[2], t.shape[3]) for t in tables]
        ours_all = model.rpn.anchor_generator(shapes, torch.device("cpu"))
        for level, (t, ours) in enumerate(zip(tables, ours_all)):
            ours, theirs = ours.numpy(), t.reshape(-1, 4)
            if ours.shape != theirs.shape or not np.array_equal(ours, theirs):
                d = float(np.abs(ours - theirs).max()) if ours.shape == theirs.shape else float("nan")
                raise GluonCVConversionError(f"the file's anchor table {tuple(t.shape)} (level {level}) differs from "
                                             f"the model's anchors (RULES.ANCHOR_CELLS='legacy'; max |diff| {d:.3g} px)")
    model.gluoncv_missing, model.gluoncv_unexpected = missing, unexpected
    return model.eval()


# ------------------------------------------------------------------------------------------------
# the zoo's published parameters (weights.format "gluoncv-params")
# ------------------------------------------------------------------------------------------------

_MAX_PARAMS_BYTES = 4 << 30  # a zip member announcing more is not GluonCV's R-CNN file


def zip_member(zip_path, member: str, sha1: str) -> bytes:
    """The bytes of the single member ``member`` of GluonCV's .zip, read in memory (nothing is
    extracted: no path from the archive is ever used), its sha1 checked against ``sha1``."""
    import hashlib
    import reprlib
    import zipfile

    try:
        with zipfile.ZipFile(zip_path) as zf:
            infos = {i.filename: i for i in zf.infolist()}
            info = infos.get(member)
            if info is None or info.is_dir():
                raise ValueError(f"the zip holds no {member} (members: {reprlib.repr(sorted(infos))})")
            if info.file_size > _MAX_PARAMS_BYTES:
                raise ValueError(f"{member} announces {info.file_size} bytes, more than any GluonCV R-CNN file")
            with zf.open(info) as f:  # zipfile checks the CRC and the announced size
                data = f.read(_MAX_PARAMS_BYTES + 1)
    except zipfile.BadZipFile as err:
        raise ValueError(f"not a zip file: {err}") from None
    got = hashlib.sha1(data).hexdigest()
    if got != sha1.lower():
        raise ValueError(f"{member} has sha1 {got}, expected GluonCV's {sha1.lower()}")
    return data


@register
class GluonCVSource(WeightSource):
    """``{"url": ".../gluon/models/<name>-<sha1[:8]>.zip", "sha1": "<GluonCV's sha1 of the .params>", "format":
    "gluoncv-params", "name": "<GluonCV net name>"}`` (GluonCV's model_store.py): only the member
    ``<zip stem>.params`` is read (in memory) and checked against GluonCV's sha1, converted and the
    conversion cached under that sha1; a zip whose .params has another sha1 or does not convert is refused.
    ``$GLUON_RCNN_GLUONCV_URL`` (like GluonCV's ``$MXNET_GLUON_REPO``) replaces
    ``https://apache-mxnet.s3-accelerate.dualstack.amazonaws.com/``: the file is then
    ``$BASE/gluon/models/<the zip's file name>``. GluonCV's legacy anchors are in the converted config."""

    format, label, field, what = "gluoncv-params", "gluoncv params", "name", "GluonCV's {} zip"
    url_env, base = "GLUON_RCNN_GLUONCV_URL", "https://apache-mxnet.s3-accelerate.dualstack.amazonaws.com/"

    def url(self, weights):
        base = os.environ.get(self.url_env, "").strip()
        url = weights.get("url") or ""
        return base.rstrip("/") + "/gluon/models/" + file_name(url) if url and base else url

    def checksums(self, weights, sha256=None):
        sha1 = (weights.get("sha1") or "").strip().lower()
        if not sha1:
            raise WeightSourceError(f"weights of format {self.format!r} need GluonCV's 'sha1'")
        return {"key": sha1, "sha256": weights.get("sha256") or None, "sha1": None}

    def convert(self, path, weights, url, digest, dest):
        from .checkpoint import save_checkpoint

        name, sha1 = weights["name"], digest
        member = weights.get("member") or f"{Path(weights.get('filename') or file_name(weights['url'])).stem}.params"
        data = zip_member(path, member, sha1)
        logger.info("converting GluonCV's %s (sha1 %s) into %s", name, sha1, dest)
        return save_checkpoint(from_gluoncv(data, name), dest, {"url": url, "name": name, "params_sha1": sha1})
