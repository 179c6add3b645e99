"""A converted ClaRAN v0.2 checkpoint against ClaRAN's own inference graph, stage by stage, on real FIRST
cutouts rendered D1 as ClaRAN's fits2png makes them (SAOImage DS9's PNG export, :func:`render_d1_ds9`).

The reference is ClaRAN's FasterRCNN code (github.com/chenwuperth/claran at 9ccc649: tensorpack's
examples/FasterRCNN of 02c38f26, 2019-02-19, with ClaRAN's dataset.py giving 6 classes + BG) run by the
tensorpack-reference tool's 2019 driver (``../shared/tools/tensorpack-reference/make_reference_2019.py``,
TensorFlow 2.15; ``--src`` a folder holding ``tensorpack/`` of 02c38f26 and ``examples/FasterRCNN/`` =
ClaRAN's tree; ``--weights spread``; ``--config MODE_MASK=False MODE_FPN=True
PREPROC.TRAIN_SHORT_EDGE_SIZE=600,600 PREPROC.TEST_SHORT_EDGE_SIZE=600``, ClaRAN's README command) on a
PNG exported by DS9 (``ds9 CROP.fits -cmap grey|gist_heat [-cmap value 0.684039 0] -scale log -scale mode
minmax -export png``), read with ``cv2.imread(png, IMREAD_COLOR)`` as ClaRAN's ``train.py --predict`` does. Each run
writes ``PREFIX.outputs.npz``, ``PREFIX.meta.json`` and ``PREFIX.weights.npz``; this script converts the
weights with :func:`gluon_rcnn.convert.tensorpack.from_tensorpack` (kind
``ClaRAN-v0.2-FasterRCNN-R50FPN``, strict) and compares:

- the normalised input, c2..c5, p2..p6, the RPN logits and deltas (on the graph's own resized image);
- the anchors of every level (exactly, ``==``);
- the proposals (as sets: tensorpack's ``top_k`` is unsorted);
- the box head on the graph's own proposals (class logits, deltas, decoded and clipped boxes, scores);
- from the graph's own resized image (eval.py ``predict_image``: ``cv2.resize`` of the uint8 image) through
  our RPN, heads and post-processing to the cutout's pixels, and end to end from the original cutout (our
  resize too): the final boxes paired with the graph's within 0.05 px, scores within 1e-4, labels equal.

``--write-test-reference OUT.npz`` stores what tests/test_claran_checkpoint.py needs (final outputs, the
proposals, the rendered image's SHA-256, the cutout's source file and crop, the variable names and shapes;
the weights are re-drawn from the seed).

    python bench/compare_claran.py /tmp/claran/out/claran_0 [/tmp/claran/out/claran_1 ...] \\
        [--fits NAME.fits:Y0:X0:SIZE:grey|heat ...] [--write-test-reference tests/data/claran_reference/first_d1.npz]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
import tensorpack_compare as cmp  # noqa: E402  (max_diff, pair, BOX_TOL, SCORE_TOL)

from gluon_rcnn.convert.tensorpack import from_tensorpack  # noqa: E402
from gluon_rcnn.roi_heads import rois_with_batch_index  # noqa: E402
from gluon_rcnn.structures.boxes import clip_boxes  # noqa: E402

KIND = "ClaRAN-v0.2-FasterRCNN-R50FPN"


def load_run(prefix: str):
    """(meta, outputs, weights path) of one reference run."""
    meta = json.loads(Path(prefix + ".meta.json").read_text())
    z = np.load(prefix + ".outputs.npz")
    return meta, {k: z[k] for k in z.files}, prefix + ".weights.npz"


def image_sha256(rgb: np.ndarray) -> str:
    """SHA-256 of a uint8 (H, W, 3) image's bytes (C order)."""
    return hashlib.sha256(np.ascontiguousarray(rgb, dtype=np.uint8).tobytes()).hexdigest()


