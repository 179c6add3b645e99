"""``get_model(tv_*, pretrained=True)``: torchvision's published ``.pth`` downloaded, its sha256 checked
against the 8-hex prefix in its name (torch.hub's ``check_hash``), loaded ``weights_only`` into torchvision's
model, converted with ``from_torchvision``, cached.

A local HTTP server on 127.0.0.1 (ephemeral port) stands in for download.pytorch.org, reached through
``$GLUON_RCNN_TORCHVISION_URL``. It serves a synthetic state dict of torchvision's
``fasterrcnn_resnet50_fpn`` as its builder makes it for the COCO_V1 weights (FrozenBatchNorm2d with eps 0;
seeded random weights, random frozen-BN statistics): real names and shapes. The entry's URL is
monkeypatched to the synthetic file's name (``...-<its sha256[:8]>.pth``).
"""
from __future__ import annotations

import hashlib
import io
import json

import pytest
import torch
from detection_match import BOX_TOL, SCORE_TOL, compare_detections, randomize_frozen_bn
from http_server import cache_files
from zoo_pretrained_common import (check_404, check_no_network, check_truncated_then_resumed,  # noqa: F401
                                   check_wrong_file, entry_at, flip, point_zoo_at, same_state,
                                   serve_file, server)

import gluon_rcnn
from gluon_rcnn import model_zoo
from gluon_rcnn.convert import torchvision as tvc
from gluon_rcnn.convert.source import weight_source
from gluon_rcnn.download import cached_path

ENTRY, ARCH = "tv_faster_rcnn_fpn_resnet50_coco", "fasterrcnn_resnet50_fpn"
SOURCE = weight_source("torchvision-pth")


def synthetic_model(seed: int = 0):
    """torchvision's ``ARCH`` as built for its published weights, seeded random weights and frozen-BN statistics."""
    torch.manual_seed(seed)
    return randomize_frozen_bn(tvc.torchvision_model(ARCH), seed + 1).eval()


def synthetic_pth(seed: int = 0) -> tuple[bytes, str]:
    """(the ``torch.save`` bytes of the synthetic state dict, its published-style file name)."""
    buf = io.BytesIO()
    torch.save(synthetic_model(seed).state_dict(), buf)
    data = buf.getvalue()
    return data, f"fasterrcnn_resnet50_fpn_coco-{hashlib.sha256(data).hexdigest()[:8]}.pth"


def point_entry_at(file_name: str) -> dict:
    return entry_at(ENTRY, SOURCE.base + file_name)


@pytest.fixture(scope="module")
def pth():
    return synthetic_pth()


@pytest.fixture(scope="module")
def reference(pth):
    return tvc.from_torchvision(synthetic_model()).state_dict()


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch, server, pth):
    return point_zoo_at(monkeypatch, tmp_path, server, SOURCE.url_env, point_entry_at(pth[1]))


def test_entries_record_torchvisions_published_files():
    from torchvision.models.detection import FasterRCNN_ResNet50_FPN_Weights, MaskRCNN_ResNet50_FPN_Weights
    for name, weights in [(ENTRY, FasterRCNN_ResNet50_FPN_Weights.COCO_V1),
                          ("tv_mask_rcnn_fpn_resnet50_coco", MaskRCNN_ResNet50_FPN_Weights.COCO_V1)]:
        e = json.loads((model_zoo._zoo_dir() / f"{name}.json").read_text())
        w, metrics = e["weights"], weights.meta["_metrics"]["COCO-val2017"]
        assert (w["url"], w["format"]) == (weights.url, "torchvision-pth")
        assert weights.url.endswith(f"-{w['sha256_prefix']}.pth") and len(w["sha256_prefix"]) == 8
        assert (e["reference"]["box_AP"], e["reference"]["mask_AP"]) == (metrics["box_map"], metrics.get("mask_map"))
        assert e["reproduced"].startswith("yes: equal to torchvision's model")
        # the entry's config is what from_torchvision produces (the architecture check of get_model passes)
        with torch.device("meta"):
            cfg = tvc.torchvision_config(tvc.torchvision_model(w["arch"]))
        entry_cfg = model_zoo.get_config(name)
        assert [k for k, v in cfg.flat_items() if v != entry_cfg.get_key(k)] == []


def test_good_file_is_converted_once_then_loaded_from_the_cache(server, pth, reference, env, monkeypatch):
    url = serve_file(server, pth[1], pth[0])
    row = {r["name"]: r for r in gluon_rcnn.list_models(details=True)}[ENTRY]
    assert row["weights"] == f"torchvision pth {url}" and row["file"] == str(cached_path(url))
    net = gluon_rcnn.get_model(ENTRY, pretrained=True)
    same_state(net, reference)
    assert not net.training and len(net.classes) == 90 and net.classes[0] == "person"
    sha = hashlib.sha256(pth[0]).hexdigest()
    assert cache_files(env) == sorted([pth[1], pth[1] + ".sha256", f"{pth[1][:-4]}.{sha[:16]}.gluon_rcnn.pth"])

    def no_conversion(*a, **k):
        raise AssertionError("converted again")
    monkeypatch.setattr(tvc, "from_torchvision", no_conversion)
    same_state(gluon_rcnn.get_model(ENTRY, pretrained=True), reference)
    assert len(server.requests) == 1


@torch.no_grad()
def test_converted_model_gives_torchvisions_outputs(server, pth):
    """The zoo's converted model and torchvision's model holding the same state dict, one 240x320 image."""
    serve_file(server, pth[1], pth[0])
    small = ["PREPROC.TEST_SHORT_EDGE_SIZE=320", "PREPROC.MAX_SIZE=320", "TEST.RESULT_SCORE_THRESH=0.0"]
    ours = gluon_rcnn.get_model(ENTRY, pretrained=True, overrides=small)
    tv = tvc.torchvision_model(ARCH)
    tv.load_state_dict(torch.load(io.BytesIO(pth[0]), weights_only=True))
    tv.transform.min_size, tv.transform.max_size, tv.roi_heads.score_thresh = (320,), 320, 0.0
    img = torch.rand(3, 240, 320, generator=torch.Generator().manual_seed(0))
    s = compare_detections(tv([img])[0], ours([img])[0])
    assert s["n_tv"] == s["n_ours"] == s["pairs"] > 20, s
    assert s["box"] <= BOX_TOL and s["score"] <= SCORE_TOL


def test_wrong_checksum_is_refused_and_nothing_is_cached(server, pth, env):
    check_wrong_file(server, env, ENTRY, pth[1], flip(pth[0]), f"says it starts with {pth[1][-12:-4]}")


def test_truncated_download_is_kept_and_resumed(server, pth, reference, env):
    check_truncated_then_resumed(server, env, ENTRY, pth[1], pth[0], reference)


def test_404_names_the_url_and_the_manual_path(server, pth, env):
    check_404(server, env, ENTRY, pth[1])


def test_no_network_names_the_url_and_the_manual_path(pth, env, monkeypatch):
    check_no_network(monkeypatch, env, SOURCE.url_env, ENTRY, pth[1])
