#!/usr/bin/env python
"""Survey throughput on this machine: FIRST tiles/s and peak memory of the whole streamed pipeline
(decode FITS, noise, render D1, batch, detect, merge, catalogue) with gluon_rcnn's radio model, against
the same tiles through torchvision's detector holding the same weights, in one run.

The detector is a Faster R-CNN ResNet-18 FPN with 6 ClaRAN classes at the radio model's working size
(short edge 600, as ClaRAN): torchvision's ``FasterRCNN(resnet_fpn_backbone('resnet18'))`` with seeded
random weights, and ours converted from it (``from_torchvision``: same weights, same computation).
The untrained classifier is widened (x40) so both keep detections and the catalogue is exercised.
Every contender streams the same FITS files through ``gluon_rcnn.radio.survey.predict_fits`` (only
the detector differs), in alternating timed windows after a warm-up; peak memory is each contender's
own: a fresh child process per contender reports its peak RSS (VmHWM) for one pass over the files.

    python bench/survey_throughput.py --files ../shared/data/mirabest_fits --windows 3 --per-window 24
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
SHORT, MAX = 600, 1000


def build(seed: int = 0):
    """(torchvision's FasterRCNN R18-FPN, ours converted from it), eval mode, 6 classes."""
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    from gluon_rcnn.convert import from_torchvision
    from gluon_rcnn.structures.categories import RGZ_CLASSES
    torch.manual_seed(seed)
    tv = FasterRCNN(resnet_fpn_backbone(backbone_name="resnet18", weights=None, trainable_layers=5), num_classes=7,
                    min_size=SHORT, max_size=MAX).eval()
    with torch.no_grad():
        tv.roi_heads.box_predictor.cls_score.weight.mul_(40)
    ours = from_torchvision(tv, classes=list(RGZ_CLASSES)).eval()
    return tv, ours


class TorchvisionDetector:
    """torchvision's model as a survey tile detector (one-hot class probabilities: it returns none)."""

    def __init__(self, model, classes, score_thresh: float):
        self.model, self.classes, self.score_thresh = model, tuple(classes), score_thresh

    def __call__(self, images, tiles=None):
        with torch.inference_mode():
            dets = self.model([torch.from_numpy(np.ascontiguousarray(im)).permute(2, 0, 1).float().div(255)
                               for im in images])
        out = []
        for d in dets:
            keep = d["scores"] >= self.score_thresh
            labels = d["labels"][keep].numpy()
            probs = np.zeros((len(labels), len(self.classes) + 1))
            probs[np.arange(len(labels)), labels] = 1.0
            out.append({"boxes": d["boxes"][keep].numpy(), "scores": d["scores"][keep].numpy(), "labels": labels,
                        "class_probs": probs})
        return out


NAMES = ("torchvision", "gluon_rcnn", "gluon_rcnn optimize bf16", "gluon_rcnn optimize bf16, box head bf16")


def detectors(thresh: float, only: str | None = None) -> dict:
    """The contenders (``only``: just that one, for a child measuring its own peak memory)."""
    from gluon_rcnn.radio.survey import ModelDetector
    out = {}
    for name in NAMES if only is None else (only,):
        tv, ours = build()
        if name == "torchvision":
            out[name] = TorchvisionDetector(tv, ours.classes, thresh)
        else:
            del tv
            if "bf16" in name:
                ours.optimize_for_inference("bf16", fp32_box_head="box head bf16" not in name)
            out[name] = ModelDetector(ours, score_thresh=thresh)
    return out


def stream(det, files, batch: int) -> int:
    from gluon_rcnn.radio.survey import predict_fits
    rows = 0
    for res in predict_fits(det, files, batch_size=batch, keep_preview=False):
        rows += len(res.rows)
    return rows


def child(name: str, files, batch: int, thresh: float) -> None:
    """One pass in this fresh process: prints JSON {tiles_per_s, peak_rss_mb}."""
    det = detectors(thresh, only=name)[name]
    stream(det, files[:2], batch)  # warm-up
    t0 = time.perf_counter()
    stream(det, files, batch)
    dt = time.perf_counter() - t0
    print(json.dumps({"tiles_per_s": len(files) / dt, "peak_rss_mb": _vm_hwm_mb()}))


def _vm_hwm_mb() -> float:
    """This process's peak RSS (VmHWM of /proc/self/status: its own address space since exec; ru_maxrss
    would carry the forking parent's peak across exec on Linux)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--files", default=str(REPO.parent / "shared" / "data" / "mirabest_fits"))
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--per-window", type=int, default=24, help="FITS files per timed window")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--score-thresh", type=float, default=0.5)
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    files = sorted(Path(a.files).glob("*.fits"))
    if not files:
        raise SystemExit(f"no FITS files in {a.files}")
    if a.child:
        child(a.child, files[: a.per_window], a.batch, a.score_thresh)
        return 0
    from gluon_rcnn.radio.survey import predict_fits  # noqa: F401 - fail early without the radio extra
    dets = detectors(a.score_thresh)
    for d in dets.values():
        stream(d, files[:2], a.batch)
    rates = {k: [] for k in dets}
    for w in range(a.windows):
        chunk = [files[(w * a.per_window + i) % len(files)] for i in range(a.per_window)]
        for name, d in dets.items():
            t0 = time.perf_counter()
            stream(d, chunk, a.batch)
            rates[name].append(len(chunk) / (time.perf_counter() - t0))
    peaks = {}
    for name in dets:
        r = subprocess.run([sys.executable, __file__, "--files", a.files, "--per-window", str(a.per_window),
                            "--batch", str(a.batch), "--score-thresh", str(a.score_thresh), "--child", name],
                           capture_output=True, text=True, env=dict(os.environ))
        peaks[name] = json.loads(r.stdout.strip().splitlines()[-1])["peak_rss_mb"] if r.returncode == 0 else float("nan")
    import platform
    import torchvision
    print(f"\n### survey throughput: {len(files)} FIRST FITS available, {a.windows} windows x {a.per_window} files, "
          f"batch {a.batch}, Faster R-CNN R18-FPN at short edge {SHORT}, D1, score >= {a.score_thresh}\n")
    print(f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()}, torch threads {torch.get_num_threads()}; "
          f"torch {torch.__version__}, torchvision {torchvision.__version__}\n")
    print("| contender | tiles/s (median) | ratio to torchvision | peak RSS MB (own process, one pass) | tiles/s per window |")
    print("| --- | ---: | ---: | ---: | --- |")
    t = statistics.median(rates["torchvision"])
    for name, r in rates.items():
        m = statistics.median(r)
        print(f"| {name} | {m:.2f} | {m / t:.2f} | {peaks[name]:.0f} | {', '.join(f'{v:.2f}' for v in r)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
