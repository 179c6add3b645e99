"""THE evaluation driver: one process or many, for the trainer and for ``scripts/eval.py``.

:func:`evaluate_distributed` wraps a raw COCO-style dataset in ``data.transforms.TestTransform()``,
builds ``data.loader.build_test_loader`` for this rank's contiguous shard (every image in exactly
one shard), runs ``model(batch)`` on each batch, turns the detections into COCO result dicts on
each rank (RLE-encoding masks where they are made, so only small dicts travel), gathers them with
``all_gather_object`` and lets rank 0 score them with ``engine.evaluate.coco_evaluate``. The result
list is sorted the same way whatever the number of processes, so 1 and N processes write the same
JSON, and the trainer's ``eval_XXXXXXX.json`` equals what ``scripts/eval.py`` writes for the same
weights.

The batch the loader yields is opaque here: the driver calls ``batch.to(device)`` and
``model(batch)``, and reads ``len(batch)``, ``batch.image_ids`` and ``batch.skipped`` (messages of
bad images the loader dropped, when the dataset skips them); only the images actually evaluated
are scored.

Failures never leave a rank waiting: each rank runs its inference inside a guard and joins the
gather with either its results or an error status; rank 0 scores inside a guard and broadcasts
either the metrics or an error status. When any rank failed, the failing rank re-raises its own
exception and every other rank raises :class:`EvaluationError` naming the failing rank and its
error, so the whole world stops within the time the slowest rank needs to finish its shard.
"""
from __future__ import annotations

import logging
import sys
import time
import traceback
from typing import Any, Sequence

import torch

from ..data.loader import TransformedDataset, build_test_loader, shard_indices
from . import dist

__all__ = ["evaluate_distributed", "EvalOutput", "EvaluationError", "inference_on_dataset", "find_coco_source",
           "sort_results"]

logger = logging.getLogger(__name__)


class EvaluationError(RuntimeError):
    """Evaluation failed on another rank; raised on every rank but the one that failed.

    ``rank`` is the rank that failed, ``error`` its exception as ``'Type: message'``."""

    def __init__(self, rank: int, error: str, phase: str):
        self.rank, self.error, self.phase = int(rank), str(error), phase
        super().__init__(f"evaluation failed on rank {rank} during {phase}: {error}")


class EvalOutput(tuple):
    """``(metrics, results)``, so ``metrics, results = evaluate_distributed(...)`` works, plus:

    metrics: ``{iou_type: {AP, AP50, AP75, APs, APm, APl}}`` as ``coco_evaluate`` returns it, the
        same on every rank.
    results: the sorted COCO result dicts of the whole dataset on rank 0, ``[]`` on other ranks.
    image_ids: the ids of the images evaluated (sorted, all ranks together; bad images skipped by
        the loader are not among them), on every rank.
    skipped: messages of the images the loader skipped, on every rank.
    num_images: ``len(image_ids)``; seconds: wall time of inference + gathering + scoring.
    """

    def __new__(cls, metrics: dict, results: list, *, image_ids: Sequence[int] = (), skipped: Sequence[str] = (),
                seconds: float = 0.0, world_size: int = 1):
        self = super().__new__(cls, (metrics, results))
        self.image_ids = list(image_ids)
        self.skipped = list(skipped)
        self.seconds = float(seconds)
        self.world_size = int(world_size)
        return self

    @property
    def metrics(self) -> dict:
        return self[0]

    @property
    def results(self) -> list:
        return self[1]

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    def __getnewargs_ex__(self):  # pickling keeps the extra fields
        return (self[0], self[1]), {"image_ids": self.image_ids, "skipped": self.skipped, "seconds": self.seconds,
                                    "world_size": self.world_size}


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


def _model_device(model) -> torch.device:
    for p in model.parameters():
        return p.device
    return dist.get_device()


