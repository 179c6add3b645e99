#!/usr/bin/env python
"""One table: gluon_rcnn vs torchvision's maskrcnn_resnet50_fpn (same weights, same coco128 images,
same sizes, one process, alternating timed windows after warm-up), for training steps,
inference at batch 1 and at a larger batch, plus the data loader alone.

    python bench/compare.py                                   # GPU: 800/1333, bf16 training, batch 8
    python bench/compare.py --device cpu --short 320 --max-size 512 --train-batch 2 --infer-batches 1 2
"""
from __future__ import annotations

import argparse

import torch

import inference_throughput
import train_throughput
from common import print_table


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--short", type=int, default=800)
    p.add_argument("--max-size", type=int, default=1333)
    p.add_argument("--train-batch", type=int, default=None)
    p.add_argument("--infer-batches", type=int, nargs="+", default=None)
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--skip-train", action="store_true")
    p.add_argument("--hybridize", action="store_true")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    gpu = device.type == "cuda"
    rows = []
    if not a.skip_train:
        rows += train_throughput.run(device, a.short, a.max_size, a.train_batch or (8 if gpu else 2), a.windows,
                                     5 if gpu else 1, 32 if gpu else 8, amp=gpu)
    rows += inference_throughput.run(device, a.short, a.max_size, a.infer_batches or ([1, 8] if gpu else [1, 2]),
                                     a.windows, 10 if gpu else 2, 16 if gpu else 8, a.hybridize)
    print()
    print_table("gluon_rcnn vs torchvision, Mask R-CNN R50-FPN", rows, device)
    print("\n(data loader alone: python bench/loader_throughput.py)")


if __name__ == "__main__":
    main()
