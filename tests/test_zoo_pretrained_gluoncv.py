"""``get_model(gluoncv_c4_r50, pretrained=True)``: GluonCV's published .params zip downloaded, its
sha1 checked, converted with ``from_gluoncv``, cached.

A local HTTP server on 127.0.0.1 (ephemeral port) stands in for GluonCV's repository, reached through
``$GLUON_RCNN_GLUONCV_URL``. It serves a synthetic zip holding ``<name>-<short hash>.params`` written in
MXNet's NDArray-list format (the layout ``gluon_rcnn.convert.gluoncv.read_params`` documents) with every
GluonCV parameter of the net at its real shape: zeros, deflated, with random values in a few tensors so
that equality with ``from_gluoncv`` means something. The entry's sha1 is monkeypatched to the synthetic
file's (the published one is of GluonCV's real file).
"""
from __future__ import annotations

import hashlib
import io
import json
import struct
import zipfile

import numpy as np
import pytest
import torch
from http_server import serve

import gluon_rcnn
from gluon_rcnn import model_zoo
from gluon_rcnn.convert import gluoncv as gcv
from gluon_rcnn.convert.source import file_name
from gluon_rcnn.download import DownloadError, cached_path

ENTRY = "faster_rcnn_resnet50_v1b_coco"
RANDOM = ("features.0.weight", "rpn.score.weight", "rpn.loc.bias", "class_predictor.weight", "box_predictor.weight",
          "box_predictor.bias", "top_features.0.0.conv2.weight")


def write_params(arrays: dict) -> bytes:
    """MXNet's ``mx.nd.save`` bytes of name → float32 array (list magic, v2 dense arrays, names)."""
    out = [struct.pack("<QQQ", gcv.LIST_MAGIC, 0, len(arrays))]
    for a in arrays.values():
        a = np.ascontiguousarray(a, "<f4")
        out.append(struct.pack("<Iii", 0xF993FAC9, 0, a.ndim) + struct.pack(f"<{a.ndim}q", *a.shape)
                   + struct.pack("<iii", 1, 0, 0) + a.tobytes())
    out.append(struct.pack("<Q", len(arrays)))
    for n in arrays:
        out.append(struct.pack("<Q", len(n.encode())) + n.encode())
    return b"".join(out)


def synthetic_params() -> bytes:
    cfg = gcv.gluoncv_config(ENTRY)
    from gluon_rcnn.builders import build_model
    ref = build_model(cfg).state_dict()
    rng = np.random.default_rng(0)
    arrays = {}
    for g, o in gcv.name_map(cfg):
        shape = list(ref[o].shape)
        if g.startswith("box_predictor."):
            shape[0] -= 4  # GluonCV has no background row
        if g in RANDOM:
            a = rng.standard_normal(shape).astype(np.float32) * 0.01
        elif g.endswith("running_var") or g.endswith("gamma"):
            a = np.ones(shape, np.float32)
        else:
            a = np.zeros(shape, np.float32)
        arrays[g] = a
    return write_params(arrays)


def _zip(members: dict) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        for n, data in members.items():
            zf.writestr(n, data)
    return buf.getvalue()


@pytest.fixture(scope="module")
def params():
    return synthetic_params()


@pytest.fixture(scope="module")
def names():
    w = model_zoo.get_entry(ENTRY)["weights"]
    zname = file_name(w["url"])
    return zname, zname[:-len(".zip")] + ".params"


@pytest.fixture(scope="module")
def good(params, names):
    return _zip({names[1]: params})


@pytest.fixture(scope="module")
def reference(params):
    net = gcv.from_gluoncv(params, ENTRY)
    return net


