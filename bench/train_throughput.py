#!/usr/bin/env python
"""Training img/s and peak memory: gluon_rcnn vs torchvision's maskrcnn_resnet50_fpn trained the same
way in the same run: same initial weights, same coco128 images and annotations (boxes, classes,
masks) resized to short edge 800 / max 1333, same batch per step, SGD, bf16 autocast on GPUs
(fp32 on the CPU), alternating timed windows after warm-up.

    python bench/train_throughput.py --batch 8             # on a GPU
    python bench/train_throughput.py --device cpu --short 320 --max-size 512 --batch 2
"""
from __future__ import annotations

import argparse
import json
from contextlib import nullcontext

import numpy as np
import torch
from pycocotools import mask as mask_utils

from common import COCO128, alternate, build_pair, load_images, print_table, to_tensor


def coco_targets(n: int, num_classes_tv: int = 91):
    """Targets of the first n coco128 images (sorted by file name) in original pixels, for both
    (synthetic images' rectangles, as boxes, rectangle polygons and masks, where coco128 is absent)."""
    if not (COCO128 / "annotations" / "instances_train2017.json").is_file():
        return _synthetic_targets(n)
    d = json.loads((COCO128 / "annotations" / "instances_train2017.json").read_text())
    by_file = {im["file_name"]: im for im in d["images"]}
    files = sorted(by_file)[:n]
    from gluon_rcnn.data.transforms import polygons_to_edges
    ours, tv = [], []
    for f in files:
        im = by_file[f]
        anns = [a for a in d["annotations"] if a["image_id"] == im["id"] and not a.get("iscrowd")
                and isinstance(a["segmentation"], list) and a["bbox"][2] > 1 and a["bbox"][3] > 1]
        boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
                              for a in anns], dtype=torch.float32).reshape(-1, 4)
        labels = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)  # torchvision's 91-id space
        polys = [[np.asarray(p, dtype=np.float32) for p in a["segmentation"]] for a in anns]
        edges = torch.from_numpy(polygons_to_edges(polys))
        masks = np.stack([mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(a["segmentation"], im["height"], im["width"])))
                          for a in anns]) if anns else np.zeros((0, im["height"], im["width"]), np.uint8)
        ours.append({"boxes": boxes, "labels": labels, "polygons": edges})
        tv.append({"boxes": boxes, "labels": labels, "masks": torch.from_numpy(masks)})
    return ours, tv


def _synthetic_targets(n: int):
    from common import synthetic_targets
    from gluon_rcnn.data.transforms import polygons_to_edges
    ours, tv = [], []
    for i, b in enumerate(synthetic_targets(n)):
        boxes = torch.from_numpy(b)
        labels = torch.tensor([1 + (i + j) % 80 for j in range(len(b))], dtype=torch.int64)
        polys = [[np.array([x1, y1, x2, y1, x2, y2, x1, y2], np.float32)] for x1, y1, x2, y2 in b]
        masks = np.zeros((len(b), 480, 640), np.uint8)
        for k, (x1, y1, x2, y2) in enumerate(b.astype(int)):
            masks[k, y1:y2, x1:x2] = 1
        ours.append({"boxes": boxes, "labels": labels, "polygons": torch.from_numpy(polygons_to_edges(polys))})
        tv.append({"boxes": boxes, "labels": labels, "masks": torch.from_numpy(masks)})
    return ours, tv


def profile_steps(fns: dict, top: int) -> None:
    """torch.profiler of one step of each (after one warm-up step): wall time, the operators' self time
    (the rest is Python and framework overhead between operators) and the ``top`` operators."""
    import time
    from torch.profiler import ProfilerActivity, profile
    for name, fn in fns.items():
        fn()
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            t0 = time.perf_counter()
            fn()
            wall = (time.perf_counter() - t0) * 1e3
        ev = prof.key_averages()
        ops = sum(e.self_cpu_time_total for e in ev) / 1e3
        print(f"\n### one training step, {name}: {wall:.0f} ms wall, {ops:.0f} ms operator self time "
              f"({100 * (1 - ops / wall):.0f} % outside operators, profiler overhead included)\n")
        print("| operator | self ms | share of step |\n| --- | ---: | ---: |")
        for e in sorted(ev, key=lambda e: -e.self_cpu_time_total)[:top]:
            print(f"| `{e.key}` | {e.self_cpu_time_total / 1e3:.0f} | {100 * e.self_cpu_time_total / 1e3 / wall:.1f} % |")


def run(device, short, max_size, batch, windows, iters, n_images, amp, profile: int = 0):
    tv, ours = build_pair(device, short, max_size)
    tv.train(), ours.train()
    imgs = [to_tensor(i).to(device) for i in load_images(n_images)]
    t_ours, t_tv = coco_targets(n_images)
    t_ours = [{k: v.to(device) for k, v in t.items()} for t in t_ours]
    t_tv = [{k: v.to(device) for k, v in t.items()} for t in t_tv]
    opts = {m: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9) for m in (ours, tv)}
    ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if amp else nullcontext
    state = {"i": 0}

    def idx():
        i = state["i"]
        state["i"] = (i + batch) % n_images
        return [(i + k) % n_images for k in range(batch)]

    def step(model, targets):
        sel = idx()
        with ctx():
            losses = model([imgs[j] for j in sel], [targets[j] for j in sel])
        loss = sum(v.float() for v in losses.values())
        opts[model].zero_grad(set_to_none=True)
        loss.backward()
        opts[model].step()

    if profile:
        profile_steps({"torchvision": lambda: step(tv, t_tv), "gluon_rcnn": lambda: step(ours, t_ours)}, profile)
    res = alternate({"gluon_rcnn": lambda: step(ours, t_ours), "torchvision": lambda: step(tv, t_tv)},
                    windows, iters, batch, device)
    return [(f"training step, batch {batch}, short edge {short} (max {max_size}), "
             f"{'bf16' if amp else 'fp32'}", res)]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--short", type=int, default=800)
    p.add_argument("--max-size", type=int, default=1333)
    p.add_argument("--batch", type=int, default=None, help="images per step (default 8 on GPU, 2 on CPU)")
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--iters", type=int, default=None)
    p.add_argument("--images", type=int, default=32)
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast even on a GPU")
    p.add_argument("--profile", type=int, default=0, metavar="TOP",
                   help="first profile one step of each (torch.profiler) and print the TOP operators")
    a = p.parse_args(argv)
    device = torch.device(a.device)
    gpu = device.type == "cuda"
    rows = run(device, a.short, a.max_size, a.batch or (8 if gpu else 2), a.windows, a.iters or (5 if gpu else 1),
               a.images, amp=gpu and not a.fp32, profile=a.profile)
    print_table("Mask R-CNN R50-FPN training", rows, device)


if __name__ == "__main__":
    main()
