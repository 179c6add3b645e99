"""get_model(name, pretrained=True) downloads the entry's published file (gluon_rcnn.download):
against a local HTTP server on 127.0.0.1 (started here, stopped at the end of the module, at most
60 s): a good file loads; a wrong checksum, a truncated download, a 404, no network and a timeout
are clear errors naming the URL and the path where a file downloaded by hand is picked up; a
truncated .part is resumed with a Range request; a file without a published checksum has its
sha256 logged and recorded; a file put in the cache by hand is used with no server at all."""
from __future__ import annotations

import hashlib
import io
import logging
import socket
import threading
import time
from http_server import serve

import pytest
import torch

from gluon_rcnn import model_zoo
from gluon_rcnn.download import ChecksumError, DownloadError, cache_dir, cached_path, download

BASE = "faster_rcnn_fpn_resnet18_v1b_coco"
NAME = "test_download_published"                      # a temporary zoo entry, see _entry
SHRINK = {"NUM_CHANNEL": 64, "FRCNN_FC_HEAD_DIM": 128}  # a ~47 MB checkpoint instead of ~113 MB
SMALL = ["PREPROC.TEST_SHORT_EDGE_SIZE=128", "PREPROC.MAX_SIZE=160", "TEST.RESULT_SCORE_THRESH=0.01"]


@pytest.fixture(scope="module")
def server():
    with serve("") as srv:
        yield srv


