"""TensorFlow checkpoints read without TensorFlow (gluon_rcnn/convert/tf_checkpoint.py).

tests/data/tf_checkpoint/ was written by TensorFlow 2.15.1 (bench/make_tf_checkpoint.py, VERSIONS.json):
``NAME.expected.npz`` holds the tensors as TensorFlow itself reads them back, and
``tensorpack/model-5.npz`` is that tensorpack-style checkpoint through tensorpack's own
``scripts/dump-model-params.py --meta`` (commit 02c38f26, ClaRAN's), i.e. the npz route.
"""
from __future__ import annotations

import importlib.util
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest

from gluon_rcnn.convert import tf_checkpoint as tfc
from gluon_rcnn.convert.tf_checkpoint import (TFCheckpointError, checkpoint_prefix, is_tf_checkpoint,
                                              list_tf_checkpoint, read_tensorpack_checkpoint, read_tf_checkpoint,
                                              tensorpack_model_variables)

DATA = Path(__file__).parent / "data" / "tf_checkpoint"
TP = DATA / "tensorpack"
CLARAN = "ClaRAN-v0.2-FasterRCNN-R50FPN"


def assert_same(got: dict, want, names=None):
    """Same names, dtypes, shapes and values (bit for bit)."""
    names = sorted(want.files if names is None else names)
    assert sorted(got) == names
    for k in names:
        assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def many_value(name: str) -> np.float32:  # bench/make_tf_checkpoint.py many_value: many/layerLL/varV = f32((10L+V)/7)
    return np.float32((int(name.split("/")[1][5:]) * 10 + int(name.rsplit("var", 1)[1])) / 7)


# ------------------------------------------------------------------------------------------------
# equal to what TensorFlow reads
# ------------------------------------------------------------------------------------------------

def test_dtypes_equal_tensorflow():
    got = read_tf_checkpoint(DATA / "dtypes")
    many = sorted(k for k in got if k.startswith("many/"))
    assert len(many) == 600 and all(got[k] == many_value(k) and got[k].dtype == np.float32 for k in many)
    want = np.load(DATA / "dtypes.expected.npz")
    assert_same({k: v for k, v in got.items() if not k.startswith("many/")}, want)
    # every numeric dtype, scalars, an empty tensor; the string tensor listed but not read
    assert {str(v.dtype) for v in got.values()} == {"float16", "float32", "float64", "int8", "int16", "int32",
                                                   "int64", "uint8", "uint16", "uint32", "uint64", "bool",
                                                   "complex64", "complex128"}
    assert got["float32/scalar"].shape == () and got["float32/empty"].shape == (3, 0, 2)
    assert got["int64/global_step_like"] == 2 ** 40 + 5 and got["uint64/v"][1] == 2 ** 64 - 1
    assert list_tf_checkpoint(DATA / "dtypes")["string/v"] == ("string", (2,)) and "string/v" not in got
    assert all(v.flags.writeable and v.flags.c_contiguous and v.dtype.isnative for v in got.values())


@pytest.mark.parametrize("form", ["dtypes", "dtypes.index", "dtypes.data-00000-of-00001"])
def test_path_forms(form):
    assert checkpoint_prefix(DATA / form) == str(DATA / "dtypes") and is_tf_checkpoint(DATA / form)
    assert_same(read_tf_checkpoint(DATA / form, lambda n: not n.startswith("many/")),
                np.load(DATA / "dtypes.expected.npz"))


def test_not_a_checkpoint():
    assert not is_tf_checkpoint(TP / "model-5.npz") and not is_tf_checkpoint({"a": np.zeros(1)})
    assert not is_tf_checkpoint(DATA / "nothing-here")
    with pytest.raises(TFCheckpointError, match="nothing-here.index: no such file"):
        read_tf_checkpoint(DATA / "nothing-here")


