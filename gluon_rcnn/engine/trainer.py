"""The training loop: SGD with warm-up and step decay, AMP, checkpoints that resume exactly.

``Trainer(cfg, model, train_dataset, output_dir, resume=False, val_dataset=None).train()``

* Optimiser: SGD (PyTorch's fused kernel with ``fused_optimizer=True``, ``--fast-step``), momentum ``TRAIN.MOMENTUM``, weight decay ``TRAIN.WEIGHT_DECAY`` on conv/linear
  weights only: normalisation parameters (BN/GN affine) and biases get no decay (detectron2's
  and torchvision's recipe; a decayed BN scale only fights the optimiser).
* Learning rate (:class:`WarmupStepLR`): ``BASE_LR`` and ``WARMUP_INIT_LR`` are given for a total
  batch of 8 images and scaled linearly to the real total batch ``IMS_PER_GPU x world size``;
  warm-up (``WARMUP`` iterations at batch 8, rescaled x8/total; with
  ``RULES.WARMUP_SCALES_WITH_BATCH=False`` ``WARMUP`` iterations at any batch, as tensorpack) ramps
  linearly from the initial to the base LR; the LR is multiplied by 0.1 at each decay step of ``TRAIN.LR_SCHEDULE`` and
  training stops at its last step (both rescaled from batch 8 to the real batch by
  ``config.schedule_steps``; ``max_iter`` cuts the schedule short, as ``--max-iter`` does).
* Gradient accumulation (``RULES.ACCUMULATE_TO_8``, tensorpack's ``AccumGradOptimizer(opt, 8 //
  NUM_GPUS)``): with a total batch n < 8 the gradients of k = 8 // n consecutive iterations are
  accumulated and applied in one optimiser step, at the iterations ``it`` with ``(it + 1) % k == 0``.
  An *iteration* stays one batch of n images (tensorpack's step, one ``minimize`` run): the LR
  schedule and warm-up (``schedule_steps(..., n)``, ``WARMUP``), ``CHECKPOINT_PERIOD``,
  ``EVAL_PERIOD``, ``LOG_PERIOD`` and ``--max-iter`` all count iterations. tensorpack sums the k
  gradients (each a sum over GPUs) and applies them with ``lr / 8``; here each iteration's loss is
  scaled by ``1 / k`` (the accumulated gradient is the mean over the k*n images) and the step uses
  the schedule's LR at the step's (last) iteration for a batch of k*n images (:class:`WarmupStepLR`
  ``accumulate``): the same update, weight decay included. DDP reduces only on the last iteration
  of a group (``no_sync`` before). A checkpoint inside a group also stores every rank's
  accumulated gradients, so a resume continues the group exactly. Trailing iterations that do not
  complete a group (``max_iter % k``) never reach the weights, as in tensorpack.
* Mixed precision: ``TRAIN.AMP`` = ``bf16`` (GPU or CPU autocast), ``fp16`` (with a GradScaler)
  or ``off``; the losses are summed in fp32.
* A non-finite total loss on any rank stops every rank with :class:`NonFiniteLossError` naming
  the iteration and the loss terms; the last checkpoint written stays the last good one.
* Checkpoints (``model_XXXXXXX.pth``, written by rank 0 atomically: ``utils.io.save_torch``)
  hold the unwrapped model, optimiser, LR schedule, GradScaler, iteration, every rank's RNG
  states (python, numpy, torch, cuda), the data position and the config; everything is plain
  tensors/containers/numbers/strings so ``utils.io.load_checkpoint`` (``weights_only=True``) reads them.
  ``last_checkpoint`` names the newest; ``model_final.pth`` holds only the weights and config.
* Logs: a tqdm bar on rank 0 (ETA, img/s, losses), ``metrics.jsonl`` (one JSON object per logged
  iteration and per evaluation) and TensorBoard scalars when tensorboard is installed.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import time
import weakref
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from ..config import schedule_steps
from ..profiles import resolve_rules
from ..data.loader import TransformedDataset, build_train_loader
from ..utils.io import atomic_write, load_checkpoint, save_torch
from . import dist
from .runlock import OutputLock, OutputLockedError

__all__ = ["Trainer", "WarmupStepLR", "accumulation_steps", "build_optimizer", "NonFiniteLossError", "get_rng_state", "set_rng_state",
           "seed_all", "find_last_checkpoint"]

logger = logging.getLogger(__name__)


class NonFiniteLossError(FloatingPointError):
    """The loss became NaN or infinite; the message names the iteration and the loss terms."""


# ---------------------------------------------------------------------------------------------
# learning rate
# ---------------------------------------------------------------------------------------------
def accumulation_steps(total_batch: int, accumulate_to_8: bool) -> int:
    """Iterations whose gradients make one optimiser step: ``8 // total_batch`` when
    ``accumulate_to_8`` and the total batch is below 8 (tensorpack's ``AccumGradOptimizer(opt,
    8 // NUM_GPUS)``), else 1."""
    total_batch = int(total_batch)
    return 8 // total_batch if accumulate_to_8 and 0 < total_batch < 8 else 1


class WarmupStepLR:
    """Linear warm-up then step decay, as a pure function of the iteration.

    Args:
        base_lr, warmup_init_lr: for a total batch of 8 images (as in the config).
        warmup_iters: warm-up length counted at a total batch of 8 (``warmup_scales_with_batch``),
            else in iterations at the real batch.
        steps: decay steps and the last iteration *at the real total batch* (``config.schedule_steps``).
        total_batch: images per iteration over all processes.
        warmup_scales_with_batch: ``True``: the warm-up lasts ``warmup_iters * 8 / total_batch``
            iterations (the same number of images at every batch) and starts at
            ``warmup_init_lr * total_batch / 8``. ``False``, tensorpack's ``train.py``: it lasts
            ``warmup_iters`` iterations whatever the batch ("not affected by #GPUs") and starts at
            ``warmup_init_lr * min(1, total_batch / 8)`` (tensorpack's ``WARMUP_INIT_LR *
            min(8/NUM_GPUS, 1)``, applied as ``lr/8`` to gradients summed over the GPUs).
        accumulate: iterations per optimiser step (:func:`accumulation_steps`). The LRs are for the
            mean gradient of the ``total_batch * accumulate`` images of one step: both are scaled by
            ``accumulate`` more (tensorpack's ``lr / 8`` on the sum of ``8 // NUM_GPUS`` iterations'
            gradients); ``steps`` and the warm-up still count iterations of ``total_batch`` images.

    ``lr_at(i)`` is the LR of the update that takes the model from ``i`` to ``i+1`` completed
    iterations (``i`` counted from 0); with ``accumulate = k`` the step made at iteration ``i``
    (``(i + 1) % k == 0``) uses ``lr_at(i)``, as tensorpack's accumulated update runs with the LR
    of the step that applies it.
    """

    def __init__(self, base_lr: float, warmup_init_lr: float, warmup_iters: int, steps, total_batch: int,
                 gamma: float = 0.1, warmup_scales_with_batch: bool = True, accumulate: int = 1):
        self.accumulate = int(accumulate)
        if self.accumulate < 1:
            raise ValueError(f"accumulate must be >= 1, got {accumulate}")
        scale = total_batch / 8.0
        self.base_lr = float(base_lr) * scale * self.accumulate
        if warmup_scales_with_batch:
            self.warmup_init_lr = float(warmup_init_lr) * scale * self.accumulate
            self.warmup_iters = int(round(warmup_iters * 8.0 / total_batch))
        else:
            self.warmup_init_lr = float(warmup_init_lr) * min(1.0, scale) * self.accumulate
            self.warmup_iters = int(warmup_iters)
        self.decay_steps = [int(s) for s in steps[:-1]]
        self.max_iter = int(steps[-1])
        self.gamma = float(gamma)

    @classmethod
    def from_config(cls, cfg, world_size: int = 1, max_iter: int | None = None) -> "WarmupStepLR":
        """The schedule of ``cfg.TRAIN`` for ``world_size`` processes; ``max_iter`` stops it early
        (decay steps at or past it are dropped)."""
        total = cfg.TRAIN.IMS_PER_GPU * max(1, int(world_size))
        rules = resolve_rules(cfg)
        steps = schedule_steps(cfg.TRAIN.LR_SCHEDULE, total)
        if max_iter is not None:
            if int(max_iter) < 1:
                raise ValueError(f"max_iter must be >= 1, got {max_iter}")
            steps = [s for s in steps[:-1] if s < int(max_iter)] + [int(max_iter)]
        return cls(cfg.TRAIN.BASE_LR, cfg.TRAIN.WARMUP_INIT_LR, cfg.TRAIN.WARMUP, steps, total,
                   warmup_scales_with_batch=rules.warmup_scales_with_batch,
                   accumulate=accumulation_steps(total, rules.accumulate_to_8))

    def lr_at(self, it: int) -> float:
        lr = self.base_lr * self.gamma ** sum(1 for s in self.decay_steps if it >= s)
        if it < self.warmup_iters:
            alpha = it / self.warmup_iters
            lr = self.warmup_init_lr + (lr - self.warmup_init_lr) * alpha
        return lr

    def state_dict(self) -> dict:
        return {"base_lr": self.base_lr, "warmup_init_lr": self.warmup_init_lr, "warmup_iters": self.warmup_iters,
                "decay_steps": list(self.decay_steps), "max_iter": self.max_iter, "gamma": self.gamma,
                "accumulate": self.accumulate}

    def load_state_dict(self, state: dict) -> dict:
        """The schedule is a function of the config of the resumed run, so nothing is loaded; a
        changed schedule (e.g. a run extended with --max-iter) is allowed. Returns the differences
        ``{key: (saved, now)}``."""
        return {k: (state.get(k), v) for k, v in self.state_dict().items() if state.get(k) != v}


#: devices whose parameters can take PyTorch's fused SGD kernel (one pass per parameter for weight
#: decay, momentum and update)
FUSED_SGD_DEVICES = ("cpu", "cuda")


def build_optimizer(model: nn.Module, cfg, fused: bool = False) -> torch.optim.SGD:
    """SGD with momentum; weight decay on weights of dim > 1 only (no decay on norm params, biases).

    ``fused=True`` (``Trainer(fused_optimizer=True)``, the training scripts' ``--fast-step``): PyTorch's
    fused kernel when every trainable parameter is a float tensor on a device of
    :data:`FUSED_SGD_DEVICES` (the step over a ResNet-50 Mask R-CNN's 44 M parameters took 148 ms
    instead of the loop's 1336 ms on the loaded 2-core CPU, docs/benchmarks.md). Its update equals
    the loop's up to float rounding (it contracts multiply-adds: 1.5e-8 apart after 20 steps with a
    changing learning rate), not bit for bit, so the default stays the loop."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim > 1 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.TRAIN.WEIGHT_DECAY}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    params = decay + no_decay
    fused = fused and bool(params) and all(p.device.type in FUSED_SGD_DEVICES and p.is_floating_point() for p in params)
    return torch.optim.SGD(groups, lr=cfg.TRAIN.BASE_LR, momentum=cfg.TRAIN.MOMENTUM, fused=fused or None)


# ---------------------------------------------------------------------------------------------
# RNG and checkpoint files
# ---------------------------------------------------------------------------------------------
def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def get_rng_state() -> dict:
    """This process's RNG states as weights_only-loadable values (numpy state as a tensor)."""
    version, state, gauss = random.getstate()
    key, keys, pos, has_gauss, cached = np.random.get_state()
    out = {"python": {"version": int(version), "state": list(state), "gauss": gauss},
           "numpy": {"key": str(key), "state": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                     "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
           "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(st: dict) -> None:
    p = st["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))
    n = st["numpy"]
    np.random.set_state((n["key"], n["state"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available() and len(st["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(st["cuda"])


def find_last_checkpoint(output_dir: str) -> str | None:
    """The checkpoint named by ``output_dir/last_checkpoint``, or None."""
    marker = os.path.join(output_dir, "last_checkpoint")
    if not os.path.isfile(marker):
        return None
    with open(marker) as f:
        name = f.read().strip()
    path = os.path.join(output_dir, name)
    return path if name and os.path.isfile(path) else None


def _to_device(t: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if torch.is_tensor(v) else v) for k, v in t.items()}


# ---------------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------------
class Trainer:
    """Trains ``model`` on ``train_dataset`` in the current process group.

    Args:
        cfg: the finalised config (``TRAIN.*``, ``DATA.NUM_WORKERS``, ``PREPROC`` for the augmentation).
        model: a detector whose train-mode ``model(images, targets)`` returns a dict of scalar losses.
        train_dataset: yields items ready for ``data.loader.collate``: a ``data.loader.TransformedDataset``
            (raw COCO items + ``data.transforms.TrainTransform``), or a raw dataset, which is
            wrapped in ``TrainTransform(cfg)`` here.
        output_dir: checkpoints, ``config.json``, ``metrics.jsonl``, TensorBoard events.
        resume: continue from ``output_dir/last_checkpoint`` when it exists.
        val_dataset: evaluated every ``TRAIN.EVAL_PERIOD`` iterations and at the end (test-transformed,
            with ``coco``/``label_to_cat_id``, see ``engine.inference.evaluate_distributed``).
        keep_checkpoints: periodic checkpoints kept on disk (newest first); 0 keeps all.
        deterministic: ``torch.use_deterministic_algorithms`` during ``train()`` (default: on for CPU,
            off for CUDA, where it needs ``CUBLAS_WORKSPACE_CONFIG`` and costs speed).
        force_unlock: take over the lock of ``output_dir`` even when it was written on another host.

    One run per output folder: rank 0 takes ``output_dir/train.lock`` (:mod:`.runlock`) before any
    rank touches the folder; when another live run holds it, every rank raises
    :class:`~gluon_rcnn.engine.runlock.OutputLockedError` naming that run's pid and host. A lock
    left by a killed run on this host is taken over with a warning. The lock is removed when
    ``train()`` returns or raises (or by :meth:`close`).
    """

    def __init__(self, cfg, model: nn.Module, train_dataset, output_dir: str, resume: bool = False,
                 val_dataset=None, *, keep_checkpoints: int = 3, deterministic: bool | None = None,
                 device: torch.device | None = None, max_iter: int | None = None, force_unlock: bool = False,
                 fused_optimizer: bool = False):
        self.cfg = cfg
        self.output_dir = output_dir
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self._unlock = self._lock_output(force_unlock)
        self.device = device or dist.get_device()
        self.val_dataset = val_dataset
        self.keep_checkpoints = int(keep_checkpoints)
        self.total_batch = cfg.TRAIN.IMS_PER_GPU * self.world_size
        self.schedule = WarmupStepLR.from_config(cfg, self.world_size, max_iter)
        self.max_iter = self.schedule.max_iter
        self.accumulate = self.schedule.accumulate  # iterations per optimiser step (RULES.ACCUMULATE_TO_8)
        self.deterministic = self.device.type == "cpu" if deterministic is None else bool(deterministic)
        if cfg.TRAIN.AMP == "fp16" and self.device.type == "cpu":
            logger.warning("TRAIN.AMP='fp16' on the CPU is slow and of little use; 'bf16' is the CPU choice")
        self.amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(cfg.TRAIN.AMP)

        self.model = dist.setup_model_for_distributed(model, self.device)
        self.optimizer = build_optimizer(dist.unwrap_model(self.model), cfg, fused=fused_optimizer)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=cfg.TRAIN.AMP == "fp16")

        self.start_iter = 0
        sampler_state = None
        ckpt = None
        if resume:  # rank 0 decides, so every rank resumes from the same file (or none does)
            ckpt = dist.broadcast_object(find_last_checkpoint(output_dir) if self.rank == 0 else None)
            if ckpt is not None and not os.path.isfile(ckpt):
                raise RuntimeError(f"rank {self.rank} cannot read the checkpoint {ckpt} that rank 0 resumes from: "
                                   "--output must be on a file system every node shares")
        if resume and ckpt is None:
            logger.warning("--resume: no checkpoint in %s, starting from scratch", output_dir)
        elif not resume and self.rank == 0 and find_last_checkpoint(output_dir):
            logger.warning("%s holds checkpoints of an earlier run: starting from scratch and overwriting them "
                           "(--resume continues instead)", output_dir)
        seed_all(cfg.TRAIN.SEED + self.rank)
        if ckpt is not None:
            sampler_state = self._load(ckpt)
        if not isinstance(train_dataset, TransformedDataset):
            from ..data.transforms import TrainTransform
            train_dataset = TransformedDataset(train_dataset, TrainTransform(cfg))
        self.loader = build_train_loader(cfg, train_dataset, self.rank, self.world_size, start_iter=self.start_iter,
                                         state=sampler_state)
        self.resumed_from = ckpt
        self.skipped_images = 0  # bad images dropped by the loader (DATA.SKIP_BAD_IMAGES)
        self._tb = None

    def _lock_output(self, force: bool):
        """Rank 0 takes the output folder's lock; every rank raises if it could not. Returns the
        release callable (a ``weakref.finalize``: also run when the trainer is collected or at exit)."""
        lock, refused = None, None
        if self.rank == 0:
            try:
                lock = OutputLock(self.output_dir, force=force).acquire()
            except OutputLockedError as e:
                refused = str(e)
            except OSError as e:  # not writable, a file in the way: every rank stops, not rank 0 alone
                refused = f"cannot lock the output folder {self.output_dir}: {e}"
        refused = dist.broadcast_object(refused)
        if refused is not None:
            raise OutputLockedError(refused)
        return weakref.finalize(self, lock.release) if lock is not None else (lambda: None)

    def close(self) -> None:
        """Remove the output folder's lock (``train()`` does this when it ends)."""
        self._unlock()

    # -- checkpoints ---------------------------------------------------------------------------
    def _load(self, path: str) -> dict:
        ck = load_checkpoint(path)
        net = dist.unwrap_model(self.model)
        net.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        diff = self.schedule.load_state_dict(ck.get("scheduler", {}))
        if diff and self.rank == 0:
            logger.warning("the LR schedule differs from the checkpoint's (checkpoint, now): %s", diff)
        if ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        self.start_iter = int(ck["iteration"])
        self._load_accumulated_grads(ck.get("accum_grads"))
        rng = ck.get("rng", [])
        if len(rng) == self.world_size:
            set_rng_state(rng[self.rank])
        else:
            logger.warning("checkpoint holds RNG states of %d processes, %d are running: re-seeding (the run "
                           "continues correctly but not bit-identically)", len(rng), self.world_size)
            seed_all(self.cfg.TRAIN.SEED + self.rank + 7919 * self.start_iter)
        old_cfg = ck.get("config", {})
        changed = sorted(k for k, v in _flat(old_cfg).items() if _flat(self.cfg.to_dict()).get(k, v) != v)
        if changed and self.rank == 0:
            logger.warning("the config differs from the checkpoint's in %s (the current values are used)", changed)
        saved = ck.get("sampler")
        same_layout = (int(ck.get("world_size", self.world_size)) == self.world_size and
                       old_cfg.get("TRAIN", {}).get("IMS_PER_GPU", self.cfg.TRAIN.IMS_PER_GPU) == self.cfg.TRAIN.IMS_PER_GPU)
        if saved is not None and not same_layout:
            saved = None  # the batch layout changed: restart the order from the iteration count
        if self.rank == 0:
            logger.info("resumed from %s at iteration %d", path, self.start_iter)
        return saved

    def _load_accumulated_grads(self, saved) -> None:
        """Put back the gradients a checkpoint taken inside an accumulation group holds (this rank's)."""
        phase = self.start_iter % self.accumulate
        if not phase:
            if saved:
                logger.warning("the checkpoint holds the gradients of an unfinished accumulation group, but "
                               "iteration %d starts a group with %d iteration(s) per step now: dropped",
                               self.start_iter, self.accumulate)
            return
        if not saved or len(saved) != self.world_size:
            logger.warning("resuming at iteration %d, inside a group of %d accumulated iterations, without the "
                           "group's gradients (%s): its step will hold fewer iterations' gradients", self.start_iter,
                           self.accumulate, "none saved" if not saved else f"saved by {len(saved)} processes")
            return
        mine = saved[self.rank]
        for name, p in dist.unwrap_model(self.model).named_parameters():
            if name in mine:
                p.grad = mine[name].to(device=p.device, dtype=p.dtype)

    def _accumulated_grads(self, iteration: int) -> list | None:
        """Every rank's gradients accumulated so far in an unfinished group (None at a step boundary)."""
        if iteration % self.accumulate == 0:
            return None
        mine = {name: p.grad.detach().to("cpu", copy=True) for name, p in dist.unwrap_model(self.model).named_parameters()
                if p.grad is not None}
        return dist.all_gather_object(mine) if self.world_size > 1 else [mine]

    def _checkpoint_payload(self, iteration: int) -> dict:
        rngs = dist.all_gather_object(get_rng_state())
        accum = self._accumulated_grads(iteration)  # collective too
        extra = {} if accum is None else {"accum_grads": accum}
        return {
            "model": dist.unwrap_model(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else {},
            "iteration": int(iteration),
            "rng": rngs,
            "sampler": self.loader.state_dict(),
            "world_size": self.world_size,
            "config": self.cfg.to_dict(),
            **extra,
        }

    def save_checkpoint(self, iteration: int) -> str | None:
        """Write ``model_{iteration:07d}.pth`` (rank 0) and point ``last_checkpoint`` at it."""
        payload = self._checkpoint_payload(iteration)  # collective: every rank must call
        if self.rank != 0:
            return None
        name = f"model_{iteration:07d}.pth"
        path = os.path.join(self.output_dir, name)
        save_torch(payload, path)
        with atomic_write(os.path.join(self.output_dir, "last_checkpoint")) as f:
            f.write(name)
        if self.keep_checkpoints > 0:
            old = sorted(f for f in os.listdir(self.output_dir)
                         if f.startswith("model_") and f.endswith(".pth") and f[6:-4].isdigit())
            for f in old[: -self.keep_checkpoints]:
                os.remove(os.path.join(self.output_dir, f))
        return path

    def save_final(self) -> str | None:
        if self.rank != 0:
            return None
        path = os.path.join(self.output_dir, "model_final.pth")
        save_torch({"model": dist.unwrap_model(self.model).state_dict(), "config": self.cfg.to_dict()}, path)
        return path

    # -- logging -------------------------------------------------------------------------------
    def _open_logs(self) -> None:
        if self.rank != 0:
            return
        os.makedirs(self.output_dir, exist_ok=True)
        self.cfg.save(os.path.join(self.output_dir, "config.json"))
        self._metrics_path = os.path.join(self.output_dir, "metrics.jsonl")
        if os.path.exists(self._metrics_path):
            # records past the resume point were written by the interrupted run: drop them so the
            # file reads as one clean run
            keep = []
            with open(self._metrics_path) as f:
                for line in f:
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut by the kill
                    if rec.get("iteration", 0) <= self.start_iter:
                        keep.append(json.dumps(rec))
            with atomic_write(self._metrics_path) as f:
                f.write("".join(k + "\n" for k in keep))
        self._tb = None
        try:  # tensorboard is an optional extra: without it training goes on, logging to metrics.jsonl
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            logger.info("TensorBoard logging off: the optional tensorboard package is not installed (%s); metrics "
                        "go to %s only (pip install 'gluon_rcnn[tensorboard]' for TensorBoard)", e, self._metrics_path)
            return
        try:
            self._tb = SummaryWriter(self.output_dir, purge_step=self.start_iter + 1 if self.start_iter else None)
        except Exception as e:  # an unwritable or odd output folder must not stop training
            logger.warning("TensorBoard logging off: cannot write events to %s (%s); metrics go to %s only",
                           self.output_dir, e, self._metrics_path)

    def _log(self, record: dict) -> None:
        if self.rank != 0:
            return
        # strict JSON: a non-finite number (an overflowed fp16 grad norm) is written as null
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
        with open(self._metrics_path, "a") as f:
            f.write(json.dumps(clean) + "\n")
        if self._tb is not None:
            step = record["iteration"]
            for k, v in record.items():
                if k != "iteration" and isinstance(v, (int, float)) and math.isfinite(v):
                    self._tb.add_scalar(k, v, step)
                elif isinstance(v, dict):
                    for kk, vv in v.items():
                        if isinstance(vv, (int, float)) and math.isfinite(vv):
                            self._tb.add_scalar(f"{k}/{kk}", vv, step)

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate(self, iteration: int) -> dict:
        from .inference import evaluate_distributed

        rng = get_rng_state()  # evaluation must not shift the training random stream
        try:
            out_file = os.path.join(self.output_dir, f"eval_{iteration:07d}.json") if self.rank == 0 else None
            metrics, _ = evaluate_distributed(
                self.model, self.val_dataset, cfg=self.cfg, num_workers=min(2, self.cfg.DATA.NUM_WORKERS),
                output_file=out_file, device=self.device, amp=self.cfg.TRAIN.AMP)
        finally:
            set_rng_state(rng)
        flat = _flatten_metrics(metrics)
        self._log({"iteration": iteration, "eval": flat})
        return metrics

    # -- the loop ------------------------------------------------------------------------------
    def run_step(self, it: int) -> dict[str, float]:
        """Iteration ``it`` (from 0): forward and backward of one batch, and the optimiser step when
        it completes an accumulation group (every iteration without accumulation); returns the
        rank-averaged loss terms and ``loss``."""
        k = self.accumulate
        step = (it + 1) % k == 0
        lr = self.schedule.lr_at(it)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        images, targets = self._next_batch()
        images = images.to(self.device, non_blocking=True)
        targets = [_to_device(t, self.device) for t in targets]
        # DDP reduces the gradients once per group: on its last iteration
        no_sync = (not step and isinstance(self.model, nn.parallel.DistributedDataParallel))
        with self.model.no_sync() if no_sync else contextlib.nullcontext():
            values, total = self._forward(images, targets, it)
            if it % k == 0:  # a group's first iteration (every iteration when k == 1)
                self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(total / k if k > 1 else total).backward()
        values["lr"] = lr
        if self.scaler.is_enabled() and not step:
            values["loss_scale"] = float(self.scaler.get_scale())
        if not step:
            return values
        self._step(values)
        return values

    def _forward(self, images, targets, it: int):
        with torch.autocast(self.device.type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            losses = self.model(images, targets)
        total = torch.stack([v.float().reshape(()) for v in losses.values()]).sum()
        reduced = dist.reduce_dict({**{k: v.detach() for k, v in losses.items()}, "loss": total.detach()})
        values = {k: float(v) for k, v in reduced.items()}  # one sync, and the NaN check of every rank
        if not all(math.isfinite(v) for v in values.values()):
            terms = ", ".join(f"{k}={v:.6g}" for k, v in values.items())
            raise NonFiniteLossError(
                f"non-finite loss at iteration {it + 1} (of {self.max_iter}): {terms}. "
                f"Training stopped; the last good checkpoint is "
                f"{find_last_checkpoint(self.output_dir) or 'none (none was written yet)'}. "
                "Try a lower TRAIN.BASE_LR, a longer TRAIN.WARMUP, TRAIN.GRAD_CLIP, or TRAIN.AMP='off'.")
        return values, total

    def _step(self, values: dict) -> None:
        """The optimiser step on the (accumulated) gradients: clipping, AMP scaling."""
        clip = self.cfg.TRAIN.GRAD_CLIP
        if clip > 0:
            self.scaler.unscale_(self.optimizer)
            params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
            values["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, clip))
        self.scaler.step(self.optimizer)
        if self.scaler.is_enabled():
            # fp16: a step whose gradients overflowed is skipped and the scale halved (the first
            # few steps of a run find the scale this way)
            values["loss_scale"] = float(self.scaler.get_scale())
        self.scaler.update()

    def _next_batch(self):
        """The next batch with at least one good image; bad images the dataset skipped
        (``DATA.SKIP_BAD_IMAGES``) are counted, and a batch of only bad images is passed over."""
        empty, seen = 0, []
        while True:
            images, targets = next(self.loader)
            skipped = list(getattr(images, "skipped", ()))
            self.skipped_images += len(skipped)
            if len(images):
                return images, targets
            empty += 1
            seen += skipped[: max(0, 3 - len(seen))]
            if empty >= max(1, len(self.loader)):  # a whole epoch without one good image
                from ..data.coco import DatasetError
                raise DatasetError(f"no decodable image in {empty} consecutive training batches (a whole epoch); "
                                   f"e.g. {'; '.join(seen)}")
            logger.warning("a training batch held only bad images (%s); taking the next one", "; ".join(skipped))

    def train(self) -> dict:
        """Train from ``start_iter`` to the end of the schedule; returns the last evaluation's
        metrics (empty without ``val_dataset``). Raises :class:`NonFiniteLossError` on NaN/inf."""
        cfg = self.cfg
        prev_det = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled())
        if self.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        self._open_logs()
        self.model.train()
        bar = None
        if self.rank == 0:
            from tqdm import tqdm
            logger.info("training iterations %d..%d, total batch %d on %d process(es), LR %.5g (decay at %s)",
                        self.start_iter, self.max_iter, self.total_batch, self.world_size, self.schedule.base_lr,
                        self.schedule.decay_steps)
            if self.accumulate > 1:
                logger.info("RULES.ACCUMULATE_TO_8: the gradients of %d iterations (%d images) make one optimiser "
                            "step (LR %.5g for that batch)", self.accumulate, self.accumulate * self.total_batch,
                            self.schedule.base_lr)
                if self.max_iter % self.accumulate:
                    logger.warning("max_iter=%d is not a multiple of the %d accumulated iterations: the last %d "
                                   "iteration(s) make no optimiser step (as tensorpack's AccumGradOptimizer)",
                                   self.max_iter, self.accumulate, self.max_iter % self.accumulate)
            bar = tqdm(total=self.max_iter, initial=self.start_iter, desc="train", dynamic_ncols=True,
                       mininterval=1.0, unit="it")
        period = max(1, cfg.TRAIN.CHECKPOINT_PERIOD)
        log_period = max(1, cfg.TRAIN.LOG_PERIOD)
        eval_period = cfg.TRAIN.EVAL_PERIOD
        metrics: dict = {}
        last_saved = -1
        t_window, n_window = time.perf_counter(), 0
        try:
            for it in range(self.start_iter, self.max_iter):
                values = self.run_step(it)
                done = it + 1
                n_window += 1
                if done % log_period == 0 or done == self.max_iter or it == self.start_iter:
                    now = time.perf_counter()
                    img_s = n_window * self.total_batch / max(now - t_window, 1e-9)
                    t_window, n_window = now, 0
                    self._log({"iteration": done, **values, "img_per_s": img_s})
                    if bar is not None:
                        bar.set_postfix_str(f"loss={values['loss']:.4f} lr={values['lr']:.3g} img/s={img_s:.1f} " +
                                            " ".join(f"{k}={v:.3f}" for k, v in values.items()
                                                     if k not in ("loss", "lr", "grad_norm")), refresh=False)
                if bar is not None:
                    bar.update(1)
                if done % period == 0 and done < self.max_iter:
                    self.save_checkpoint(done)
                    last_saved = done
                if (self.val_dataset is not None and eval_period > 0 and done % eval_period == 0
                        and done < self.max_iter):
                    metrics = self.evaluate(done)
                    self.model.train()
            if self.skipped_images:
                logger.warning("%d bad image(s) were skipped during training (DATA.SKIP_BAD_IMAGES; each was "
                               "logged by the loader)", self.skipped_images)
            if last_saved != self.max_iter:
                self.save_checkpoint(self.max_iter)
            self.save_final()
            if self.val_dataset is not None:
                metrics = self.evaluate(self.max_iter)
        finally:
            torch.use_deterministic_algorithms(prev_det[0], warn_only=prev_det[1])
            if bar is not None:
                bar.close()
            if self._tb is not None:
                self._tb.close()
            self.close()
        dist.barrier()
        return metrics


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def _flatten_metrics(metrics: Any, prefix: str = "") -> dict:
    out = {}
    if isinstance(metrics, dict):
        for k, v in metrics.items():
            out.update(_flatten_metrics(v, f"{prefix}{k}/" if isinstance(v, dict) else f"{prefix}{k}"))
    elif isinstance(metrics, (int, float)) and not isinstance(metrics, bool):
        out[prefix.rstrip("/")] = float(metrics)
    return out
