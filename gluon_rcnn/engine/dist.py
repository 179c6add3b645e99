"""Process-group plumbing: torchrun (torch.distributed, NCCL on GPU / gloo on CPU) and DDP.

A plain ``python script.py`` is a world of one: every helper here works without a process group.
Under ``torchrun`` the environment carries ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``
and ``MASTER_PORT``; :func:`init_distributed` reads them. torchrun is the only distributed engine
(Horovod was dropped: it does not build against torch 2.x, and torchrun + DDP covers multi-GPU and
multi-node training).

A rank started by torchrun dies with its launcher: :func:`die_with_launcher` (called by
:func:`init_distributed`) asks the kernel for ``SIGKILL`` when the torchrun agent, the rank's
parent, exits (``prctl(PR_SET_PDEATHSIG)`` on Linux) and watches the parent from a thread
elsewhere; the rank's loader workers follow it (``data.loader.worker_context``). When a rank dies
while the agent lives, the agent stops the other ranks (torchrun's own behaviour).
"""
from __future__ import annotations

import datetime
import os
import signal
import sys
import threading
from typing import Any

import torch
import torch.distributed as tdist
import torch.nn as nn

__all__ = ["init_distributed", "die_with_launcher", "get_rank", "get_world_size", "barrier", "all_gather_object",
           "broadcast_object", "reduce_dict", "all_reduce_sum", "setup_model_for_distributed", "unwrap_model", "get_device", "cleanup"]

def init_distributed(timeout_minutes: int = 30) -> tuple[int, int, int]:
    """Join the process group described by the environment; returns ``(rank, world_size, local_rank)``.

    When ``WORLD_SIZE`` > 1 (set by torchrun), ``init_process_group`` with NCCL if CUDA is available,
    else gloo; the CUDA device is set to ``LOCAL_RANK``. A single process with no torchrun environment
    stays uninitialised. Under torchrun this process first ties its life to the launcher's
    (:func:`die_with_launcher`). Collectives time out after ``timeout_minutes`` (a rank of another
    node that died without its agent noticing leaves the others waiting that long at most).
    """
    die_with_launcher()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % max(1, torch.cuda.device_count()))
    if world > 1 and not (tdist.is_available() and tdist.is_initialized()):
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        kwargs = {}
        if backend == "nccl":
            kwargs["device_id"] = torch.device("cuda", torch.cuda.current_device())
        tdist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world,
                                 timeout=datetime.timedelta(minutes=timeout_minutes), **kwargs)
    return rank, world, local_rank


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_launcher_pid: int | None = None


def die_with_launcher(poll_seconds: float = 1.0) -> int | None:
    """Under torchrun (``TORCHELASTIC_RUN_ID`` set): stop this process when its launcher dies.

    torchrun's agent starts every rank as its child, each in a session of its own, so neither a
    ``kill -9`` of the agent nor a closed terminal reaches the ranks: they would train on, orphaned,
    into ``--output``. Here, once per process:

    * Linux: ``prctl(PR_SET_PDEATHSIG, SIGKILL)``, the kernel kills this rank when its parent exits
      (the agent starts its ranks from its main thread, the thread the signal is tied to);
    * everywhere: a daemon thread checks every ``poll_seconds`` that the parent is still the one
      this process had, and ends the process (``os._exit(1)``) otherwise.

    A launcher that died before this call (between the fork and here) is not seen: the parent read
    here is then already the reaper (possibly pid 1, which is also the agent's pid when torchrun is
    a container's first process, so that is no test). Such a rank still fails at once when it joins
    the process group, whose store lives in the dead agent.

    The loader workers die with their rank (``data.loader.worker_context``). Returns the launcher's
    pid, or ``None`` outside torchrun (a plain ``python train.py`` keeps running if its shell goes,
    as ``nohup`` users expect).
    """
    global _launcher_pid
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return None
    if _launcher_pid is not None:
        return _launcher_pid
    parent = os.getppid()
    if sys.platform.startswith("linux"):
        import ctypes
        try:
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
        except (OSError, AttributeError):  # no prctl: the watchdog thread alone
            pass
    if os.getppid() != parent:  # the launcher died before the prctl
        _launcher_gone(parent)
    _launcher_pid = parent
    threading.Thread(target=_watch_launcher, args=(parent, poll_seconds), name="gluon_rcnn-launcher-watchdog",
                     daemon=True).start()
    return parent


def _watch_launcher(parent: int, poll_seconds: float) -> None:
    import time
    while os.getppid() == parent:
        time.sleep(poll_seconds)
    _launcher_gone(parent)


def _launcher_gone(parent: int) -> None:
    try:
        sys.stderr.write(f"rank {os.environ.get('RANK', '?')} (pid {os.getpid()}): its torchrun launcher (pid "
                         f"{parent}) is gone; stopping\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # the launcher held the other end of stderr
        pass
    os._exit(1)


def cleanup() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def _torch_dist() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def get_rank() -> int:
    return tdist.get_rank() if _torch_dist() else 0


def get_world_size() -> int:
    return tdist.get_world_size() if _torch_dist() else 1


def get_device() -> torch.device:
    """This process's device: its CUDA device when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if get_world_size() == 1:
        return
    if tdist.get_backend() == "nccl":
        tdist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        tdist.barrier()


def all_gather_object(obj: Any) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    world = get_world_size()
    if world == 1:
        return [obj]
    out = [None] * world
    tdist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if get_world_size() == 1:
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks of a tensor on this process's communication device."""
    if get_world_size() == 1:
        return t
    tdist.all_reduce(t, op=tdist.ReduceOp.SUM)
    return t


def reduce_dict(d: dict[str, torch.Tensor], average: bool = True) -> dict[str, torch.Tensor]:
    """The mean (or sum) over ranks of a dict of scalar tensors, in one collective, on every rank.

    Keys are sorted so every rank packs the same order; values come back as fp32 detached
    tensors on the device of the inputs.
    """
    if not d:
        return {}
    keys = sorted(d)
    dev = d[keys[0]].device
    if _torch_dist() and tdist.get_backend() == "nccl":
        dev = get_device()
    vals = torch.stack([d[k].detach().float().reshape(()).to(dev) for k in keys])
    if get_world_size() > 1:
        all_reduce_sum(vals)
        if average:
            vals /= get_world_size()
    return {k: v for k, v in zip(keys, vals)}


def unwrap_model(model: nn.Module) -> nn.Module:
    """The model inside a DistributedDataParallel (or DataParallel) wrapper."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def setup_model_for_distributed(model: nn.Module, device: torch.device | None = None,
                                find_unused_parameters: bool = False) -> nn.Module:
    """Move the model to its device and make it ready for this world.

    * ``channels_last`` memory format on CUDA (faster convolutions with cuDNN/AMP).
    * more than one process: wrapped in ``DistributedDataParallel``; ``find_unused_parameters`` off by
      default (every R-CNN loss touches every head each step).
    * ``BACKBONE.NORM='SyncBN'`` needs nothing here: the model is built with
      :class:`gluon_rcnn.nn.norm.SyncBatchNorm2d` layers, which synchronise over the process group
      (NCCL on CUDA, gloo on the CPU).

    Returns the (possibly wrapped) model; :func:`unwrap_model` gives the inner one back.
    """
    device = device or get_device()
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if get_world_size() > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            output_device=device.index if device.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters, broadcast_buffers=False)
    return model