@pytest.fixture(scope="module")
def ckpt():
    """A real gluon_rcnn checkpoint (what Trainer.save_final writes), its sha256 and the model's output."""
    torch.manual_seed(0)
    m = model_zoo.get_model(BASE, classes=["a", "b"], overrides=SMALL + [f"FPN.{k}={v}" for k, v in SHRINK.items()])
    buf = io.BytesIO()
    torch.save({"model": m.state_dict(), "config": m.config.to_dict()}, buf)
    data = buf.getvalue()
    image = torch.rand(3, 128, 160, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = m([image])[0]
    assert out["boxes"].shape[0] > 0  # something to compare
    return {"bytes": data, "sha256": hashlib.sha256(data).hexdigest(), "sha1": hashlib.sha1(data).hexdigest(),
            "image": image, "out": out}


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("GLUON_RCNN_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _entry(monkeypatch, url, sha256="", sha1=None):
    """A zoo entry NAME (the BASE entry, narrower) whose published weights are ``url``."""
    e = model_zoo.get_entry(BASE)
    e["name"] = NAME
    e["config"].setdefault("FPN", {}).update(SHRINK)
    e["weights"] = {"url": url, "sha256": sha256}
    if sha1:
        e["weights"]["sha1"] = sha1
    monkeypatch.setitem(model_zoo._entries(), NAME, e)


def _dead_url(path="/ckpt.pth"):
    """A URL on 127.0.0.1 where nothing listens: no network."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


def _assert_loaded(net, ckpt):
    with torch.no_grad():
        out = net([ckpt["image"]])[0]
    for k in ("boxes", "scores", "labels"):
        assert torch.equal(out[k], ckpt["out"][k]), k


def _assert_clear(err, url):
    msg = str(err.value)
    assert url in msg and f"put it at {cached_path(url)}" in msg, msg
    return msg


def test_good_file_loads_and_four_clear_errors(server, ckpt, monkeypatch, home):
    # a good file: downloaded into $GLUON_RCNN_HOME/weights/<its name>, checked, loaded
    url = f"{server.base}/good/model_final.pth"
    server.routes["/good/model_final.pth"] = {"body": ckpt["bytes"]}
    _entry(monkeypatch, url, sha256=ckpt["sha256"])
    _assert_loaded(model_zoo.get_model(NAME, pretrained=True), ckpt)
    path = home / "weights" / "model_final.pth"
    assert cached_path(url) == path and path.read_bytes() == ckpt["bytes"]
    assert not list(path.parent.glob("*.part"))
    n = len(server.requests)
    _assert_loaded(model_zoo.get_model(NAME, pretrained=True), ckpt)  # from the cache: no request
    assert len(server.requests) == n

    # 1. wrong checksum: nothing kept, the URL, both digests and the manual path named
    bad = bytearray(ckpt["bytes"])
    bad[len(bad) // 2] ^= 0xFF
    url = f"{server.base}/wrong/model.pth"
    server.routes["/wrong/model.pth"] = {"body": bytes(bad)}
    _entry(monkeypatch, url, sha256=ckpt["sha256"])
    with pytest.raises(ChecksumError) as err:
        model_zoo.get_model(NAME, pretrained=True)
    msg = _assert_clear(err, url)
    assert ckpt["sha256"] in msg and hashlib.sha256(bad).hexdigest() in msg
    assert not cached_path(url).exists() and not list(cached_path(url).parent.glob("model.pth*part"))

    # 2. truncated download: the .part stays for a resume
    url = f"{server.base}/short/model.pth"
    server.routes["/short/model.pth"] = {"body": ckpt["bytes"], "mode": "truncate"}
    _entry(monkeypatch, url, sha256=ckpt["sha256"])
    with pytest.raises(DownloadError) as err:
        model_zoo.get_model(NAME, pretrained=True)
    msg = _assert_clear(err, url)
    assert f"truncated download: {len(ckpt['bytes']) // 2} of {len(ckpt['bytes'])} bytes" in msg
    assert not cached_path(url).exists()

    # 3. 404
    url = f"{server.base}/missing/model.pth"
    _entry(monkeypatch, url, sha256=ckpt["sha256"])
    with pytest.raises(DownloadError) as err:
        model_zoo.get_model(NAME, pretrained=True)
    assert "HTTP 404" in _assert_clear(err, url)

    # 4. no network
    url = _dead_url("/offline/model.pth")
    _entry(monkeypatch, url, sha256=ckpt["sha256"])
    with pytest.raises(DownloadError) as err:
        model_zoo.get_model(NAME, pretrained=True)
    assert "network error" in _assert_clear(err, url)


def test_truncated_download_resumes_with_range(server, ckpt, monkeypatch):
    url = f"{server.base}/resume/model.pth"
    server.routes["/resume/model.pth"] = {"body": ckpt["bytes"], "mode": "truncate"}
    _entry(monkeypatch, url, sha256=ckpt["sha256"])
    with pytest.raises(DownloadError, match="truncated download"):
        model_zoo.get_model(NAME, pretrained=True)
    part = cached_path(url).with_name("model.pth.part")
    half = len(ckpt["bytes"]) // 2
    assert part.stat().st_size == half
    server.routes["/resume/model.pth"]["mode"] = "range"
    server.requests.clear()
    _assert_loaded(model_zoo.get_model(NAME, pretrained=True), ckpt)
    assert server.requests == [("/resume/model.pth", f"bytes={half}-")]
    assert not part.exists() and cached_path(url).read_bytes() == ckpt["bytes"]


def test_server_ignoring_range_restarts_from_zero(server):
    body = bytes(range(256)) * 400
    server.routes["/norange.bin"] = {"body": body, "mode": "truncate"}
    url = f"{server.base}/norange.bin"
    with pytest.raises(DownloadError, match="truncated"):
        download(url, sha256=hashlib.sha256(body).hexdigest(), progress=False)
    server.routes["/norange.bin"]["mode"] = "norange"  # answers 200 with the whole file
    path = download(url, sha256=hashlib.sha256(body).hexdigest(), progress=False)
    assert path.read_bytes() == body


def test_no_published_checksum_is_said_and_recorded(server, ckpt, monkeypatch, caplog):
    url = f"{server.base}/nosum/model.pth"
    server.routes["/nosum/model.pth"] = {"body": ckpt["bytes"]}
    _entry(monkeypatch, url, sha256="")
    with caplog.at_level(logging.WARNING, logger="gluon_rcnn.download"):
        _assert_loaded(model_zoo.get_model(NAME, pretrained=True), ckpt)
    assert f"no checksum is published for {url}; sha256 of the downloaded file: {ckpt['sha256']}" in caplog.text
    side = cached_path(url).with_name("model.pth.sha256")
    assert side.read_text().split()[0] == ckpt["sha256"]
    _assert_loaded(model_zoo.get_model(NAME, pretrained=True), ckpt)  # checked against the record
    with open(cached_path(url), "r+b") as f:                          # the cached file changes
        f.seek(100)
        f.write(b"\0" * 8)
    with pytest.raises(ChecksumError, match="changed since it was first used") as err:
        model_zoo.get_model(NAME, pretrained=True)
    _assert_clear(err, url)


def test_sha1_is_checked(server):
    body = b"published with a sha1 only\n" * 100
    server.routes["/sha1.bin"] = {"body": body}
    url = f"{server.base}/sha1.bin"
    with pytest.raises(ChecksumError, match=r"sha1 [0-9a-f]{40}, expected 0{40}"):
        download(url, sha1="0" * 40, progress=False)
    assert download(url, sha1=hashlib.sha1(body).hexdigest(), progress=False).read_bytes() == body


def test_file_placed_by_hand_is_used_without_network(ckpt, monkeypatch, home):
    url = _dead_url("/by_hand/model_final_f10217.pkl.pth")
    _entry(monkeypatch, url, sha256=ckpt["sha256"], sha1=ckpt["sha1"])
    with pytest.raises(DownloadError) as err:
        model_zoo.get_model(NAME, pretrained=True)
    where = str(cached_path(url))
    assert where == str(home / "weights" / "model_final_f10217.pkl.pth") and where in str(err.value)
    cache_dir().joinpath("weights").mkdir(parents=True, exist_ok=True)
    with open(where, "wb") as f:
        f.write(ckpt["bytes"])
    _assert_loaded(model_zoo.get_model(NAME, pretrained=True), ckpt)
    # a wrong file placed there is an error naming it (not silently replaced)
    with open(where, "ab") as f:
        f.write(b"x")
    with pytest.raises(ChecksumError) as err:
        model_zoo.get_model(NAME, pretrained=True)
    assert f"{where} (the cached file of {url}) has the wrong checksum" in str(err.value)


def test_timeout_is_a_clear_error(server):
    server.routes["/slow.bin"] = {"body": b"late", "mode": "sleep", "sleep": 1.5}
    url = f"{server.base}/slow.bin"
    t = time.monotonic()
    with pytest.raises(DownloadError, match=r"no answer within 0\.5 s") as err:
        download(url, timeout=0.5, progress=False)
    assert time.monotonic() - t < 1.4
    _assert_clear(err, url)


def test_concurrent_downloads_of_one_file(server):
    """Two downloads of one URL at once: one downloads (under a lock), the other waits and uses it."""
    body = b"0123456789abcdef" * 65536
    server.routes["/both.bin"] = {"body": body, "mode": "sleep", "sleep": 0.3}
    url = f"{server.base}/both.bin"
    server.requests.clear()
    got, errors = [], []

    def one():
        try:
            got.append(download(url, sha256=hashlib.sha256(body).hexdigest(), progress=False))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not errors and len(got) == 2 and got[0] == got[1] and got[0].read_bytes() == body
    assert server.requests == [("/both.bin", None)]
