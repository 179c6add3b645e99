"""Read TensorFlow checkpoints (``PREFIX.index`` + ``PREFIX.data-NNNNN-of-MMMMM``) without TensorFlow.

tensorpack's ``ModelSaver`` (and so ClaRAN, whose published model is ``model-70000.index`` /
``.data-00000-of-00001``) writes ``tf.train.Saver`` V2 checkpoints: a *tensor bundle*. This module
reads that format from its definition in TensorFlow's source:

- ``PREFIX.index`` is a LevelDB-format table (tensorflow/core/lib/io/table_format.txt, format.cc,
  block.cc): data blocks of prefix-compressed ``key → value`` entries (``varint32 shared,
  varint32 non_shared, varint32 value_length, key[shared:], value``) closed by an array of ``uint32``
  restart offsets and their count; each block is followed by a 5-byte trailer (compression type,
  masked crc32c of the block and that type byte); an index block maps the last key of each data block
  to its ``BlockHandle`` (``varint64 offset, varint64 size``); the file ends with a 48-byte footer (the
  metaindex and index handles, zero padding, magic ``0xdb4775248b80fb57``). BundleWriter writes the
  table uncompressed (tensor_bundle.cc ``BundleWriter::Finish``: ``kNoCompression``); a
  snappy-compressed block is refused with an error.
- Key ``""`` holds a ``BundleHeaderProto`` (num_shards, endianness, format version); every other key
  is a tensor name (the variable's op name, e.g. ``conv0/W``) whose value is a ``BundleEntryProto``
  (tensorflow/core/protobuf/tensor_bundle.proto: dtype, shape, shard_id, offset, size, masked crc32c,
  slices), decoded here with a minimal protobuf wire-format parser.
- The tensor's bytes are ``PREFIX.data-{shard:05d}-of-{num_shards:05d}[offset:offset + size]``, C
  order, in the header's byte order. Their crc32c (Castagnoli, over the bytes as stored) is checked
  against the entry's (``BundleReader::GetValue``: ``crc32c::Unmask(entry.crc32c())``), with the
  ``google-crc32c`` package.

Numeric dtypes (float16/32/64, (u)int8/16/32/64, bool, complex64/128) are read; string, variant and
resource tensors (never model weights) are skipped with a log line; partitioned (sliced) variables
and bfloat16 are refused. Every offset and size is checked against the files, and each error names
the file and the tensor.

:func:`tensorpack_model_variables` keeps what tensorpack's ``scripts/dump-model-params.py`` keeps,
so a checkpoint gives the same variables as the ``.npz`` tensorpack publishes.
"""
from __future__ import annotations

import logging
import os
import re
import struct
from pathlib import Path
from typing import Callable, Iterator, Mapping

import numpy as np

logger = logging.getLogger(__name__)

__all__ = ["TFCheckpointError", "checkpoint_prefix", "is_tf_checkpoint", "list_tf_checkpoint", "read_tf_checkpoint",
           "tensorpack_model_variables", "read_tensorpack_checkpoint"]

_MAGIC = 0xDB4775248B80FB57  # table/format.h kTableMagicNumber
_FOOTER = 48                  # 2 * BlockHandle::kMaxEncodedLength (2 * 10 * 2) + 8-byte magic
_TRAILER = 5                  # 1-byte compression type + 4-byte masked crc32c
_MASK_DELTA = 0xA282EAD8      # lib/hash/crc32c.h kMaskDelta
_BUNDLE_VERSION = 1           # tensor_bundle.cc kTensorBundleVersion (what TF's reader accepts)
_DATA_RE = re.compile(r"\.data-\d{5}-of-\d{5}$")

#: types.proto DataType → numpy dtype (the ones a model's weights can have; DT_BFLOAT16 = 14 has no numpy type)
_DTYPES = {1: np.float32, 2: np.float64, 3: np.int32, 4: np.uint8, 5: np.int16, 6: np.int8, 8: np.complex64,
           9: np.int64, 10: np.bool_, 17: np.uint16, 18: np.complex128, 19: np.float16, 22: np.uint32,
           23: np.uint64}
#: non-numeric dtypes, skipped (DT_STRING, DT_RESOURCE, DT_VARIANT)
_SKIPPED = {7: "string", 20: "resource", 21: "variant"}


class TFCheckpointError(ValueError):
    """The file is not a readable TensorFlow checkpoint: corrupt, truncated or an unsupported feature."""