@torch.no_grad()
def inference_on_dataset(model, loader, label_to_cat_id: dict, device: torch.device | str | None = None,
                         amp: str = "off", progress: bool = False,
                         total: int | None = None) -> tuple[list[dict], list[int], list[str]]:
    """Run ``model`` (already in eval mode) over ``loader``.

    Each loader item is a batch (or a ``(batch, targets)`` pair); the batch is moved with
    ``batch.to(device)`` and passed to ``model(batch)``, which returns one detection dict per image.
    Returns ``(COCO result dicts, image ids evaluated, messages of skipped images)``.
    """
    from .evaluate import detections_to_coco

    device = torch.device(device) if device is not None else _model_device(model)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    results: list[dict] = []
    image_ids: list[int] = []
    skipped: list[str] = []
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, desc="eval", unit="img", dynamic_ncols=True, file=sys.stderr)
    try:
        for item in loader:
            batch = item[0] if isinstance(item, (tuple, list)) else item
            bad = [str(s) for s in (getattr(batch, "skipped", None) or [])]
            skipped.extend(bad)
            n = len(batch)
            if n:
                ids = list(batch.image_ids)
                if len(ids) != n or any(i is None for i in ids):
                    raise RuntimeError(f"a batch of {n} images carries image ids {ids}: the dataset must give "
                                       "every item an image_id")
                batch = batch.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                    outputs = model(batch)
                if len(outputs) != n:
                    raise RuntimeError(f"the model returned {len(outputs)} outputs for {n} images")
                outputs = [_to_cpu(o) for o in outputs]
                results.extend(detections_to_coco(outputs, ids, label_to_cat_id))
                image_ids.extend(int(i) for i in ids)
            if bar is not None:
                bar.update(n + len(bad))
    finally:
        if bar is not None:
            bar.close()
    return results, image_ids, skipped


def sort_results(results: Sequence[dict]) -> list[dict]:
    """A canonical order: image id, then descending score, then category, then box."""
    return sorted(results, key=lambda r: (r["image_id"], -float(r["score"]), r["category_id"],
                                          tuple(float(v) for v in r.get("bbox", ()))))


def _describe(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}"


def _raise_if_failed(statuses: Sequence[tuple[str, Any]], own_error: BaseException | None, phase: str) -> None:
    """Every rank calls this with the gathered ``(status, payload)`` of all ranks: the rank that
    failed re-raises its own exception, the others an EvaluationError naming the first failure."""
    failed = [(r, payload) for r, (status, payload) in enumerate(statuses) if status == "error"]
    if not failed:
        return
    if own_error is not None:
        raise own_error
    rank, msg = failed[0]
    raise EvaluationError(rank, msg, phase)


