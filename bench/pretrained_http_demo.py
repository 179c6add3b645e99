#!/usr/bin/env python
"""get_model(tp entry, pretrained=True) against a local HTTP server on 127.0.0.1 (tests/http_server.py)
serving a good, a corrupt and a truncated file and a 404: prints the loaded model and the three errors.
The synthetic npz is tests/test_zoo_pretrained.py's (real shapes, mostly zeros).

    python bench/pretrained_http_demo.py
"""
import os, sys, tempfile, shutil, logging
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, 'tests')); sys.path.insert(0, REPO)
logging.basicConfig(level=logging.WARNING, format="  log: %(message)s")
from http_server import serve
import test_zoo_pretrained as t
from gluon_rcnn import model_zoo, get_model
good = t.synthetic_npz(0)
with serve("/FasterRCNN") as srv:
    os.environ[model_zoo.TENSORPACK_URL_ENV] = srv.base
    for case, body, mode in [("good", good, "range"), ("corrupt", b"not an npz" * 1000, "range"),
                             ("truncated", good, "truncate"), ("404", None, None)]:
        home = tempfile.mkdtemp(); os.environ["GLUON_RCNN_HOME"] = home
        srv.routes.clear()
        if body is not None:
            srv.routes[f"/FasterRCNN/{t.FILE}"] = {"body": body, "mode": mode}
        try:
            net = get_model(t.ENTRY, pretrained=True)
            print(f"{case}: loaded {type(net).__name__}, training={net.training}, {len(net.classes)} classes, "
                  f"cache: {sorted(os.listdir(os.path.join(home, 'weights')))}")
        except Exception as e:
            print(f"{case}: {type(e).__name__}: {e}")
        shutil.rmtree(home)
