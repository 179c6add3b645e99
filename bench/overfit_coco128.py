#!/usr/bin/env python
"""Overfit check on real data: train on N images of ../shared/data/coco128, evaluate on the same
images with scripts/eval.py, and require AP50 >= a bound.

    python bench/overfit_coco128.py --arch faster            # box AP50 >= 0.5
    python bench/overfit_coco128.py --arch mask              # mask AP50 >= 0.5
    python bench/overfit_coco128.py --arch cascade           # Cascade Mask R-CNN, box AP50 >= 0.5

Small ResNet-18 FPN with GroupNorm, from scratch (no downloads), short edge 288, on the CPU.
Results and commands are recorded in docs/results.md.
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COCO128 = REPO.parent / "shared" / "data" / "coco128"

SMALL = ["BACKBONE.RESNET_NUM_BLOCKS=[2,2,2,2]", "BACKBONE.NORM=GN", "FPN.NORM=GN", "BACKBONE.FREEZE_AT=0",
         "FPN.NUM_CHANNEL=128", "FPN.FRCNN_FC_HEAD_DIM=512", "FRCNN.BATCH_PER_IM=128", "MRCNN.HEAD_DIM=128",
         "PREPROC.TRAIN_SHORT_EDGE_SIZE=[288,288]", "PREPROC.TEST_SHORT_EDGE_SIZE=288", "PREPROC.MAX_SIZE=480",
         "RPN.TRAIN_PER_LEVEL_NMS_TOPK=1000", "RPN.TRAIN_POST_NMS_TOPK=1000", "TRAIN.IMS_PER_GPU=2",
         "TRAIN.BASE_LR=0.08", "TRAIN.WARMUP=100", "DATA.NUM_WORKERS=0", "TRAIN.LOG_PERIOD=20",
         "TRAIN.CHECKPOINT_PERIOD=200"]
ARCH = {"faster": ("train_faster_rcnn.py", "faster_rcnn_fpn_resnet18_v1b_coco", []),
        "mask": ("train_mask_rcnn.py", "mask_rcnn_fpn_resnet18_v1b_coco", []),
        "cascade": ("train_mask_rcnn.py", "mask_rcnn_fpn_resnet18_v1b_coco", ["FPN.CASCADE=True"])}


def subset(n: int, out: Path) -> Path:
    """A COCO JSON of the first n coco128 images (by id) that have a non-crowd box."""
    d = json.loads((COCO128 / "annotations" / "instances_train2017.json").read_text())
    has = {a["image_id"] for a in d["annotations"] if not a.get("iscrowd")}
    imgs = sorted((im for im in d["images"] if im["id"] in has), key=lambda im: im["id"])[:n]
    ids = {im["id"] for im in imgs}
    path = out / f"coco128_first{n}.json"
    path.write_text(json.dumps({"images": imgs, "annotations": [a for a in d["annotations"] if a["image_id"] in ids],
                                "categories": d["categories"]}))
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", choices=sorted(ARCH), default="faster")
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--iters", type=int, default=800)
    p.add_argument("--output", default=None, help="run folder (default runs/overfit_<arch>)")
    p.add_argument("--min-ap50", type=float, default=0.5)
    p.add_argument("--config", nargs="*", default=[], help="extra KEY=VALUE overrides")
    a = p.parse_args(argv)
    if not COCO128.exists():
        print(f"coco128 not found at {COCO128}", file=sys.stderr)
        return 2
    out = Path(a.output or REPO / "runs" / f"overfit_{a.arch}")
    out.mkdir(parents=True, exist_ok=True)
    ann = subset(a.images, out)
    script, model, extra = ARCH[a.arch]
    last = a.iters * 2 // 8  # the schedule counts 8-image iterations; we run 2 images per step
    sched = f"TRAIN.LR_SCHEDULE=[{int(last * 0.75)},{last}]"
    t0 = time.time()
    cmd = [sys.executable, str(REPO / "scripts" / script), "--annotations", str(ann), "--images",
           str(COCO128 / "train2017"), "--output", str(out / "train"), "--no-eval", "--resume", "--config",
           *SMALL, *extra, sched, *a.config]
    print("$", " ".join(cmd), flush=True)
    if subprocess.call(cmd):
        return 1
    train_s = time.time() - t0
    cmd = [sys.executable, str(REPO / "scripts" / "eval.py"), "--model", model, "--weights",
           str(out / "train" / "model_final.pth"), "--config", str(out / "train" / "config.json"),  # the trained one
           "--annotations", str(ann), "--images", str(COCO128 / "train2017"),
           "--output", str(out / "results.json"), "--num-workers", "0", "--no-progress"]
    print("$", " ".join(cmd), flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True)
    print(r.stdout, r.stderr[-2000:] if r.returncode else "", sep="\n")
    if r.returncode:
        return 1
    kind = "segm" if a.arch == "mask" else "bbox"
    ap50 = _ap50(r.stdout, kind)
    print(f"{a.arch}: {kind} AP50 = {ap50:.3f} on {a.images} coco128 images after {a.iters} iterations "
          f"({train_s / 60:.1f} min of training on {_cpu()})")
    return 0 if ap50 >= a.min_ap50 else 3


def _ap50(text: str, kind: str) -> float:
    """AP50 from the row ``kind | AP | AP50 | ...`` of the table scripts/eval.py prints."""
    for line in text.splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) >= 3 and cells[0] == kind:
            return float(cells[2])
    raise SystemExit(f"no {kind} row in the eval output:\n{text}")


def _cpu() -> str:
    import os
    return f"{os.cpu_count()} CPU cores"


if __name__ == "__main__":
    sys.exit(main())
