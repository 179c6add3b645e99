#!/usr/bin/env python
"""Label a directory of FITS radio images (ClaRAN classes) and write a COCO dataset.

    python scripts/make_rgz_dataset.py DIR_OF_FITS OUT [--render D1|D3|D4] [--ir-dir DIR]
        [--sigma 5.196] [--contour-factor 1.732] [--test-fraction 0.2] [--seed 0]
        [--labels rule|consensus|auto] [--catalogue CSV] [--split-radius 0.25] [--peak-rule rgz]

--labels consensus: human labels from the RGZ consensus catalogue (shipped; docs/claran_labels.md),
by sky position; 'auto': consensus where it covers an image, the rule elsewhere.

Writes OUT/images/*.png, OUT/annotations/instances_{train,test}.json and OUT/summary.json, and
prints the sources per class (train/test/total) and the skipped sources with their reasons.
See docs/claran.md for how the labels are derived.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

try:
    from gluon_rcnn import radio as rgz
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from gluon_rcnn import radio as rgz

FITS_PATTERNS = ("*.fits", "*.fit", "*.fts", "*.fits.gz")


def _progress():
    try:
        from tqdm import tqdm
    except ImportError:
        tqdm = None
    state = {}

    def update(i, n, path):
        if tqdm is not None:
            if "bar" not in state:
                state["bar"] = tqdm(total=n, unit="img", desc="labelling", file=sys.stderr)
            state["bar"].update(1)
            if i == n:
                state["bar"].close()
        else:
            width = 40
            done = int(width * i / max(n, 1))
            sys.stderr.write(f"\rlabelling [{'#' * done}{'.' * (width - done)}] {i}/{n}")
            if i == n:
                sys.stderr.write("\n")
            sys.stderr.flush()

    return update


def print_summary(summary: dict, out=sys.stdout) -> None:
    """The per-class table, image counts, skipped sources and unreadable files."""
    print(f"{'class':<8}{'train':>8}{'test':>8}{'total':>8}", file=out)
    for c in rgz.RGZ_CLASSES:
        print(f"{c:<8}{summary['train'][c]:>8}{summary['test'][c]:>8}{summary['total'][c]:>8}", file=out)
    tr, te = (sum(summary[k].values()) for k in ("train", "test"))
    print(f"{'all':<8}{tr:>8}{te:>8}{tr + te:>8}", file=out)
    print(f"images: train {summary['images']['train']}, test {summary['images']['test']}", file=out)
    skipped = summary.get("skipped", [])
    print(f"skipped sources: {len(skipped)}", file=out)
    for s in skipped:
        box = ",".join(f"{v:.0f}" for v in s["box"])
        print(f"  {s['file']} [{box}]: {s['reason']}", file=out)
    for f in summary.get("failed", []):
        print(f"  unreadable: {f['file']}: {f['error']}", file=out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("fits_dir", help="directory of FITS radio images")
    p.add_argument("out", help="output directory")
    p.add_argument("--render", default="D1", choices=["D1", "D3", "D4"],
                   help="D1: radio only; D3: radio contours on infrared; D4: D3 with infrared masked outside the sources")
    p.add_argument("--ir-dir", default=None, help="infrared FITS named like the radio ones (needed by D3/D4)")
    p.add_argument("--sigma", type=float, default=3 * 3 ** 0.5,
                   help="lowest contour, in units of the noise (default RGZ's 3*sqrt(3) = 5.2; earlier rule: 4)")
    p.add_argument("--contour-factor", type=float, default=3 ** 0.5,
                   help="ratio of successive contours (default RGZ's sqrt(3); earlier rule: 2)")
    p.add_argument("--min-pixels", type=int, default=5, help="smallest component kept, pixels (default 5)")
    p.add_argument("--link-factor", type=float, default=1.5, help="grouping: gap <= factor x larger component size")
    p.add_argument("--link-max", type=float, default=60.0, help="grouping: largest linking gap, pixels (default 60)")
    p.add_argument("--test-fraction", type=float, default=0.2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--labels", default="rule", choices=["rule", "consensus", "auto"],
                   help="rule: derive_sources; consensus: the RGZ consensus catalogue (human); auto: consensus where it covers")
    p.add_argument("--catalogue", default=None, help="consensus catalogue CSV (default: the one shipped)")
    p.add_argument("--split-radius", type=float, default=None,
                   help="keep images whose centres are closer than this (degrees) in one split (e.g. 0.25)")
    p.add_argument("--peak-rule", default="rgz", choices=["prominence", "rgz"],
                   help="the rule labeller's peak count: rgz (one per innermost contour of RGZ's ladder, default) or "
                        "prominence (this library's earlier rule)")
    args = p.parse_args(argv)

    d = Path(args.fits_dir)
    if not d.is_dir():
        p.error(f"{d} is not a directory")
    paths = sorted({q for pat in FITS_PATTERNS for q in d.glob(pat)})
    if not paths:
        p.error(f"no FITS files ({', '.join(FITS_PATTERNS)}) in {d}")
    if args.render != "D1" and not args.ir_dir:
        p.error(f"--render {args.render} needs --ir-dir")
    try:
        summary = rgz.build_coco_dataset(paths, args.out, render=args.render, ir_dir=args.ir_dir,
                                         test_fraction=args.test_fraction, seed=args.seed, sigma_level=args.sigma,
                                         contour_factor=args.contour_factor, min_pixels=args.min_pixels,
                                         link_factor=args.link_factor, link_max=args.link_max, progress=_progress(),
                                         labels=args.labels, catalogue=args.catalogue, split_radius=args.split_radius,
                                         peak_rule=args.peak_rule)
    except rgz.CatalogueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    with open(Path(args.out) / "summary.json", "w") as f:
        json.dump(summary, f, indent=1)
    print_summary(summary)
    print(f"wrote {args.out}/images, {args.out}/annotations/instances_train.json, instances_test.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
