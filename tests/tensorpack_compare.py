"""Our converted model against tensorpack's own FasterRCNN graph, on the arrays of one reference run:
the comparison of bench/compare_tensorpack.py (files of ``../shared/tools/tensorpack-reference``) and
tests/test_tensorpack_reference.py (the small references in tests/data/tensorpack_reference). The bench
script puts tests/ on ``sys.path`` to import this module."""
from __future__ import annotations

import numpy as np
import torch

from gluon_rcnn.config import get_default_config
from gluon_rcnn.convert.tensorpack import COCO_CLASS_NAMES, _TENSORPACK_2019_BASE, _TENSORPACK_BASE, from_tensorpack
from gluon_rcnn.roi_heads import rois_with_batch_index as _rois
from gluon_rcnn.rpn import _flatten
from gluon_rcnn.structures.boxes import clip_boxes

__all__ = ["BOX_TOL", "SCORE_TOL", "TP2019_COMMIT", "reference_profile", "reference_config", "config_differences",
           "max_diff", "stage_rows", "feed_bgr", "pair", "compare_arrays", "passed"]

BOX_TOL, SCORE_TOL = 0.05, 1e-4  # final boxes (px), scores
#: tensorpack's examples/FasterRCNN of 2019-02-19, run by the reference tool's make_reference_2019.py
TP2019_COMMIT = "02c38f26"


def reference_profile(meta: dict) -> str:
    """The rule profile a reference run is checked with: ``tensorpack-2019`` for a run of the 2019 code
    (its meta names the commit and the driver ``make_reference_2019.py``), else ``tensorpack``."""
    if str(meta.get("tensorpack_commit", "")).startswith(TP2019_COMMIT) or \
            meta.get("driver") == "make_reference_2019.py":
        return "tensorpack-2019"
    return "tensorpack"


def reference_config(meta: dict, profile: str | None = None):
    """Our config for the reference run: the defaults and rules of the code that ran it
    (:func:`reference_profile`: ``_TENSORPACK_BASE`` or ``_TENSORPACK_2019_BASE``; or those of ``profile``,
    to show what the other era's rules give) + the run's overrides + COCO names."""
    cfg = get_default_config()
    base = {"tensorpack": _TENSORPACK_BASE, "tensorpack-2019": _TENSORPACK_2019_BASE}
    cfg.update_args(list(base[profile or reference_profile(meta)]) + list(meta["config_overrides"]))
    cfg.DATA.CLASS_NAMES = list(COCO_CLASS_NAMES)
    return cfg.finalize()


def config_differences(cfg, tp_cfg: dict) -> list[str]:
    """Keys of the reference's (finalised) tensorpack config that ours has under the same name with
    another value (informational: a few names mean different things, e.g. MAX_SIZE before rounding)."""
    from gluon_rcnn.builders import max_size
    out = []
    for sec, vals in tp_cfg.items():
        if not isinstance(vals, dict) or sec not in cfg or sec in ("DATA", "TRAIN"):
            continue
        for k, v in vals.items():
            if k in cfg[sec] and not isinstance(v, dict):
                ours = max_size(cfg) if (sec, k) == ("PREPROC", "MAX_SIZE") else cfg[sec][k]  # as used
                same = (list(map(float, ours)) == list(map(float, v))) if isinstance(v, list) and all(
                    isinstance(x, (int, float)) for x in v) and isinstance(ours, list) else ours == v
                if not same:
                    out.append(f"{sec}.{k}: tensorpack {v!r}, ours {ours!r}")
    return out


