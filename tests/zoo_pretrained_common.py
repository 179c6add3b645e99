"""Helpers shared by the ``get_model(entry, pretrained=True)`` tests of the torchvision and detectron2
formats (tests/test_zoo_pretrained_{torchvision,detectron2}.py): a local server, the entry pointed at it,
state-dict equality, the error a failed download must raise."""
from __future__ import annotations

import pytest
import torch
from http_server import cache_files, closed_port_base, serve

import gluon_rcnn
from gluon_rcnn import model_zoo
from gluon_rcnn.download import DownloadError, cached_path


@pytest.fixture(scope="module")
def server():
    with serve() as srv:
        yield srv


def point_zoo_at(monkeypatch, tmp_path, server, url_env: str, entry: dict):
    """A fresh cache (``$GLUON_RCNN_HOME``), ``url_env`` set to the server, ``entry`` in the zoo; returns the home."""
    monkeypatch.setenv("GLUON_RCNN_HOME", str(tmp_path / "home"))
    monkeypatch.setenv(url_env, server.base)
    monkeypatch.setitem(model_zoo._entries(), entry["name"], entry)
    server.routes.clear()
    server.requests.clear()
    return tmp_path / "home"


def same_state(net, ref) -> None:
    a = net.state_dict()
    assert set(a) == set(ref)
    bad = [k for k in ref if not torch.equal(a[k], ref[k])]
    assert not bad, bad[:5]


def download_error(entry: str, url: str) -> str:
    """The message of the DownloadError ``get_model(entry, pretrained=True)`` raises; it names ``url`` and
    the path where a file downloaded by hand is picked up."""
    with pytest.raises(DownloadError) as err:
        gluon_rcnn.get_model(entry, pretrained=True)
    msg = str(err.value)
    assert url in msg and f"put it at {cached_path(url)}" in msg, msg
    return msg


def entry_at(name: str, url: str) -> dict:
    """Zoo entry ``name`` with its weights' URL replaced by ``url`` (the synthetic file's published-style name)."""
    e = model_zoo.get_entry(name)
    e["weights"]["url"] = url
    return e


def serve_file(server, path: str, body: bytes, mode: str = "range") -> str:
    """Serve ``body`` at ``/path``; returns its URL."""
    server.routes[f"/{path}"] = {"body": body, "mode": mode}
    return f"{server.base}/{path}"


# the failure cases, the same for every format: (entry, the file's path on the server, its bytes)

def check_wrong_file(server, home, entry: str, path: str, body: bytes, says: str) -> None:
    """A file that fails its check (``says`` is in the error) is refused; nothing enters the cache."""
    assert says in download_error(entry, serve_file(server, path, body)), says
    assert cache_files(home) == []


def check_truncated_then_resumed(server, home, entry: str, path: str, body: bytes, reference) -> None:
    """A short read keeps the ``.part``; the next call resumes it (HTTP Range) and loads the model."""
    assert "truncated download" in download_error(entry, serve_file(server, path, body, "truncate"))
    assert cache_files(home) == [path.rsplit("/", 1)[-1] + ".part"]
    serve_file(server, path, body)
    same_state(gluon_rcnn.get_model(entry, pretrained=True), reference)
    assert server.requests[-1][1] is not None and server.requests[-1][1].startswith("bytes=")


def check_404(server, home, entry: str, path: str) -> None:
    assert "HTTP 404" in download_error(entry, f"{server.base}/{path}")
    assert cache_files(home) == []


def check_no_network(monkeypatch, home, url_env: str, entry: str, path: str) -> None:
    """The base URL at a closed port on 127.0.0.1: connection refused, named with the URL and the manual path."""
    base = closed_port_base()
    monkeypatch.setenv(url_env, base)
    assert "network error" in download_error(entry, f"{base}/{path}")
    assert cache_files(home) == []


def flip(data: bytes, at: int = -100) -> bytes:
    """``data`` with one bit flipped (a file of the right length and the wrong checksum)."""
    other = bytearray(data)
    other[at] ^= 1
    return bytes(other)
