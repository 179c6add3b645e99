"""Sharded inference and COCO scoring across processes.

:func:`evaluate_distributed` runs the model over this rank's contiguous shard of an evaluation
dataset (every image in exactly one shard, see ``data.loader.build_test_loader``), turns the
detections into COCO result dicts on each rank (RLE-encoding masks where they are made, so only
small dicts travel), gathers them with ``all_gather_object``, and lets rank 0 score them with
``engine.evaluate.coco_evaluate``. The result list is sorted the same way whatever the number of
processes, so 1 and N processes write the same JSON.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any, Sequence

import torch

from ..data.loader import TransformedDataset, build_test_loader
from . import dist

__all__ = ["evaluate_distributed", "inference_on_dataset", "find_coco_source", "sort_results"]

logger = logging.getLogger(__name__)


def find_coco_source(dataset) -> tuple[Any, dict]:
    """``(coco, label_to_cat_id)`` of a COCO-style dataset, looking through ``.dataset`` wrappers."""
    ds = dataset
    for _ in range(5):
        if hasattr(ds, "coco") and hasattr(ds, "label_to_cat_id"):
            return ds.coco, dict(ds.label_to_cat_id)
        if not hasattr(ds, "dataset"):
            break
        ds = ds.dataset
    raise ValueError(f"{type(dataset).__name__} exposes no 'coco' and 'label_to_cat_id' (nor does a wrapped "
                     "'.dataset'); pass coco_gt= and label_to_cat_id= to evaluate_distributed")


def _to_cpu(out: dict) -> dict:
    return {k: (v.detach().float().cpu() if torch.is_tensor(v) and v.is_floating_point()
                else v.detach().cpu() if torch.is_tensor(v) else v) for k, v in out.items()}


@torch.no_grad()
def inference_on_dataset(model, loader, label_to_cat_id: dict, device: torch.device | None = None,
                         amp: str = "off", progress: bool = False) -> tuple[list[dict], int]:
    """Run ``model`` (eval mode) over ``loader``; returns (COCO result dicts, number of images)."""
    from .evaluate import detections_to_coco

    device = device or dist.get_device()
    results: list[dict] = []
    n = 0
    it = loader
    if progress:
        try:
            from tqdm import tqdm
            it = tqdm(loader, desc="eval", dynamic_ncols=True)
        except ImportError:  # pragma: no cover - tqdm is a dependency
            pass
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    for images, _targets in it:
        images = images.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
            outputs = model(images)
        outputs = [_to_cpu(o) for o in outputs]
        results.extend(detections_to_coco(outputs, list(images.image_ids), label_to_cat_id))
        n += len(images)
    return results, n


def sort_results(results: Sequence[dict]) -> list[dict]:
    """A canonical order: image id, then descending score, then category, then box."""
    return sorted(results, key=lambda r: (r["image_id"], -float(r["score"]), r["category_id"],
                                          tuple(float(v) for v in r.get("bbox", ()))))


def evaluate_distributed(model, dataset, *, cfg=None, batch_size: int | None = None, num_workers: int = 0,
                         size_divisibility: int | None = None,
                         iou_types: Sequence[str] | None = None, coco_gt=None, label_to_cat_id: dict | None = None,
                         output_file: str | None = None, device: torch.device | None = None, amp: str = "off",
                         progress: bool | None = None) -> tuple[dict, list[dict]]:
    """Evaluate ``model`` on ``dataset`` with every process of the current world.

    model: a detector (``DistributedDataParallel`` is unwrapped); put in eval mode for the call and
        restored to its previous mode afterwards.
    dataset: a raw COCO-style dataset (``data.coco.COCODetection(train=False)``), which is wrapped
        in ``data.transforms.TestTransform(cfg)``, or a ``data.loader.TransformedDataset`` used as
        it is; its (or its wrapped ``.dataset``'s) ``coco`` and ``label_to_cat_id`` are used unless given.
    cfg: for the test resize, ``TEST.IMS_PER_GPU`` (default ``batch_size``) and
        ``PREPROC.SIZE_DIVISIBILITY``; default ``model.cfg``.
    iou_types: default ``['bbox', 'segm']`` when the results carry segmentations, else ``['bbox']``.
    output_file: rank 0 writes the sorted COCO results there as JSON.

    Returns ``(metrics, results)`` on every rank: ``metrics`` as ``coco_evaluate`` returns it
    (identical on every rank), ``results`` the sorted full list on rank 0 and ``[]`` elsewhere.
    """
    from .evaluate import coco_evaluate

    if coco_gt is None or label_to_cat_id is None:
        c, l2c = find_coco_source(dataset)
        coco_gt = coco_gt if coco_gt is not None else c
        label_to_cat_id = label_to_cat_id if label_to_cat_id is not None else l2c
    rank, world = dist.get_rank(), dist.get_world_size()
    net = dist.unwrap_model(model)
    cfg = cfg if cfg is not None else getattr(net, "cfg", None)
    if not isinstance(dataset, TransformedDataset):
        if cfg is None:
            raise ValueError("evaluate_distributed needs cfg= (or a model with .cfg) to build the test transform")
        from ..data.transforms import TestTransform
        dataset = TransformedDataset(dataset, TestTransform(cfg))
    if batch_size is None:
        batch_size = int(cfg.TEST.IMS_PER_GPU) if cfg is not None else 1
    if size_divisibility is None:
        size_divisibility = int(cfg.PREPROC.SIZE_DIVISIBILITY) if cfg is not None else 32
    was_training = net.training
    net.eval()
    t0 = time.perf_counter()
    try:
        loader = build_test_loader(dataset, rank, world, batch_size=batch_size, num_workers=num_workers,
                                   size_divisibility=size_divisibility)
        local, n_local = inference_on_dataset(net, loader, label_to_cat_id, device=device, amp=amp,
                                              progress=rank == 0 if progress is None else progress)
    finally:
        net.train(was_training)
    gathered = dist.all_gather_object((local, n_local))
    metrics: dict = {}
    results: list[dict] = []
    if rank == 0:
        results = sort_results([r for part, _ in gathered for r in part])
        n_images = sum(n for _, n in gathered)
        if n_images != len(dataset):
            raise RuntimeError(f"evaluated {n_images} images but the dataset has {len(dataset)}")
        logger.info("inference on %d images took %.1f s (%d processes)", n_images, time.perf_counter() - t0, world)
        if output_file:
            os.makedirs(os.path.dirname(os.path.abspath(output_file)), exist_ok=True)
            tmp = output_file + ".tmp"
            with open(tmp, "w") as f:
                json.dump(results, f)
            os.replace(tmp, output_file)
        if iou_types is None:
            iou_types = ["bbox", "segm"] if any("segmentation" in r for r in results) else ["bbox"]
        if results:
            metrics = coco_evaluate(coco_gt, results, list(iou_types))
        else:
            logger.warning("no detections at all: every AP is 0")
            metrics = {}
    metrics = dist.broadcast_object(metrics, src=0)
    return metrics, results
