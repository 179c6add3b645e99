"""``get_model(d2_*, pretrained=True)``: detectron2's published ``model_final_<md5[:6]>.pkl`` downloaded, its
md5 checked against the prefix in its name (MODEL_ZOO.md: "any model on this page contains its md5 prefix in
its file name"), read by the restricted unpickler, converted with ``from_detectron2``, cached.

A local HTTP server on 127.0.0.1 (ephemeral port) stands in for dl.fbaipublicfiles.com, reached through
``$GLUON_RCNN_DETECTRON2_URL`` (the path after ``detectron2/`` is kept). It serves a pickle written as
detectron2 writes its zoo files, holding every tensor of the kind's manifest
(tests/data/detectron2_manifests) at its real shape with small random values. The entry's URL is
monkeypatched to the synthetic file's name (``model_final_<its md5[:6]>.pkl``).
"""
from __future__ import annotations

import hashlib
import json
import pickle

import pytest
from http_server import cache_files
from zoo_pretrained_common import (check_404, check_no_network, check_truncated_then_resumed,  # noqa: F401
                                   check_wrong_file, download_error, entry_at, flip, point_zoo_at, same_state,
                                   serve_file, server)
from test_convert_detectron2 import _random_model

import gluon_rcnn
from gluon_rcnn import model_zoo
from gluon_rcnn.convert import detectron2 as d2
from gluon_rcnn.download import cached_path

ENTRY, KIND = "d2_faster_rcnn_r_50_c4_1x_coco", "COCO-Detection/faster_rcnn_R_50_C4_1x"


def synthetic_pkl(seed: int = 0) -> tuple[bytes, str]:
    """(a detectron2-style zoo pickle of ``KIND`` with random values, its published-style path after
    ``detectron2/``: ``<kind>/<model id>/model_final_<md5[:6]>.pkl``)."""
    data = pickle.dumps({"model": _random_model(KIND, seed), "__author__": "Detectron2 Model Zoo"}, protocol=2)
    return data, f"{KIND}/{d2.DETECTRON2_KINDS[KIND].model_id}/model_final_{hashlib.md5(data).hexdigest()[:6]}.pkl"


def point_entry_at(path: str) -> dict:
    return entry_at(ENTRY, d2.Detectron2Source.base + path)


@pytest.fixture(scope="module")
def pkl():
    return synthetic_pkl()


@pytest.fixture(scope="module")
def reference(pkl):
    return d2.from_detectron2(pickle.loads(pkl[0]), KIND).state_dict()


@pytest.fixture(autouse=True)
def env(tmp_path, monkeypatch, server, pkl):
    return point_zoo_at(monkeypatch, tmp_path, server, d2.Detectron2Source.url_env, point_entry_at(pkl[1]))


def test_entries_record_detectron2s_zoo():
    names = {model_zoo.get_entry(n)["weights"].get("kind"): n for n in model_zoo.list_models() if n.startswith("d2_")}
    assert sorted(k for k in names if k) == sorted(d2.DETECTRON2_KINDS)
    for kind, name in names.items():
        m, e = d2.DETECTRON2_KINDS[kind], json.loads((model_zoo._zoo_dir() / f"{name}.json").read_text())
        assert e["weights"]["url"] == m.url(kind) and e["weights"]["format"] == "detectron2-pkl"
        assert (e["reference"]["box_AP"], e["reference"]["mask_AP"]) == (m.box_ap, m.mask_ap)
        assert e["reference"]["source"] == "detectron2" and e["reproduced"].startswith(
            ("yes: compared", "architecture compared via d2_", "no: not compared with detectron2 itself"))
        # the entry's config is detectron2_config(kind) (what from_detectron2 saves)
        cfg, entry_cfg = d2.detectron2_config(kind), model_zoo.get_config(name)
        assert [k for k, v in cfg.flat_items() if v != entry_cfg.get_key(k)] == [], name


def test_good_file_is_converted_once_then_loaded_from_the_cache(server, pkl, reference, env, monkeypatch):
    url = serve_file(server, pkl[1], pkl[0])
    row = {r["name"]: r for r in gluon_rcnn.list_models(details=True)}[ENTRY]
    assert row["weights"] == f"detectron2 pkl {url}" and row["file"] == str(cached_path(url))
    net = gluon_rcnn.get_model(ENTRY, pretrained=True)
    same_state(net, reference)
    assert not net.training and net.classes == tuple(model_zoo.COCO_CLASSES)
    name = pkl[1].rsplit("/", 1)[1]
    sha = hashlib.sha256(pkl[0]).hexdigest()
    assert cache_files(env) == sorted([name, name + ".sha256", f"{name[:-4]}.{sha[:16]}.gluon_rcnn.pth"])

    def no_conversion(*a, **k):
        raise AssertionError("converted again")
    monkeypatch.setattr(d2, "from_detectron2", no_conversion)
    same_state(gluon_rcnn.get_model(ENTRY, pretrained=True), reference)
    assert len(server.requests) == 1


def test_wrong_checksum_is_refused_and_nothing_is_cached(server, pkl, env):
    check_wrong_file(server, env, ENTRY, pkl[1], flip(pkl[0]), f"says it starts with {pkl[1][-10:-4]}")


def test_unsafe_pickle_with_the_right_md5_is_refused(server, env, monkeypatch):
    evil = pickle.dumps(eval)
    path = f"{KIND}/1/model_final_{hashlib.md5(evil).hexdigest()[:6]}.pkl"
    monkeypatch.setitem(model_zoo._entries(), ENTRY, point_entry_at(path))
    assert "builtins.eval" in download_error(ENTRY, serve_file(server, path, evil))
    assert cache_files(env) == []


def test_truncated_download_is_kept_and_resumed(server, pkl, reference, env):
    check_truncated_then_resumed(server, env, ENTRY, pkl[1], pkl[0], reference)


def test_404_names_the_url_and_the_manual_path(server, pkl, env):
    check_404(server, env, ENTRY, pkl[1])


def test_no_network_names_the_url_and_the_manual_path(pkl, env, monkeypatch):
    check_no_network(monkeypatch, env, d2.Detectron2Source.url_env, ENTRY, pkl[1])
