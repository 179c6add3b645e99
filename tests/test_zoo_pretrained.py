"""``get_model(tp_entry, pretrained=True)``: tensorpack's published npz downloaded, converted, cached.

A local HTTP server on 127.0.0.1 (ephemeral port) stands in for models.tensorpack.com, reached
through ``$GLUON_RCNN_TENSORPACK_URL`` (the zoo's mirror override). It serves synthetic
``COCO-MaskRCNN-R50C41x.npz`` files with every variable of the real file at its real shape
(tests/data/tensorpack_manifests, written from tensorpack's graph construction): zeros, compressed
(~0.2 MB served for 144 MB of float32), with random values in the tensors whose conversion is not
a plain copy (BGR flip, C4 anchor permutation, transposes) so that parameter equality means
something.
"""
from __future__ import annotations

import io
import hashlib
import json
import logging
from http_server import serve
from pathlib import Path

import numpy as np
import pytest
import torch

import gluon_rcnn
from gluon_rcnn import model_zoo
from gluon_rcnn.convert import tensorpack as tp
from gluon_rcnn.download import ChecksumError, DownloadError, cached_path

KIND = "COCO-MaskRCNN-R50C41x"
ENTRY = "tp_mask_rcnn_c4_resnet50_1x_coco"
FILE = f"{KIND}.npz"
MANIFEST = Path(__file__).parent / "data" / "tensorpack_manifests" / f"{KIND}.json"
RANDOM = ("conv0/W", "group0/block0/conv1/W", "group3/block0/conv2/W", "rpn/class/W", "rpn/class/b",
          "rpn/box/W", "rpn/box/b", "fastrcnn/class/W", "fastrcnn/box/W", "fastrcnn/box/b",
          "maskrcnn/deconv/W", "maskrcnn/conv/W")