@pytest.fixture(scope="module")
def server():
    with serve() as srv:
        yield srv


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch, server, params):
    monkeypatch.setenv("GLUON_RCNN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(gcv.GluonCVSource.url_env, server.base)
    e = model_zoo.get_entry(ENTRY)
    e["weights"]["sha1"] = hashlib.sha1(params).hexdigest()  # the synthetic file's
    monkeypatch.setitem(model_zoo._entries(), ENTRY, e)
    server.routes.clear()
    server.requests.clear()
    return tmp_path / "home"


def _url(server, names):
    return f"{server.base}/gluon/models/{names[0]}"


def _route(server, names, body, mode="range"):
    server.routes[f"/gluon/models/{names[0]}"] = {"body": body, "mode": mode}


def _cache(home) -> list[str]:
    d = home / "weights"
    return sorted(p.name for p in d.iterdir() if not p.name.endswith(".lock")) if d.is_dir() else []


def _same_model(net, ref):
    a, b = net.state_dict(), ref.state_dict()
    assert set(a) == set(b)
    bad = [k for k in b if not torch.equal(a[k], b[k])]
    assert not bad, bad[:5]
    ca, cb = net.rpn.anchor_generator.cell_anchors, ref.rpn.anchor_generator.cell_anchors
    assert len(ca) == len(cb) and all(torch.equal(x, y) for x, y in zip(ca, cb))
    assert net.config.to_dict() == ref.config.to_dict()  # GluonCV's rules (legacy anchors, ...) included


def test_entries_record_gluoncvs_published_files():
    src = "/work/gcv-ref/venv/lib/python3.11/site-packages/gluoncv/model_zoo/model_store.py"
    published = {"faster_rcnn_resnet50_v1b_coco": "5b4690fb7c5b62c44fb36c67d0642b633697f1bb",
                 "mask_rcnn_resnet50_v1b_coco": "a3527fdc2cee5b1f32a61e5fd7cda8fb673e86e5"}
    for name, sha1 in published.items():
        w = json.loads((model_zoo._zoo_dir() / f"{name}.json").read_text())["weights"]
        assert w["url"] == ("https://apache-mxnet.s3-accelerate.dualstack.amazonaws.com/gluon/models/"
                            f"{name}-{sha1[:8]}.zip")
        assert (w["sha1"], w["format"], w["name"]) == (sha1, "gluoncv-params", name)
    try:
        text = open(src).read()
    except OSError:
        return
    for name, sha1 in published.items():
        assert f"('{sha1}', '{name}')" in text


def test_good_zip_is_converted_once_then_loaded_from_the_cache(server, names, good, params, reference, env,
                                                              monkeypatch):
    _route(server, names, good)
    url = _url(server, names)
    row = {r["name"]: r for r in gluon_rcnn.list_models(details=True)}[ENTRY]
    assert row == {"name": ENTRY, "weights": f"gluoncv params {url}", "file": str(cached_path(url)),
                   "reproduced": model_zoo.get_entry(ENTRY)["reproduced"]}
    net = gluon_rcnn.get_model(ENTRY, pretrained=True)
    _same_model(net, reference)
    assert not net.training and net.classes == tuple(model_zoo.COCO_CLASSES)
    sha1 = hashlib.sha1(params).hexdigest()
    stem = names[0][:-len(".zip")]
    assert _cache(env) == sorted([names[0], names[0] + ".sha256", f"{stem}.{sha1[:16]}.gluon_rcnn.pth"])
    assert len(server.requests) == 1

    def no_conversion(*a, **k):
        raise AssertionError("converted again")
    monkeypatch.setattr(gcv, "from_gluoncv", no_conversion)
    _same_model(gluon_rcnn.get_model(ENTRY, pretrained=True), reference)
    assert len(server.requests) == 1


def _error(server, names, env) -> str:
    with pytest.raises(DownloadError) as err:
        gluon_rcnn.get_model(ENTRY, pretrained=True)
    msg = str(err.value)
    url = _url(server, names)
    assert url in msg and f"put it at {cached_path(url)}" in msg, msg
    return msg


def test_wrong_checksum_is_refused_and_nothing_is_cached(server, names, params, env):
    other = bytearray(params)
    other[-200] ^= 1  # a bit of the last array's data
    _route(server, names, _zip({names[1]: bytes(other)}))
    msg = _error(server, names, env)
    assert "sha1" in msg and "expected GluonCV's" in msg and names[1] in msg, msg
    assert _cache(env) == []


def test_a_zip_without_the_params_or_with_other_members_only_reads_the_expected_one(server, names, params, env):
    _route(server, names, _zip({"../../evil.params": params, "x/" + names[1]: params}))
    msg = _error(server, names, env)
    assert f"holds no {names[1]}" in msg, msg
    assert _cache(env) == []
    assert not list(env.parent.rglob("evil.params"))


def test_truncated_download_is_kept_and_resumed(server, names, good, reference, env):
    _route(server, names, good, mode="truncate")
    msg = _error(server, names, env)
    assert "truncated download" in msg
    assert _cache(env) == [names[0] + ".part"]
    _route(server, names, good)
    _same_model(gluon_rcnn.get_model(ENTRY, pretrained=True), reference)
    assert server.requests[-1][1] is not None and server.requests[-1][1].startswith("bytes=")


def test_404_names_the_url_and_the_manual_path(server, names, good, reference, env):
    msg = _error(server, names, env)
    assert "HTTP 404" in msg
    assert _cache(env) == []
    manual = cached_path(_url(server, names))
    manual.write_bytes(good)  # downloaded by hand
    n = len(server.requests)
    _same_model(gluon_rcnn.get_model(ENTRY, pretrained=True), reference)
    assert len(server.requests) == n


def test_no_network_names_the_url_and_the_manual_path(names, env, monkeypatch):
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there: connection refused
    monkeypatch.setenv(gcv.GluonCVSource.url_env, f"http://127.0.0.1:{port}")
    url = f"http://127.0.0.1:{port}/gluon/models/{names[0]}"
    with pytest.raises(DownloadError) as err:
        gluon_rcnn.get_model(ENTRY, pretrained=True)
    msg = str(err.value)
    assert "network error" in msg and url in msg and f"put it at {cached_path(url)}" in msg, msg
    assert _cache(env) == []


def test_cli_lists_the_gluoncv_weights(server, names, capsys):
    from gluon_rcnn.cli.weights import main
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith(ENTRY + " "))
    assert line.split() == [ENTRY, "gluoncv", "params", _url(server, names)]
