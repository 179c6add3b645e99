#!/usr/bin/env python
"""int8 for the whole trunk, FPN included: PT2E post-training static quantization of OUR R50-FPN
backbone (ResNet-50 body + FPN of Mask R-CNN R50-FPN, converted from torchvision's seeded model,
bench/common.py, after ``optimize_for_inference('fp32')``: norms folded, channels_last), timed against
the same backbone in fp32 and bf16, eager and inductor-compiled, in one process, alternating windows,
on coco128 images at COCO size; and how far each contender's P2..P6 are from fp32 eager.

The flow (torch 2.14 has no ``torch.ao.quantization.quantize_pt2e``: PT2E moved to torchao, which
this script needs, ``pip install torchao``; it is not a dependency of gluon_rcnn):

1. ``torch.export.export(backbone, strict=True)`` with dynamic H and W (multiples of 32). The
   non-strict default names every call of a shared module alike, so the quantizer cannot tell the
   three ReLUs of one ResNet block apart ("Input partition has more than one output node").
2. ``torchao.quantization.pt2e``: ``prepare_pt2e`` with ``X86InductorQuantizer`` and
   ``get_default_x86_inductor_quantization_config()`` (per-channel symmetric int8 weights, per-tensor
   uint8 activations with histogram observers), calibration on the first ``--calib`` images,
   ``convert_pt2e``. A second variant keeps the FPN's 3x3 output convs in fp32.
3. ``torch.compile`` (inductor, ``freezing=True``, ``dynamic=True``, under ``torch.no_grad()``): the
   quantize/dequantize pairs become oneDNN int8 convolutions (AMX/VNNI where the CPU has them).

fp32 and bf16 (autocast) are timed eager and compiled the same way (freezing, dynamic shapes). The
errors are measured on the images after the calibration ones. The weights are a seeded random init
(no trained COCO weights offline): activation ranges of a trained model differ, so the errors here
say how int8 compares with bf16 on this network, not what a trained model's AP would lose.

    cd bench && python int8_pt2e.py --short 800 --max-size 1333 --calib 8 --images 16 --windows 3
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import torch

from common import REPO, alternate, build_pair, device_name, load_images, software, to_tensor


def _torchao():
    try:
        import torchao
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
        from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq
    except ImportError as e:
        raise SystemExit(f"this benchmark needs torchao ({e}): torch {torch.__version__} has no "
                         "torch.ao.quantization.quantize_pt2e, PT2E quantization lives in torchao now "
                         "(pip install torchao)") from None
    return torchao, prepare_pt2e, convert_pt2e, xiq


def export_backbone(backbone: torch.nn.Module, example: torch.Tensor) -> torch.export.ExportedProgram:
    """The backbone as an exported program taking any H, W that are multiples of 32 (up to 2048)."""
    h, w = torch.export.Dim("h", min=1, max=64), torch.export.Dim("w", min=1, max=64)
    return torch.export.export(backbone, (example,), strict=True, dynamic_shapes={"x": {2: 32 * h, 3: 32 * w}})


def quantize(ep: torch.export.ExportedProgram, calib: list[torch.Tensor], fp32_modules=()) -> torch.fx.GraphModule:
    """PT2E int8 of ``ep`` (X86InductorQuantizer defaults), calibrated on ``calib``; the modules named in
    ``fp32_modules`` (names as in ``named_modules()``) are left unquantized."""
    _, prepare_pt2e, convert_pt2e, xiq = _torchao()
    quantizer = xiq.X86InductorQuantizer().set_global(xiq.get_default_x86_inductor_quantization_config())
    for name in fp32_modules:
        quantizer.set_module_name_qconfig(name, None)
    prepared = prepare_pt2e(ep.module(), quantizer)
    with torch.no_grad():
        for x in calib:
            prepared(x)
    return convert_pt2e(prepared)


def rel_err(out: dict, ref: dict) -> dict:
    return {k: float((out[k].float() - ref[k]).norm() / ref[k].norm()) for k in ref}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--short", type=int, default=800)
    p.add_argument("--max-size", type=int, default=1333)
    p.add_argument("--windows", type=int, default=3)
    p.add_argument("--calib", type=int, default=8, help="calibration images (the rest measure the error and are timed)")
    p.add_argument("--images", type=int, default=16)
    a = p.parse_args(argv)
    if not 0 < a.calib < a.images:
        raise SystemExit(f"--calib must be in 1..--images-1, got {a.calib} of {a.images}")
    torchao = _torchao()[0]
    import torch._inductor.config as inductor_config
    inductor_config.freezing = True
    cpu = torch.device("cpu")
    print(f"load average at start: {os.getloadavg()}", flush=True)
    _, net = build_pair(cpu, a.short, a.max_size)
    net.optimize_for_inference("fp32")
    backbone = net.backbone
    with torch.no_grad():
        batches = [net.preprocess([to_tensor(i)]).tensor.contiguous(memory_format=torch.channels_last)
                   for i in load_images(a.images)]
    calib, held = batches[: a.calib], batches[a.calib:]
    print("held-out sizes:", sorted({tuple(x.shape[-2:]) for x in held}), flush=True)

    t0 = time.perf_counter()
    ep = export_backbone(backbone, calib[0])
    print(f"torch.export (strict, dynamic H/W): {time.perf_counter() - t0:.1f} s", flush=True)
    fpn_out = [f"fpn.layer_blocks.{i}" for i in range(len(backbone.fpn.layer_blocks))]
    int8 = {}
    for name, keep in {"int8 (PT2E, x86 inductor)": (), "int8, FPN output convs fp32": fpn_out}.items():
        t0 = time.perf_counter()
        int8[name] = quantize(ep, calib, keep)
        print(f"{name}: prepare + calibrate ({len(calib)} images) + convert {time.perf_counter() - t0:.1f} s", flush=True)

    def bf16(fn):
        def run(x):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return fn(x)
        return run

    contenders = {
        "fp32 eager": backbone,
        "fp32 inductor": torch.compile(backbone, dynamic=True),
        "bf16 eager (autocast)": bf16(backbone),
        "bf16 inductor (autocast)": torch.compile(bf16(backbone), dynamic=True),
        **{name: torch.compile(gm, dynamic=True) for name, gm in int8.items()},
    }
    from torch._dynamo.utils import counters
    with torch.no_grad():
        for name, fn in contenders.items():
            if "inductor" in name or "int8" in name:
                t0 = time.perf_counter()
                fn(held[0])
                print(f"{name}: compile (first call) {time.perf_counter() - t0:.1f} s", flush=True)
        lowered = {k: v for k, v in counters["inductor"].items() if "qconv" in k}
        print("inductor int8 lowering (both int8 contenders):", lowered, flush=True)

        ref = [backbone(x) for x in held]
        errors = {}
        for name, fn in list(contenders.items())[1:]:
            per_image = [rel_err(fn(x), r) for x, r in zip(held, ref)]
            errors[name] = {k: sum(e[k] for e in per_image) / len(per_image) for k in ref[0]}

    def timed(fn):
        def go():  # one window = every held-out image once, so every contender does the same work
            with torch.no_grad():
                for x in held:
                    fn(x)
        return go

    res = alternate({name: timed(fn) for name, fn in contenders.items()}, a.windows, 1, len(held), cpu)
    base, bf, bfc = (res[k][0] for k in ("fp32 eager", "bf16 eager (autocast)", "bf16 inductor (autocast)"))
    levels = list(ref[0])
    print(f"\n### int8 (PT2E) of the R50-FPN backbone (ResNet-50 body + FPN), batch 1, short edge {a.short} "
          f"(max {a.max_size}), {len(held)} held-out coco128 images, calibration on {len(calib)} others\n")
    print(f"device: {device_name(cpu)}; {software()}, torchao {torchao.__version__}; "
          f"load average at end: {os.getloadavg()}\n")
    print(f"| backbone + FPN | img/s (median) | ratio to fp32 eager | ratio to bf16 eager | ratio to bf16 inductor | peak MB "
          f"| img/s per window | relative L2 error {' / '.join(levels)} vs fp32 eager |\n"
          "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |")
    for name, (med, windows, peak) in res.items():
        err = " / ".join(f"{errors[name][k]:.4f}" for k in levels) if name in errors else "0 (reference)"
        print(f"| {name} | {med:.2f} | {med / base:.2f} | {med / bf:.2f} | {med / bfc:.2f} | {peak:.0f} | "
              f"{', '.join(f'{w:.2f}' for w in windows)} | {err} |")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
