"""Our converted model against detectron2's own R-CNN models, on the arrays of one reference run: the
comparison of bench/compare_detectron2.py (files of bench/detectron2_reference.sh) and
tests/test_detectron2_reference.py (the small references in tests/data/detectron2_reference). The bench
script puts tests/ on ``sys.path`` to import this module.

The model is the zoo entry's: the ``model_zoo/d2_*.json`` whose ``weights.kind`` is the reference's config
(its config, :func:`gluon_rcnn.model_zoo.get_config`), holding the reference's weights converted by
:func:`gluon_rcnn.convert.detectron2.from_detectron2` (strict). It is fed detectron2's resized image (its
``ResizeShortestEdge`` test transform: PIL's bilinear on the uint8 image, which gluon_rcnn's float resize does
not reproduce; compared here on the same pixels), and each stage reads detectron2's own input to that stage
where the two could otherwise diverge by a float-noise tie (box heads on detectron2's proposals and each
cascade stage's boxes, mask head on its final boxes)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from gluon_rcnn.convert.detectron2 import from_detectron2
from gluon_rcnn.convert.mapping import c4_anchor_perm
from gluon_rcnn.model_zoo import get_config
from gluon_rcnn.roi_heads import rois_with_batch_index as _rois
from tensorpack_compare import feed_bgr, pair, stage_rows

__all__ = ["BOX_TOL", "SCORE_TOL", "zoo_entry_for", "compare_arrays", "passed"]

BOX_TOL, SCORE_TOL = 0.05, 1e-4  # final boxes (px), scores
ZOO = Path(__file__).resolve().parents[1] / "model_zoo"


def kind_of(config: str) -> str:
    """'COCO-Detection/faster_rcnn_R_50_C4_1x.yaml' → 'COCO-Detection/faster_rcnn_R_50_C4_1x'."""
    return config[:-5] if config.endswith(".yaml") else config


def zoo_entry_for(config: str) -> str:
    """The d2_* zoo entry whose weights are detectron2's ``config``."""
    kind = kind_of(config)
    names = [f.stem for f in sorted(ZOO.glob("d2_*.json"))
             if (json.loads(f.read_text()).get("weights") or {}).get("kind") == kind]
    if len(names) != 1:
        raise LookupError(f"{len(names)} d2_* zoo entries have weights.kind {kind!r}: {names}")
    return names[0]


def _bgr_to_rgb(x: np.ndarray) -> np.ndarray:
    return x[:, ::-1]


