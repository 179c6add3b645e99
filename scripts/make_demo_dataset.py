#!/usr/bin/env python
"""Build the embedded demo dataset (real FIRST cutouts from the firstgalaxydata package).

    python scripts/make_demo_dataset.py OUT [--n-images 200] [--size 150] [--seed 0]

No network: the PNGs are read from the zip inside the installed package. Same COCO layout and
labelling as scripts/make_rgz_dataset.py; see docs/claran.md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

try:
    from gluon_rcnn import radio as rgz
except ImportError:  # run from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from gluon_rcnn import radio as rgz

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_rgz_dataset import print_summary  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("out", help="output directory")
    p.add_argument("--n-images", type=int, default=200)
    p.add_argument("--size", type=int, default=150, help="output image side, pixels (the cutouts are 300)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-fraction", type=float, default=0.2)
    args = p.parse_args(argv)
    t0 = time.time()
    summary = rgz.build_demo_dataset(args.out, n_images=args.n_images, size=args.size, seed=args.seed,
                                     test_fraction=args.test_fraction)
    with open(Path(args.out) / "summary.json", "w") as f:
        json.dump(summary, f, indent=1)
    print_summary(summary)
    print(f"wrote {args.out} in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