# ------------------------------------------------------------------------------------------------
# paths
# ------------------------------------------------------------------------------------------------

def checkpoint_prefix(path) -> str:
    """The checkpoint prefix of ``path``: the prefix itself (``model-5000``), its ``.index`` file or one of
    its ``.data-NNNNN-of-MMMMM`` files (ClaRAN's README loads ``model-70000.data-00000-of-00001``)."""
    p = os.fspath(path)
    if p.endswith(".index"):
        return p[:-len(".index")]
    m = _DATA_RE.search(p)
    return p[:m.start()] if m else p


def is_tf_checkpoint(src) -> bool:
    """Whether ``src`` names a TF checkpoint (a prefix whose ``.index`` exists, or its ``.index``/``.data-*``
    file) rather than an ``.npz`` or a dict of arrays."""
    if isinstance(src, Mapping) or not isinstance(src, (str, os.PathLike)):
        return False
    p = os.fspath(src)
    if p.endswith(".npz"):
        return False
    return p.endswith(".index") or bool(_DATA_RE.search(p)) or os.path.isfile(p + ".index")


# ------------------------------------------------------------------------------------------------
# crc32c, varints, protobuf wire format
# ------------------------------------------------------------------------------------------------

def _crc32c(data: bytes) -> int:
    try:
        import google_crc32c
    except ImportError as e:  # a dependency of gluon_rcnn (setup.py); named here for a partial install
        raise ImportError("reading TF checkpoints needs the 'google-crc32c' package: pip install google-crc32c") from e
    return google_crc32c.value(bytes(data))


def _unmask(masked: int) -> int:
    """lib/hash/crc32c.h ``Unmask``: masked = rotr15(crc) + kMaskDelta."""
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def _varint(buf, pos: int, end: int, what: str) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise TFCheckpointError(f"{what}: truncated or overlong varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7


def _proto_fields(buf: bytes, what: str) -> Iterator[tuple[int, int | bytes]]:
    """(field number, value) of a serialized protobuf message: varints as int, fixed32/64 as int
    (little-endian), length-delimited as bytes."""
    pos, end = 0, len(buf)
    while pos < end:
        tag, pos = _varint(buf, pos, end, what)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end, what)
        elif wire == 1 or wire == 5:
            n = 8 if wire == 1 else 4
            if pos + n > end:
                raise TFCheckpointError(f"{what}: truncated protobuf field {field}")
            value, pos = int.from_bytes(buf[pos:pos + n], "little"), pos + n
        elif wire == 2:
            n, pos = _varint(buf, pos, end, what)
            if pos + n > end:
                raise TFCheckpointError(f"{what}: truncated protobuf field {field}")
            value, pos = bytes(buf[pos:pos + n]), pos + n
        else:
            raise TFCheckpointError(f"{what}: unsupported protobuf wire type {wire} (field {field})")
        yield field, value


def _int64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


# ------------------------------------------------------------------------------------------------
# the index: a LevelDB-format table
# ------------------------------------------------------------------------------------------------

def _block(data: bytes, handle: bytes | tuple[int, int], path: str) -> bytes:
    """The contents of the block at ``handle`` (checked: bounds, trailer crc, no compression)."""
    if isinstance(handle, bytes):
        off, pos = _varint(handle, 0, len(handle), f"{path}: block handle")
        size, _ = _varint(handle, pos, len(handle), f"{path}: block handle")
    else:
        off, size = handle
    if off + size + _TRAILER > len(data) - _FOOTER:
        raise TFCheckpointError(f"{path}: block at {off} (+{size} bytes) lies past the end of the table: "
                                f"file truncated or corrupt")
    kind = data[off + size]
    stored = int.from_bytes(data[off + size + 1:off + size + _TRAILER], "little")
    if _unmask(stored) != _crc32c(data[off:off + size + 1]):
        raise TFCheckpointError(f"{path}: checksum mismatch in the index block at offset {off}: file corrupt")
    if kind != 0:
        raise TFCheckpointError(f"{path}: index block at offset {off} is compressed (type {kind}, 1 = snappy); "
                                f"TensorFlow writes bundle indexes uncompressed and compressed ones are not supported")
    return data[off:off + size]


