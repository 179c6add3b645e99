#!/usr/bin/env python
"""Does an int8 trunk pay on this CPU? Post-training static int8 quantization (torch.ao FX graph mode,
the ``x86`` backend: fbgemm/oneDNN VNNI kernels, per-channel weights, histogram-calibrated activations)
of the ResNet-50 body of Mask R-CNN R50-FPN (ours, converted from torchvision's seeded model,
bench/common.py), against the same body in fp32 (``optimize_for_inference()``: norms folded,
channels_last) and under bf16 autocast, timed in one process, alternating windows, on coco128 images
at COCO size. The body is the largest single part of inference (bench/profile_inference.py); if int8
does not beat bf16 there, an int8 mode cannot beat the bf16 mode end to end. (The FPN is not
FX-traceable: its upsampling branches on feature sizes.)

Also prints how far int8 and bf16 features are from fp32 (relative L2 error per level) on held-out
images (calibration on the first --calib images, errors on the others).

    cd bench && python int8_probe.py --short 800 --max-size 1333 --windows 3 --calib 4
"""
from __future__ import annotations

import argparse
import copy
import sys
import warnings

import torch

from common import REPO, alternate, build_pair, device_name, load_images, software, to_tensor


def quantize(module: torch.nn.Module, calib: list[torch.Tensor]) -> torch.nn.Module:
    """Post-training static int8 (FX graph mode, x86 backend), calibrated on ``calib`` inputs."""
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx
    torch.backends.quantized.engine = "x86"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # FX graph mode quantization is deprecated in favour of torchao (not installed)
        prepared = prepare_fx(copy.deepcopy(module).eval(), get_default_qconfig_mapping("x86"), (calib[0],))
        with torch.no_grad():
            for x in calib:
                prepared(x)
        return convert_fx(prepared)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--short", type=int, default=800)
    p.add_argument("--max-size", type=int, default=1333)
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--iters", type=int, default=1)
    p.add_argument("--calib", type=int, default=4, help="calibration images (the rest measure the error)")
    p.add_argument("--images", type=int, default=8)
    a = p.parse_args(argv)
    cpu = torch.device("cpu")
    _, net = build_pair(cpu, a.short, a.max_size)
    net.optimize_for_inference("fp32")
    with torch.no_grad():
        batches = [net.preprocess([to_tensor(i)]).tensor.contiguous(memory_format=torch.channels_last)
                   for i in load_images(a.images)]
    calib, held = batches[: a.calib], batches[a.calib:] or batches[:1]
    body = net.backbone.body
    with torch.no_grad():
        qbody = quantize(body, calib)

    def trunk(b, bf16=False):
        def run(x):
            with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                return b(x)
        return run

    contenders = {"fp32 (optimize_for_inference)": trunk(body), "bf16 autocast": trunk(body, True),
                  "int8 (FX, x86)": trunk(qbody)}
    ref = [contenders["fp32 (optimize_for_inference)"](x) for x in held]
    print("relative L2 error of the body's features against fp32, held-out images (mean over images):")
    for name in list(contenders)[1:]:
        errs = {}
        for x, r in zip(held, ref):
            out = contenders[name](x)
            for k in r:
                errs.setdefault(k, []).append(float((out[k].float() - r[k]).norm() / r[k].norm()))
        print(f"  {name}: " + ", ".join(f"{k} {sum(v) / len(v):.4f}" for k, v in errs.items()))
    state = {"i": 0}

    def timed(fn):
        def go():
            state["i"] = (state["i"] + 1) % len(batches)
            fn(batches[state["i"]])
        return go

    fns = {name: timed(fn) for name, fn in contenders.items()}
    res = alternate(fns, a.windows, a.iters, 1, cpu)
    base = res["fp32 (optimize_for_inference)"][0]
    print(f"\n### int8 probe: ResNet-50 body of Mask R-CNN R50-FPN, batch 1, short edge {a.short} "
          f"(max {a.max_size})\n\ndevice: {device_name(cpu)}; {software()}\n")
    print("| ResNet-50 body | img/s (median) | ratio to fp32 | peak MB | img/s per window |\n| --- | ---: | ---: | ---: | --- |")
    for name, (med, windows, peak) in res.items():
        print(f"| {name} | {med:.2f} | {med / base:.2f} | {peak:.0f} | {', '.join(f'{w:.2f}' for w in windows)} |")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
