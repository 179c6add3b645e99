#!/usr/bin/env python
"""The rule labeller against the Radio Galaxy Zoo volunteers' consensus, on every labelled image at hand.

For every real FIRST image at hand (the MiraBest FITS in --mirabest and the cutouts inside the
firstgalaxydata wheel) the consensus catalogue (gluon_rcnn/radio/data, ClaRAN's full_catalogue.csv)
labels the sources it covers (gluon_rcnn.radio.consensus.label_image). For each consensus source,
the rule labeller's source at its first component's position is compared: class, component count,
peak count. Two rules: 'rgz' (RGZ's ladder 3*sqrt(3)*rms x sqrt(3)**k, one peak per innermost
contour) and 'prominence' (4 sigma x 2, a peak rises one contour step above its saddle).
``--min-diagonal D`` adds each rule again with RGZ's contour filter (components whose lowest contour's
bounding-box diagonal is at most D pixels dropped: derive_sources(min_diagonal=D)), named ``RULE+diagD``.

    python scripts/rgz_agreement.py [--mirabest ../shared/data/mirabest_fits] [--min-diagonal 8] [--json out.json]

Prints the agreement table (all sources and consensus level >= 0.9), the confusion matrix of each
rule, and the consensus-labelled dataset counts per class.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path

try:
    import gluon_rcnn  # noqa: F401
except ModuleNotFoundError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gluon_rcnn.radio.consensus import (CatalogueError, agreement_summary, compare_to_rule, format_confusion,
                                        label_image, load_consensus)
from gluon_rcnn.radio.fits import FITSError
from gluon_rcnn.radio.dataset import real_images_at_hand, rule_settings
from gluon_rcnn.radio.labels import derive_sources
from gluon_rcnn.structures.categories import RGZ_CLASSES

RULES = ("rgz", "prominence")
DEFAULT_MIRABEST = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mirabest_fits"


def rule_names(rules=RULES, min_diagonals=()) -> list[str]:
    """The rule names a run reports: each rule, then each rule with each ``min_diagonal``."""
    return list(rules) + [f"{r}+diag{d:g}" for d in min_diagonals for r in rules]


def agreement_records(images, catalogue, rules=RULES, progress=None, min_diagonals=()) -> tuple[list[dict], list[dict]]:
    """``(records, labelled)``: one record per (image, consensus source, rule) (the fields of
    :func:`compare_to_rule` plus image, kind, rule), and one dict per image the catalogue labels
    (name, kind, ra, dec, classes, n_ignore)."""
    records, labelled = [], []
    for i, d in enumerate(images):
        img, wcs = d["load"]()
        lab = label_image(img, wcs, catalogue)
        if progress:
            progress(i + 1, len(images))
        if not lab.sources:
            continue
        labelled.append({"name": d["name"], "kind": d["kind"], "ra": d["ra"], "dec": d["dec"],
                         "classes": [s.class_name for s in lab.sources], "n_ignore": len(lab.ignore),
                         "n_duplicates": len(lab.duplicates)})
        for rule, diag in [(r, 0.0) for r in rules] + [(r, float(m)) for m in min_diagonals for r in rules]:
            rl = derive_sources(img, **rule_settings(d["kind"], rule), min_diagonal=diag)
            name = f"{rule}+diag{diag:g}" if diag else rule
            for r in compare_to_rule(lab, rl):
                records.append(dict(r, image=d["name"], kind=d["kind"], rule=name))
    return records, labelled


def print_report(records, labelled, rules=RULES, file=sys.stdout) -> dict:
    out = {}
    print("Rule labeller vs RGZ consensus (one row per consensus source; fraction that agrees)", file=file)
    print(f"{'images':<16} {'rule':<16} {'cl':<6} {'n':>5} {'class':>7} {'cpnts':>7} {'peaks':>7}  most common confusion",
          file=file)
    for kind in ("mirabest", "firstgalaxydata", "all"):
        for rule in rules:
            for cl in (0.0, 0.9):
                rs = [r for r in records if r["rule"] == rule and (kind == "all" or r["kind"] == kind) and r["cl"] >= cl]
                s = agreement_summary(rs)
                out[f"{kind}/{rule}/cl>={cl}"] = {k: v for k, v in s.items() if k != "confusion"}
                top = (f"{s['top_confusion'][0][0]} labelled {s['top_confusion'][0][1]} ({s['top_confusion'][1]})"
                       if s["top_confusion"] else "-")
                print(f"{kind:<16} {rule:<16} {'>=' + str(cl) if cl else 'all':<6} {s['n']:>5} {s['class']:>7.3f} "
                      f"{s['components']:>7.3f} {s['peaks']:>7.3f}  {top}", file=file)
    for rule in rules:
        print(f"\nconfusion, rule '{rule}', all labelled images:", file=file)
        print(format_confusion(agreement_summary([r for r in records if r["rule"] == rule])["confusion"]), file=file)
    print("\nConsensus-labelled dataset (human labels), sources per class:", file=file)
    counts = {}
    for kind in ("mirabest", "firstgalaxydata", "all"):
        c = Counter(x for d in labelled if kind == "all" or d["kind"] == kind for x in d["classes"])
        n_img = sum(1 for d in labelled if kind == "all" or d["kind"] == kind)
        n_ign = sum(d["n_ignore"] for d in labelled if kind == "all" or d["kind"] == kind)
        counts[kind] = {"images": n_img, "ignore_regions": n_ign, **{k: c[k] for k in RGZ_CLASSES}}
        print(f"{kind:<16} images {n_img:>4}  " + "  ".join(f"{k} {c[k]:>3}" for k in RGZ_CLASSES)
              + f"  total {sum(c.values()):>4}  ignore regions {n_ign}", file=file)
    out["counts"] = counts
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mirabest", default=str(DEFAULT_MIRABEST), help="folder of MiraBest FITS ('' to skip)")
    p.add_argument("--no-firstgalaxydata", action="store_true")
    p.add_argument("--catalogue", default=None, help="consensus catalogue CSV (default: the shipped one)")
    p.add_argument("--json", default=None, help="write the per-source records and the summary here")
    p.add_argument("--min-diagonal", type=float, nargs="*", default=[],
                   help="also run each rule with RGZ's contour filter at these bounding-box diagonals (pixels)")
    args = p.parse_args(argv)
    t0 = time.time()
    mb = args.mirabest if args.mirabest and Path(args.mirabest).is_dir() else None
    if args.mirabest and mb is None:
        print(f"note: {args.mirabest} is not a folder; MiraBest FITS skipped", file=sys.stderr)
    try:
        cat = load_consensus(args.catalogue)
        images = real_images_at_hand(mb, firstgalaxydata=not args.no_firstgalaxydata)
    except (CatalogueError, FITSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{len(images)} images at hand; catalogue {cat.path} ({len(cat)} sources)")
    records, labelled = agreement_records(images, cat, min_diagonals=args.min_diagonal)
    summary = print_report(records, labelled, rules=rule_names(RULES, args.min_diagonal))
    print(f"\n{time.time() - t0:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "records": records, "labelled": labelled},
                                              indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
