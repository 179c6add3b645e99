#!/usr/bin/env python
"""fp32 detections on CUDA equal those on the CPU (float rounding), eager and ``hybridize()``d.

Our Mask R-CNN R50-FPN (converted from a seeded torchvision model, bench/common.py ``build_pair``) runs
on the same images on the CPU and on CUDA (TF32 off, so the GPU computes in true fp32); detections are
paired by label (IoU > 0.9) and the largest box (px) and score differences printed, with the share of
detections paired and the mask IoU. Then the same on CUDA with ``net.hybridize()`` (torch.compile) and
with bf16 autocast (reported, not required to match).

    python bench/gpu_equality.py --images 4 --short 512 --max-size 853
"""
from __future__ import annotations

import argparse

import torch

from common import build_pair, device_name, load_images, software, to_tensor


def pair_stats(a: dict, b: dict) -> dict:
    from torchvision.ops import box_iou
    n_a, n_b = len(a["boxes"]), len(b["boxes"])
    if n_a == 0 or n_b == 0:
        return {"ours_cpu": n_a, "other": n_b, "paired": 0, "box_px": float("nan"), "score": float("nan")}
    iou = box_iou(a["boxes"], b["boxes"])
    iou[a["labels"][:, None] != b["labels"][None, :]] = 0
    best, j = iou.max(1)
    ok = best > 0.9
    box = (a["boxes"][ok] - b["boxes"][j[ok]]).abs().max().item() if ok.any() else float("nan")
    score = (a["scores"][ok] - b["scores"][j[ok]]).abs().max().item() if ok.any() else float("nan")
    out = {"cpu": n_a, "other": n_b, "paired": int(ok.sum()), "box_px": box, "score": score}
    if "masks" in a and ok.any():
        ma, mb = a["masks"][ok] > 0.5, b["masks"][j[ok]] > 0.5
        inter = (ma & mb).flatten(1).sum(1).float()
        union = (ma | mb).flatten(1).sum(1).clamp(min=1).float()
        out["mask_iou_min"] = (inter / union).min().item()
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=4)
    p.add_argument("--short", type=int, default=512)
    p.add_argument("--max-size", type=int, default=853)
    a = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to compare")
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    cuda = torch.device("cuda")
    print(f"{device_name(cuda)}; {software()}")
    _, cpu_model = build_pair(torch.device("cpu"), a.short, a.max_size)
    imgs = [to_tensor(i) for i in load_images(a.images)]
    with torch.inference_mode():
        ref = [cpu_model([im])[0] for im in imgs]
    _, gpu_model = build_pair(cuda, a.short, a.max_size)
    modes = {"cuda fp32 eager": lambda m: m}

    def hybrid(m):
        m.hybridize()
        return m

    modes["cuda fp32 hybridize()"] = hybrid
    ok = True
    for name, prep in modes.items():
        m = prep(gpu_model)
        with torch.inference_mode():
            outs = [{k: v.float().cpu() for k, v in m([im.to(cuda)])[0].items()} for im in imgs]
        for i, (r, o) in enumerate(zip(ref, outs)):
            s = pair_stats(r, o)
            good = s["paired"] >= 0.95 * max(s["cpu"], 1) and s["box_px"] <= 0.05 and s["score"] <= 1e-3
            ok &= good
            print(f"{name:24s} image {i}: {s} {'OK' if good else 'DIFFERS'}")
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
        m = gpu_model
        outs = [{k: v.float().cpu() for k, v in m([im.to(cuda)])[0].items()} for im in imgs]
    for i, (r, o) in enumerate(zip(ref, outs)):
        print(f"{'cuda bf16 autocast':24s} image {i}: {pair_stats(r, o)} (reported only)")
    print("fp32 CUDA == CPU within rounding:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
