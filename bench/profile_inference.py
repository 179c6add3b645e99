#!/usr/bin/env python
"""Where CPU inference time goes: torch.profiler over a few images, per operator, for torchvision's
Mask R-CNN R50-FPN and ours converted from it (same weights), in each of our modes.

    python bench/profile_inference.py --short 800 --max-size 1333 --images 2 --top 12
"""
from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from common import build_pair, device_name, load_images, software, to_tensor


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--short", type=int, default=800)
    p.add_argument("--max-size", type=int, default=1333)
    p.add_argument("--images", type=int, default=2)
    p.add_argument("--top", type=int, default=12)
    a = p.parse_args(argv)
    cpu = torch.device("cpu")
    tv, ours = build_pair(cpu, a.short, a.max_size)
    _, opt = build_pair(cpu, a.short, a.max_size)
    opt.optimize_for_inference("fp32")
    _, bf = build_pair(cpu, a.short, a.max_size)
    bf.optimize_for_inference("bf16")
    _, bf_all = build_pair(cpu, a.short, a.max_size)
    bf_all.optimize_for_inference("bf16", fp32_box_head=False)
    imgs = [to_tensor(i) for i in load_images(a.images)]
    print(f"{device_name(cpu)}; {software()}; {a.images} coco128 images at {a.short}/{a.max_size}")
    for name, m in (("torchvision", tv), ("gluon_rcnn default", ours), ("gluon_rcnn optimize fp32", opt),
                    ("gluon_rcnn optimize bf16", bf), ("gluon_rcnn optimize bf16, box head bf16", bf_all)):
        with torch.inference_mode():
            m([imgs[0]])  # warm-up
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                for im in imgs:
                    m([im])
        events = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in events) / 1e3 / len(imgs)
        print(f"\n### {name}: {total:.0f} ms of operator self time per image\n")
        print("| operator | self ms / image | share |\n| --- | ---: | ---: |")
        for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[: a.top]:
            ms = e.self_cpu_time_total / 1e3 / len(imgs)
            print(f"| `{e.key}` | {ms:.0f} | {100 * ms / total:.1f} % |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