def max_diff(a, b) -> tuple[float, float]:
    """Largest absolute difference of two arrays of the same shape, and it over the largest |b|."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise AssertionError(f"shape {a.shape} vs {b.shape}")
    if a.size == 0:
        return 0.0, 0.0
    d = float(np.abs(a - b).max())
    return d, d / max(float(np.abs(b).max()), 1e-12)



def stage_rows():
    """``(rows, row)``: ``row(name, ours, theirs)`` appends ``(name, shape, max |diff|, relative)`` to ``rows``,
    skipping a stage the reference does not hold (``theirs`` None). One stage-by-stage table for every reference."""
    rows: list[tuple[str, str, float, float]] = []

    def row(name, ours, theirs):
        if theirs is None:
            return
        d, r = max_diff(ours, theirs)
        rows.append((name, "x".join(map(str, np.shape(theirs))), d, r))

    return rows, row


def feed_bgr(model, bgr):
    """The reference's own resized BGR uint8 image through ``model``'s preprocessor at its size (resampling
    at scale 1 is the identity): the ImageBatch, and the image's (h, w)."""
    h, w = bgr.shape[:2]
    img = torch.from_numpy(np.ascontiguousarray(bgr[:, :, ::-1])).permute(2, 0, 1)  # RGB uint8
    return model.preprocessor([img], [(h, w)]), (h, w)


def pair(ours_boxes, tp_boxes, ours_labels=None, tp_labels=None, tol=0.5):
    """Each tensorpack box → the nearest of ours (same label when given), by max coordinate difference;
    returns (index into ours or -1, difference) per tensorpack box (one-to-one, greedy by difference)."""
    ob = np.asarray(ours_boxes, dtype=np.float64).reshape(-1, 4)
    tb = np.asarray(tp_boxes, dtype=np.float64).reshape(-1, 4)
    if len(ob) == 0 or len(tb) == 0:
        return np.full(len(tb), -1), np.full(len(tb), np.inf)
    d = np.abs(tb[:, None, :] - ob[None, :, :]).max(-1)
    if ours_labels is not None:
        d[np.asarray(tp_labels)[:, None] != np.asarray(ours_labels)[None, :]] = np.inf
    idx, dist = np.full(len(tb), -1), np.full(len(tb), np.inf)
    taken = np.zeros(len(ob), bool)
    for t in np.argsort(d.min(1), kind="stable"):
        cand = np.where(~taken & (d[t] <= tol))[0]
        if len(cand):
            j = cand[np.argmin(d[t, cand])]
            idx[t], dist[t], taken[j] = j, d[t, j], True
    return idx, dist


