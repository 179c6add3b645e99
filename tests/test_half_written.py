"""Nothing half-written, nothing said twice in two ways: a failed prediction leaves no output (no
PNGs of the images before the bad one, no temporary files, an earlier run's files untouched); a
download leaves no ``.lock`` file, failed or not; a torchvision file put in the cache by hand that is
not the published one gets one error, the one its published name's sha256 prefix gives (not first
"no checksum is published ... recorded", then a contradiction); ``get_model`` without weights says
once that its heads are random."""
from __future__ import annotations

import hashlib
import logging
import warnings

import cv2
import numpy as np
import pytest
import torch
from http_server import closed_port_base, serve

from gluon_rcnn import model_zoo
from gluon_rcnn.download import ChecksumError, DownloadError, cached_path, download
from gluon_rcnn.engine.predict import predict_files


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("GLUON_RCNN_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


class _Detector:
    classes = ("thing",)

    def __call__(self, images):
        return [{"boxes": torch.tensor([[1.0, 1.0, 9.0, 9.0]]), "scores": torch.tensor([0.9]),
                 "labels": torch.tensor([1])} for _ in images]


def _images(folder, bad_at=None):
    folder.mkdir()
    files = []
    for k in range(3):
        p = folder / f"im{k}.png"
        cv2.imwrite(str(p), np.full((12, 16, 3), 40 * k, np.uint8))
        if k == bad_at:
            p.write_bytes(p.read_bytes()[:30])  # truncated
        files.append(p)
    return files


def test_failed_prediction_writes_nothing(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "im0.png").write_bytes(b"an earlier run's picture")
    with pytest.raises(ValueError, match="im1.png"):
        predict_files(_Detector(), _images(tmp_path / "in", bad_at=1), out, 0.5, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["im0.png"]  # no catalogue, no temporary file, no new PNG
    assert (out / "im0.png").read_bytes() == b"an earlier run's picture"
    # a run that succeeds moves every PNG into place with the CSV, and leaves no temporary file
    csv_path = predict_files(_Detector(), _images(tmp_path / "good"), out, 0.5, progress=False)
    assert sorted(p.name for p in out.iterdir()) == ["catalogue.csv", "im0.png", "im1.png", "im2.png"]
    assert cv2.imread(str(out / "im0.png")).shape == (12, 16, 3)
    assert len(csv_path.read_text().splitlines()) == 4


def test_no_lock_file_is_left_by_a_failed_or_a_good_download(home):
    url = f"{closed_port_base()}/offline/model.pth"
    with pytest.raises(DownloadError, match="could not download"):
        download(url, progress=False)
    assert list((home / "weights").iterdir()) == []
    body = b"weights" * 1000
    with serve() as srv:
        srv.routes["/w.bin"] = {"body": body}
        path = download(f"{srv.base}/w.bin", sha256=hashlib.sha256(body).hexdigest(), progress=False)
    assert path.read_bytes() == body and sorted(p.name for p in path.parent.iterdir()) == ["w.bin"]


def test_sha256_prefix_is_checked_before_anything_is_recorded(home, caplog):
    body = b"published with a prefix in its name" * 100
    digest = hashlib.sha256(body).hexdigest()
    with serve() as srv:
        srv.routes["/good.pth"] = srv.routes["/bad.pth"] = {"body": body}
        with pytest.raises(ChecksumError, match=f"sha256 {digest}, but its published file name says it starts "
                                                "with 00000000; refusing"):
            download(f"{srv.base}/bad.pth", sha256_prefix="00000000", progress=False)
        assert list((home / "weights").iterdir()) == []
        with caplog.at_level(logging.WARNING, logger="gluon_rcnn.download"):
            path = download(f"{srv.base}/good.pth", sha256_prefix=digest[:8], progress=False)
    assert f"only the sha256 prefix {digest[:8]} is published" in caplog.text and digest in caplog.text
    assert "no checksum is published" not in caplog.text
    assert path.with_name("good.pth.sha256").read_text().split()[0] == digest


def test_bad_torchvision_file_placed_by_hand_gets_one_consistent_error(home, monkeypatch, caplog):
    monkeypatch.delenv("GLUON_RCNN_TORCHVISION_URL", raising=False)
    entry = "tv_faster_rcnn_fpn_resnet50_coco"
    w = model_zoo.get_entry(entry)["weights"]
    dest = cached_path(w["url"])
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"not torchvision's file")
    seen = hashlib.sha256(dest.read_bytes()).hexdigest()
    with caplog.at_level(logging.WARNING, logger="gluon_rcnn.download"), pytest.raises(ChecksumError) as err:
        model_zoo.get_model(entry, pretrained=True)
    msg = str(err.value)
    assert f"{dest} (the cached file of {w['url']}) has the wrong checksum: sha256 {seen}" in msg, msg
    assert f"says it starts with {w['sha256_prefix']}; refusing to use it" in msg and "Delete it" in msg, msg
    assert "no checksum is published" not in caplog.text and "recorded" not in caplog.text
    assert not dest.with_name(dest.name + ".sha256").exists()  # the wrong file's sha256 is not recorded


def test_get_model_without_weights_warns_once_per_entry(monkeypatch, tmp_path):
    monkeypatch.setattr(model_zoo, "_WARNED_RANDOM", set())
    name = "faster_rcnn_fpn_resnet18_v1b_coco"
    small = ["BACKBONE.RESNET_NUM_BLOCKS=[2,2,2,2]", "FPN.NUM_CHANNEL=32", "FPN.FRCNN_FC_HEAD_DIM=64"]
    with pytest.warns(model_zoo.RandomWeightsWarning, match=rf"get_model\('{name}'\) without pretrained: its "
                                                            "detection heads are random"):
        net = model_zoo.get_model(name, classes=["a", "b"], overrides=small)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        model_zoo.get_model(name, overrides=small)  # the second time: no word
        from gluon_rcnn.convert.checkpoint import save_checkpoint
        path = save_checkpoint(net, tmp_path / "w.pth")
        monkeypatch.setattr(model_zoo, "_WARNED_RANDOM", set())
        model_zoo.get_model(name, pretrained=str(path), overrides=small)  # weights: no warning
