#!/usr/bin/env python
"""Two training steps under torchrun with NCCL and SyncBN (bf16 autocast), printed per rank.

Run as ``torchrun --nproc_per_node=N bench/gpu_nccl_check.py`` (N = the GPUs at hand; with one GPU the
process group has one rank, which still runs NCCL's collectives and SyncBN's all-gather path). Each rank
trains gluon_rcnn's Mask R-CNN R50-FPN with ``BACKBONE.NORM=SyncBN`` for two steps on its share of the
images and prints the losses; rank 0 checks that the SyncBN running statistics and the weights are
identical on every rank after the steps (all_reduce of their max difference).
"""
from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist

from common import load_images, to_tensor


def main() -> int:
    from gluon_rcnn import get_model
    from gluon_rcnn.data.transforms import polygons_to_edges
    import numpy as np
    from common import synthetic_targets
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    cuda = torch.cuda.is_available()  # without CUDA (a dry run of this script): gloo on the CPU
    dev = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(local)
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(minutes=5), **({"device_id": dev} if cuda else {}))
    torch.manual_seed(0)
    net = get_model("mask_rcnn_fpn_resnet50_v1b_coco", overrides=["BACKBONE.NORM=SyncBN", "BACKBONE.FREEZE_AT=0"])
    net = net.to(dev).train()
    net = torch.nn.parallel.DistributedDataParallel(net, device_ids=[local] if cuda else None)
    opt = torch.optim.SGD(net.parameters(), lr=0.002, momentum=0.9)
    imgs = [to_tensor(i) for i in load_images(2 * world)]
    if not cuda:  # the dry run: small images
        imgs = [torch.nn.functional.interpolate(i[None], scale_factor=0.4)[0] for i in imgs]
    boxes = synthetic_targets(2 * world)
    for step in range(2):
        mine = list(range(rank * 2, rank * 2 + 2))
        targets = []
        for i in mine:
            h, w = imgs[i].shape[-2:]
            b = torch.tensor([[10.0, 10.0, w / 2, h / 2], [w / 3, h / 3, w - 5.0, h - 5.0]])
            polys = [[np.array([x1, y1, x2, y1, x2, y2, x1, y2], np.float32)] for x1, y1, x2, y2 in b.tolist()]
            targets.append({"boxes": b.to(dev), "labels": torch.tensor([1, 2], device=dev),
                            "polygons": torch.from_numpy(polygons_to_edges(polys)).to(dev)})
        with torch.autocast(dev.type, dtype=torch.bfloat16):
            losses = net([imgs[i].to(dev) for i in mine], targets)
        loss = sum(losses.values())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        print(f"rank {rank}/{world} step {step}: " + ", ".join(f"{k} {v.item():.4f}" for k, v in losses.items()),
              flush=True)
    del boxes
    diff = torch.zeros((), device=dev)
    for t in list(net.module.state_dict().values()):
        if t.is_floating_point():
            ref = t.clone()
            dist.broadcast(ref, 0)
            diff = torch.maximum(diff, (t - ref).abs().max())
    dist.all_reduce(diff, op=dist.ReduceOp.MAX)
    if rank == 0:
        print(f"{dist.get_backend().upper()} + SyncBN: {world} rank(s), max difference of weights/statistics across ranks {diff.item():.3g} "
              f"-> {'PASS' if diff.item() == 0 else 'FAIL'}")
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