def end_to_end(model, rgb: np.ndarray, ref: dict, resized_rgb: np.ndarray | None = None) -> dict:
    """Our whole pipeline on the original RGB cutout against the graph's ``predict_image`` output (the
    cutout's pixels): detections paired by label and box, the largest box and score differences.
    ``resized_rgb``: start from this already resized image instead of our resize of ``rgb`` (isolates
    the resize: tensorpack resizes the uint8 image with cv2 and feeds uint8)."""
    img = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))
    with torch.no_grad():
        if resized_rgb is None:
            (out,) = model([img])
        else:
            h, w = resized_rgb.shape[:2]
            t = torch.from_numpy(np.ascontiguousarray(resized_rgb.transpose(2, 0, 1)))
            batch = model.preprocessor([t], [(h, w)])
            feats = model.features(batch.tensor)
            props, _ = model.rpn(feats, batch.image_sizes, None, tuple(batch.tensor.shape[-2:]))
            results = model.roi_heads(feats, props, batch.image_sizes)
            (out,) = model.postprocess(results, batch.image_sizes, [rgb.shape[:2]])
    tb, ts, tl = ref["final_boxes_orig"], ref["final_scores"], ref["final_class_ids"]
    ob, os_, ol = out["boxes"].numpy(), out["scores"].numpy(), out["labels"].numpy()
    idx, dist = cmp.pair(ob, tb, ol, tl)
    ok = idx >= 0
    return {"detections": f"{len(tb)} ClaRAN / {len(ob)} ours",
            "unpaired": int((~ok).sum()) + (len(ob) - int(ok.sum())),
            "box_px": float(dist[ok].max()) if ok.any() else 0.0,
            "score": float(np.abs(os_[idx[ok]] - ts[ok]).max()) if ok.any() else 0.0,
            "n": int(len(tb))}


