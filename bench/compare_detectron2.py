#!/usr/bin/env python
"""Stage-by-stage comparison with detectron2's own R-CNN models (C4, FPN, cascade, GN).

The reference comes from ``bench/detectron2_reference.sh`` (detectron2 built from its source for the CPU in a
side venv): detectron2's unmodified model with seeded weights writes ``CONFIG_seedS.pkl`` (the zoo's file
layout), ``PREFIX.outputs.npz`` and ``PREFIX.meta.json``. This script converts the .pkl with
:func:`gluon_rcnn.convert.detectron2.from_detectron2` into the matching ``d2_*`` zoo entry's config, feeds
detectron2's resized image through our normalisation, and compares (tests/detectron2_compare.py):

- ``input``; ``res2``..``res5`` (or ``res4``); ``p2``..``p6``; the RPN's logits, deltas and anchors per level;
- ``proposals (sets)``: detectron2's proposals paired with ours (largest difference, unpaired count);
- each box stage's class logits and deltas on detectron2's own boxes for that stage;
- mask logits (every class) on detectron2's final boxes;
- ``final``: our detections against detectron2's, paired by label within 0.5 px, end to end and from
  detectron2's proposals; boxes in original pixels; pasted binary masks (pixels that differ).

    python bench/compare_detectron2.py /tmp/d2ref/out/*.meta.json [--markdown]

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
from detectron2_compare import compare_arrays, passed  # noqa: E402


def _fmt(d: dict) -> str:
    return ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else (f"{k} ({_fmt(v)})" if isinstance(v, dict)
                                                                   else f"{k} {v}") for k, v in d.items())


def print_report(res: dict, markdown: bool = False) -> None:
    m = res["meta"]
    print(f"\n## {m['config']} → {res['entry']}: image {Path(m['image']).name}, short {m['min_size_test']} max "
          f"{m['max_size_test']}, seed {m['seed']} (detectron2 {m['detectron2']} {m.get('detectron2_commit')}, "
          f"torch {m['torch']})")
    if markdown:
        print("\n| stage | shape | max abs diff | max diff / max abs ref |\n| --- | --- | ---: | ---: |")
    for n, shp, d, r in res["rows"]:
        line = (n, shp, f"{d:.3g} px", f"{int(r)} unpaired") if n.startswith("proposals") else \
            (n, shp, f"{d:.3g}", f"{r:.2g}")
        print(("| " + " | ".join(line) + " |") if markdown else "  {:40s} {:>22s} {:>12s} {:>12s}".format(*line))
    print("final: " + _fmt(res["final"]) + ("  -> PASS" if passed(res) else "  -> FAIL"))


SUMMARY_HEADER = ("| detectron2 config → zoo entry | image, input (padded) | features | RPN | anchors | proposals | "
                  "heads: class / box / mask | detections | unpaired | box px | score | box px (orig) | mask px differ | "
                  "result |\n| --- | --- | ---: | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | --- | --- |")


def summary_line(res: dict) -> str:
    """One row of docs/results.md's table: the largest relative difference over the features (res*, p*), the
    RPN outputs, each head kind; anchors in px; proposals; the final detections."""
    m, f = res["meta"], res["final"]
    rows = {r[0]: r for r in res["rows"]}

    def worst(pred, col=3):
        vals = [r[col] for k, r in rows.items() if pred(k)]
        return f"{max(vals):.2g}" if vals else "—"

    props = rows["proposals (sets)"]
    stages = sum(1 for k in rows if k.endswith("class logits"))
    heads = (f"{worst(lambda k: k.endswith('class logits'))} / {worst(lambda k: k.endswith('box deltas'))} / "
             f"{worst(lambda k: k.startswith('mask logits'))}" + (f" ({stages} stages)" if stages > 1 else ""))
    shape = rows["input (normalised, padded)"][1].split("x")[2:]
    mask = f"{f['mask_px_differ']} / {f['mask_px_total']}" if "mask_px_total" in f else "—"
    return (f"| `{Path(m['config']).stem}` → `{res['entry']}` | {Path(m['image']).stem}, {'x'.join(shape)} | "
            f"{worst(lambda k: k[-1:].isdigit() and k.rstrip('0123456789') in ('res', 'p'))} | "
            f"{worst(lambda k: k.startswith('rpn '))} | {worst(lambda k: k.startswith('anchors'), 2)} px | "
            f"{props[2]:.3g} px; {int(props[3])} of {props[1].split()[0]} | {heads} | "
            f"{f['detections'].replace(' d2', '').replace(' ours', '')} | {f['unpaired']} | {f['box_px']:.2g} | "
            f"{f['score']:.2g} | {f.get('box_px_orig', float('nan')):.2g} | {mask} | {'PASS' if passed(res) else 'FAIL'} |")


#: what a test reference keeps (no weights: tests draw them again with tests/detectron2_weights.spread)
TEST_KEYS = ("orig_shape_hw", "proposals", "boxes", "scores", "classes", "boxes_orig")
TEST_LOGITS, TEST_MASK_PROBS, TEST_PASTED = 64, 32, 8


def write_test_reference(prefix: str, out_dir: Path, name: str) -> list[Path]:
    """A small reference ``out_dir/NAME.npz``: detectron2's proposals and detections (resized and original
    pixels), the first stage's first ``TEST_LOGITS`` input boxes and their class logits, p3's (or res4's)
    channel 0, the first ``TEST_MASK_PROBS`` detections' mask probabilities (float16) and the first
    ``TEST_PASTED`` pasted masks (bits). The resized image (detectron2's PIL resize, lossless) goes to
    ``out_dir/<image stem>_s<short>.png`` (RGB; shared by the models run on it), its name in ``image``."""
    from PIL import Image
    meta = json.loads(Path(prefix + ".meta.json").read_text())
    ref = np.load(prefix + ".outputs.npz")
    keep = {k: ref[k] for k in TEST_KEYS}
    keep["stage0_boxes"] = ref["stage0_boxes"][:TEST_LOGITS]
    keep["stage0_cls_logits"] = ref["stage0_cls_logits"][:TEST_LOGITS]
    feat = "p3" if "p3" in ref.files else "res4"
    keep[f"{feat}_ch0"] = ref[feat][:, :1]
    if "mask_probs" in ref.files:
        keep["mask_probs"] = ref["mask_probs"][:TEST_MASK_PROBS].astype(np.float16)
        shape = tuple(int(v) for v in ref["masks_orig_shape"])
        masks = np.unpackbits(ref["masks_orig_bits"])[: int(np.prod(shape))].reshape(shape)[:TEST_PASTED]
        keep["masks_orig_bits"], keep["masks_orig_shape"] = np.packbits(masks.reshape(-1)), np.asarray(masks.shape)
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / f"{Path(meta['image']).stem}_s{meta['min_size_test']}.png"
    Image.fromarray(np.ascontiguousarray(ref["resized_bgr"][:, :, ::-1])).save(png, optimize=True)
    for k in ("cfg", "weights"):
        meta.pop(k, None)
    meta["image"] = png.name
    keep["meta_json"] = np.asarray(json.dumps(meta))
    out = out_dir / f"{name}.npz"
    np.savez_compressed(out, **keep)
    return [out, png]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("metas", nargs="+", help="PREFIX.meta.json files of detectron2_reference.py")
    ap.add_argument("--markdown", action="store_true")
    ap.add_argument("--override", action="append", default=[], help="extra KEY=VALUE for our model")
    ap.add_argument("--write-test-reference", metavar="NAME", help="write tests/data/detectron2_reference/NAME.npz "
                                                                   "(one meta only)")
    a = ap.parse_args(argv)
    ok = True
    summary = []
    for mpath in a.metas:
        prefix = str(mpath)[: -len(".meta.json")]
        if a.write_test_reference:
            for path in write_test_reference(prefix, REPO / "tests" / "data" / "detectron2_reference",
                                             a.write_test_reference):
                print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")
            continue
        meta = json.loads(Path(mpath).read_text())
        ref = dict(np.load(prefix + ".outputs.npz"))
        res = compare_arrays(meta, ref, meta["weights"], a.override)
        print_report(res, a.markdown)
        summary.append(summary_line(res))
        ok &= passed(res)
    if summary:
        print("\n" + SUMMARY_HEADER)
        print("\n".join(summary))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