def synthetic_npz(seed: int, kind: str = KIND) -> bytes:
    """A valid tensorpack npz of ``kind`` (names with TF's ':0'), compressed."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for v in json.loads((MANIFEST.parent / f"{kind}.json").read_text())["variables"]:
        name, shape = v["name"], v["shape"]
        if name in RANDOM:
            a = rng.standard_normal(shape, dtype=np.float32) * 0.01
        elif name.endswith("variance/EMA"):
            a = np.ones(shape, np.float32)
        else:
            a = np.zeros(shape, np.float32)
        arrays[name + ":0"] = a
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    return buf.getvalue()


@pytest.fixture(scope="module")
def server():
    with serve("/FasterRCNN") as srv:
        yield srv


@pytest.fixture(scope="module")
def good():
    return synthetic_npz(0)


@pytest.fixture(scope="module")
def reference(good, module_tmp):
    """from_tensorpack's state dict on the good file."""
    path = module_tmp("ref") / FILE
    path.write_bytes(good)
    return tp.from_tensorpack(str(path), KIND).state_dict()


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch, server):
    monkeypatch.setenv("GLUON_RCNN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(tp.TensorpackSource.url_env, server.base)
    server.routes.clear()
    server.requests.clear()
    return tmp_path / "home"


def _url(server):
    return f"{server.base}/{FILE}"


def _route(server, body, mode="range"):
    server.routes[f"/FasterRCNN/{FILE}"] = {"body": body, "mode": mode}


def _cache(home) -> list[str]:
    d = home / "weights"
    return sorted(p.name for p in d.iterdir() if not p.name.endswith(".lock")) if d.is_dir() else []


def _same(state, ref):
    assert set(state) == set(ref)
    bad = [k for k in ref if not torch.equal(state[k], ref[k])]
    assert not bad, bad[:5]


def test_entries_record_the_published_files():
    rows = {r["name"]: r for r in gluon_rcnn.list_models(details=True)}
    assert gluon_rcnn.list_models() == sorted(rows)  # names, as before
    with_weights = sorted(n for n, r in rows.items() if r["weights"] and r["weights"].startswith("tensorpack "))
    assert with_weights == sorted(e for e, _ in tp.TENSORPACK_KINDS.values())
    for kind, (entry, _) in tp.TENSORPACK_KINDS.items():
        w = model_zoo.get_entry(entry)["weights"]
        assert w == {"url": tp.URL.format(kind), "sha256": "", "format": "tensorpack-npz", "kind": kind,
                     "note": w["note"]}
        assert "no checksum" in w["note"]
    assert rows["tp_faster_rcnn_c4_resnet50_1x_coco"]["weights"] is None  # tensorpack published no Faster R-CNN


def test_good_file_is_converted_once_then_loaded_from_the_cache(server, good, reference, env, monkeypatch,
                                                                caplog):
    _route(server, good)
    url = _url(server)
    row = {r["name"]: r for r in gluon_rcnn.list_models(details=True)}[ENTRY]
    assert row == {"name": ENTRY, "weights": f"tensorpack npz {url}", "file": str(cached_path(url)),
                   "reproduced": model_zoo.get_entry(ENTRY)["reproduced"]}
    with caplog.at_level(logging.WARNING, logger="gluon_rcnn"):
        net = gluon_rcnn.get_model(ENTRY, pretrained=True)
    _same(net.state_dict(), reference)
    assert not net.training and not net.config.MODE_FPN
    # the whole config is the converter's (tensorpack's rules, its sizes and thresholds), taken from the checkpoint
    assert net.config.to_dict() == tp.tensorpack_config(KIND).to_dict()
    digest = hashlib.sha256(good).hexdigest()
    assert f"no checksum is published for {url}" in caplog.text and digest in caplog.text
    assert _cache(env) == sorted([FILE, FILE + ".sha256", f"{KIND}.{digest[:16]}.gluon_rcnn.pth"])
    assert (env / "weights" / (FILE + ".sha256")).read_text().split()[0] == digest
    assert len(server.requests) == 1

    # second call: no HTTP request, no conversion
    def no_conversion(*a, **k):
        raise AssertionError("converted again")
    monkeypatch.setattr(tp, "from_tensorpack", no_conversion)
    net2 = gluon_rcnn.get_model(ENTRY, pretrained=True)
    _same(net2.state_dict(), reference)
    assert len(server.requests) == 1

    # a checksum recorded in the entry is verified: a wrong one refuses, the right one loads
    e = model_zoo.get_entry(ENTRY)
    e["weights"]["sha256"] = "0" * 64
    monkeypatch.setitem(model_zoo._entries(), ENTRY, e)
    with pytest.raises(ChecksumError, match=f"expected {'0' * 64}"):
        gluon_rcnn.get_model(ENTRY, pretrained=True)
    e = json.loads(json.dumps(e))
    e["weights"]["sha256"] = digest
    monkeypatch.setitem(model_zoo._entries(), ENTRY, e)
    _same(gluon_rcnn.get_model(ENTRY, pretrained=True).state_dict(), reference)
    monkeypatch.undo()
    monkeypatch.setenv("GLUON_RCNN_HOME", str(env))
    monkeypatch.setenv(tp.TensorpackSource.url_env, server.base)

    # the cached npz changed: noticed against the recorded sha256
    npz = env / "weights" / FILE
    other = synthetic_npz(1)
    npz.write_bytes(other)
    with pytest.raises(ChecksumError, match="changed since it was first used") as err:
        gluon_rcnn.get_model(ENTRY, pretrained=True)
    assert str(npz) in str(err.value)
    # deleted with its record and replaced by hand: converted again (the old conversion goes)
    (env / "weights" / (FILE + ".sha256")).unlink()
    net3 = gluon_rcnn.get_model(ENTRY, pretrained=True)
    ref3 = tp.from_tensorpack(str(npz), KIND).state_dict()
    _same(net3.state_dict(), ref3)
    assert not torch.equal(net3.state_dict()["backbone.body.conv1.weight"], reference["backbone.body.conv1.weight"])
    d3 = hashlib.sha256(other).hexdigest()
    assert _cache(env) == sorted([FILE, FILE + ".sha256", f"{KIND}.{d3[:16]}.gluon_rcnn.pth"])
    assert len(server.requests) == 1


@pytest.mark.parametrize("body", [b"<html><body>502 Bad Gateway</body></html>\n" * 200, "wrong npz"],
                         ids=["not_an_npz", "npz_of_other_variables"])
def test_corrupt_file_is_a_clear_error_and_leaves_nothing(server, env, body):
    if body == "wrong npz":
        buf = io.BytesIO()
        np.savez_compressed(buf, **{"conv0/W:0": np.zeros((7, 7, 3, 64), np.float32), "global_step:0": np.zeros(())})
        body = buf.getvalue()
    _route(server, body)
    url = _url(server)
    with pytest.raises(DownloadError) as err:
        gluon_rcnn.get_model(ENTRY, pretrained=True)
    msg = str(err.value)
    assert url in msg and f"put it at {cached_path(url)}" in msg and "not what was expected" in msg, msg
    assert _cache(env) == []  # no npz, no .part, no record, no converted checkpoint, no temporary


def test_truncated_download_is_kept_and_resumed(server, good, reference, env):
    _route(server, good, mode="truncate")
    url = _url(server)
    with pytest.raises(DownloadError, match="truncated download") as err:
        gluon_rcnn.get_model(ENTRY, pretrained=True)
    msg = str(err.value)
    assert url in msg and f"put it at {cached_path(url)}" in msg, msg
    assert _cache(env) == [FILE + ".part"]  # download.py keeps the partial file for the next call
    kept = (env / "weights" / (FILE + ".part")).stat().st_size
    assert 0 < kept < len(good)
    _route(server, good)
    _same(gluon_rcnn.get_model(ENTRY, pretrained=True).state_dict(), reference)
    assert server.requests[-1][1] == f"bytes={kept}-"  # resumed with Range
    digest = hashlib.sha256(good).hexdigest()
    assert _cache(env) == sorted([FILE, FILE + ".sha256", f"{KIND}.{digest[:16]}.gluon_rcnn.pth"])


def test_404_names_the_url_and_the_path_where_a_manual_download_is_picked_up(server, good, reference, env,
                                                                           caplog):
    url = _url(server)
    with pytest.raises(DownloadError) as err:
        gluon_rcnn.get_model(ENTRY, pretrained=True)
    msg = str(err.value)
    manual = env / "weights" / FILE
    assert "HTTP 404" in msg and url in msg and f"put it at {manual}" in msg, msg
    assert _cache(env) == []
    n = len(server.requests)
    manual.write_bytes(good)  # downloaded by hand
    with caplog.at_level(logging.WARNING, logger="gluon_rcnn"):
        net = gluon_rcnn.get_model(ENTRY, pretrained=True)
    _same(net.state_dict(), reference)
    assert len(server.requests) == n  # no network
    assert hashlib.sha256(good).hexdigest() in caplog.text and "by hand" in caplog.text


def test_a_bad_file_put_by_hand_is_named(server, env):
    manual = env / "weights" / FILE
    manual.parent.mkdir(parents=True)
    manual.write_bytes(b"not an npz")
    with pytest.raises(model_zoo.ZooError) as err:
        gluon_rcnn.get_model(ENTRY, pretrained=True)
    msg = str(err.value)
    assert str(manual) in msg and _url(server) in msg and "Delete it" in msg, msg
    assert not list(manual.parent.glob("*.gluon_rcnn.pth*"))
    assert server.requests == []


def test_cli_lists_the_published_weights(server, capsys):
    from gluon_rcnn.cli.weights import main
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith(ENTRY + " "))
    assert line.split() == [ENTRY, "tensorpack", "npz", _url(server)] and f"-> {cached_path(_url(server))}" in out
    assert "tp_faster_rcnn_c4_resnet50_1x_coco" not in out
    assert main(["list", "--all", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    # tensorpack's (+ the 7 of its 2019 code), GluonCV's, torchvision's, detectron2's
    assert len(rows) == len(gluon_rcnn.list_models()) and sum(1 for r in rows if r["weights"]) == 9 + 7 + 8 + 2 + 21
