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
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gluon_rcnn.convert.gluoncv import from_gluoncv, gluoncv_anchor_cells, legacy_anchor_cells, read_params  # noqa
from gluon_rcnn.roi_heads import rois_with_batch_index as _rois  # noqa: E402

_spec = importlib.util.spec_from_file_location("compare_tensorpack", REPO / "bench" / "compare_tensorpack.py")
_tp = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tp)
pair, _diff = _tp.pair, _tp._diff
BOX_TOL, SCORE_TOL = 0.05, 1e-4


def gluoncv_detections(ref: dict, h: int, w: int):
    """GluonCV's valid detections: boxes clipped to [0, w] x [0, h], scores, labels 1..C (id + 1)."""
    ids = ref["ids"].reshape(-1)
    ok = ids >= 0
    b = ref["bboxes"].reshape(-1, 4)[ok].astype(np.float64)
    b[:, 0::2] = b[:, 0::2].clip(0, w)
    b[:, 1::2] = b[:, 1::2].clip(0, h)
    return b, ref["scores"].reshape(-1)[ok], ids[ok].astype(np.int64) + 1, np.nonzero(ok)[0]


@torch.no_grad()
def compare_arrays(meta: dict, ref: dict, params, overrides=()) -> dict:
    """meta: the reference's meta.json; ref: its outputs; params: a .params path or name → array."""
    p = read_params(params)
    anchors_note = ""
    cells = gluoncv_anchor_cells(p)
    if cells is not None:
        d = float(np.abs(cells - legacy_anchor_cells()).max())
        anchors_note = f"file's anchors vs legacy_anchor_cells(): {d:.3g}"
    model = from_gluoncv(p, meta["name"], overrides=overrides)
    rows = []

    def row(name, ours, theirs):
        d, r = _diff(ours, theirs)
        rows.append((name, "x".join(map(str, np.shape(theirs))), d, r))

    img = ref["resized_uint8"]
    h, w = img.shape[:2]
    batch = model.preprocessor([torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)], [(h, w)])
    x = batch.tensor
    if "input" in ref:
        row("input", x[:, :, :h, :w].numpy(), ref["input"])
    feats = model.features(x)
    if "c4" in ref:
        row("c4", feats[0].numpy(), ref["c4"])
    for name, f in zip(model.feature_names, feats):
        if name in ref:  # FPN: p2..p6
            row(name, f.numpy(), ref[name])

    props = model.rpn(feats, batch.image_sizes, None, tuple(x.shape[-2:]))[0][0]
    g = ref["rpn_boxes"].reshape(-1, 4)
    g = g[~(g == -1).all(1)]
    idx, dist = pair(props.numpy(), g, tol=1.0)
    ok = idx >= 0
    rows.append(("proposals (sets)", f"{len(g)} gcv / {len(props)} ours",
                 float(dist[ok].max()) if ok.any() else float("nan"), float((~ok).sum())))

    rh = model.roi_heads
    if "cls_pred" in ref:
        gb = torch.from_numpy(ref["rpn_boxes"].reshape(-1, 4)).float()
        lg, dl = rh.box_outputs(feats, _rois([gb]))
        row("class logits (on gcv proposals)", lg.numpy(), ref["cls_pred"])
        row("box deltas (on gcv proposals)", dl.reshape(len(gb), -1, 4)[:, 1:].numpy(), ref["box_pred"])

    gbox, gsc, glab, gidx = gluoncv_detections(ref, h, w)

    def paired_with_gluoncv(r: dict) -> dict:
        """Our detections ``r`` paired with GluonCV's by label within 0.5 px: unpaired on either side,
        largest box (px) and score differences."""
        oi, od = pair(r["boxes"].numpy(), gbox, r["labels"].numpy(), glab)
        ok = oi >= 0
        return {"unpaired": int((~ok).sum()) + (len(r["boxes"]) - int(ok.sum())),
                "box_px": float(od[ok].max()) if ok.any() else 0.0,
                "score": float(np.abs(r["scores"].numpy()[oi[ok]] - gsc[ok]).max()) if ok.any() else 0.0}

    r = rh(feats, [props], batch.image_sizes)[0]
    final = {"detections": f"{len(gbox)} gcv / {len(r['boxes'])} ours", **paired_with_gluoncv(r)}
    # the heads from GluonCV's own proposals: separates the RPN (where a float-noise tie between two
    # overlapping proposals can flip NMS) from the rest of the chain
    gprops = ref["rpn_boxes"].reshape(-1, 4)
    gprops = torch.from_numpy(gprops[~(gprops == -1).all(1)]).float()
    final["from_gcv_proposals"] = paired_with_gluoncv(rh(feats, [gprops], batch.image_sizes)[0])
    if rh.mask_on and "masks" in ref and len(gidx):
        gidx = gidx[: len(ref["masks"].reshape(-1, *ref["masks"].shape[-2:]))]  # a test reference keeps the best 100
        glab = glab[: len(gidx)]
        raw = torch.from_numpy(ref["bboxes"].reshape(-1, 4)[gidx]).float()
        logits = rh.mask_logits(feats, _rois([raw]))
        ours_m = torch.sigmoid(logits[torch.arange(len(raw)), torch.from_numpy(glab - 1)]).numpy()
        gm = ref["masks"].reshape(-1, *ref["masks"].shape[-2:])[gidx].astype(np.float32)
        row("mask probs (on gcv boxes)", ours_m, gm)
        final["mask_prob"] = rows[-1][2]
    return {"meta": meta, "rows": rows, "final": final, "anchors": anchors_note,
            "config_overrides": list(overrides)}


def passed(res: dict) -> bool:
    f = res["final"]
    return f["unpaired"] == 0 and f["box_px"] <= BOX_TOL and f["score"] <= SCORE_TOL


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


#: what a test reference keeps (no weights: tests draw them again with gluoncv_reference.spread)
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