def _block_entries(block: bytes, path: str) -> Iterator[tuple[bytes, bytes]]:
    """(key, value) of a block (table/block.cc): prefix-compressed keys, restart points at the end."""
    what = f"{path}: index block"
    if len(block) < 4:
        raise TFCheckpointError(f"{what} too short")
    n_restarts = int.from_bytes(block[-4:], "little")
    limit = len(block) - 4 - 4 * n_restarts
    if n_restarts < 1 or limit < 0:
        raise TFCheckpointError(f"{what}: bad restart array ({n_restarts} restarts in {len(block)} bytes)")
    restarts = set(struct.unpack(f"<{n_restarts}I", block[limit:-4]))
    key, pos = b"", 0
    while pos < limit:
        start = pos
        shared, pos = _varint(block, pos, limit, what)
        unshared, pos = _varint(block, pos, limit, what)
        n_value, pos = _varint(block, pos, limit, what)
        if shared > len(key) or (start in restarts and shared) or pos + unshared + n_value > limit:
            raise TFCheckpointError(f"{what}: corrupt entry at byte {start}")
        key = key[:shared] + block[pos:pos + unshared]
        pos += unshared
        yield key, block[pos:pos + n_value]
        pos += n_value


def _table(path: str) -> Iterator[tuple[bytes, bytes]]:
    """Every (key, value) of a LevelDB-format table file, in key order."""
    data = Path(path).read_bytes()
    if len(data) < _FOOTER:
        raise TFCheckpointError(f"{path}: {len(data)} bytes, too short for a TF checkpoint index (file truncated?)")
    magic = int.from_bytes(data[-8:], "little")
    if magic != _MAGIC:
        raise TFCheckpointError(f"{path}: not a TF checkpoint index (bad table magic {magic:#018x}; "
                                f"expected {_MAGIC:#018x}): wrong file, truncated or corrupt")
    footer = data[-_FOOTER:-8]
    _, pos = _varint(footer, 0, len(footer), f"{path}: footer")          # metaindex handle: offset
    _, pos = _varint(footer, pos, len(footer), f"{path}: footer")        # size (no filters in a bundle)
    off, pos = _varint(footer, pos, len(footer), f"{path}: footer")      # index handle
    size, _ = _varint(footer, pos, len(footer), f"{path}: footer")
    for _, handle in _block_entries(_block(data, (off, size), path), path):
        yield from _block_entries(_block(data, handle, path), path)


# ------------------------------------------------------------------------------------------------
# the bundle
# ------------------------------------------------------------------------------------------------

def _header(value: bytes, path: str) -> tuple[int, bool]:
    """(num_shards, big_endian) of a BundleHeaderProto; the format version checked as TF's reader does."""
    num_shards, big, producer, min_consumer, bad = 0, False, 0, 0, []
    for f, v in _proto_fields(value, f"{path}: header"):
        if f == 1:
            num_shards = _int64(v)
        elif f == 2:
            big = v == 1
        elif f == 3:
            for g, w in _proto_fields(v, f"{path}: header version"):
                if g == 1:
                    producer = _int64(w)
                elif g == 2:
                    min_consumer = _int64(w)
                elif g == 3:
                    bad.append(_int64(w))
    if num_shards < 1:
        raise TFCheckpointError(f"{path}: header has {num_shards} shards")
    if min_consumer > _BUNDLE_VERSION or _BUNDLE_VERSION in bad or producer < 0:
        raise TFCheckpointError(f"{path}: bundle format version (producer {producer}, min consumer {min_consumer}, "
                                f"bad consumers {bad}) cannot be read by a version-{_BUNDLE_VERSION} reader")
    return num_shards, big


def _entry(name: str, value: bytes, path: str) -> dict:
    """A BundleEntryProto as a dict (dtype, shape, shard, offset, size, crc32c, n_slices)."""
    what = f"{path}: entry of tensor {name!r}"
    e = {"dtype": 0, "shape": [], "shard": 0, "offset": 0, "size": 0, "crc32c": 0, "n_slices": 0}
    for f, v in _proto_fields(value, what):
        if f == 1:
            e["dtype"] = v
        elif f == 2:
            for g, dim in _proto_fields(v, what):
                if g == 2:
                    e["shape"].append(_int64(next((s for h, s in _proto_fields(dim, what) if h == 1), 0)))
                elif g == 3 and dim:
                    raise TFCheckpointError(f"{what}: unknown rank")
        elif f in (3, 4, 5):
            e[{3: "shard", 4: "offset", 5: "size"}[f]] = _int64(v)
        elif f == 6:
            e["crc32c"] = v
        elif f == 7:
            e["n_slices"] += 1
    if any(d < 0 for d in e["shape"]) or e["offset"] < 0 or e["size"] < 0 or e["shard"] < 0:
        raise TFCheckpointError(f"{what}: negative shape, offset, size or shard: {e}")
    return e