def evaluate_distributed(model, dataset, *, cfg=None, batch_size: int | None = None, num_workers: int = 0,
                         iou_types: Sequence[str] | None = None,
                         coco_gt=None, label_to_cat_id: dict | None = None, output_file: str | None = None,
                         device: torch.device | str | None = None, amp: str = "off", progress: bool | None = None,
                         limit: int | None = None, verbose: bool = True) -> EvalOutput:
    """Evaluate ``model`` on ``dataset`` with every process of the current world (one is fine).

    model: a detector (``DistributedDataParallel`` is unwrapped) taking a loader batch and returning
        one dict per image (``boxes`` in original pixels, ``scores``, ``labels`` 1..C[, ``masks``]);
        put in eval mode for the call and restored to its previous mode afterwards. It must already
        be on ``device``.
    dataset: a raw COCO-style dataset (``data.coco.COCODetection(train=False)``), which is wrapped
        in ``data.transforms.TestTransform()``, or a ``data.loader.TransformedDataset`` used as
        it is; its (or its wrapped ``.dataset``'s) ``coco`` and ``label_to_cat_id`` are used unless given.
    cfg: for ``TEST.IMS_PER_GPU`` (the default ``batch_size``, else 1) and ``MODE_MASK`` (``iou_types``);
        default ``model.config``.
    batch_size: images per model call on each rank.
    num_workers: image-decoding processes of each rank's loader.
    iou_types: default ``['bbox', 'segm']`` when the results carry segmentations (or, with no
        results, for a ``MODE_MASK`` config), else ``['bbox']``.
    coco_gt, label_to_cat_id: the ground truth (pycocotools COCO) and label -> category id map.
    output_file: rank 0 writes the sorted COCO results there as JSON (atomically).
    device: where batches go; default the device of the model's parameters.
    amp: 'off', 'bf16' or 'fp16' autocast.
    progress: a progress bar (default on rank 0 only).
    limit: evaluate only the first ``limit`` items of the dataset (and score only those images).
    verbose: print the AP table on rank 0.

    Returns an :class:`EvalOutput` on every rank: ``metrics, results = ...`` unpacks it (metrics
    identical on every rank, the sorted results list on rank 0 and ``[]`` elsewhere); it also
    carries ``image_ids`` (evaluated), ``skipped`` (messages of bad images the loader dropped),
    ``num_images`` and ``seconds``.

    Raises, on every rank, when any rank fails: the failing rank its own exception, the others
    :class:`EvaluationError` (a RuntimeError) naming the failing rank and its error.
    """
    rank, world = dist.get_rank(), dist.get_world_size()
    net = dist.unwrap_model(model)
    was_training = net.training
    t0 = time.perf_counter()

    # -- phase 1: every rank runs its shard; a failure becomes a status, never a missing rank ----
    own_error: BaseException | None = None
    try:
        if coco_gt is None or label_to_cat_id is None:
            c, l2c = find_coco_source(dataset)
            coco_gt = coco_gt if coco_gt is not None else c
            label_to_cat_id = label_to_cat_id if label_to_cat_id is not None else l2c
        cfg = cfg if cfg is not None else getattr(net, "config", None)
        if not isinstance(dataset, TransformedDataset):
            from ..data.transforms import TestTransform
            dataset = TransformedDataset(dataset, TestTransform())
        if limit is not None:
            if int(limit) < 1:
                raise ValueError(f"limit must be >= 1, got {limit}")
            dataset = torch.utils.data.Subset(dataset, range(min(int(limit), len(dataset))))
        if batch_size is None:
            batch_size = int(cfg.TEST.IMS_PER_GPU) if cfg is not None else 1
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        loader = build_test_loader(dataset, rank, world, batch_size=int(batch_size), num_workers=num_workers)
        net.eval()
        try:
            local = inference_on_dataset(net, loader, label_to_cat_id, device=device, amp=amp,
                                         progress=rank == 0 if progress is None else progress,
                                         total=len(shard_indices(len(dataset), rank, world)))
        finally:
            net.train(was_training)
        status: tuple[str, Any] = ("ok", local)
    except Exception as e:  # noqa: BLE001 - reported to every rank, then re-raised below
        own_error = e
        status = ("error", _describe(e))
        if world > 1:
            logger.error("rank %d: evaluation failed:\n%s", rank, traceback.format_exc())
    gathered = dist.all_gather_object(status)
    _raise_if_failed(gathered, own_error, "inference")

    image_ids = sorted(i for _, (_, ids, _) in gathered for i in ids)
    skipped = [s for _, (_, _, sk) in gathered for s in sk]

    # -- phase 2: rank 0 scores; the outcome (metrics or an error) goes to every rank ------------
    metrics: dict = {}
    results: list[dict] = []
    own_error = None
    if rank == 0:
        try:
            results = sort_results([r for _, (part, _, _) in gathered for r in part])
            n_expected = len(dataset)
            if len(image_ids) + len(skipped) != n_expected:
                raise RuntimeError(f"evaluated {len(image_ids)} images and skipped {len(skipped)}, but the dataset "
                                   f"has {n_expected}")
            if len(set(image_ids)) != len(image_ids):
                raise RuntimeError("some images were evaluated twice (duplicate image ids in the dataset?)")
            logger.info("inference on %d images took %.1f s (%d process%s)", len(image_ids),
                        time.perf_counter() - t0, world, "es" if world > 1 else "")
            if output_file:
                from .evaluate import save_results
                save_results(results, output_file)
            if iou_types is None:
                mask = any("segmentation" in r for r in results) or (
                    not results and cfg is not None and bool(getattr(cfg, "MODE_MASK", False)))
                iou_types = ["bbox", "segm"] if mask else ["bbox"]
            if not results:
                logger.warning("no detections at all: every AP is 0")
            from .evaluate import coco_evaluate
            all_ids = set(int(i) for i in coco_gt.getImgIds())
            score_ids = None if set(image_ids) == all_ids else image_ids
            metrics = coco_evaluate(coco_gt, results, list(iou_types), image_ids=score_ids, verbose=verbose)
            if skipped:
                logger.warning("%d bad image(s) skipped and left out of the score: %s", len(skipped),
                               "; ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
            outcome: tuple[str, Any] = ("ok", metrics)
        except Exception as e:  # noqa: BLE001 - broadcast to every rank, then re-raised below
            own_error = e
            outcome = ("error", _describe(e))
            if world > 1:
                logger.error("rank 0: scoring failed:\n%s", traceback.format_exc())
    else:
        outcome = ("ok", None)
    outcome = dist.broadcast_object(outcome, src=0)
    statuses = [outcome] + [("ok", None)] * (world - 1)
    _raise_if_failed(statuses, own_error, "scoring on rank 0")
    metrics = outcome[1]
    return EvalOutput(metrics, results, image_ids=image_ids, skipped=skipped, seconds=time.perf_counter() - t0,
                      world_size=world)
