"""Batching: collate transformed items into an ImageList, and the samplers that feed it.

What goes in: a dataset whose ``__getitem__`` returns one *transformed* item, in either form

* a tuple ``(image, target, original_size[, size])``: ``image`` uint8 (3,H,W) tensor (or H,W,3
  numpy), ``target`` a dict with ``boxes`` float32 (K,4), ``labels`` int64 (K,), optional
  ``polygons`` and ``image_id``, ``original_size`` the (h, w) read from disk, ``size`` the (h, w)
  the model's preprocessing resizes the image to (None or absent: the model's test size);
* a dict with ``image`` plus the target keys, ``original_size`` (or ``orig_size``) and ``size``;
* a bad-image marker ``{"image": None, "image_id": ..., "bad_image": message}`` (dropped).

What comes out: ``(ImageList, targets)``: the images at their decoded resolution with their sizes
(:class:`gluon_rcnn.structures.image_list.ImageList`; the model resizes, normalises and pads them
with :class:`gluon_rcnn.preprocess.Preprocessor`), ``targets`` a list of dicts of tensors only
(``boxes``, ``labels``, and ``polygons`` as float32 (K,E,4) edges when the item has them); each
item's ``image_id`` goes to ``ImageList.image_ids``, dropped bad images to ``ImageList.skipped``.

Training order (:class:`TrainingSampler`) is a pure function of (seed, epoch, position), so a run
can stop anywhere and resume to see exactly the same batches, and every rank of a distributed
run walks the same number of batches per epoch (so one ``{epoch, offset}`` describes them all).
Each sample also carries its own seed; the dataset wrapper seeds ``random``, ``numpy`` and
``torch`` with it before the random augmentation, which makes augmentation independent of the
number of loader workers and of where a run was resumed.
"""
from __future__ import annotations

import logging
import multiprocessing
import multiprocessing.context as _mp_context
import os
import random
import signal
import sys
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..structures.image_list import ImageList
from .transforms import is_bad_image, polygons_to_edges

__all__ = ["collate", "TransformedDataset", "SeededDataset", "TrainingSampler", "InferenceSampler", "TrainLoader",
           "build_train_loader", "build_test_loader", "shard_indices", "aspect_groups"]


# ---------------------------------------------------------------------------------------------
# collate
# ---------------------------------------------------------------------------------------------
def _split_item(item):
    """(image uint8 (3,H,W), target dict, original (H, W), size (h, w) or None) of a transformed item."""
    size = None
    if isinstance(item, dict):
        target = {k: v for k, v in item.items() if k not in ("image", "original_size", "orig_size", "size")}
        orig = item.get("original_size", item.get("orig_size"))
        image = item["image"]
        size = item.get("size")
    else:
        if len(item) == 4:
            image, target, orig, size = item
        else:
            image, target, orig = item
        target = dict(target)
    if isinstance(image, np.ndarray):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"a numpy image must be HxWx3, got shape {image.shape}")
        image = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))
    if image.dtype != torch.uint8 or image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"collate wants uint8 (3,H,W) images, got {image.dtype} {tuple(image.shape)}")
    if orig is None:
        orig = tuple(image.shape[1:])
    if size is not None:
        size = (int(size[0]), int(size[1]))
    return image, target, (int(orig[0]), int(orig[1])), size