def _index(prefix: str) -> tuple[int, bool, dict[str, dict]]:
    path = prefix + ".index"
    if not os.path.isfile(path):
        raise TFCheckpointError(f"{path}: no such file (a TF checkpoint is PREFIX.index + PREFIX.data-*)")
    items = iter(_table(path))
    key, value = next(items, (None, None))
    if key != b"":
        raise TFCheckpointError(f"{path}: the first entry is not the bundle header (key {key!r}): "
                                f"not a TF V2 checkpoint (tensor bundle)")
    num_shards, big = _header(value, path)
    entries = {}
    for key, value in items:
        name = key.decode("utf-8", "backslashreplace")
        e = _entry(name, value, path)
        if e["n_slices"]:
            raise TFCheckpointError(f"{path}: tensor {name!r} is a partitioned variable ({e['n_slices']} slices, "
                                    f"tf.compat.v1 partitioner); partitioned variables are not supported")
        if e["shard"] >= num_shards:
            raise TFCheckpointError(f"{path}: tensor {name!r} is in shard {e['shard']}, the header says "
                                    f"{num_shards} shards")
        entries[name] = e
    return num_shards, big, entries


def list_tf_checkpoint(path) -> dict[str, tuple[str, tuple[int, ...]]]:
    """name → (dtype name, shape) of every tensor of the checkpoint (like ``tf.train.list_variables``)."""
    _, _, entries = _index(checkpoint_prefix(path))
    def dtype(t):
        return np.dtype(_DTYPES[t]).name if t in _DTYPES else _SKIPPED.get(t, f"DataType {t}")
    return {k: (dtype(e["dtype"]), tuple(e["shape"])) for k, e in entries.items()}


