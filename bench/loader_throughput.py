#!/usr/bin/env python
"""How many training images per second the data loader alone can feed: checked decode, the choice
of the training size (short edge 800, max 1333; the resize itself is the model's preprocessing,
timed with the model in bench/train_throughput.py), flip, polygon edges, collate and (on a GPU
host) pinned memory, over coco128 with DATA.NUM_WORKERS worker processes. No model runs.

    python bench/loader_throughput.py --workers 0 2 4 --batch 2
"""
from __future__ import annotations

import argparse
import statistics
import time

from common import COCO128, software


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--batches", type=int, default=30, help="batches per timed window")
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--short", type=int, default=800)
    p.add_argument("--max-size", type=int, default=1333)
    a = p.parse_args(argv)
    from gluon_rcnn.config import get_default_config
    from gluon_rcnn.data.coco import COCODetection
    from gluon_rcnn.data.loader import TransformedDataset, build_train_loader
    from gluon_rcnn.data.transforms import TrainTransform

    print(f"### data loader alone\n\n{software()}\n")
    print("| workers | batch | img/s (median) | windows |\n| ---: | ---: | ---: | --- |")
    for w in a.workers:
        cfg = get_default_config()
        cfg.update_args([f"DATA.NUM_WORKERS={w}", f"TRAIN.IMS_PER_GPU={a.batch}", "MODE_MASK=True",
                         f"PREPROC.TRAIN_SHORT_EDGE_SIZE=[{a.short},{a.short}]", f"PREPROC.MAX_SIZE={a.max_size}"])
        cfg.finalize()
        raw = COCODetection(str(COCO128 / "annotations" / "instances_train2017.json"), str(COCO128 / "train2017"),
                            train=True, with_masks=True)
        loader = build_train_loader(cfg, TransformedDataset(raw, TrainTransform(cfg)))
        it = iter(loader)
        next(it)  # warm-up: workers started, first batch decoded
        rates = []
        for _ in range(a.windows):
            t0 = time.perf_counter()
            for _ in range(a.batches):
                next(it)
            rates.append(a.batches * a.batch / (time.perf_counter() - t0))
        print(f"| {w} | {a.batch} | {statistics.median(rates):.1f} | {', '.join(f'{r:.1f}' for r in rates)} |",
              flush=True)


if __name__ == "__main__":
    main()