def _clean_target(target: dict) -> dict:
    out = {}
    boxes = target.get("boxes")
    out["boxes"] = torch.as_tensor(np.asarray(boxes if boxes is not None else np.zeros((0, 4)), dtype=np.float32)
                                   ).reshape(-1, 4)
    labels = target.get("labels")
    out["labels"] = torch.as_tensor(np.asarray(labels if labels is not None else np.zeros((0,)), dtype=np.int64)
                                    ).reshape(-1)
    if out["labels"].shape[0] != out["boxes"].shape[0]:
        raise ValueError(f"target has {out['boxes'].shape[0]} boxes but {out['labels'].shape[0]} labels")
    polys = target.get("polygons")
    if polys is not None:
        if isinstance(polys, torch.Tensor):
            out["polygons"] = polys.float()
        elif isinstance(polys, np.ndarray) and polys.ndim == 3 and polys.shape[-1] == 4:
            out["polygons"] = torch.from_numpy(polys.astype(np.float32))
        else:
            out["polygons"] = torch.from_numpy(polygons_to_edges(polys))
        if out["polygons"].shape[0] != out["boxes"].shape[0]:
            raise ValueError(f"target has {out['boxes'].shape[0]} boxes but {out['polygons'].shape[0]} polygon sets")
    for k, v in target.items():  # other tensors pass through; image_id goes to ImageList.image_ids
        if k not in out and torch.is_tensor(v):
            out[k] = v
    return out


def collate(items: Sequence[Any]) -> tuple[ImageList, list[dict]]:
    """A list of transformed items → ``(ImageList, targets)``.

    Images stay at their decoded resolution (uint8, 4x less to copy than float); each carries the
    size the model's preprocessing resizes it to. Items that are bad-image markers
    (``{"image": None, "bad_image": message}``, from a dataset built to skip undecodable files)
    are dropped and their messages listed in ``ImageList.skipped``. The model pads (``Preprocessor``).
    """
    if not items:
        raise ValueError("collate got an empty batch")
    images, targets, origs, ids, sizes, skipped = [], [], [], [], [], []
    for it in items:
        if is_bad_image(it):
            skipped.append(str(it["bad_image"]))
            continue
        img, tgt, orig, size = _split_item(it)
        images.append(img)
        ids.append(tgt.get("image_id"))
        targets.append(_clean_target(tgt))
        origs.append(orig)
        sizes.append(size)
    ids = [int(i) if isinstance(i, (int, np.integer)) or (torch.is_tensor(i) and i.numel() == 1) else i for i in ids]
    return ImageList(images, sizes, origs, image_ids=ids, skipped=skipped), targets


class TransformedDataset(Dataset):
    """``transform(dataset[i])`` with the item's ``image_id`` copied into the target.

    ``dataset`` yields raw item dicts (``data.coco.COCODetection``); ``transform`` is a
    ``data.transforms.TrainTransform``/``TestTransform`` returning ``(image, target, original_size, size)``.
    The raw dataset stays reachable as ``.dataset`` (for ``coco``, ``label_to_cat_id``, aspect ratios).
    """

    def __init__(self, dataset, transform):
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, idx):
        item = self.dataset[idx]
        out = self.transform(item)
        if is_bad_image(out):
            return out
        image, target, original, *size = out
        target = dict(target)
        if isinstance(item, dict) and "image_id" in item:
            target.setdefault("image_id", item["image_id"])
        return (image, target, original, *size)

    def __getattr__(self, name):  # coco, label_to_cat_id, classes, ... of the raw dataset
        if name.startswith("_") or name in ("dataset", "transform"):
            raise AttributeError(name)
        return getattr(self.dataset, name)