def test_two_shards():
    """MergeV2Checkpoints of two SaveV2 bundles (a sharded Saver): tensors in data-00000 and data-00001."""
    shards = {k: e["shard"] for k, e in tfc._index(str(DATA / "sharded"))[2].items()}
    assert sorted(set(shards.values())) == [0, 1]
    assert_same(read_tf_checkpoint(DATA / "sharded.index"), np.load(DATA / "sharded.expected.npz"))


def test_partitioned_variable_refused():
    with pytest.raises(TFCheckpointError, match=r"'part/w' is a partitioned variable \(2 slices"):
        read_tf_checkpoint(DATA / "partitioned")


# ------------------------------------------------------------------------------------------------
# tensorpack: the same variables as its dump-model-params.py npz
# ------------------------------------------------------------------------------------------------

def test_tensorpack_checkpoint_equals_dump_npz():
    npz = np.load(TP / "model-5.npz")                     # tensorpack's dump-model-params.py --meta output
    want = {k[:-2]: npz[k] for k in npz.files}             # its names carry TF's ':0'
    for meta in (None, TP / "graph-0.meta"):               # the name rule and the meta graph's collections
        got = read_tensorpack_checkpoint(TP / "model-5.index", meta)
        assert sorted(got) == sorted(want) and len(got) == 16
        for k in want:
            assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    # what the dump left out is the training state, read as TensorFlow reads it
    rest = read_tf_checkpoint(TP / "model-5", lambda n: n not in want)
    assert_same(rest, np.load(TP / "model-5.expected.npz"))
    assert rest["global_step"] == 5 and rest["learning_rate"] == np.float32(0.003)
    assert sorted(k for k in rest if k.endswith("/Momentum")) == sorted(
        k + "/Momentum" for k in want if not k.startswith(("conv0/", "group0/")) and not k.endswith("/EMA"))


def test_tensorpack_name_rule():
    names = ["conv0/W", "conv0/bn/mean/EMA", "rpn/box/W/Momentum", "x/Adam", "x/Adam_1", "EMA/total_cost",
             "global_step", "learning_rate", "AccumGrad/counter", "fastrcnn/fc6/W/AccumGrad", "apply_gradients/x"]
    assert tensorpack_model_variables(names) == {"conv0/W", "conv0/bn/mean/EMA"}
    with pytest.raises(TFCheckpointError, match="not in the checkpoint"):
        tensorpack_model_variables(["conv0/bn/gamma"], TP / "graph-0.meta")


def test_from_tensorpack_checkpoint_equals_npz_route():
    """ClaRAN's variables (real names and shapes, a subset) into ClaRAN's model: the checkpoint and the npz
    give the same tensors to the same parameters; the training state is not offered to the model."""
    from gluon_rcnn.convert.tensorpack import from_tensorpack, tensorpack_config, tensorpack_state_dict
    # the public entry point, with the .data file ClaRAN's README passes to --load
    model = from_tensorpack(str(TP / "model-5.data-00000-of-00001"), CLARAN, strict=False)
    assert model.tensorpack_unexpected == []
    cfg, state = tensorpack_config(CLARAN), model.state_dict()
    via_npz = tensorpack_state_dict(str(TP / "model-5.npz"), cfg, state, strict=False)
    via_ckpt = tensorpack_state_dict(str(TP / "model-5.index"), cfg, state, strict=False)
    assert via_ckpt[1:] == via_npz[1:] and via_ckpt[2] == []            # same missing names; nothing unexpected
    assert sorted(via_ckpt[0]) == sorted(via_npz[0]) and len(via_npz[0]) >= 16
    for k, v in via_npz[0].items():
        assert torch_equal(via_ckpt[0][k], v) and torch_equal(state[k], v), k
    # without the filter the optimizer slots, step, learning rate and EMA summary would be unexpected
    unfiltered = tensorpack_state_dict(read_tf_checkpoint(TP / "model-5"), cfg, state, strict=False)[2]
    assert sorted(unfiltered) == sorted(np.load(TP / "model-5.expected.npz").files)


def torch_equal(a, b) -> bool:
    import torch
    return a.shape == b.shape and torch.equal(a.to(b.dtype), b)


