#!/usr/bin/env python
"""Stage-by-stage comparison with tensorpack's own FasterRCNN graph.

The reference comes from ``../shared/tools/tensorpack-reference`` (read its README): tensorpack's
unmodified ``examples/FasterRCNN`` inference graph, run under TensorFlow 2.15 on this CPU with seeded
random weights, writes ``PREFIX.weights.npz`` (the published checkpoints' format and names),
``PREFIX.outputs.npz`` (the resized image it was fed and every intermediate tensor) and
``PREFIX.meta.json`` (its config). A run of the 2019 code (02c38f26, ``make_reference_2019.py``: its meta
names the commit) is checked with the ``tensorpack-2019`` rule profile on that code's defaults
(``_TENSORPACK_2019_BASE``), any other with ``tensorpack`` (``_TENSORPACK_BASE``), plus the run's
``--config`` overrides. This script converts the weights with :func:`gluon_rcnn.convert.from_tensorpack`,
feeds the identical resized image and compares:

- ``input``: the normalised image (tensorpack's is BGR: its channels are flipped to compare);
- ``c2..c5``, ``p2..p6`` (FPN) or ``c4`` (C4): backbone and FPN features;
- ``rpn_pX_logits`` / ``rpn_pX_deltas`` (``rpn_*`` for C4): the RPN head's outputs per level;
- ``anchors_pX`` / ``anchors_c4`` (2019 runs dump them): our anchors against the graph's, exactly
  (``==``: a nonzero difference fails the run); ``rpn_pX_decoded``: every anchor's decoded box, unclipped;
- ``proposals``: as sets (tensorpack's are an unsorted ``top_k``): each of its boxes is paired with
  the nearest of ours; the count of unpaired boxes and the largest coordinate difference;
- ``head``: class logits and box deltas of every box stage, computed by our heads *on tensorpack's
  own input boxes* (its proposals, then its refined boxes for cascade stages 2 and 3), so each stage is
  checked alone; ``all_boxes`` / ``all_scores``: decoded per-class boxes and (averaged) scores;
- ``mask_logits``: our mask head on tensorpack's final boxes (where the reference dumps them);
- ``final``: our end-to-end detections against tensorpack's, paired by label (box within 0.5 px),
  boxes in resized and original pixels, scores, and the pasted full-size masks (pixels that differ
  after the threshold, with the profile's paste: ``RULES.MASK_PASTE='subpixel'`` for 2023,
  ``'rounded_box'``, Detectron's, for 2019). tensorpack's final outputs are compared as sets (2019's
  are in ``top_k`` order, not sorted by score).

    python bench/compare_tensorpack.py /scratch/tensorpack-reference/out/maskrcnn_r50fpn_spread [...more]
    python bench/compare_tensorpack.py --markdown PREFIX...   # a markdown table per run
    python bench/compare_tensorpack.py --tables PREFIX...     # a table per configuration, a column per image

Float noise only is accepted: the script exits 1 when a final box differs by more than 0.05 px,
a score by more than 1e-4, a detection is unpaired, or an anchor differs at all.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))
# the comparison itself is tests/tensorpack_compare.py, shared with tests/test_tensorpack_reference.py
from tensorpack_compare import compare_arrays, passed  # noqa: E402


def compare(prefix: str, threads: int | None = None, profile: str | None = None) -> dict:
    """Compare with the reference files ``PREFIX.{meta.json,outputs.npz,weights.npz}`` (``profile``: check
    with that era's rules instead of the reference's own)."""
    if threads:
        torch.set_num_threads(threads)
    prefix = str(prefix)
    meta = json.loads(Path(prefix + ".meta.json").read_text())
    res = compare_arrays(meta, dict(np.load(prefix + ".outputs.npz")), prefix + ".weights.npz", profile)
    res["prefix"] = prefix
    return res


def print_report(res: dict, markdown: bool = False) -> None:
    m = res["meta"]
    name = Path(res["prefix"]).name
    commit = str(m.get("tensorpack_commit", ""))[:8] or "(2023 driver)"  # make_reference.py's meta has no commit
    print(f"\n## {name}: {' '.join(m['config_overrides'])}; image {Path(m['image']).name} "
          f"{m['orig_shape_hw'][0]}x{m['orig_shape_hw'][1]} -> {m['resized_shape_hw'][0]}x{m['resized_shape_hw'][1]}; "
          f"tensorpack {commit}, checked with RULES.PROFILE={res['profile']}")
    if res["config_differences"]:
        print("config keys named alike with other values:", "; ".join(res["config_differences"]))
    if markdown:
        print("\n| stage | shape | max abs diff | max diff / max abs ref |\n| --- | --- | ---: | ---: |")
    for n, shp, d, r in res["rows"]:
        if n.startswith("proposals"):
            line = (n, shp, f"{d:.3g} px", f"{int(r)} unpaired")
        else:
            line = (n, shp, f"{d:.3g}", f"{r:.2g}")
        print(("| " + " | ".join(line) + " |") if markdown else "  {:34s} {:>22s} {:>12s} {:>12s}".format(*line))
    f = res["final"]
    print(("final: " if not markdown else "\nfinal: ") + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                                                                   for k, v in f.items())
          + ("  -> PASS" if passed(res) else "  -> FAIL"))


def _cell(name: str, d: float, r: float) -> str:
    return f"{d:.3g} px; {int(r)} unpaired" if name.startswith("proposals") else f"{d:.2g}"


def print_tables(results: list[dict]) -> None:
    """One markdown table per configuration (runs with the same overrides): a row per stage, a column per
    image (max abs diff; proposals: max px and unpaired count), then the final outputs."""
    groups: dict[tuple, list[dict]] = {}
    for res in results:
        groups.setdefault((res["profile"], tuple(res["meta"]["config_overrides"])), []).append(res)
    for (profile, overrides), runs in groups.items():
        m0 = runs[0]["meta"]
        commit = str(m0.get("tensorpack_commit", ""))[:8] or "(2023 driver)"
        print(f"\n#### `{' '.join(overrides)}` (tensorpack {commit}, checked with `RULES.PROFILE={profile}`)\n")
        heads = [f"{Path(r['meta']['image']).stem} {r['meta']['orig_shape_hw'][0]}x{r['meta']['orig_shape_hw'][1]}"
                 f" → {r['meta']['resized_shape_hw'][0]}x{r['meta']['resized_shape_hw'][1]}" for r in runs]
        print("| stage | " + " | ".join(heads) + " |\n| --- |" + " ---: |" * len(runs))
        stages = list(dict.fromkeys(n for r in runs for n, *_ in r["rows"]))
        for st in stages:
            cells = [next((_cell(n, d, q) for n, _, d, q in r["rows"] if n == st), "") for r in runs]
            print(f"| {st} | " + " | ".join(cells) + " |")
        finals = [r["final"] for r in runs]
        lines = [("final detections (tp / ours)", lambda f: f["detections"]), ("unpaired", lambda f: f["unpaired"]),
                 ("final boxes px (resized)", lambda f: f"{f['box_px']:.2g}"),
                 ("final boxes px (original)", lambda f: f"{f['box_px_orig']:.2g}" if "box_px_orig" in f else ""),
                 ("final scores", lambda f: f"{f['score']:.2g}"),
                 ("from tp proposals: boxes px / scores",
                  lambda f: f"{f['from_tp_proposals']['box_px']:.2g} / {f['from_tp_proposals']['score']:.2g}"),
                 ("mask probs", lambda f: f"{f['mask_prob']:.2g}" if "mask_prob" in f else ""),
                 ("mask pixels differing (original image)",
                  lambda f: f"{f['mask_px_differ']} of {f['mask_px_total']}" if "mask_px_differ" in f else "")]
        for label, get in lines:
            print(f"| {label} | " + " | ".join(str(get(f)) for f in finals) + " |")
        print("| **result** | " + " | ".join("PASS" if passed(r) else "**FAIL**" for r in runs) + " |")


#: what a test reference keeps of a reference run (the resized image, proposals, final outputs)
TEST_KEYS = ("input_image_bgr_resized", "orig_shape_hw", "resized_shape_hw", "scale", "rpn_proposal_boxes",
             "output_boxes", "output_scores", "output_labels", "final_boxes_orig", "final_scores", "final_class_ids",
             "cascade_rcnn_stage1_refined_boxes", "cascade_rcnn_stage2_refined_boxes")


def write_test_reference(prefix: str, out: Path) -> Path:
    """A small .npz of the reference for tests/test_tensorpack_reference.py: no weights (the test draws
    them again), masks as float16 / packed bits."""
    prefix = str(prefix)
    meta = json.loads(Path(prefix + ".meta.json").read_text())
    ref = np.load(prefix + ".outputs.npz")
    with np.load(prefix + ".weights.npz") as z:
        variables = {k: list(z[k].shape) for k in z.files}
    keep = {k: ref[k] for k in TEST_KEYS if k in ref.files}
    for k in ref.files:  # anchors (H x W x A x 4): the four corner cells, exact
        if k in ("anchors_c4",) or (k.startswith("anchors_p") and k[9:].isdigit()):
            keep[k + "_corners"] = ref[k][[0, -1]][:, [0, -1]]
    if "output_masks" in ref.files:
        keep["output_masks"] = ref["output_masks"].astype(np.float16)
    if "final_masks_orig" in ref.files:
        m = ref["final_masks_orig"].astype(bool)
        keep["final_masks_orig_bits"] = np.packbits(m.reshape(-1))
        keep["final_masks_orig_shape"] = np.asarray(m.shape)
    meta = {k: v for k, v in meta.items() if k not in ("tensor_names",)}
    keep["meta_json"] = np.asarray(json.dumps(meta))
    keep["variables_json"] = np.asarray(json.dumps(variables))
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **keep)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("prefixes", nargs="+", help="reference PREFIX (PREFIX.weights.npz, .outputs.npz, .meta.json)")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--tables", action="store_true",
                   help="also print one markdown table per configuration, a column per image (docs/results.md)")
    p.add_argument("--save", metavar="JSON", help="also write the results to JSON (for --from-json)")
    p.add_argument("--from-json", action="store_true", help="the PREFIXes are --save files: print their tables")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--profile", choices=("tensorpack", "tensorpack-2019"),
                   help="check with this era's defaults and rules, not the reference's own (to show they matter)")
    p.add_argument("--write-test-reference", metavar="NAME",
                   help="instead: write tests/data/tensorpack_reference/NAME.npz from the (one) PREFIX")
    a = p.parse_args(argv)
    if a.write_test_reference:
        path = write_test_reference(a.prefixes[0], REPO / "tests" / "data" / "tensorpack_reference" /
                                    f"{a.write_test_reference}.npz")
        print(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")
        return 0
    if a.from_json:
        results = [r for f in a.prefixes for r in json.loads(Path(f).read_text())]
    else:
        results = []
        for prefix in a.prefixes:
            res = compare(prefix, a.threads, a.profile)
            print_report(res, a.markdown)
            results.append(res)
        if a.save:
            Path(a.save).write_text(json.dumps(results, default=float))
    if a.tables or a.from_json:
        print_tables(results)
    return 0 if all(passed(r) for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
