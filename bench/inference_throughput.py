#!/usr/bin/env python
"""Inference img/s and peak memory: gluon_rcnn vs torchvision's maskrcnn_resnet50_fpn, same weights,
same coco128 images, same size, in one process, alternating timed windows after warm-up.

    python bench/inference_throughput.py                      # GPU if present, else CPU
    python bench/inference_throughput.py --device cpu --short 512 --max-size 853 --batches 1 2
"""
from __future__ import annotations

import argparse

import torch

from common import alternate, build_pair, load_images, print_table, to_tensor


def run(device, short, max_size, batches, windows, iters, n_images, hybridize=False, optimized=True):
    tv, ours = build_pair(device, short, max_size)
    if hybridize:
        ours.hybridize()
    fast = None
    if optimized:  # a second copy with optimize_for_inference(): norms folded, channels_last
        _, fast = build_pair(device, short, max_size)
        fast.optimize_for_inference()
    imgs = [to_tensor(i).to(device) for i in load_images(n_images)]
    rows = []
    for bs in batches:
        state = {"i": 0}

        def batch():
            i = state["i"]
            state["i"] = (i + bs) % len(imgs)
            return [imgs[(i + k) % len(imgs)] for k in range(bs)]

        def ours_fn():
            with torch.inference_mode():
                ours(batch())

        def tv_fn():
            with torch.inference_mode():
                tv(batch())

        def fast_fn():
            with torch.inference_mode():
                fast(batch())

        fns = {"gluon_rcnn": ours_fn, "torchvision": tv_fn}
        if fast is not None:
            fns["gluon_rcnn optimized"] = fast_fn
        res = alternate(fns, windows, iters, bs, device)
        rows.append((f"inference, batch {bs}, short edge {short} (max {max_size})", res))
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--short", type=int, default=800)
    p.add_argument("--max-size", type=int, default=1333)
    p.add_argument("--batches", type=int, nargs="+", default=None, help="batch sizes (default 1 and 8 on GPU, 1 and 2 on CPU)")
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--iters", type=int, default=None, help="iterations per timed window")
    p.add_argument("--images", type=int, default=16)
    p.add_argument("--hybridize", action="store_true", help="torch.compile our backbone/FPN/RPN head")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    gpu = device.type == "cuda"
    batches = a.batches or ([1, 8] if gpu else [1, 2])
    iters = a.iters or (10 if gpu else 2)
    rows = run(device, a.short, a.max_size, batches, a.windows, iters, a.images, a.hybridize)
    print_table("Mask R-CNN R50-FPN inference", rows, device)


if __name__ == "__main__":
    main()