def test_script_converts_a_checkpoint(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("convert_tensorpack", Path(__file__).parents[1] / "scripts" /
                                                  "convert_tensorpack.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main([str(TP / "model-5"), str(tmp_path / "x.pth")]) == 2
    assert "give --kind" in capsys.readouterr().err
    assert script.main([str(TP / "model-5.npz"), str(tmp_path / "x.pth"), "--meta", "graph.meta"]) == 2
    assert "--meta is for a TF checkpoint" in capsys.readouterr().err
    assert script.main([str(TP / "model-5.index"), str(tmp_path / "x.pth"), "--kind", CLARAN, "--non-strict",
                        "--meta", str(TP / "graph-0.meta")]) == 0
    out = capsys.readouterr()
    assert "read 16 model variables" in out.out and "wrote" in out.out and "missing" in out.err  # a subset
    assert (tmp_path / "x.pth").stat().st_size > 0


# ------------------------------------------------------------------------------------------------
# corrupt, truncated, unsupported
# ------------------------------------------------------------------------------------------------

@pytest.fixture
def copy(tmp_path):
    for f in DATA.glob("dtypes.*"):
        shutil.copy(f, tmp_path)
    return tmp_path / "dtypes"


def _entry(name):
    return tfc._index(str(DATA / "dtypes"))[2][name]


def _poke(path, offset, xor=0xFF):
    b = bytearray(Path(path).read_bytes())
    b[offset] ^= xor
    Path(path).write_bytes(bytes(b))


def test_flipped_data_byte_names_the_tensor(copy):
    e = _entry("float32/matrix")
    _poke(f"{copy}.data-00000-of-00001", e["offset"] + 5)
    with pytest.raises(TFCheckpointError, match=r"tensor 'float32/matrix' \(48 bytes at offset \d+\) fails its crc32c"):
        read_tf_checkpoint(copy)
    got = read_tf_checkpoint(copy, verify=False)  # the check is what caught it
    assert not np.array_equal(got["float32/matrix"], np.load(DATA / "dtypes.expected.npz")["float32/matrix"])


def test_truncated_data_file(copy):
    data = Path(f"{copy}.data-00000-of-00001")
    data.write_bytes(data.read_bytes()[:-3])
    with pytest.raises(TFCheckpointError, match=r"dtypes.data-00000-of-00001: tensor '.+' needs bytes .* truncated"):
        read_tf_checkpoint(copy)
    data.unlink()
    with pytest.raises(TFCheckpointError, match="dtypes.data-00000-of-00001: no such file"):
        read_tf_checkpoint(copy)


def test_bad_index(copy):
    index = Path(f"{copy}.index")
    good = index.read_bytes()
    _poke(index, len(good) - 1)
    with pytest.raises(TFCheckpointError, match="not a TF checkpoint index \\(bad table magic"):
        read_tf_checkpoint(copy)
    index.write_bytes(good[:-20])
    with pytest.raises(TFCheckpointError, match="bad table magic"):
        read_tf_checkpoint(copy)
    index.write_bytes(good[:30])
    with pytest.raises(TFCheckpointError, match="too short for a TF checkpoint index"):
        read_tf_checkpoint(copy)
    index.write_bytes(good)
    _poke(index, 100)
    with pytest.raises(TFCheckpointError, match="checksum mismatch in the index block at offset 0"):
        read_tf_checkpoint(copy)
    np.save(index.with_suffix(".npy"), np.zeros(3))
    index.write_bytes(Path(index.with_suffix(".npy")).read_bytes())
    with pytest.raises(TFCheckpointError, match="dtypes.index"):
        read_tf_checkpoint(copy)


# ------------------------------------------------------------------------------------------------
# the table layer on several blocks: TF's own entries, re-blocked
# ------------------------------------------------------------------------------------------------

def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _block(entries, restart_interval) -> bytes:
    """table/block_builder.cc: prefix-compressed keys, a restart point every ``restart_interval`` entries."""
    body, restarts, prev = bytearray(), [], b""
    for i, (k, v) in enumerate(entries):
        shared = 0 if i % restart_interval == 0 else len(os.path.commonprefix([prev, k]))
        if i % restart_interval == 0:
            restarts.append(len(body))
        body += _varint(shared) + _varint(len(k) - shared) + _varint(len(v)) + k[shared:] + v
        prev = k
    restarts = restarts or [0]
    return bytes(body) + struct.pack(f"<{len(restarts)}I", *restarts) + struct.pack("<I", len(restarts))


def _masked_crc32c(data: bytes) -> int:
    """lib/hash/crc32c.h ``Mask(Value(data))``."""
    import google_crc32c
    crc = google_crc32c.value(bytes(data))
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def _write_table(path, items, block_size=4096, kind=0):
    """A LevelDB-format table of ``items`` (table/table_builder.cc, format.cc) with blocks of ~``block_size``."""
    out, index = bytearray(), []

    def put(contents):
        off = len(out)
        out.extend(contents + bytes([kind]) + struct.pack("<I", _masked_crc32c(contents + bytes([kind]))))
        return _varint(off) + _varint(len(contents))

    chunk, size = [], 0
    for k, v in items:
        chunk.append((k, v))
        size += len(k) + len(v)
        if size >= block_size:
            index.append((k, put(_block(chunk, 16))))
            chunk, size = [], 0
    if chunk:
        index.append((chunk[-1][0], put(_block(chunk, 16))))
    meta, idx = put(_block([], 1)), put(_block(index, 1))
    footer = meta + idx
    out.extend(footer + bytes(40 - len(footer)) + struct.pack("<Q", 0xDB4775248B80FB57))
    Path(path).write_bytes(bytes(out))
    return len(index)


def test_several_blocks(copy):
    """TF starts a new index block every 256 kB (table_options.h), past what tests/data should hold: TF's own
    12 kB table rewritten with 4 kB blocks (LevelDB's default) reads the same."""
    items = list(tfc._table(str(DATA / "dtypes.index")))
    assert len(items) == 619
    assert _write_table(f"{copy}.index", items) >= 3
    assert list(tfc._table(f"{copy}.index")) == items
    want = read_tf_checkpoint(DATA / "dtypes")
    got = read_tf_checkpoint(copy)
    assert sorted(got) == sorted(want) and all(np.array_equal(got[k], want[k]) for k in want)


def test_compressed_block_refused(copy):
    _write_table(f"{copy}.index", list(tfc._table(str(DATA / "dtypes.index"))), kind=1)
    with pytest.raises(TFCheckpointError, match=r"is compressed \(type 1, 1 = snappy\)"):
        read_tf_checkpoint(copy)


def test_big_endian(copy):
    """TF's dtypes checkpoint as a big-endian machine writes it: header endianness BIG, every tensor's bytes
    swapped, entry crc32c over the bytes as stored (protobuf: a repeated scalar field's last value wins)."""
    items = list(tfc._table(str(DATA / "dtypes.index")))
    data = bytearray(Path(f"{copy}.data-00000-of-00001").read_bytes())
    want = read_tf_checkpoint(DATA / "dtypes")
    out = [(b"", items[0][1] + b"\x10\x01")]                      # BundleHeaderProto.endianness = BIG
    for key, value in items[1:]:
        name, e = key.decode(), tfc._entry(key.decode(), value, "")
        if name in want:
            swapped = want[name].astype(want[name].dtype.newbyteorder(">")).tobytes()
            data[e["offset"]:e["offset"] + e["size"]] = swapped
            value += b"\x35" + struct.pack("<I", _masked_crc32c(swapped))   # BundleEntryProto.crc32c
        out.append((key, value))
    Path(f"{copy}.data-00000-of-00001").write_bytes(bytes(data))
    _write_table(f"{copy}.index", out)
    got = read_tf_checkpoint(copy)
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and got[k].dtype.isnative, k
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert bytes(data) != (DATA / "dtypes.data-00000-of-00001").read_bytes()
