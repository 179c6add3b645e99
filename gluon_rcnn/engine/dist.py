"""Process-group plumbing: torchrun (torch.distributed, NCCL on GPU / gloo on CPU) or Horovod.

A plain ``python script.py`` is a world of one: every helper here works without a process group.
Under ``torchrun`` the environment carries ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``
and ``MASTER_PORT``; :func:`init_distributed` reads them. ``TRAINER=horovod`` uses
``horovod.torch`` instead (only where it is importable).
"""
from __future__ import annotations

import datetime
import os
from typing import Any

import torch
import torch.distributed as tdist
import torch.nn as nn

__all__ = ["init_distributed", "get_rank", "get_world_size", "get_local_rank", "is_main", "barrier",
           "all_gather_object", "broadcast_object", "reduce_dict", "all_reduce_sum", "setup_model_for_distributed",
           "unwrap_model", "get_device", "cleanup", "import_horovod", "HOROVOD_INSTALL_HINT"]

HOROVOD_INSTALL_HINT = (
    "TRAINER='horovod' needs Horovod built with PyTorch support, which is not importable here. Install it with\n"
    "    HOROVOD_WITH_PYTORCH=1 pip install --no-cache-dir horovod\n"
    "which compiles against the installed torch and needs cmake, a C++17 compiler and MPI or Gloo "
    "(add HOROVOD_GPU_OPERATIONS=NCCL for GPUs; see docs/training.md), then launch with "
    "horovodrun -np N python scripts/train_mask_rcnn.py ... --config TRAINER=horovod. "
    "Or use the default TRAINER='torch' with torchrun.")

_HVD = None  # the horovod.torch module once initialised


def import_horovod():
    """``horovod.torch``, or a RuntimeError explaining how to install it."""
    try:
        import horovod.torch as hvd  # noqa: WPS433
    except Exception as e:  # ImportError, or a horovod built without torch
        raise RuntimeError(f"{HOROVOD_INSTALL_HINT}\n(import error: {e})") from None
    return hvd


def init_distributed(trainer: str = "torch", timeout_minutes: int = 30) -> tuple[int, int, int]:
    """Join the process group described by the environment; returns ``(rank, world_size, local_rank)``.

    ``trainer='torch'``: when ``WORLD_SIZE`` > 1 (set by torchrun), ``init_process_group`` with NCCL
    if CUDA is available, else gloo; the CUDA device is set to ``LOCAL_RANK``. A single process with
    no torchrun environment stays uninitialised. ``trainer='horovod'``: ``hvd.init()``.
    """
    global _HVD
    if trainer == "horovod":
        hvd = import_horovod()
        hvd.init()
        _HVD = hvd
        if torch.cuda.is_available():
            torch.cuda.set_device(hvd.local_rank())
        return hvd.rank(), hvd.size(), hvd.local_rank()
    if trainer != "torch":
        raise ValueError(f"unknown trainer {trainer!r}: 'torch' or 'horovod'")
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


def cleanup() -> None:
    if tdist.is_available() and tdist.is_initialized():
        tdist.destroy_process_group()


def _torch_dist() -> bool:
    return tdist.is_available() and tdist.is_initialized()


def get_rank() -> int:
    if _HVD is not None:
        return _HVD.rank()
    return tdist.get_rank() if _torch_dist() else 0


def get_world_size() -> int:
    if _HVD is not None:
        return _HVD.size()
    return tdist.get_world_size() if _torch_dist() else 1


def get_local_rank() -> int:
    if _HVD is not None:
        return _HVD.local_rank()
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_main() -> bool:
    return get_rank() == 0


def get_device() -> torch.device:
    """This process's device: its CUDA device when CUDA is available, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if get_world_size() == 1:
        return
    if _HVD is not None:
        _HVD.barrier() if hasattr(_HVD, "barrier") else _HVD.allreduce(torch.zeros(1), name="barrier")
    elif tdist.get_backend() == "nccl":
        tdist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        tdist.barrier()


def all_gather_object(obj: Any) -> list:
    """Every rank's ``obj`` (picklable), in rank order, on every rank."""
    world = get_world_size()
    if world == 1:
        return [obj]
    if _HVD is not None:
        return list(_HVD.allgather_object(obj))
    out = [None] * world
    tdist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank."""
    if get_world_size() == 1:
        return obj
    if _HVD is not None:
        return _HVD.broadcast_object(obj, root_rank=src)
    box = [obj]
    tdist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks of a tensor on this process's communication device."""
    if get_world_size() == 1:
        return t
    if _HVD is not None:
        t.copy_(_HVD.allreduce(t, op=_HVD.Sum))
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


def _convert_sync_bn(module: nn.Module, cuda: bool) -> nn.Module:
    """Plain BatchNorm layers → ``nn.SyncBatchNorm`` (CUDA) or the library's ``SyncBatchNorm2d``
    (CPU: an all-reduce BN that runs on gloo). Sync layers already in the model stay as they are."""
    from ..nn import norm as _norm

    if not cuda:
        return _norm.convert_sync_batchnorm(module)
    sync_types = (nn.SyncBatchNorm, _norm.SyncBatchNorm2d)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, sync_types):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        new = _convert_sync_bn(child, cuda)
        if new is not child:
            setattr(module, name, new)
    return module


def setup_model_for_distributed(model: nn.Module, cfg, device: torch.device | None = None,
                                find_unused_parameters: bool | None = None) -> nn.Module:
    """Move the model to its device and make it ready for this world.

    * ``BACKBONE.NORM == 'SyncBN'`` with more than one process: trainable ``BatchNorm`` layers
      become ``nn.SyncBatchNorm`` on CUDA, or the library's own all-reduce BN
      (``gluon_rcnn.nn.norm.convert_sync_batchnorm``) on the CPU, where ``nn.SyncBatchNorm``
      refuses to run. Layers the model already built as sync BN are left alone.
    * ``channels_last`` memory format on CUDA (faster convolutions with cuDNN/AMP).
    * more than one process with ``TRAINER='torch'``: wrapped in ``DistributedDataParallel``.
      ``find_unused_parameters`` defaults to True only when the model has trainable parameters
      that a step might not use (it is asked via ``model.may_have_unused_parameters`` if present,
      else False: every R-CNN loss touches every head each step).

    Returns the (possibly wrapped) model; :func:`unwrap_model` gives the inner one back.
    """
    device = device or get_device()
    world = get_world_size()
    if cfg.BACKBONE.NORM == "SyncBN" and world > 1:
        if cfg.TRAINER == "horovod":
            raise RuntimeError("BACKBONE.NORM='SyncBN' is supported with TRAINER='torch' (torchrun) only")
        model = _convert_sync_bn(model, cuda=device.type == "cuda")
    model = model.to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    if world > 1 and cfg.TRAINER == "torch":
        if find_unused_parameters is None:
            find_unused_parameters = bool(getattr(model, "may_have_unused_parameters", False))
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            output_device=device.index if device.type == "cuda" else None,
            find_unused_parameters=find_unused_parameters, broadcast_buffers=False)
    return model