@torch.no_grad()
def compare_arrays(meta: dict, ref: dict, weights, profile: str | None = None) -> dict:
    """meta: the reference's meta.json; ref: its outputs (name → array; intermediate tensors that
    are absent are skipped); weights: its .weights.npz path or a name → array dict; profile: check with
    this era's defaults and rules instead of the reference's own (:func:`reference_config`)."""
    if "final_masks_orig_bits" in ref:  # a test reference: masks as packed bits
        shape = tuple(int(v) for v in ref["final_masks_orig_shape"])
        ref["final_masks_orig"] = np.unpackbits(ref["final_masks_orig_bits"])[: int(np.prod(shape))].reshape(shape)
    cfg = reference_config(meta, profile)
    model = from_tensorpack(weights, cfg, tf_pad_mode=False)
    rows, row = stage_rows()
    batch, (h, w) = feed_bgr(model, ref["input_image_bgr_resized"])
    x = batch.tensor
    if "image_preprocessed_nchw" in ref:
        row("input", x[:, :, :h, :w].numpy(), ref["image_preprocessed_nchw"][:, ::-1])  # BGR → RGB

    body = model.backbone.body(x)
    if cfg.MODE_FPN:
        for i, k in enumerate(body):
            row(f"c{i + 2}", body[k].numpy(), ref.get(f"c{i + 2}"))
        fpn = model.backbone.fpn(body)
        feats = [fpn[k] for k in model.feature_names]
        for i, f in enumerate(feats):
            row(f"p{i + 2}", f.numpy(), ref.get(f"p{i + 2}"))
        levels = [f"p{i + 2}" for i in range(len(feats))]
        ref_rpn = [f"rpn_{lv}_" for lv in levels]
    else:
        feats = [body[k] for k in model.feature_names]
        row("c4", feats[0].numpy(), ref.get("c4"))
        levels, ref_rpn = ["c4"], ["rpn_"]
    # RPN head, anchors (exact: tensorpack's are float32 constants sliced to the feature map) and the
    # decoded (unclipped) boxes of every anchor, per level
    logits, deltas = model.rpn.head(feats)
    anchors = model.rpn.anchor_generator([f.shape[-2:] for f in feats], x.device, tuple(x.shape[-2:]))
    for lv, key, lg, dl, an in zip(levels, ref_rpn, logits, deltas, anchors):
        name = f"rpn_{lv}" if lv != "c4" else "rpn"
        row(f"{name}_logits", lg.numpy(), ref.get(key + "label_logits_nchw"))
        row(f"{name}_deltas", dl.numpy(), ref.get(key + "box_logits_nchw"))
        tp_an = ref.get(f"anchors_{lv}")
        if tp_an is not None:
            row(f"anchors_{lv} (==)", an.reshape(tp_an.shape).numpy(), tp_an)
        elif f"anchors_{lv}_corners" in ref:  # a test reference keeps the four corner cells (2 x 2 x A x 4)
            fh, fw = (int(v) for v in lg.shape[-2:])
            corners = an.reshape(fh, fw, -1, 4)[[0, -1]][:, [0, -1]]
            row(f"anchors_{lv} corners (==)", corners.numpy(), ref[f"anchors_{lv}_corners"])
        tp_dec = ref.get(key + "decoded_boxes")
        if tp_dec is not None:
            _, d = _flatten(lg, dl)
            row(f"{name}_decoded", model.rpn.box_coder.decode(d[0], an).reshape(tp_dec.shape).numpy(), tp_dec)

    # proposals, as sets
    props = model.rpn(feats, batch.image_sizes, None, tuple(x.shape[-2:]))[0][0]
    tp_props = ref["rpn_proposal_boxes"]
    idx, dist = pair(props.numpy(), tp_props, tol=1.0)
    ok = idx >= 0
    rows.append(("proposals (sets)", f"{len(tp_props)} tp / {len(props)} ours",
                 float(dist[ok].max()) if ok.any() else float("nan"), float((~ok).sum())))

    # box stages on tensorpack's own inputs
    rh = model.roi_heads
    hw = torch.tensor([[h, w]])
    boxes = torch.from_numpy(tp_props).float()
    probs_sum = 0
    stage_names = ["fastrcnn"] if len(rh.stages) == 1 else [f"cascade_rcnn_stage{k + 1}" for k in range(len(rh.stages))]
    for k, (stage, nm) in enumerate(zip(rh.stages, stage_names)):
        lg, dl = rh.box_outputs(feats, _rois([boxes]), stage=k)
        row(f"{nm} class logits", lg.numpy(), ref.get(f"{nm}_label_logits"))
        tp_dl = ref.get(f"{nm}_box_logits")
        if tp_dl is not None:
            row(f"{nm} box deltas", dl.reshape(tp_dl.shape).numpy(), tp_dl)
        probs_sum = probs_sum + torch.softmax(lg, -1)
        decoded = clip_boxes(stage.coder.decode(dl, boxes), hw.expand(len(boxes), 2))
        if len(rh.stages) > 1:
            row(f"{nm} scores", torch.softmax(lg, -1).numpy(), ref.get(f"{nm}_scores"))
            row(f"{nm} refined boxes", decoded.numpy(), ref.get(f"{nm}_refined_boxes"))
            if k + 1 < len(rh.stages):  # the next stage reads tensorpack's refined boxes
                boxes = torch.from_numpy(ref[f"{nm}_refined_boxes"]).float()
    probs = probs_sum / len(rh.stages)
    C = rh.num_classes
    all_boxes = decoded.reshape(len(decoded), -1, 4)
    if all_boxes.shape[1] == 1:
        all_boxes = all_boxes.expand(-1, C, 4)
    tp_all, tp_sc = ref.get("fastrcnn_all_boxes"), ref.get("fastrcnn_all_scores")  # with or without BG column
    if tp_all is not None:
        row("all boxes (decoded)", all_boxes[:, C - tp_all.shape[1]:].reshape(tp_all.shape).numpy(), tp_all)
    if tp_sc is not None:
        row("all scores", probs[:, C - tp_sc.shape[1]:].numpy(), tp_sc)

    # mask head on tensorpack's final boxes
    tp_boxes, tp_scores, tp_labels = ref["output_boxes"], ref["output_scores"], ref["output_labels"]
    if rh.mask_on and "mask_logits_all_classes" in ref and len(tp_boxes):
        rois = _rois([torch.from_numpy(tp_boxes).float()])
        row("mask logits (all classes)", rh.mask_logits(feats, rois).numpy(), ref["mask_logits_all_classes"])

    # end to end
    results = rh(feats, [props], batch.image_sizes)
    r = results[0]
    oi, od = pair(r["boxes"].numpy(), tp_boxes, r["labels"].numpy(), tp_labels)
    paired = oi >= 0
    n_unpaired = int((~paired).sum()) + (len(r["boxes"]) - int(paired.sum()))
    none = float("nan") if len(tp_boxes) else 0.0  # nothing paired: no difference to report
    final = {"detections": f"{len(tp_boxes)} tp / {len(r['boxes'])} ours", "unpaired": n_unpaired,
             "box_px": float(od[paired].max()) if paired.any() else none,
             "score": float(np.abs(r["scores"].numpy()[oi[paired]] - tp_scores[paired]).max())
             if paired.any() else none}
    # the same from tensorpack's proposals: separates the heads' agreement from the proposals' float noise
    # (a proposal within 1e-3 px of an FPN level boundary can be pooled from the other level)
    r_tp = rh(feats, [torch.from_numpy(tp_props).float()], batch.image_sizes)[0]
    ti, td = pair(r_tp["boxes"].numpy(), tp_boxes, r_tp["labels"].numpy(), tp_labels)
    tpaired = ti >= 0
    final["from_tp_proposals"] = {
        "unpaired": int((~tpaired).sum()) + (len(r_tp["boxes"]) - int(tpaired.sum())),
        "box_px": float(td[tpaired].max()) if tpaired.any() else 0.0,
        "score": float(np.abs(r_tp["scores"].numpy()[ti[tpaired]] - tp_scores[tpaired]).max()) if tpaired.any() else 0.0}
    # original pixels: our postprocess (boxes rescaled, masks pasted) against eval.py's predict_image
    post = model.postprocess(results, batch.image_sizes, [tuple(int(v) for v in ref["orig_shape_hw"])])[0]
    if "final_boxes_orig" in ref and paired.any():
        tpo, ours_o = ref["final_boxes_orig"][paired], post["boxes"].numpy()[oi[paired]]
        # tensorpack's clip leaves x1 > x2 for a zero-width box on the right/bottom border (x1 = w/scale > W);
        # ours clamps it into the image (RULES.RESCALE_BOXES): compared where tensorpack's box is a box
        ok = (tpo[:, 2] >= tpo[:, 0]) & (tpo[:, 3] >= tpo[:, 1])
        final["box_px_orig"] = float(np.abs(ours_o[ok] - tpo[ok]).max()) if ok.any() else 0.0
        final["tp_inverted_boxes"] = int((~ok).sum())
        if "masks" in post and "final_masks_orig" in ref:
            ours_bin = post["masks"][:, 0].numpy()[oi[paired]] > 0.5
            tp_bin = ref["final_masks_orig"][paired].astype(bool)
            final["mask_px_differ"] = int((ours_bin != tp_bin).sum())
            final["mask_px_total"] = int(tp_bin.size)
            final["mask_prob"] = float(np.abs(r["mask_probs"].numpy()[oi[paired]] - ref["output_masks"][paired]).max())
    return {"prefix": meta.get("name", ""), "meta": meta, "profile": cfg.RULES.PROFILE, "rows": rows, "final": final,
            "config_differences": config_differences(cfg, meta.get("cfg", {}))}


def passed(res: dict) -> bool:
    """Float noise only: every final detection paired, boxes within BOX_TOL px (resized and original
    pixels), scores within SCORE_TOL; the anchors (where the reference has them) equal."""
    f = res["final"]
    anchors_equal = all(d == 0 for n, _, d, _ in res["rows"] if n.startswith("anchors"))
    return anchors_equal and f["unpaired"] == 0 and f["box_px"] <= BOX_TOL and f["score"] <= SCORE_TOL and \
        f.get("box_px_orig", 0) <= BOX_TOL
