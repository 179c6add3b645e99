#!/usr/bin/env python
"""Every inference mode's speed (ours vs torchvision, one process, alternating windows) and its
accuracy cost on models we trained, in one table.

Speed: torchvision's maskrcnn_resnet50_fpn and ours converted from it (same seeded weights,
bench/common.py), on coco128 images at COCO size (800/1333 by default), batch 1:
  - torchvision fp32 (the reference) and torchvision under bf16 autocast (for fairness);
  - ours default (bitwise-deterministic eager path), ``optimize_for_inference()`` (fp32: norms folded,
    channels_last) and ``optimize_for_inference('bf16')`` (autocast bf16, predictors in fp32), each
    also with ``hybridize()`` (torch.compile of backbone/FPN/RPN head; the compile happens in the
    warm-up, before the timed windows).
Accuracy: the evaluation of ``scripts/eval.py --optimize {off,fp32,bf16} [--hybridize]`` on each trained run given
(RUN: a folder with model_final.pth and config.json from scripts/train_*.py, plus its COCO
annotations/images), at each of ``--sizes`` (test short edges), AP and AP50 (box; mask for Mask R-CNN)
averaged over the sizes, and their change from ``off`` in points (mean and range over the sizes).

    python bench/precision_modes.py --speed --short 800 --max-size 1333 --windows 5
    python bench/precision_modes.py --accuracy \\
        runs/overfit_tp_mask/train:mask_rcnn_fpn_resnet18_v1b_coco:runs/overfit_tp_mask/coco128_first8.json:../shared/data/coco128/train2017
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from common import REPO, alternate, build_pair, load_images, print_table, to_tensor

#: (name, optimize_for_inference precision or None, hybridize)
MODES = {"off": (None, False), "fp32": ("fp32", False), "fp32+hybridize": ("fp32", True), "bf16": ("bf16", False),
         "bf16+hybridize": ("bf16", True)}


def speed(short: int, max_size: int, windows: int, iters: int, n_images: int) -> list:
    cpu = torch.device("cpu")
    tv, ours = build_pair(cpu, short, max_size)
    _, opt32 = build_pair(cpu, short, max_size)
    opt32.optimize_for_inference("fp32")
    _, opt16 = build_pair(cpu, short, max_size)
    opt16.optimize_for_inference("bf16")
    _, hyb32 = build_pair(cpu, short, max_size)
    hyb32.optimize_for_inference("fp32").hybridize()
    _, hyb16 = build_pair(cpu, short, max_size)
    hyb16.optimize_for_inference("bf16").hybridize()
    imgs = [to_tensor(i) for i in load_images(n_images)]
    state = {"i": 0}

    def nxt():
        state["i"] = (state["i"] + 1) % len(imgs)
        return [imgs[state["i"]]]

    def run(m, bf16=False):
        def fn():
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                m(nxt())
        return fn

    fns = {"torchvision": run(tv), "torchvision bf16 autocast": run(tv, True), "gluon_rcnn default": run(ours),
           "gluon_rcnn optimize fp32": run(opt32), "gluon_rcnn optimize fp32 + hybridize": run(hyb32),
           "gluon_rcnn optimize bf16": run(opt16), "gluon_rcnn optimize bf16 + hybridize": run(hyb16)}
    res = alternate(fns, windows, iters, 1, cpu)
    return [(f"inference, batch 1, short edge {short} (max {max_size})", res)]


def _evaluate(run: Path, model: str, ann: str, images: str, mode: str, short: int | None) -> dict:
    """{iou type: (AP, AP50)} of the trained run with ``--optimize mode`` at test short edge ``short``."""
    import contextlib
    import io
    import logging

    from gluon_rcnn import get_model
    from gluon_rcnn.data.coco import COCODetection
    from gluon_rcnn.engine.inference import evaluate_distributed
    logging.disable(logging.WARNING)  # the "settings taken from the checkpoint" line, once per call
    over = [f"PREPROC.TEST_SHORT_EDGE_SIZE={short}"] if short else []
    net = get_model(model, pretrained=str(run / "model_final.pth"), config=str(run / "config.json"), overrides=over)
    logging.disable(logging.NOTSET)
    precision, hybridize = MODES[mode]
    if precision:
        net.optimize_for_inference(precision)
    if hybridize:
        net.hybridize()
    with contextlib.redirect_stdout(io.StringIO()):
        out = evaluate_distributed(net, COCODetection(ann, images, train=False), num_workers=0, progress=False,
                                   verbose=False)
    return {t: (v["AP"], v["AP50"]) for t, v in out.metrics.items()}


def accuracy(spec: str, sizes: list[int]) -> list[str]:
    """Rows per (task, mode): AP/AP50 averaged over the test sizes and the change from ``off`` (mean and
    the range over sizes): the trained runs are small, so one test size alone moves by whole points
    when a single detection flips; the sweep averages such flips out."""
    import statistics
    run, model, ann, images = spec.split(":")
    run = Path(run)
    sizes = sizes or [None]
    aps = {m: [_evaluate(run, model, ann, images, m, sz) for sz in sizes] for m in MODES}
    lines = []
    for kind in aps["off"][0]:
        for mode in MODES:
            ap = [r[kind][0] for r in aps[mode]]
            ap50 = [r[kind][1] for r in aps[mode]]
            d = [100 * (a - b[kind][0]) for a, b in zip(ap, aps["off"])]
            d50 = [100 * (a - b[kind][1]) for a, b in zip(ap50, aps["off"])]
            lines.append(f"| {run} | {kind} | {mode} | {100 * statistics.mean(ap):.2f} | {100 * statistics.mean(ap50):.2f} | "
                         f"{statistics.mean(d):+.2f} ({min(d):+.2f}..{max(d):+.2f}) | "
                         f"{statistics.mean(d50):+.2f} ({min(d50):+.2f}..{max(d50):+.2f}) |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--speed", action="store_true")
    p.add_argument("--short", type=int, default=800)
    p.add_argument("--max-size", type=int, default=1333)
    p.add_argument("--windows", type=int, default=5)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--images", type=int, default=8)
    p.add_argument("--accuracy", nargs="*", default=[], metavar="RUN:MODEL:ANNOTATIONS:IMAGES")
    p.add_argument("--sizes", type=int, nargs="*", default=[],
                   help="test short edges to average the accuracy over (default: the run's own)")
    a = p.parse_args(argv)
    if a.speed:
        print_table("inference modes on the CPU: gluon_rcnn vs torchvision, Mask R-CNN R50-FPN",
                    speed(a.short, a.max_size, a.windows, a.iters, a.images), torch.device("cpu"))
    if a.accuracy:
        where = a.sizes or "the run's own"
        print(f"\n### accuracy of each mode on trained models (points, mean over test sizes {where}; "
              "change from --optimize off: mean (range))\n")
        print("| run | task | mode | AP | AP50 | ΔAP | ΔAP50 |\n| --- | --- | --- | ---: | ---: | ---: | ---: |")
        for spec in a.accuracy:
            for line in accuracy(spec, a.sizes):
                print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