@torch.no_grad()
def compare(ref: dict, weights, kind: str = KIND, rgb: np.ndarray | None = None) -> dict:
    """Stage-by-stage rows ``(name, shape, max |diff|, relative)`` and the end-to-end result."""
    model = from_tensorpack(weights, kind)
    rows, row = cmp.stage_rows()
    bgr = ref["input_image_bgr_resized"]
    batch, (h, w) = cmp.feed_bgr(model, bgr)
    x = batch.tensor
    row("input (normalised)", x[:, :, :h, :w].numpy(), ref["image_preprocessed_nchw"][:, ::-1])
    body = model.backbone.body(x)
    for i, k in enumerate(body):
        row(f"c{i + 2}", body[k].numpy(), ref.get(f"c{i + 2}"))
    fpn = model.backbone.fpn(body)
    feats = [fpn[k] for k in model.feature_names]
    for i, f in enumerate(feats):
        row(f"p{i + 2}", f.numpy(), ref.get(f"p{i + 2}"))
    logits, deltas = model.rpn.head(feats)
    for i, (lg, dl) in enumerate(zip(logits, deltas)):
        row(f"rpn_p{i + 2}_logits", lg.numpy(), ref.get(f"rpn_p{i + 2}_label_logits_nchw"))
        row(f"rpn_p{i + 2}_deltas", dl.numpy(), ref.get(f"rpn_p{i + 2}_box_logits_nchw"))

    # anchors: must be equal, not close
    anchors = model.rpn.anchor_generator([f.shape[-2:] for f in feats], x.device, tuple(x.shape[-2:]))
    anchor_equal = {}
    for i, a in enumerate(anchors):
        t = ref.get(f"anchors_p{i + 2}")
        if t is not None:
            fh, fw = t.shape[:2]
            ours = a.numpy().reshape(feats[i].shape[-2], feats[i].shape[-1], -1, 4)[:fh, :fw]
            anchor_equal[f"p{i + 2}"] = bool(ours.shape == t.shape and np.array_equal(ours, t))
            row(f"anchors_p{i + 2}", ours, t)

    props = model.rpn(feats, batch.image_sizes, None, tuple(x.shape[-2:]))[0][0]
    tp_props = ref["rpn_proposal_boxes"]
    idx, dist = cmp.pair(props.numpy(), tp_props, tol=1.0)
    ok = idx >= 0
    proposals = {"n_ref": int(len(tp_props)), "n_ours": int(len(props)), "unpaired_ref": int((~ok).sum()),
                 "extra_ours": int(len(props) - ok.sum()),
                 "max_px": float(dist[ok].max()) if ok.any() else float("nan")}

    rh = model.roi_heads
    boxes = torch.from_numpy(tp_props).float()
    lg, dl = rh.box_outputs(feats, rois_with_batch_index([boxes]), stage=0)
    row("fastrcnn class logits", lg.numpy(), ref.get("fastrcnn_label_logits"))
    tp_dl = ref.get("fastrcnn_box_logits")
    if tp_dl is not None:
        row("fastrcnn box deltas", dl.reshape(tp_dl.shape).numpy(), tp_dl)
    decoded = clip_boxes(rh.stages[0].coder.decode(dl, boxes), torch.tensor([[h, w]]).expand(len(boxes), 2))
    tp_all = ref.get("fastrcnn_all_boxes")
    C = rh.num_classes
    if tp_all is not None:
        row("all boxes (decoded, clipped)", decoded.reshape(len(boxes), -1, 4)[:, C - tp_all.shape[1]:].numpy(), tp_all)
    tp_sc = ref.get("fastrcnn_all_scores")
    if tp_sc is not None:
        row("all scores", torch.softmax(lg, -1)[:, C - tp_sc.shape[1]:].numpy(), tp_sc)

    # the heads and post-processing from the graph's own proposals (resized pixels)
    r_tp = rh(feats, [boxes], batch.image_sizes)[0]
    ti, td = cmp.pair(r_tp["boxes"].numpy(), ref["output_boxes"], r_tp["labels"].numpy(), ref["output_labels"])
    tok = ti >= 0
    from_tp = {"unpaired": int((~tok).sum()) + (len(r_tp["boxes"]) - int(tok.sum())),
               "box_px": float(td[tok].max()) if tok.any() else 0.0,
               "score": float(np.abs(r_tp["scores"].numpy()[ti[tok]] - ref["output_scores"][tok]).max())
               if tok.any() else 0.0}
    if rgb is None:
        rgb = ref["input_image_bgr_orig"][:, :, ::-1]
    final = end_to_end(model, rgb, ref)
    from_resized = end_to_end(model, rgb, ref, resized_rgb=bgr[:, :, ::-1])
    return {"rows": rows, "anchors_equal": anchor_equal, "proposals": proposals, "from_ref_proposals": from_tp,
            "from_ref_resized": from_resized, "final": final, "rules": dict(model.cfg.RULES)}


def _final_ok(f: dict) -> bool:
    return f["unpaired"] == 0 and f["box_px"] <= cmp.BOX_TOL and f["score"] <= cmp.SCORE_TOL


def passed(res: dict, key: str = "from_ref_resized") -> bool:
    """Anchors equal, proposals the same set, and the final detections (``key``: ``'from_ref_resized'``,
    from the graph's own cv2-resized image, or ``'final'``, through our resize too) within the tolerances."""
    return (all(res["anchors_equal"].values()) and res["proposals"]["unpaired_ref"] == 0
            and res["proposals"]["extra_ours"] == 0 and _final_ok(res[key]))


#: ClaRAN v0.1 tools/fits_utils.py ``fits2png``: ``ds9 -cmap gist_heat -cmap value 0.684039 0 -zoom to fit
#: -scale log -scale mode minmax -export png``; the colour table is DS9's own (GPL: not shipped), read from
#: a DS9 installation (Debian's saods9: /usr/share/saods9/cmaps)
DS9_CMAPS = Path("/usr/share/saods9/cmaps")
COLORMAPS = {"grey": {}, "heat": {"colormap": DS9_CMAPS / "gist_heat.sao", "contrast": 0.684039, "bias": 0.0}}


