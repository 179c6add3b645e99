#!/usr/bin/env python
"""Like for like (issue 23): every inference mode of ours against torchvision at the same precision,
with each mode's accuracy change beside its speed, and fp32 training steps; all in one process.

Contenders: torchvision's ``maskrcnn_resnet50_fpn`` and ours converted from its state dict by
``gluon_rcnn.convert.from_torchvision`` (what the ``tv_*`` zoo entries do), from one seeded random
init (``bench/common.build_pair``: no weights can be downloaded here), on real coco128 images.

- precision fp32: torchvision as is vs ours ``default`` (eager, bitwise = torchvision),
  ``fp32`` (``optimize_for_inference()``) and ``fp32+hybridize`` (then ``hybridize(freeze=True)``);
- precision bf16: torchvision under ``torch.autocast('cpu', torch.bfloat16)`` vs ours ``bf16``
  (``optimize_for_inference('bf16')``), ``bf16+hybridize`` and ``bf16, box head bf16``
  (``fp32_box_head=False``);
- sizes: ``coco`` (images as they are, short edge 800, max 1333) and ``tile`` (each image resized
  to a square survey tile, 600x600, taken at that size), each at batch 1 and a batch;
- training: one SGD step per call, fp32 (and, with ``--train-bf16``, both under bf16 autocast):
  torchvision, ours plain and ours ``optimized`` (``net.optimize_for_training()`` and fused
  SGD), from a pretrained-style FrozenBN backbone (``--train-backbone``); with ``--train-hybridize``
  also ours ``optimized+hybridize`` (compiled forward and backward); ``--no-inference``: only these.

Timing: after the warm-up every contender runs one timed window per round, the order rotated
each round (a busy machine slows all alike); median and min-max img/s over the rounds.
Memory: peak RSS growth of a window: ``/proc/self/clear_refs`` resets VmHWM to the current RSS,
and VmHWM - VmRSS(start) after the window is what that contender added on top of what the
process already held (all models, images); the largest over the windows.
Accuracy: no trained COCO weights are at hand offline, so a mode's change is measured against
our fp32 default on the same images, same batch: the warm-up calls (untimed) record every
contender's detections on the first ``--acc-images`` images; pycocotools scores them with the
default's detections as pseudo ground truth (box AP and mask AP, IoU .50:.95; the default scores
100 against itself) and the fraction of the default's detections paired one to one with the
mode's within 1 px and 0.01 score (``tests/detection_match.match_detections``).

    python bench/like_for_like.py                        # the full table (9 min on a quiet 2-core AMX Xeon)
    python bench/like_for_like.py --coco 320 512 --tile 256 --windows 2 --train-short 256
    python bench/like_for_like.py --profile tile --profile-images 2   # profile only
"""
from __future__ import annotations

import argparse
import contextlib
import io
import math
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO, build_pair, device_name, load_images, software, to_tensor  # noqa: E402
from precision_modes import MODES as _MODES, build_mode  # noqa: E402

sys.path.insert(0, str(REPO / "tests"))

CPU = torch.device("cpu")
#: our modes: precision_modes.MODES with "default" for "off" (the "+hybridize" modes freeze)
MODES = {("default" if k == "off" else k): v for k, v in _MODES.items()}
TV = {"fp32": "torchvision fp32", "bf16": "torchvision bf16 autocast"}


def precision_of(mode: str) -> str:
    return "bf16" if MODES[mode][0] == "bf16" else "fp32"


def build_ours(short: int, max_size: int, mode: str):
    return build_mode(build_pair(CPU, short, max_size)[1], mode)


# ---------------------------------------------------------------------------------------- memory
def _status_kb(key: str) -> int:
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1])
    return -1


class RssGrowth:
    """Peak RSS growth over a block (MB): VmHWM reset to the current RSS, then VmHWM - start RSS."""

    def __enter__(self):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        self.start = _status_kb("VmRSS:")
        return self

    def __exit__(self, *exc):
        self.mb = (_status_kb("VmHWM:") - self.start) / 1024


# ---------------------------------------------------------------------------------------- timing
def rounds(fns: dict, windows: int, iters: int, images_per_iter: int) -> dict:
    """Timed windows, one per contender per round, the order rotated each round.
    Returns {name: {"rates": [img/s per window], "mem": max RSS growth MB}}."""
    names = list(fns)
    out = {k: {"rates": [], "mem": 0.0} for k in names}
    for r in range(windows):
        for name in names[r % len(names):] + names[:r % len(names)]:
            with RssGrowth() as m:
                t0 = time.perf_counter()
                for _ in range(iters):
                    fns[name]()
                dt = time.perf_counter() - t0
            out[name]["rates"].append(iters * images_per_iter / dt)
            out[name]["mem"] = max(out[name]["mem"], m.mb)
        print(f"    round {r + 1}/{windows}: " + ", ".join(f"{k} {v['rates'][-1]:.3f}" for k, v in out.items()),
              file=sys.stderr, flush=True)
    return out


