"""Shared pieces of the benchmarks: the side-by-side models, real images, timing and memory.

Both contenders are built from one torchvision ``maskrcnn_resnet50_fpn`` with a fixed seed: torchvision's
model as is, and ours converted from it by ``gluon_rcnn.convert.from_torchvision`` — the same
weights and the same settings, so they do the same work and give the same detections. (No
pretrained weights can be downloaded here; the random classifier is widened so that both models
keep ~100 detections per image and the post-processing and mask pasting are really exercised.)
"""
from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
COCO128 = REPO.parent / "shared" / "data" / "coco128"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()} threads={torch.get_num_threads()}"


def software() -> str:
    import torchvision
    return f"torch {torch.__version__}, torchvision {torchvision.__version__}, python {platform.python_version()}"


def synthetic_images(n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` deterministic 480x640 RGB images (smooth noise plus filled shapes), for machines without
    coco128 (e.g. the lent GPU machine): the benchmarks' models have random weights, so the work per image
    (proposals, ~100 detections, masks) does not depend on the content."""
    return [img for img, _ in _synthetic(n, seed)]


def _synthetic(n: int, seed: int = 0):
    """(image, boxes x1,y1,x2,y2 of its filled rectangles clipped to the image) per synthetic image."""
    rng = np.random.RandomState(seed)
    out = []
    for _ in range(n):
        img = cv2.resize(rng.randint(0, 256, (30, 40, 3)).astype(np.uint8), (640, 480), interpolation=cv2.INTER_CUBIC)
        boxes = []
        for _ in range(8):
            c = tuple(int(v) for v in rng.randint(0, 256, 3))
            x, y = int(rng.randint(0, 600)), int(rng.randint(0, 440))
            x2, y2 = x + int(rng.randint(20, 200)), y + int(rng.randint(20, 200))
            cv2.rectangle(img, (x, y), (x2, y2), c, -1)
            boxes.append([x, y, min(x2 + 1, 640), min(y2 + 1, 480)])
        out.append((img, np.asarray(boxes, np.float32)))
    return out


def synthetic_targets(n: int, seed: int = 0) -> list[np.ndarray]:
    """The rectangles of :func:`synthetic_images` (boxes per image), to train on where coco128 is absent."""
    return [b for _, b in _synthetic(n, seed)]


def load_images(n: int, root: Path = COCO128) -> list[np.ndarray]:
    """The first ``n`` coco128 images; where coco128 is absent (``$GLUON_RCNN_BENCH_SYNTHETIC=1`` allows
    it) :func:`synthetic_images`, said on stderr."""
    files = sorted((root / "train2017").glob("*.jpg"))
    if not files:
        if os.environ.get("GLUON_RCNN_BENCH_SYNTHETIC") == "1":
            print(f"note: no coco128 under {root}: {n} synthetic 480x640 images", file=sys.stderr)
            return synthetic_images(n)
        raise SystemExit(f"no images under {root}/train2017 (the benchmarks read ../shared/data/coco128; "
                         "GLUON_RCNN_BENCH_SYNTHETIC=1 uses synthetic images)")
    return [cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB) for f in files[:n]]


def to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(img).permute(2, 0, 1).float().div_(255)


def build_pair(device, short: int, max_size: int, mask: bool = True, seed: int = 0):
    """(torchvision model, our converted model), both in eval mode on ``device``."""
    import torchvision
    from gluon_rcnn.convert import from_torchvision
    torch.manual_seed(seed)
    builder = (torchvision.models.detection.maskrcnn_resnet50_fpn if mask
               else torchvision.models.detection.fasterrcnn_resnet50_fpn)
    tv = builder(weights=None, weights_backbone=None, min_size=short, max_size=max_size)
    with torch.no_grad():
        tv.roi_heads.box_predictor.cls_score.weight.mul_(40)
    ours = from_torchvision(tv.eval())
    return tv.to(device).eval(), ours.to(device).eval()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory over a block: CUDA allocator peak on a GPU, peak RSS (VmHWM) on the CPU."""

    def __init__(self, device):
        self.device = device
        self.peak_mb = float("nan")

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:  # writing 5 resets the process's peak RSS (Linux >= 4.0)
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                pass
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak_mb = torch.cuda.max_memory_allocated(self.device) / 2**20
        else:
            try:
                for line in open("/proc/self/status"):
                    if line.startswith("VmHWM:"):
                        self.peak_mb = int(line.split()[1]) / 1024
            except OSError:
                pass


def alternate(fns: dict, windows: int, iters_per_window: int, images_per_iter: int, device, warmup: int = 1):
    """Run each named fn ``warmup`` times, then ``windows`` timed windows, alternating between them.
    Returns {name: (median img/s, [img/s per window], peak MB)}."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    sync(device)
    rates = {k: [] for k in fns}
    peaks = {k: 0.0 for k in fns}
    for _ in range(windows):
        for name, fn in fns.items():
            with PeakMemory(device) as pm:
                sync(device)
                t0 = time.perf_counter()
                for _ in range(iters_per_window):
                    fn()
                sync(device)
                dt = time.perf_counter() - t0
            rates[name].append(iters_per_window * images_per_iter / dt)
            peaks[name] = max(peaks[name], pm.peak_mb)
    return {k: (statistics.median(v), v, peaks[k]) for k, v in rates.items()}


def print_table(title: str, rows: list[tuple[str, dict]], device) -> str:
    """rows: (workload, {'torchvision': (median, windows, peak), 'gluon_rcnn': (...), ...})."""
    lines = [f"### {title}", "", f"device: {device_name(device)}; {software()}", "",
             "| workload | contender | img/s (median) | ratio to torchvision | peak MB | img/s per window |",
             "| --- | --- | ---: | ---: | ---: | --- |"]
    for name, r in rows:
        t = r["torchvision"][0]
        for who in ["torchvision"] + [k for k in r if k != "torchvision"]:
            med, windows, peak = r[who]
            lines.append(f"| {name} | {who} | {med:.2f} | {med / t:.2f} | {peak:.0f} | "
                         f"{', '.join(f'{w:.2f}' for w in windows)} |")
    text = "\n".join(lines)
    print(text, flush=True)
    return text