def render_cutout(spec: str, fits_dir: Path = REPO.parent / "shared" / "data" / "mirabest_fits"):
    """``NAME.fits:Y0:X0:SIZE:COLORMAP`` (COLORMAP ``grey`` or ``heat``, :data:`COLORMAPS`) → the crop's D1
    PNG as DS9 exports it and ``cv2.imread(..)[..., ::-1]`` reads it (:func:`render.render_d1_ds9`)."""
    from gluon_rcnn.radio import read_fits, render
    name, y0, x0, size, cmap = spec.split(":")
    y0, x0, size = int(y0), int(x0), int(size)
    radio, _, _ = read_fits(fits_dir / name)
    return render.render_d1_ds9(radio[y0:y0 + size, x0:x0 + size], **COLORMAPS[cmap])


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prefixes", nargs="+", help="reference runs (PREFIX.outputs.npz / .meta.json / .weights.npz)")
    p.add_argument("--fits", nargs="*", default=None,
                   help="per prefix, the cutout it was rendered from: NAME.fits:Y0:X0:SIZE:grey|heat (checks the "
                        "PNG fed to ClaRAN's graph equals render_d1_ds9 of that crop, and runs ours from the rendering)")
    p.add_argument("--write-test-reference", default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(2)
    store, variables, all_ok = {}, None, True
    for k, prefix in enumerate(args.prefixes):
        meta, ref, wpath = load_run(prefix)
        rgb = None
        if args.fits:
            rgb = render_cutout(args.fits[k])
            fed = ref["input_image_bgr_orig"][:, :, ::-1]
            same = rgb.shape == fed.shape and np.array_equal(rgb, fed)
            print(f"{prefix}: render_d1_ds9({args.fits[k]}) == the PNG ClaRAN's graph read: {same}")
            all_ok &= same
        res = compare(ref, wpath, rgb=rgb)
        print(f"\n== {prefix}  ({meta['image']}, {tuple(meta['orig_shape_hw'])} -> {tuple(meta['resized_shape_hw'])})")
        print(f"{'stage':34s} {'shape':>18s} {'max |diff|':>11s} {'relative':>10s}")
        for name, shape, d, r in res["rows"]:
            print(f"{name:34s} {shape:>18s} {d:11.3g} {r:10.3g}")
        print("anchors equal:", res["anchors_equal"])
        print("proposals (sets):", res["proposals"])
        print("heads from ClaRAN's proposals:", res["from_ref_proposals"])
        print("from ClaRAN's resized image to the cutout's pixels:", res["from_ref_resized"])
        print("end to end (cutout pixels):", res["final"])
        ok, ok_end = passed(res), passed(res, "final")
        all_ok &= ok and ok_end
        print("from ClaRAN's resized image:", "PASS" if ok else "FAIL", "| through our resize:", "PASS" if ok_end else "FAIL")
        if args.write_test_reference:
            wz = np.load(wpath)
            shapes = {n: list(wz[n].shape) for n in wz.files}
            if variables is None:
                variables = shapes
            assert variables == shapes, "the runs hold different variables"
            src = args.fits[k] if args.fits else ""
            store[f"case{k}_fits"] = np.asarray(src)
            store[f"case{k}_sha256"] = np.asarray(image_sha256(ref["input_image_bgr_orig"][:, :, ::-1]))
            for key in ("final_boxes_orig", "final_scores", "final_class_ids", "rpn_proposal_boxes"):
                store[f"case{k}_{key}"] = ref[key]
            store[f"case{k}_resized_shape_hw"] = ref["resized_shape_hw"]
    if args.write_test_reference:
        store["meta_json"] = np.asarray(json.dumps({
            "seed": meta["seed"], "weights": meta["weights"], "config_overrides": meta["config_overrides"],
            "tensorpack_commit": meta["tensorpack_commit"], "claran_commit": "9ccc64997c552a4ac32ab7a67b2487e935c4adb4",
            "tensorflow": meta["tensorflow"], "driver": meta["driver"], "n_cases": len(args.prefixes)}))
        store["variables_json"] = np.asarray(json.dumps(variables))
        out = Path(args.write_test_reference)
        out.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(out, **store)
        print(f"wrote {out} ({out.stat().st_size} bytes)")
    return 0 if all_ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
