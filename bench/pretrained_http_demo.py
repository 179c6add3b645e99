#!/usr/bin/env python
"""get_model(entry, pretrained=True) against a local HTTP server on 127.0.0.1 (tests/http_server.py), one
entry of each published-weights format (tensorpack npz, GluonCV params zip, torchvision pth, detectron2 pkl):
a good file (-> the loaded model), a wrong checksum (tensorpack publishes none: the good file's sha256 is
passed as get_model(..., sha256=) and one bit of the served file is flipped), a truncated download, a 404 and no network (a closed port): one line each;
and a tensorpack checkpoint of the February-2019 code (tp2019_* entries, the tensorpack-2019 rule profile).

The synthetic files are the tests' (real names and shapes): tests/test_zoo_pretrained*.py. Their entries'
checksums / file names are pointed at the synthetic files (the published ones are of the real files).

    python bench/pretrained_http_demo.py
"""
import hashlib
import logging
import os
import shutil
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests"))
sys.path.insert(0, REPO)
logging.basicConfig(level=logging.ERROR, format="  log: %(message)s")
import test_zoo_pretrained as t_tp  # noqa: E402
import test_zoo_pretrained_detectron2 as t_d2  # noqa: E402
import test_zoo_pretrained_gluoncv as t_gcv  # noqa: E402
import test_zoo_pretrained_torchvision as t_tv  # noqa: E402
from http_server import cache_files, closed_port_base, serve  # noqa: E402
from zoo_pretrained_common import flip  # noqa: E402

from gluon_rcnn import get_model, model_zoo  # noqa: E402
from gluon_rcnn.convert.source import file_name, weight_source  # noqa: E402


def tensorpack():
    good = t_tp.synthetic_npz(0)
    return t_tp.ENTRY, weight_source("tensorpack-npz").url_env, "/FasterRCNN", t_tp.FILE, good, flip(good)


def tensorpack2019():
    """A checkpoint of the February-2019 code (tensorpack-2019 profile)."""
    kind, entry = "COCO-R50FPN-MaskRCNN-Standard", "tp2019_mask_rcnn_fpn_resnet50_standard_coco"
    good = t_tp.synthetic_npz(0, kind)
    return entry, weight_source("tensorpack-npz").url_env, "/FasterRCNN", f"{kind}.npz", good, flip(good)


def gluoncv():
    params = t_gcv.synthetic_params()
    e = model_zoo.get_entry(t_gcv.ENTRY)
    e["weights"]["sha1"] = hashlib.sha1(params).hexdigest()  # the synthetic file's
    model_zoo._entries()[t_gcv.ENTRY] = e
    zname = file_name(e["weights"]["url"])
    member = zname[:-len(".zip")] + ".params"
    return (t_gcv.ENTRY, weight_source("gluoncv-params").url_env, "", f"gluon/models/{zname}", t_gcv._zip({member: params}),
            t_gcv._zip({member: flip(params, -200)}))


def torchvision():
    data, name = t_tv.synthetic_pth()
    model_zoo._entries()[t_tv.ENTRY] = t_tv.point_entry_at(name)
    return t_tv.ENTRY, weight_source("torchvision-pth").url_env, "", name, data, flip(data)


def detectron2():
    data, path = t_d2.synthetic_pkl()
    model_zoo._entries()[t_d2.ENTRY] = t_d2.point_entry_at(path)
    return t_d2.ENTRY, weight_source("detectron2-pkl").url_env, "", path, data, flip(data)


def main():
    with serve() as srv:
        for fmt, make in [("tensorpack", tensorpack), ("tensorpack-2019", tensorpack2019), ("gluoncv", gluoncv), ("torchvision", torchvision),
                          ("detectron2", detectron2)]:
            entry, env, prefix, path, good, bad = make()
            for case, body, mode in [("good", good, "range"), ("wrong checksum", bad, "range"),
                                     ("truncated", good, "truncate"), ("404", None, None), ("no network", good, "x")]:
                home = tempfile.mkdtemp()
                os.environ["GLUON_RCNN_HOME"] = home
                os.environ[env] = (closed_port_base() if case == "no network" else srv.base) + prefix
                srv.routes.clear()
                if body is not None:
                    srv.routes[f"{prefix}/{path}"] = {"body": body, "mode": mode}
                try:
                    sha256 = hashlib.sha256(good).hexdigest() if fmt.startswith("tensorpack") and body is bad else None
                    net = get_model(entry, pretrained=True, sha256=sha256)
                    print(f"{fmt} {case}: loaded {entry}: {type(net).__name__}, training={net.training}, "
                          f"{len(net.classes)} classes ({net.classes[0]!r}, ...), cache: {cache_files(home)}")
                except Exception as e:  # noqa: BLE001 - the demo prints every error
                    print(f"{fmt} {case}: {type(e).__name__}: {e}")
                shutil.rmtree(home)


if __name__ == "__main__":
    main()
