#!/usr/bin/env python
"""Stage-by-stage comparison with GluonCV's own R-CNN nets (C4 and FPN).

The reference comes from ``bench/gluoncv_reference.sh`` (a side venv with mxnet 1.9.1 and gluoncv
0.10.5.post0): GluonCV's unmodified net with seeded random weights writes ``PREFIX.params``
(``net.save_parameters``), ``PREFIX.outputs.npz`` and ``PREFIX.meta.json``. This script reads the
``.params`` with gluon_rcnn's own numpy reader, converts it with
:func:`gluon_rcnn.convert.gluoncv.from_gluoncv`, feeds GluonCV's resized image (its own resize,
``resize_short_within``) through our normalisation, and compares:

- ``input``: the normalised image; ``c4`` (C4) or ``p2``..``p6`` (FPN): the backbone's features;
- ``proposals (sets)``: GluonCV's 1000 RPN boxes (rows of -1 = empty slots left out) paired with ours;
- ``class logits`` / ``box deltas``: our box head on GluonCV's own proposals;
- ``final``: our detections (resized-image pixels, clipped to the image as GluonCV's eval scripts clip
  its unclipped net output) against GluonCV's ``ids >= 0`` rows, paired by label within 0.5 px;
- ``mask probs``: our mask head on GluonCV's final boxes, the detection's class, sigmoid (14x14).

    python bench/compare_gluoncv.py /work/gcv-ref/out/*.meta.json

Exits 1 unless every detection pairs, boxes agree within 0.05 px and scores within 1e-4.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
# the comparison itself is tests/gluoncv_compare.py, shared with tests/test_convert_gluoncv.py
from gluoncv_compare import compare_arrays, passed  # noqa: E402


def print_report(res: dict, markdown: bool = False) -> None:
    m = res["meta"]
    print(f"\n## {m['name']}: image {Path(m['image']).name}, short {m['short']} max {m['max_size']}, seed {m['seed']}"
          f" (mxnet {m.get('mxnet')}, gluoncv {m.get('gluoncv_dist')})")
    if res["anchors"]:
        print("anchors:", res["anchors"])
    if markdown:
        print("\n| stage | shape | max abs diff | max diff / max abs ref |\n| --- | --- | ---: | ---: |")
    for n, shp, d, r in res["rows"]:
        line = (n, shp, f"{d:.3g} px", f"{int(r)} unpaired") if n.startswith("proposals") else (n, shp, f"{d:.3g}", f"{r:.2g}")
        print(("| " + " | ".join(line) + " |") if markdown else "  {:34s} {:>22s} {:>12s} {:>12s}".format(*line))
    f = res["final"]
    def fmt(d):
        return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else (f"{k} ({fmt(v)})" if isinstance(v, dict)
                                                                       else f"{k} {v}") for k, v in d.items())
    print("final: " + fmt(f)
          + ("  -> PASS" if passed(res) else "  -> FAIL"))


#: what a test reference keeps (no weights: tests draw them again with tests/gluoncv_weights.spread)
TEST_KEYS = ("resized_uint8", "orig_shape_hw", "rpn_boxes")
TEST_MASKS = 100


def write_test_reference(prefix: str, out: Path) -> Path:
    meta = json.loads(Path(prefix + ".meta.json").read_text())
    ref = np.load(prefix + ".outputs.npz")
    keep = {k: ref[k] for k in TEST_KEYS}
    ok = ref["ids"].reshape(-1) >= 0
    keep["ids"] = ref["ids"].reshape(-1)[ok]
    keep["scores"] = ref["scores"].reshape(-1)[ok]
    keep["bboxes"] = ref["bboxes"].reshape(-1, 4)[ok]
    if "masks" in ref.files:  # the best TEST_MASKS detections' masks (float16): enough to check, small to ship
        keep["masks"] = ref["masks"].reshape(-1, *ref["masks"].shape[-2:])[ok][:TEST_MASKS].astype(np.float16)
    keep["meta_json"] = np.asarray(json.dumps(meta))
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **keep)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("metas", nargs="+", help="PREFIX.meta.json files of gluoncv_reference.py")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--override", action="append", default=[], help="extra KEY=VALUE for our model")
    ap.add_argument("--write-test-reference", metavar="NAME")
    a = ap.parse_args(argv)
    ok = True
    for mpath in a.metas:
        prefix = str(mpath)[: -len(".meta.json")]
        if a.write_test_reference:
            path = write_test_reference(prefix, REPO / "tests" / "data" / "gluoncv_reference" / f"{a.write_test_reference}.npz")
            print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")
            continue
        meta = json.loads(Path(mpath).read_text())
        ref = dict(np.load(prefix + ".outputs.npz"))
        res = compare_arrays(meta, ref, prefix + ".params", a.override)
        print_report(res, a.markdown)
        ok &= passed(res)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