# -------------------------------------------------------------------------------------- accuracy
def _to_coco(dets: list[dict], with_masks: bool):
    """Detections per image -> (pycocotools GT json of them, results list of them)."""
    images, anns, res = [], [], []
    for i, d in enumerate(dets):
        h, w = d["hw"]
        images.append({"id": i, "height": h, "width": w})
        boxes = d["boxes"].tolist()
        rles = d.get("rles") if with_masks else None
        for j, ((x1, y1, x2, y2), s, c) in enumerate(zip(boxes, d["scores"].tolist(), d["labels"].tolist())):
            a = {"image_id": i, "category_id": int(c), "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(s)}
            if rles is not None:
                a["segmentation"] = rles[j]
            res.append(a)
            anns.append({**a, "id": len(anns) + 1, "area": max((x2 - x1) * (y2 - y1), 1e-6), "iscrowd": 0})
    cats = [{"id": c} for c in sorted({a["category_id"] for a in anns} | {a["category_id"] for a in res})]
    return {"images": images, "annotations": anns, "categories": cats}, res


def pseudo_ap(ref: list[dict], dets: list[dict]) -> dict:
    """Box and mask AP (IoU .50:.95, points) of ``dets`` scored against ``ref`` as ground truth."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval
    masks = all("rles" in d for d in ref + dets)
    gt_json, _ = _to_coco(ref, masks)
    _, res = _to_coco(dets, masks)
    out = {}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = gt_json
        gt.createIndex()
        dt = gt.loadRes(res) if res else None
        for kind in ("bbox", "segm") if masks else ("bbox",):
            if dt is None:
                out[kind] = 0.0
                continue
            g, d = gt, dt
            if kind == "segm":  # the masks' own areas; an empty mask (a box under one pixel of mask > 0.5)
                # matches nothing, not even itself: left out of both sides
                from pycocotools import mask as mask_utils
                g, d = COCO(), COCO()
                g.dataset = {**gt_json, "annotations": [
                    {**a, "area": float(mask_utils.area(a["segmentation"]))} for a in gt_json["annotations"]
                    if mask_utils.area(a["segmentation"]) > 0]}
                g.createIndex()
                d.dataset = {**gt_json, "annotations": [
                    {**a, "id": k + 1, "area": float(mask_utils.area(a["segmentation"]))}
                    for k, a in enumerate(dt.dataset["annotations"]) if mask_utils.area(a["segmentation"]) > 0]}
                d.createIndex()
            e = COCOeval(g, d, kind)
            e.params.maxDets = [1, 10, max(100, max(len(d["scores"]) for d in ref + dets))]
            e.evaluate()
            e.accumulate()
            e.summarize()
            out[kind] = 100 * float(e.stats[0])
    return out


def paired_fraction(ref: list[dict], dets: list[dict]) -> float:
    """Share of the reference's detections paired one to one within 1 px and 0.01 score, same label."""
    from detection_match import match_detections
    n = p = 0
    for a, b in zip(ref, dets):
        ia, _, _, _ = match_detections(a, b, box_tol=1.0, score_tol=0.01)
        n += int(a["scores"].numel())
        p += int(ia.numel())
    return p / n if n else float("nan")


def _record(outputs, sizes) -> list[dict]:
    from pycocotools import mask as mask_utils
    rec = []
    for o, hw in zip(outputs, sizes):
        d = {"boxes": o["boxes"].float().cpu(), "scores": o["scores"].float().cpu(), "labels": o["labels"].cpu(),
             "hw": hw}
        if "masks" in o:
            m = (o["masks"][:, 0] > 0.5).to(torch.uint8).numpy()
            d["rles"] = mask_utils.encode(np.asfortranarray(m.transpose(1, 2, 0))) if len(m) else []
        rec.append(d)
    return rec


# ------------------------------------------------------------------------------------- inference
def tiles(images: list[np.ndarray], side: int) -> list[np.ndarray]:
    """Each image resized to a side x side survey tile."""
    return [cv2.resize(im, (side, side), interpolation=cv2.INTER_AREA) for im in images]


def inference(name: str, short: int, max_size: int, images: list[torch.Tensor], batches: list[int], modes: list[str],
              windows: int, iters: int, acc_images: int) -> list[dict]:
    t0 = time.perf_counter()
    tv, _ = build_pair(CPU, short, max_size)
    nets = {m: build_ours(short, max_size, m) for m in modes}
    print(f"  [{name}] built {1 + len(nets)} models in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
    callers = {}
    for prec in sorted({precision_of(m) for m in modes}, reverse=True):  # fp32 first
        callers[TV[prec]] = (tv, prec == "bf16", prec)
    for m in modes:
        callers[f"gluon_rcnn {m}"] = (nets[m], False, precision_of(m))
    rows = []
    for bs in batches:
        cursor = {k: 0 for k in callers}
        warm_calls = max(1, math.ceil(acc_images / bs))
        recorded = {k: [] for k in callers}

        def make(key, record=False):
            model, autocast, _ = callers[key]

            def fn():
                i = cursor[key]
                cursor[key] = (i + bs) % len(images)
                batch = [images[(i + k) % len(images)] for k in range(bs)]
                with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                    out = model(batch)
                if record:
                    recorded[key].extend(_record(out, [tuple(b.shape[-2:]) for b in batch]))
            return fn

        t0 = time.perf_counter()
        for _ in range(warm_calls):  # warm-up (hybridize compiles here) and the accuracy images
            for key in callers:
                make(key, record=True)()
        print(f"  [{name} batch {bs}] warm-up and accuracy pass: {time.perf_counter() - t0:.0f} s", file=sys.stderr,
              flush=True)
        res = rounds({k: make(k) for k in callers}, windows, iters, bs)
        ref = recorded["gluon_rcnn default"] if "default" in modes else recorded[TV["fp32"]]
        n_ref = len(ref)
        for key, r in res.items():
            dets = recorded[key][:n_ref]
            ap = pseudo_ap(ref[:len(dets)], dets)
            rows.append({"workload": f"{name}, batch {bs}", "contender": key, "precision": callers[key][2],
                         "rates": r["rates"], "median": statistics.median(r["rates"]), "mem": r["mem"],
                         "box_ap": ap.get("bbox"), "mask_ap": ap.get("segm"), "paired": paired_fraction(ref, dets),
                         "acc_images": len(dets), "dets": sum(int(d["scores"].numel()) for d in dets)})
        print(table([r for r in rows if r["workload"] == f"{name}, batch {bs}"]) + "\n", flush=True)
    return rows


# -------------------------------------------------------------------------------------- training
def pretrained_pair(short: int, max_size: int, seed: int = 0):
    """(torchvision, ours) as ``maskrcnn_resnet50_fpn`` is built to train from a pretrained backbone
    (FrozenBatchNorm2d, conv1 and layer1 frozen: ``trainable_backbone_layers=3``), seeded random weights
    (none can be downloaded here), the classifier widened as in ``common.build_pair``."""
    import torchvision
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d
    from gluon_rcnn.convert import from_torchvision
    torch.manual_seed(seed)
    body = torchvision.models.resnet50(weights=None, norm_layer=FrozenBatchNorm2d)
    tv = MaskRCNN(_resnet_fpn_extractor(body, 3), num_classes=91, min_size=short, max_size=max_size)
    with torch.no_grad():
        tv.roi_heads.box_predictor.cls_score.weight.mul_(40)
    return tv.eval(), from_torchvision(tv.eval())


def training(short: int, max_size: int, batch: int, windows: int, n_images: int, bf16: bool,
             backbone: str = "pretrained", hybridize: bool = False) -> list[dict]:
    """One SGD step (lr 1e-4, momentum 0.9) per call: torchvision, ours plain (the same optimiser, the
    per-parameter loop of torchvision's reference script) and ours ``optimized``
    (``net.optimize_for_training()``: frozen BN folded into the convolutions, channels_last,
    and PyTorch's fused SGD, what ``--fast-step`` trains with). ``backbone``: ``pretrained`` (FrozenBN, layers 2-4 trained: how
    Mask R-CNN is trained) or ``scratch`` (``common.build_pair``: BatchNorm in training mode, all trained).
    ``hybridize``: also ours optimized and ``hybridize()``d (inductor, dynamic sizes; forward and
    backward of every hybridized block compiled), its compile time printed with the warm-up."""
    import copy
    from train_throughput import coco_targets
    tv, ours = pretrained_pair(short, max_size) if backbone == "pretrained" else build_pair(CPU, short, max_size)
    best = copy.deepcopy(ours).optimize_for_training()
    models = {"tv": tv.train(), "ours": ours.train(), "best": best.train()}
    if hybridize:
        models["hyb"] = copy.deepcopy(ours).optimize_for_training().hybridize().train()
    imgs = [to_tensor(i) for i in load_images(n_images)]
    t_ours, t_tv = coco_targets(n_images)
    opts = {k: torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-4, momentum=0.9,
                               fused=k in ("best", "hyb") or None) for k, m in models.items()}
    prec = "bf16" if bf16 else "fp32"
    cursor = {k: 0 for k in models}
    first_loss = {}

    def step(key):
        model, targets = models[key], (t_tv if key == "tv" else t_ours)

        def fn():
            i = cursor[key]
            cursor[key] = (i + batch) % n_images
            sel = [(i + k) % n_images for k in range(batch)]
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                losses = model([imgs[j] for j in sel], [targets[j] for j in sel])
            loss = sum(v.float() for v in losses.values())
            first_loss.setdefault(key, float(loss.detach()))
            opts[key].zero_grad(set_to_none=True)
            loss.backward()
            opts[key].step()
        return fn

    names = {"tv": f"torchvision {prec}", "ours": f"gluon_rcnn {prec}", "best": f"gluon_rcnn {prec} optimized",
             "hyb": f"gluon_rcnn {prec} optimized+hybridize"}
    names = {k: names[k] for k in models}
    fns = {names[k]: step(k) for k in models}
    t0 = time.perf_counter()
    for k in models:  # the same sampling seed for each first step
        torch.manual_seed(1)
        t1 = time.perf_counter()
        fns[names[k]]()
        if k == "hyb":  # a warm-up over every image (the sizes, the mask head's RoI-count regimes), then
            for _ in range(max(0, n_images // batch - 1)):  # back to the others' images
                fns[names[k]]()
            cursor[k] = cursor["tv"]
            print(f"  [train {prec}] {names[k]}: warm-up over the {n_images} images (compiling) "
                  f"{time.perf_counter() - t1:.0f} s", file=sys.stderr, flush=True)
    from torch._dynamo.utils import counters
    graphs = counters["stats"]["unique_graphs"]
    print(f"  [train {prec}, {backbone} backbone] warm-up: {time.perf_counter() - t0:.0f} s; first-step loss "
          + ", ".join(f"{names[k]} {v:.4f}" for k, v in first_loss.items()), file=sys.stderr, flush=True)
    res = rounds(fns, windows, 1, batch)
    if "hyb" in models:
        print(f"  [train {prec}] graphs compiled while timed: {counters['stats']['unique_graphs'] - graphs}",
              file=sys.stderr, flush=True)
    rows = []
    key_of = {v: k for k, v in names.items()}
    for name, r in res.items():
        rows.append({"workload": f"training step, batch {batch}, {short}/{max_size}, {backbone} backbone",
                     "contender": name, "precision": prec, "rates": r["rates"], "median": statistics.median(r["rates"]),
                     "mem": r["mem"], "loss": first_loss[key_of[name]]})
    print(table(rows) + "\n", flush=True)
    return rows


# ----------------------------------------------------------------------------------------- table
def _fmt(v, spec, none="n/a"):
    return none if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


def table(rows: list[dict]) -> str:
    lines = ["| workload | contender | img/s median (min-max) | vs torchvision same precision | vs torchvision fp32 | "
             "peak RSS growth MB | box AP vs our fp32 default | mask AP vs our fp32 default | paired (1 px, 0.01) |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        same = [x for x in rows if x["workload"] == r["workload"] and x["contender"].startswith("torchvision")
                and x["precision"] == r["precision"]]
        fp32 = [x for x in rows if x["workload"] == r["workload"] and x["contender"] == TV["fp32"]]
        if r["workload"].startswith("training"):
            fp32 = [x for x in rows if x["workload"] == r["workload"] and x["contender"] == "torchvision fp32"]
        rel = r["median"] / same[0]["median"] if same else float("nan")
        rel32 = r["median"] / fp32[0]["median"] if fp32 else float("nan")
        if "loss" in r:
            acc = (f"first-step loss {r['loss']:.4f}", "", "")
        else:
            acc = (_fmt(r["box_ap"], ".1f"), _fmt(r["mask_ap"], ".1f"), _fmt(100 * r["paired"], ".0f") + " %")
        lines.append(f"| {r['workload']} | {r['contender']} | {r['median']:.3f} ({min(r['rates']):.3f}-"
                     f"{max(r['rates']):.3f}) | {_fmt(rel, '.2f')} | {_fmt(rel32, '.2f')} | {r['mem']:.0f} | "
                     + " | ".join(acc) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------- profile
def profile(short: int, max_size: int, images: list[torch.Tensor], mode: str, top: int) -> None:
    """torch.profiler of our ``mode`` against torchvision under bf16 autocast, batch 1, after a warm-up."""
    from torch.profiler import ProfilerActivity, profile as tprofile
    tv, _ = build_pair(CPU, short, max_size)
    net = build_ours(short, max_size, mode)
    for name, model, autocast in ((TV["bf16"], tv, True), (f"gluon_rcnn {mode}", net, False)):
        with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            model([images[0]])
            with tprofile(activities=[ProfilerActivity.CPU]) as prof:
                t0 = time.perf_counter()
                for im in images:
                    model([im])
                wall = (time.perf_counter() - t0) * 1e3 / len(images)
        ev = prof.key_averages()
        total = sum(e.self_cpu_time_total for e in ev) / 1e3 / len(images)
        print(f"\n#### {name}, {short}/{max_size}: {wall:.0f} ms wall per image (profiler on), "
              f"{total:.0f} ms operator self time\n")
        print("| operator | self ms / image | share of self time | calls / image |\n| --- | ---: | ---: | ---: |")
        for e in sorted(ev, key=lambda e: -e.self_cpu_time_total)[:top]:
            ms = e.self_cpu_time_total / 1e3 / len(images)
            print(f"| `{e.key}` | {ms:.0f} | {100 * ms / total:.1f} % | {e.count / len(images):.0f} |")


def _load_avg() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--coco", type=int, nargs=2, default=[800, 1333], metavar=("SHORT", "MAX"))
    p.add_argument("--tile", type=int, default=600, help="survey tile side (0: no tile rows)")
    p.add_argument("--coco-batches", type=int, nargs="+", default=[1, 2])
    p.add_argument("--tile-batches", type=int, nargs="+", default=[1, 4])
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES), metavar="MODE",
                   help=f"our modes ({', '.join(MODES)})")
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--iters", type=int, default=1, help="calls per timed window")
    p.add_argument("--images", type=int, default=8, help="coco128 images cycled through")
    p.add_argument("--acc-images", type=int, default=2, help="images per workload whose detections are compared")
    p.add_argument("--train-short", type=int, nargs="*", default=[800], help="training short edges (none: no training)")
    p.add_argument("--train-max", type=int, default=1333)
    p.add_argument("--train-batch", type=int, default=2)
    p.add_argument("--train-bf16", action="store_true", help="also bf16 autocast training, both")
    p.add_argument("--train-backbone", choices=["pretrained", "scratch"], default="pretrained",
                   help="training: FrozenBN, layers 2-4 trained (pretrained) or BN trained, all layers (scratch)")
    p.add_argument("--no-inference", action="store_true", help="only the training steps")
    p.add_argument("--train-hybridize", action="store_true",
                   help="training: also ours optimized and hybridize()d (inductor compiles forward and backward)")
    p.add_argument("--profile", choices=["coco", "tile"], default=None, help="only profile, at that size")
    p.add_argument("--profile-mode", default="bf16, box head bf16", choices=list(MODES))
    p.add_argument("--profile-images", type=int, default=2)
    p.add_argument("--top", type=int, default=12)
    a = p.parse_args(argv)
    raw = load_images(a.images)
    coco_imgs = [to_tensor(i) for i in raw]
    tile_imgs = [to_tensor(i) for i in tiles(raw, a.tile)] if a.tile else []
    print(f"{device_name(CPU)}; {software()}; load average at start {_load_avg()}", flush=True)
    if a.profile:
        short, mx, imgs = (a.coco[0], a.coco[1], coco_imgs) if a.profile == "coco" else (a.tile, a.tile, tile_imgs)
        profile(short, mx, imgs[:a.profile_images], a.profile_mode, a.top)
        print(f"\nload average at end {_load_avg()}")
        return 0
    rows = []
    t0 = time.perf_counter()
    if not a.no_inference:
        rows += inference(f"inference {a.coco[0]}/{a.coco[1]}", a.coco[0], a.coco[1], coco_imgs, a.coco_batches,
                          a.modes, a.windows, a.iters, a.acc_images)
    if a.tile and not a.no_inference:
        rows += inference(f"inference tile {a.tile}x{a.tile}", a.tile, a.tile, tile_imgs,
                          a.tile_batches, a.modes, a.windows, a.iters, a.acc_images)
    for short in a.train_short:
        for bf16 in (False, True) if a.train_bf16 else (False,):
            rows += training(short, a.train_max, a.train_batch, a.windows, a.images, bf16, a.train_backbone,
                                 a.train_hybridize)
    print(f"\nall rows:\n\n{table(rows)}\n\n{time.perf_counter() - t0:.0f} s; load average at end {_load_avg()}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