# ---------------------------------------------------------------------------------------------
# aspect ratio groups
# ---------------------------------------------------------------------------------------------
def aspect_groups(dataset) -> np.ndarray:
    """0 for images with w >= h, 1 for w < h, one per dataset index, without decoding images.

    Asks, in order: ``dataset.aspect_groups``, ``dataset.aspect_ratios`` (w/h; an array or a method
    returning one, as ``COCODetection.aspect_ratios()``), ``dataset.image_sizes`` ((h, w) each),
    ``dataset.image_info(i)`` / ``get_img_info(i)`` (dicts with height/width); a wrapper exposing
    ``.dataset`` is looked through. Otherwise every item is loaded once.
    """
    def value(obj, name):
        v = getattr(obj, name, None)
        return v() if callable(v) else v

    if isinstance(dataset, torch.utils.data.ConcatDataset):
        return np.concatenate([aspect_groups(d) for d in dataset.datasets]).astype(np.int64)
    ds = dataset
    for _ in range(4):
        if len(ds) != len(dataset):
            break
        v = value(ds, "aspect_groups")
        if v is not None:
            return np.asarray(v, dtype=np.int64)
        v = value(ds, "aspect_ratios")
        if v is not None:
            return (np.asarray(v, dtype=np.float64) < 1.0).astype(np.int64)
        v = value(ds, "image_sizes")
        if v is not None:
            hw = np.asarray(v, dtype=np.float64).reshape(-1, 2)
            return (hw[:, 1] < hw[:, 0]).astype(np.int64)
        for name in ("image_info", "get_img_info"):
            fn = getattr(ds, name, None)
            if callable(fn):
                infos = [fn(i) for i in range(len(ds))]
                return np.asarray([int(x["width"] < x["height"]) for x in infos], dtype=np.int64)
        if hasattr(ds, "dataset"):
            ds = ds.dataset
        else:
            break
    groups = []
    for i in range(len(dataset)):
        img, _, _, _ = _split_item(dataset[i])
        groups.append(int(img.shape[2] < img.shape[1]))
    return np.asarray(groups, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# training sampler
# ---------------------------------------------------------------------------------------------
def _sample_seed(seed: int, epoch: int, pos: int) -> int:
    return int(np.random.SeedSequence([seed & 0xFFFFFFFF, epoch, pos]).generate_state(1)[0])


class TrainingSampler:
    """Infinite, deterministic, resumable, sharded batch sampler with aspect-ratio grouping.

    Epoch ``e`` shuffles all indices with ``torch.Generator().manual_seed(seed + e)`` and walks the
    permutation, filling one bucket per aspect group (w>=h, w<h); a full bucket of
    ``ims_per_batch`` becomes a batch. Leftovers at the end of the epoch are dropped (the next
    epoch's shuffle differs). The global batch list is cut to a multiple of ``world_size`` and
    rank ``r`` takes batches ``r, r+W, r+2W, ...``: every rank has the same number of batches per
    epoch, so the position ``{epoch, offset}`` (batches already taken in that epoch) is shared.

    Iterating yields lists of ``(index, sample_seed)``; the sample seed is a hash of
    (seed, epoch, place in the permutation) for :class:`SeededDataset`.
    """

    def __init__(self, groups: Sequence[int] | int, ims_per_batch: int, rank: int = 0, world_size: int = 1,
                 seed: int = 0, group_by_aspect: bool = True):
        if isinstance(groups, int):
            groups = np.zeros(groups, dtype=np.int64)
        self.groups = np.asarray(groups, dtype=np.int64)
        if not group_by_aspect:
            self.groups = np.zeros_like(self.groups)
        self.size = len(self.groups)
        if self.size == 0:
            raise ValueError("TrainingSampler got an empty dataset")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.ims_per_batch = int(ims_per_batch)
        self.rank, self.world_size, self.seed = int(rank), int(world_size), int(seed)
        self.epoch, self.offset = 0, 0
        self._cache: dict[int, list[list[tuple[int, int]]]] = {}
        if self.batches_per_epoch(0) == 0:
            raise ValueError(f"{self.size} images cannot make even one batch of {self.ims_per_batch} per rank for "
                             f"{self.world_size} ranks (aspect groups: {np.bincount(self.groups, minlength=2).tolist()})")

    def _global_batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        g = torch.Generator().manual_seed(self.seed + epoch)
        perm = torch.randperm(self.size, generator=g).tolist()
        buckets: dict[int, list[tuple[int, int]]] = {}
        out = []
        for pos, idx in enumerate(perm):
            b = buckets.setdefault(int(self.groups[idx]), [])
            b.append((idx, pos))
            if len(b) == self.ims_per_batch:
                out.append(b)
                buckets[int(self.groups[idx])] = []
        return out[: len(out) // self.world_size * self.world_size]

    def epoch_batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        """This rank's batches of one epoch as ``(index, place in the permutation)`` (cached for
        the two most recent epochs)."""
        if epoch not in self._cache:
            self._cache[epoch] = self._global_batches(epoch)[self.rank:: self.world_size]
            for k in [k for k in self._cache if k < epoch - 1]:
                del self._cache[k]
        return self._cache[epoch]

    def batches_per_epoch(self, epoch: int) -> int:
        return len(self.epoch_batches(epoch))

    def advance(self, n: int) -> None:
        """Move the position forward by ``n`` batches (what ``n`` training iterations consume)."""
        for _ in range(int(n)):
            self.offset += 1
            if self.offset >= self.batches_per_epoch(self.epoch):
                self.epoch, self.offset = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "offset": self.offset, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        if "seed" in state and int(state["seed"]) != self.seed:
            raise ValueError(f"sampler state was saved with seed {state['seed']}, this sampler has seed {self.seed}")
        self.epoch, self.offset = int(state["epoch"]), int(state["offset"])

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        # iterate from a snapshot of the position: DataLoader workers prefetch ahead of what the
        # trainer has consumed, so the consumed position is tracked by TrainLoader, not here
        epoch, offset = self.epoch, self.offset
        while True:
            batches = self.epoch_batches(epoch)
            for b in batches[offset:]:
                yield [(idx, _sample_seed(self.seed, epoch, pos)) for idx, pos in b]
            epoch, offset = epoch + 1, 0


class SeededDataset(Dataset):
    """Wraps a map-style dataset: item ``(index, seed)`` seeds python/numpy/torch RNGs, then loads.

    The global RNG states of the process are saved and restored around the call, so in the main
    process (NUM_WORKERS=0) the trainer's RNG stream is not disturbed by augmentation.
    """

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            return self.dataset[key]
        idx, seed = key
        py, npst, th = random.getstate(), np.random.get_state(), torch.get_rng_state()
        try:
            random.seed(seed)
            np.random.seed(seed % (2 ** 32))
            torch.default_generator.manual_seed(seed)  # the CPU generator only, never the CUDA ones
            return self.dataset[idx]
        finally:
            random.setstate(py)
            np.random.set_state(npst)
            torch.set_rng_state(th)


class TrainLoader:
    """An endless iterator of training batches that knows its consumed position.

    ``state_dict()`` is the sampler position after the batches handed out so far (not after those
    the workers prefetched), which is what a checkpoint must hold.
    """

    def __init__(self, loader: DataLoader, sampler: TrainingSampler):
        self.loader, self.sampler = loader, sampler
        self._it = None
        # the consumed position lives in a second sampler that only counts
        self._pos = TrainingSampler(sampler.groups, sampler.ims_per_batch, sampler.rank, sampler.world_size,
                                    sampler.seed)
        self._pos.load_state_dict(sampler.state_dict())

    def __iter__(self):
        return self

    def __next__(self):
        if self._it is None:
            self._it = iter(self.loader)
        batch = next(self._it)
        self._pos.advance(1)
        return batch

    def state_dict(self) -> dict:
        return self._pos.state_dict()

    def __len__(self) -> int:  # batches per epoch for this rank (the stream itself is endless)
        return self.sampler.batches_per_epoch(self._pos.epoch)


def build_train_loader(cfg, dataset, rank: int = 0, world_size: int = 1, start_iter: int = 0,
                       state: dict | None = None, pin_memory: bool | None = None) -> TrainLoader:
    """The training stream for one rank: ``TRAIN.IMS_PER_GPU`` images a batch, ``DATA.NUM_WORKERS``
    worker processes (0 = load in this process), pinned memory when CUDA is available.

    The start position is ``state`` (a :meth:`TrainingSampler.state_dict`) when given, otherwise
    ``start_iter`` batches from the beginning; both give the same batches as an uninterrupted run.
    The order is seeded with ``TRAIN.SEED``.
    """
    sampler = TrainingSampler(aspect_groups(dataset), cfg.TRAIN.IMS_PER_GPU, rank, world_size, seed=cfg.TRAIN.SEED)
    if state is not None:
        sampler.load_state_dict(state)
    elif start_iter:
        sampler.advance(start_iter)
    workers = effective_num_workers(cfg.DATA.NUM_WORKERS)  # at most one per CPU
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    loader = DataLoader(
        SeededDataset(dataset), batch_sampler=sampler, num_workers=workers,
        multiprocessing_context=worker_context(workers),
        collate_fn=collate,
        pin_memory=pin_memory, persistent_workers=workers > 0,
        prefetch_factor=2 if workers > 0 else None,
        # the loader's base seed comes from its own generator, not the global torch RNG, so
        # creating the iterator does not shift the model's random stream (exact resume)
        generator=torch.Generator().manual_seed(cfg.TRAIN.SEED + 1000003 * rank),
        worker_init_fn=_worker_init,
    )
    return TrainLoader(loader, sampler)


logger = logging.getLogger(__name__)
_CAPPED_LOGGED: set = set()


def effective_num_workers(num_workers: int) -> int:
    """``num_workers`` capped at the CPUs this process may run on (``os.sched_getaffinity`` where
    available, else ``os.cpu_count()``): more loader processes than cores only compete with the
    training process (PyTorch warns about it too). Logs once per requested/capped pair."""
    n = max(0, int(num_workers))
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cpus = os.cpu_count() or 1
    if n > cpus:
        if (n, cpus) not in _CAPPED_LOGGED:
            _CAPPED_LOGGED.add((n, cpus))
            logger.info("%d loader workers requested but only %d CPUs are available: using %d", n, cpus, cpus)
        return cpus
    return n


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _die_with_owner() -> None:
    """Run first in every loader worker (a forkserver child): make it die when the process that owns
    the loader dies, even by ``kill -9``, which runs no cleanup. See :func:`worker_context`."""
    # the forkserver: it cannot have exited yet, this process still holds its alive pipe
    server = os.getppid()
    # The forkserver exits on EOF of that pipe, but hands its write end to every child it forks:
    # while a worker lives the server cannot see the owner die, and while the server lives the
    # worker (torch's watchdog watches its parent) cannot either. Drop this copy.
    from multiprocessing import forkserver
    fs = forkserver._forkserver
    fd = getattr(fs, "_forkserver_alive_fd", None)
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass
        fs._forkserver_alive_fd = None  # a process started from here would start its own server
    if sys.platform.startswith("linux"):
        import ctypes
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: torch's watchdog ends the worker after the server
            pass
    # The server or the owner may have died before the prctl (no signal will come for that). The
    # owner is watched through the pipe multiprocessing keeps for parent_process(): EOF = gone.
    owner = multiprocessing.parent_process()
    if os.getppid() != server or (owner is not None and not owner.is_alive()):
        os._exit(0)


if hasattr(_mp_context, "ForkServerContext"):  # POSIX
    class _ForkServerWorkerProcess(_mp_context.ForkServerProcess):
        """A forkserver process that dies with its owner (see :func:`worker_context`)."""

        def run(self):
            _die_with_owner()
            super().run()

    class _ForkServerWorkerContext(_mp_context.ForkServerContext):
        Process = _ForkServerWorkerProcess

    _WORKER_CONTEXT = _ForkServerWorkerContext()
else:  # Windows: no forkserver, no prctl; spawned workers run torch's watchdog on their parent
    _WORKER_CONTEXT = None


def worker_context(num_workers: int):
    """The multiprocessing context for loader workers; ``None`` (no workers) keeps the DataLoader's
    default. Every DataLoader with workers in this package takes it (train and test).

    Start method: 'forkserver', workers forked from a clean, single-threaded server process that
    has imported torch once (:func:`_preload_forkserver`). Forking the training process itself is
    unsafe once it has run threads (OpenMP teams, the CPU RoIAlign threads): a forked child can
    deadlock on a lock some thread held. 'spawn' is safe too, but every spawned worker imports
    torch itself: on a 2-core machine (busy), creating a 2-worker COCO loader took 2.4-5.9 s to
    the first batch with 'spawn', every time, against 1.4-2.7 s for the first loader (the server
    starts) and 0.1-0.5 s for every later one (periodic evaluation) with the forkserver.

    No orphans: after ``kill -9`` of the process that owns the loader, nothing of it survives. Out
    of the box the forkserver and its workers keep each other alive (every forkserver child holds
    the write end of the pipe whose EOF tells the server its client is gone, and torch's worker
    watchdog only watches the worker's parent, the server). So each worker, first thing,

    * closes its copy of that pipe: the server now exits as soon as the owner dies;
    * on Linux, asks for ``SIGKILL`` when its parent (the server) exits,
      ``prctl(PR_SET_PDEATHSIG)``, then checks that the parent is still the one it had and that the
      owner is alive (both may have died before the prctl). The parent-death signal is tied to the
      *thread* that forked the worker; that is the server's only thread, so it does not matter
      which thread of the owner creates the loader iterator (with 'spawn' it would: workers started
      from a short-lived thread would be killed when that thread ends; our loaders create their
      iterators in the main thread anyway);
    * elsewhere (macOS) torch's own watchdog ends a worker within a few seconds of its parent,
      the server, exiting.

    The resource tracker exits by itself when the owner, the server and the workers, which all
    hold its pipe, are gone. On Windows (spawn only) torch's watchdog watches the owner directly.
    """
    if num_workers <= 0:
        return None
    if _WORKER_CONTEXT is not None and "forkserver" in multiprocessing.get_all_start_methods():
        _preload_forkserver()
        return _WORKER_CONTEXT
    return multiprocessing.get_context("spawn")


def _preload_forkserver() -> None:
    """Have the forkserver, when it starts, import this module (torch, numpy, cv2) once, so that the
    workers it forks need not: each worker otherwise imports torch itself (the default preload,
    ``__main__``, is not passed to the server by Python 3.11's multiprocessing). The server only
    imports, it runs no tensor code: its only other threads are OpenBLAS's idle pools (numpy's,
    cv2's), which stop around a fork (pthread_atfork). Only while the preload is multiprocessing's
    default and the server is not running: a caller's choice stands."""
    from multiprocessing import forkserver
    fs = getattr(forkserver, "_forkserver", None)
    if (fs is not None and getattr(fs, "_forkserver_pid", 0) is None
            and getattr(fs, "_preload_modules", None) == ["__main__"]):
        forkserver.set_forkserver_preload(["__main__", __name__])


def _worker_init(worker_id: int) -> None:
    # one thread per worker: the workers run beside the training process on the same cores
    torch.set_num_threads(1)
    try:
        import cv2
        cv2.setNumThreads(1)
    except ImportError:  # pragma: no cover - cv2 is a dependency of data/
        pass


# ---------------------------------------------------------------------------------------------
# test loader
# ---------------------------------------------------------------------------------------------
def shard_indices(n: int, rank: int, world_size: int) -> range:
    """Contiguous shard of ``range(n)`` for ``rank``: shards are disjoint, cover every index once,
    and differ in length by at most one (no padding duplicates)."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, {world_size})")
    return range(n * rank // world_size, n * (rank + 1) // world_size)


class InferenceSampler(torch.utils.data.Sampler):
    """This rank's contiguous shard, in order (see :func:`shard_indices`)."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1):
        self.indices = shard_indices(size, rank, world_size)

    def __iter__(self):
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def build_test_loader(dataset, rank: int = 0, world_size: int = 1, batch_size: int = 1, num_workers: int = 0,
                      pin_memory: bool | None = None) -> DataLoader:
    """Batches of this rank's shard of ``dataset``; every image is in exactly one rank's shard."""
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    num_workers = effective_num_workers(num_workers)  # at most one per CPU
    return DataLoader(dataset, batch_size=batch_size, sampler=InferenceSampler(len(dataset), rank, world_size),
                      num_workers=num_workers, pin_memory=pin_memory, drop_last=False,
                      multiprocessing_context=worker_context(num_workers),
                      collate_fn=collate,
                      worker_init_fn=_worker_init if num_workers > 0 else None)