@torch.no_grad()
def compare_arrays(meta: dict, ref: dict, weights, overrides=(), from_d2_proposals: bool | None = None) -> dict:
    """meta: the reference's meta.json; ref: its outputs (absent intermediate arrays are skipped);
    weights: its .pkl path, bytes, or the loaded ``{"model": ..., "__author__": ...}`` dict.
    from_d2_proposals: also run the heads from detectron2's proposals (a diagnostic that doubles the heads'
    cost); None: only when the end-to-end detections do not pass."""
    entry = zoo_entry_for(meta["config"])
    # the run's MODEL.RPN.POST_NMS_TOPK_TEST (the zoo entry's 1000 unless the reference chose fewer)
    topk = [f"RPN.TEST_POST_NMS_TOPK={int(meta['post_nms_topk_test'])}"] if "post_nms_topk_test" in meta else []
    cfg = get_config(entry, topk + list(overrides))
    model = from_detectron2(weights, cfg)
    rows, row = stage_rows()
    batch, (h, w) = feed_bgr(model, ref["resized_bgr"])
    x = batch.tensor
    if "input" in ref:
        row("input (normalised, padded)", x.numpy(), _bgr_to_rgb(ref["input"]))

    def feature_row(name, f):
        row(name, f.numpy(), ref.get(name))
        row(f"{name} (channel 0)", f[:, :1].numpy(), ref.get(f"{name}_ch0"))  # a test reference keeps one

    body = model.backbone.body(x)
    for k, v in body.items():
        feature_row({"c2": "res2", "c3": "res3", "c4": "res4", "c5": "res5"}.get(k, k), v)
    if cfg.MODE_FPN:
        fpn = model.backbone.fpn(body)
        feats = [fpn[k] for k in model.feature_names]
        for name, f in zip(model.feature_names, feats):
            feature_row(name, f)
        levels = [f"p{i + 2}" for i in range(len(feats))]
    else:
        feats = [body[k] for k in model.feature_names]
        levels = ["res4"]

    # RPN head and anchors, level by level (C4: detectron2's anchors are size-major, ours ratio-major)
    rpn = model.rpn
    perm = c4_anchor_perm(cfg).numpy() if len(levels) == 1 and rpn.anchor_generator.num_anchors_per_location() > 3 \
        else None
    logits, deltas = rpn.head(feats)
    anchors = rpn.anchor_generator([f.shape[-2:] for f in feats], x.device, tuple(x.shape[-2:]))
    for lvl, lg, dl, an in zip(levels, logits, deltas, anchors):
        d_lg, d_dl, d_an = ref.get(f"rpn_logits_{lvl}"), ref.get(f"rpn_deltas_{lvl}"), ref.get(f"anchors_{lvl}")
        if perm is not None and d_lg is not None:
            A = len(perm)
            d_lg = d_lg[:, perm]
            d_dl = d_dl.reshape(d_dl.shape[0], A, 4, *d_dl.shape[2:])[:, perm].reshape(d_dl.shape)
            d_an = None if d_an is None else d_an.reshape(-1, A, 4)[:, perm].reshape(-1, 4)
        row(f"rpn logits {lvl}", lg.numpy(), d_lg)
        row(f"rpn deltas {lvl}", dl.numpy(), d_dl)
        row(f"anchors {lvl}", an.numpy(), d_an)

    # proposals, as sets
    props = rpn(feats, batch.image_sizes, None, tuple(x.shape[-2:]))[0][0]
    d_props = ref["proposals"]
    idx, dist = pair(props.numpy(), d_props, tol=1.0)
    ok = idx >= 0
    rows.append(("proposals (sets)", f"{len(d_props)} d2 / {len(props)} ours",
                 float(dist[ok].max()) if ok.any() else float("nan"), float((~ok).sum())))

    # box stages on detectron2's own boxes (its proposals; each cascade stage's clipped boxes)
    rh = model.roi_heads
    C = rh.num_classes  # with the background
    for k in range(len(rh.stages)):
        boxes = ref.get(f"stage{k}_boxes")
        if boxes is None:
            continue
        lg, dl = rh.box_outputs(feats, _rois([torch.from_numpy(boxes).float()]), stage=k)
        d_lg = ref[f"stage{k}_cls_logits"]
        row(f"stage {k} class logits", lg.numpy(), np.concatenate([d_lg[:, -1:], d_lg[:, :-1]], 1))  # bg last → first
        row(f"stage {k} box deltas", (dl[:, 4:] if dl.shape[1] == 4 * C else dl).numpy(), ref.get(f"stage{k}_deltas"))

    # end to end, and from detectron2's proposals (separates the RPN's float-noise ties from the heads)
    d_boxes, d_scores, d_labels = ref["boxes"], ref["scores"], ref["classes"].astype(np.int64) + 1

    def paired(r: dict) -> tuple[dict, np.ndarray]:
        oi, od = pair(r["boxes"].numpy(), d_boxes, r["labels"].numpy(), d_labels)
        ok = oi >= 0
        return {"unpaired": int((~ok).sum()) + (len(r["boxes"]) - int(ok.sum())),
                "box_px": float(od[ok].max()) if ok.any() else 0.0,
                "score": float(np.abs(r["scores"].numpy()[oi[ok]] - d_scores[ok]).max()) if ok.any() else 0.0}, oi

    results = rh(feats, [props], batch.image_sizes)
    r = results[0]
    f, oi = paired(r)
    final = {"detections": f"{len(d_boxes)} d2 / {len(r['boxes'])} ours", **f}
    if from_d2_proposals or (from_d2_proposals is None and not passed({"final": final})):
        final["from_d2_proposals"] = paired(rh(feats, [torch.from_numpy(d_props).float()], batch.image_sizes)[0])[0]

    # mask head on detectron2's final boxes
    if rh.mask_on and "mask_logits" in ref and len(d_boxes):
        ml = rh.mask_logits(feats, _rois([torch.from_numpy(d_boxes).float()]))
        row("mask logits (on d2 boxes, every class)", ml.numpy(), ref["mask_logits"])

    # original pixels: our postprocess (boxes rescaled per axis, masks pasted) against detector_postprocess
    post = model.postprocess(results, batch.image_sizes, [tuple(int(v) for v in ref["orig_shape_hw"])])[0]
    ok = oi >= 0
    if "boxes_orig" in ref and ok.any():
        final["box_px_orig"] = float(np.abs(post["boxes"].numpy()[oi[ok]] - ref["boxes_orig"][ok]).max())
        if "masks" in post and "masks_orig_bits" in ref:  # (a test reference keeps the first detections')
            shape = tuple(int(v) for v in ref["masks_orig_shape"])
            d_masks = np.unpackbits(ref["masks_orig_bits"])[: int(np.prod(shape))].reshape(shape).astype(bool)
            okm = ok[: shape[0]]
            ours_p = post["masks"][:, 0].numpy()[oi[: shape[0]][okm]]
            differ = (ours_p > 0.5) != d_masks[okm]
            final["mask_px_differ"] = int(differ.sum())
            final["mask_px_total"] = int(d_masks[okm].size)
            # how far from the 0.5 threshold our pasted probability is where the binary masks differ
            final["mask_differ_margin"] = float(np.abs(ours_p[differ] - 0.5).max()) if differ.any() else 0.0
        if "mask_probs" in r and "mask_probs" in ref:
            n = len(ref["mask_probs"])
            okm = ok[:n]
            final["mask_prob"] = float(np.abs(r["mask_probs"].numpy()[oi[:n][okm]]
                                              - ref["mask_probs"][okm].astype(np.float32)).max())
    return {"entry": entry, "meta": meta, "rows": rows, "final": final}


def passed(res: dict) -> bool:
    """Float noise only: every final detection paired, boxes within BOX_TOL px (resized and original
    pixels), scores within SCORE_TOL."""
    f = res["final"]
    return f["unpaired"] == 0 and f["box_px"] <= BOX_TOL and f["score"] <= SCORE_TOL and \
        f.get("box_px_orig", 0) <= BOX_TOL
