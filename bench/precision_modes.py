#!/usr/bin/env python
"""Every inference mode's speed (ours vs torchvision, one process, alternating windows) and its
accuracy cost on models we trained, in one table.

Speed: torchvision's maskrcnn_resnet50_fpn and ours converted from it (same seeded weights,
bench/common.py), on coco128 images at COCO size (800/1333 by default), batch 1:
  - torchvision fp32 (the reference) and torchvision under bf16 autocast (for fairness);
  - ours default (bitwise-deterministic eager path), ``optimize_for_inference()`` (fp32: norms folded,
    channels_last) and ``optimize_for_inference('bf16')`` (autocast bf16; box head and predictors in
    fp32), each also with ``hybridize(freeze=True)`` (torch.compile of backbone/FPN, RPN head, box and
    mask heads, parameters as constants; the compile happens in the warm-up, before the timed
    windows), and bf16 with the box head in bf16 too
    (``fp32_box_head=False``).
Accuracy: the evaluation of ``scripts/eval.py --optimize {off,fp32,bf16} [--hybridize] [--box-head-bf16]`` on each
trained run given
(RUN: a folder with model_final.pth and config.json from scripts/train_*.py, plus its COCO
annotations/images), at each of ``--sizes`` (test short edges), AP and AP50 (box; mask for Mask R-CNN)
averaged over the sizes, and their change from ``off`` in points (mean ± standard error, and range over
the sizes: on a few images one flipped detection moves one size's AP by whole points, so only the mean
over many sizes estimates a mode's cost).

    python bench/precision_modes.py --speed --short 800 --max-size 1333 --windows 5
    python bench/precision_modes.py --accuracy \\
        runs/overfit_tp_mask/train:mask_rcnn_fpn_resnet18_v1b_coco:runs/overfit_tp_mask/coco128_first8.json:../shared/data/coco128/train2017
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from common import REPO, alternate, build_pair, load_images, print_table, to_tensor

#: name: (optimize_for_inference precision or None, fp32_box_head, hybridize); "+hybridize" is
#: ``hybridize(freeze=True)`` after ``optimize_for_inference`` (inductor, parameters as constants),
#: what ``scripts/eval.py --optimize P --hybridize`` runs
MODES = {"off": (None, True, False), "fp32": ("fp32", True, False), "fp32+hybridize": ("fp32", True, True),
         "bf16": ("bf16", True, False), "bf16+hybridize": ("bf16", True, True),
         "bf16, box head bf16": ("bf16", False, False)}


def build_mode(net, mode: str):
    """``net`` in ``mode`` (see MODES; "default" is "off")."""
    precision, fp32_box_head, hybridize = MODES["off" if mode == "default" else mode]
    if precision:
        net.optimize_for_inference(precision, fp32_box_head=fp32_box_head)
    if hybridize:
        net.hybridize(freeze=precision is not None)
    return net


def speed(short: int, max_size: int, windows: int, iters: int, n_images: int) -> list:
    cpu = torch.device("cpu")
    tv, ours = build_pair(cpu, short, max_size)
    nets = {"default": ours}
    for mode in list(MODES)[1:]:
        nets[mode] = build_mode(build_pair(cpu, short, max_size)[1], mode)
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

    fns = {"torchvision": run(tv), "torchvision bf16 autocast": run(tv, True)}
    fns.update({f"gluon_rcnn {mode}": run(net) for mode, net in nets.items()})
    res = alternate(fns, windows, iters, 1, cpu)
    return [(f"inference, batch 1, short edge {short} (max {max_size})", res)]


def _evaluate(run: Path, model: str, ann: str, images: str, mode: str, sizes: list) -> list[dict]:
    """[{iou type: (AP, AP50)} per test short edge] of the trained run in ``mode`` (one net per mode,
    its preprocessor's short edge set per size: what ``PREPROC.TEST_SHORT_EDGE_SIZE`` sets)."""
    import contextlib
    import io
    import logging

    from gluon_rcnn import get_model
    from gluon_rcnn.cli.eval import _config_amp
    from gluon_rcnn.data.coco import COCODetection
    from gluon_rcnn.engine.inference import evaluate_distributed
    logging.disable(logging.WARNING)  # the "settings taken from the checkpoint" line, once per call
    net = get_model(model, pretrained=str(run / "model_final.pth"), config=str(run / "config.json"))
    logging.disable(logging.NOTSET)
    net = build_mode(net, mode)
    amp = _config_amp(net.cfg)  # what eval.py does without --amp: the checkpoint's TRAIN.AMP
    dataset = COCODetection(ann, images, train=False)
    out = []
    for short in sizes:
        if short:
            net.preprocessor.short_edge = float(short)
        with contextlib.redirect_stdout(io.StringIO()):
            res = evaluate_distributed(net, dataset, num_workers=0, progress=False, verbose=False, amp=amp)
        out.append({t: (v["AP"], v["AP50"]) for t, v in res.metrics.items()})
    return out


def _change(d: list[float]) -> str:
    """Mean change ± its standard error over the sizes, then the range."""
    import statistics
    se = statistics.stdev(d) / len(d) ** 0.5 if len(d) > 1 else float("nan")
    return f"{statistics.mean(d):+.2f} ±{se:.2f} ({min(d):+.2f}..{max(d):+.2f})"


def accuracy(spec: str, sizes: list[int], modes: list[str], record: dict | None = None) -> list[str]:
    """Rows per (task, mode): AP/AP50 averaged over the test sizes and the change from ``off`` (mean ±
    standard error, and the range over sizes): the trained runs are small, so one test size alone moves by whole points
    when a single detection flips; the sweep averages such flips out."""
    import statistics
    run, model, ann, images = spec.split(":")
    run = Path(run)
    sizes = sizes or [None]
    aps = {m: _evaluate(run, model, ann, images, m, sizes) for m in ["off"] + [m for m in modes if m != "off"]}
    if record is not None:  # every size's numbers, for --save
        record[str(run)] = {"sizes": sizes, "modes": aps}
    lines = []
    for kind in aps["off"][0]:
        for mode in aps:
            ap = [r[kind][0] for r in aps[mode]]
            ap50 = [r[kind][1] for r in aps[mode]]
            d = [100 * (a - b[kind][0]) for a, b in zip(ap, aps["off"])]
            d50 = [100 * (a - b[kind][1]) for a, b in zip(ap50, aps["off"])]
            lines.append(f"| {run} | {kind} | {mode} | {100 * statistics.mean(ap):.2f} | {100 * statistics.mean(ap50):.2f} | "
                         f"{_change(d)} | {_change(d50)} |")
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
    p.add_argument("--modes", nargs="*", default=list(MODES), choices=list(MODES), metavar="MODE",
                   help=f"modes of the accuracy table (default all: {', '.join(MODES)})")
    p.add_argument("--save", default=None, metavar="JSON", help="also write every size's AP/AP50 per run and mode")
    a = p.parse_args(argv)
    if a.speed:
        print_table("inference modes on the CPU: gluon_rcnn vs torchvision, Mask R-CNN R50-FPN",
                    speed(a.short, a.max_size, a.windows, a.iters, a.images), torch.device("cpu"))
    if a.accuracy:
        where = a.sizes or "the run's own"
        print(f"\n### accuracy of each mode on trained models (points, mean over test sizes {where}; "
              "change from --optimize off: mean ±standard error (range))\n")
        print("| run | task | mode | AP | AP50 | ΔAP | ΔAP50 |\n| --- | --- | --- | ---: | ---: | ---: | ---: |")
        record = {}
        for spec in a.accuracy:
            for line in accuracy(spec, a.sizes, a.modes, record):
                print(line, flush=True)
            if a.save:
                Path(a.save).write_text(json.dumps(record, indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