def read_tf_checkpoint(path, keep: Callable[[str], bool] | None = None, *,
                       verify: bool = True) -> dict[str, np.ndarray]:
    """name → array of the tensors of a TF V2 checkpoint (``tf.train.Saver``/``tf.train.Checkpoint``).

    path: the prefix, its ``.index`` or a ``.data-*`` file. keep: read only the names it accepts (the others
    are not read from the data files). verify: check each tensor's crc32c. Arrays are in native byte order,
    C-contiguous and writable; names are the checkpoint's keys (a Saver's are variable op names, no ``:0``)."""
    prefix = checkpoint_prefix(path)
    num_shards, big, entries = _index(prefix)
    out, skipped, files = {}, [], {}
    try:
        for name, e in entries.items():
            if keep is not None and not keep(name):
                continue
            if e["dtype"] in _SKIPPED:
                skipped.append(f"{name} ({_SKIPPED[e['dtype']]})")
                continue
            if e["dtype"] not in _DTYPES:
                raise TFCheckpointError(f"{prefix}.index: tensor {name!r} has unsupported dtype {e['dtype']} "
                                        f"(tensorflow/core/framework/types.proto; 14 = bfloat16)")
            dtype = np.dtype(_DTYPES[e["dtype"]]).newbyteorder(">" if big else "<")
            shape = tuple(e["shape"])
            if e["size"] != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
                raise TFCheckpointError(f"{prefix}.index: tensor {name!r} has {e['size']} bytes, its shape {shape} "
                                        f"and dtype {dtype.name} need {int(np.prod(shape)) * dtype.itemsize}: corrupt")
            data_path = f"{prefix}.data-{e['shard']:05d}-of-{num_shards:05d}"
            if data_path not in files:
                if not os.path.isfile(data_path):
                    raise TFCheckpointError(f"{data_path}: no such file (tensor {name!r} is stored there)")
                files[data_path] = open(data_path, "rb")
            f = files[data_path]
            file_size = os.fstat(f.fileno()).st_size
            if e["offset"] + e["size"] > file_size:
                raise TFCheckpointError(f"{data_path}: tensor {name!r} needs bytes [{e['offset']}, "
                                        f"{e['offset'] + e['size']}) of a {file_size}-byte file: file truncated")
            f.seek(e["offset"])
            buf = f.read(e["size"])
            if len(buf) != e["size"]:
                raise TFCheckpointError(f"{data_path}: short read of tensor {name!r}: file truncated")
            if verify and _crc32c(buf) != _unmask(e["crc32c"]):
                raise TFCheckpointError(f"{data_path}: tensor {name!r} ({e['size']} bytes at offset {e['offset']}) "
                                        f"fails its crc32c check: the file is corrupt")
            out[name] = np.frombuffer(buf, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
    finally:
        for f in files.values():
            f.close()
    if skipped:
        logger.info("%s: skipped %d non-numeric tensors: %s", prefix, len(skipped), skipped)
    return out


# ------------------------------------------------------------------------------------------------
# tensorpack: what its dump-model-params.py keeps
# ------------------------------------------------------------------------------------------------

#: tensorpack tfutils/varmanip.py ``is_training_name`` (02c38f26 and master): optimizer slots, the
#: moving-average summaries, gradient accumulation
_TRAINING_SUFFIXES = ("/Adam", "/Adam_1", "/Momentum", "/Adadelta", "/Adadelta_1", "/RMSProp", "/RMSProp_1",
                      "/Adagrad", "/AccumGrad")
_TRAINING_PREFIXES = ("EMA/", "AccumGrad", "apply_gradients")
#: training state of every tensorpack trainer: tfutils/common.py ``get_global_step_var`` and the examples'
#: ``optimizer()`` (``tf.get_variable('learning_rate', ..., trainable=False)``)
_TRAINING_STATE = ("global_step", "learning_rate")


def _meta_variables(meta: str) -> set[str]:
    """tensorpack dump-model-params.py's selection read from a ``graph-*.meta`` (MetaGraphDef): the
    variables in TRAINABLE_VARIABLES or MODEL_VARIABLES that are also GLOBAL_VARIABLES, as op names."""
    colls: dict[str, set[str]] = {"trainable_variables": set(), "model_variables": set(), "variables": set()}
    for f, entry in _proto_fields(Path(meta).read_bytes(), f"{meta}: MetaGraphDef"):
        if f != 4:                                                   # collection_def map<string, CollectionDef>
            continue
        fields = dict(_proto_fields(entry, f"{meta}: collection_def"))
        key = fields.get(1, b"").decode()
        if key not in colls:
            continue
        for g, lst in _proto_fields(fields.get(2, b""), f"{meta}: {key}"):
            if g != 2:                                               # CollectionDef.bytes_list
                continue
            for h, var_def in _proto_fields(lst, f"{meta}: {key}"):
                if h == 1:                                           # VariableDef.variable_name: "conv0/W:0"
                    name = dict(_proto_fields(var_def, f"{meta}: {key}")).get(1, b"").decode()
                    colls[key].add(name[:-2] if name.endswith(":0") else name)
    if not colls["variables"]:
        raise TFCheckpointError(f"{meta}: no GLOBAL_VARIABLES collection: not a tensorpack graph-*.meta")
    return (colls["trainable_variables"] | colls["model_variables"]) & colls["variables"]


def tensorpack_model_variables(names, meta: str | os.PathLike | None = None) -> set[str]:
    """The names of ``names`` that tensorpack's ``scripts/dump-model-params.py`` writes to its ``.npz``
    (the files tensorpack publishes): with the training graph ``meta`` (``graph-*.meta``) exactly its rule
    (TRAINABLE or MODEL variables that are GLOBAL; a selected variable missing from ``names`` raises);
    without it, every name but the training-only ones tensorpack itself recognises by name
    (``varmanip.is_training_name``: optimizer slots ``*/Momentum``..., ``EMA/*`` summaries, ``AccumGrad``)
    and ``global_step``, ``learning_rate``."""
    names = set(names)
    if meta is not None:
        selected = _meta_variables(os.fspath(meta))
        missing = sorted(selected - names)
        if missing:
            raise TFCheckpointError(f"{meta}: {len(missing)} model variables are not in the checkpoint: {missing[:10]}")
        return selected
    return {n for n in names if not (n.endswith(_TRAINING_SUFFIXES) or n.startswith(_TRAINING_PREFIXES)
                                     or n in _TRAINING_STATE)}


def read_tensorpack_checkpoint(path, meta=None, *, verify: bool = True) -> dict[str, np.ndarray]:
    """The model variables (:func:`tensorpack_model_variables`) of a tensorpack TF checkpoint, name → array,
    the same as tensorpack's dump-model-params.py ``.npz`` of it (there with TF's ``:0`` suffix)."""
    keep = tensorpack_model_variables(list_tf_checkpoint(path), meta)
    return read_tf_checkpoint(path, keep.__contains__, verify=verify)
