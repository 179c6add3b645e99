#!/usr/bin/env python
"""Converted torchvision R-CNN vs torchvision's own, end to end on every coco128 image.

Both whole models are called on the raw images (``tv([img])`` and ``ours([img])``, float RGB in
0-1, original size): each resizes with its own code, so torchvision's size rule is tested, not
bypassed. Weights are torchvision's seeded random ones (``weights=None, weights_backbone=None``;
nothing can be downloaded here) with the frozen batch-norm statistics randomised too (else every
FrozenBatchNorm is the identity and its conversion is never exercised), and
``box_score_thresh=0``, so each image gives up to 100 detections. The detections of the two
models are paired one to one (:func:`match_detections`, order-free) and the table reports the
largest differences over all pairs and every detection left unpaired.

    python bench/equivalence_torchvision.py                    # ResNet-50, 800/1333, 128 images, Mask + Faster
    python bench/equivalence_torchvision.py --short 256 --max-size 427 --limit 16 --arch mask
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
# the tests' yardstick (tests/detection_match.py): pairing, its summary, the models, the image loader
from detection_match import (BOX_TOL, MASK_TOL, SCORE_TOL, build_torchvision, compare_detections,  # noqa: E402,F401
                             load_rgb01, match_detections, randomize_frozen_bn, summarize)

__all__ = ["match_detections", "compare_detections", "randomize_frozen_bn", "load_rgb01", "coco128_files",
           "build_torchvision", "summarize"]

COCO128 = REPO.parent / "shared" / "data" / "coco128"


def coco128_files(root: Path = COCO128) -> list[Path]:
    return sorted((Path(root) / "train2017").glob("*.jpg"))


# --------------------------------------------------------------------------------------------

def _fmt(v, spec):
    return "n/a" if v is None else format(v, spec)


def run_arch(arch: str, files, short: int, max_size: int, seed: int, log_every: int = 16) -> tuple[dict, list]:
    import sys

    sys.path.insert(0, str(REPO))
    from gluon_rcnn.convert import from_torchvision

    tv = build_torchvision(arch, short, max_size, seed)
    ours = from_torchvision(tv)
    stats, t0 = [], time.perf_counter()
    with torch.inference_mode():
        for i, f in enumerate(files):
            img = load_rgb01(f)
            a = tv([img])[0]
            b = ours([img])[0]
            s = compare_detections(a, b)
            s["file"] = f.name
            s["size"] = tuple(img.shape[-2:])
            stats.append(s)
            if s["unpaired_tv"] or s["unpaired_ours"]:
                print(f"  [{arch}] {f.name} {s['size']}: {len(s['unpaired_tv'])} torchvision / "
                      f"{len(s['unpaired_ours'])} ours detections unpaired (scores {s['unpaired_tv_scores'][:4]} / "
                      f"{s['unpaired_ours_scores'][:4]})", file=sys.stderr, flush=True)
            if log_every and ((i + 1) % log_every == 0 or i + 1 == len(files)):
                print(f"  [{arch}] {i + 1}/{len(files)} images, {time.perf_counter() - t0:.0f} s", file=sys.stderr,
                      flush=True)
    summ = summarize(stats)
    summ["seconds"] = time.perf_counter() - t0
    return summ, stats


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", nargs="+", default=["mask", "faster"], choices=["mask", "faster"])
    p.add_argument("--short", type=int, default=800, help="torchvision min_size (default 800)")
    p.add_argument("--max-size", type=int, default=1333, help="torchvision max_size (default 1333)")
    p.add_argument("--limit", type=int, default=0, help="first N coco128 images (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    import sys

    sys.path.insert(0, str(REPO / "bench"))
    from common import device_name, software

    files = coco128_files()
    if not files:
        raise SystemExit(f"no images under {COCO128 / 'train2017'}")
    if a.limit:
        files = files[:a.limit]
    rows = []
    for arch in a.arch:
        summ, _ = run_arch(arch, files, a.short, a.max_size, a.seed)
        rows.append((arch, summ))
    lines = [f"### converted vs torchvision, ResNet-50-FPN, min_size={a.short} max_size={a.max_size}, "
             f"box_score_thresh=0, seed {a.seed}", "",
             f"device: {device_name(torch.device('cpu'))}; {software()}", "",
             "| model | images | detections torchvision / ours | pairs compared | max box diff (px) | "
             "max score diff | max mask diff | unpaired | seconds |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for arch, s in rows:
        name = {"mask": "Mask R-CNN", "faster": "Faster R-CNN"}[arch]
        lines.append(f"| {name} | {s['images']} | {s['n_tv']} / {s['n_ours']} | {s['pairs']} | {s['box']:.3g} | "
                     f"{s['score']:.3g} | {_fmt(s['mask'], '.3g')} | {s['unpaired']} | {s['seconds']:.0f} |")
    print("\n".join(lines), flush=True)
    ok = all(s["unpaired"] == 0 and s["n_tv"] == s["n_ours"] == s["pairs"] and s["box"] <= BOX_TOL
             and s["score"] <= SCORE_TOL and (s["mask"] is None or s["mask"] <= MASK_TOL) and s["mask_shape_ok"]
             for _, s in rows)
    print(f"\nequivalent within boxes {BOX_TOL:g} px, scores {SCORE_TOL:g}, masks {MASK_TOL:g}: "
          f"{'yes' if ok else 'NO'}", flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
