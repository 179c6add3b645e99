"""Our converted model against GluonCV's own R-CNN nets (C4 and FPN), on the arrays of one reference run:
the comparison of bench/compare_gluoncv.py (files of bench/gluoncv_reference.sh) and
tests/test_convert_gluoncv.py (the small references in tests/data/gluoncv_reference). The bench script
puts tests/ on ``sys.path`` to import this module."""
from __future__ import annotations

import numpy as np
import torch

from gluon_rcnn.convert.gluoncv import from_gluoncv, gluoncv_anchor_cells, legacy_anchor_cells, read_params
from gluon_rcnn.roi_heads import rois_with_batch_index as _rois
from tensorpack_compare import max_diff, pair

__all__ = ["BOX_TOL", "SCORE_TOL", "gluoncv_detections", "compare_arrays", "passed"]

BOX_TOL, SCORE_TOL = 0.05, 1e-4  # final boxes (px), scores


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
        d, r = max_diff(ours, theirs)
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
    """Float noise only: every final detection paired, boxes within BOX_TOL px, scores within SCORE_TOL."""
    f = res["final"]
    return f["unpaired"] == 0 and f["box_px"] <= BOX_TOL and f["score"] <= SCORE_TOL
