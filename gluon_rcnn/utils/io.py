"""Files written whole or not at all, and the one checkpoint reader.

* :func:`atomic_write` — for the files a reader picks up (checkpoints, results, CSVs, checksum records,
  ``last_checkpoint``, ``metrics.jsonl``): the data go to a temporary file in the same folder,
  are flushed to disk, and the file is renamed over ``path`` (``os.replace``, atomic on POSIX and
  Windows within a file system). A reader, a crash or a kill therefore sees the old file or the new one,
  never half of one; on an exception the temporary file is removed and ``path`` is untouched.
* :func:`save_torch` — ``torch.save`` through :func:`atomic_write`.
* :func:`load_checkpoint` — ``torch.load(weights_only=True)`` on the CPU: tensors, containers, numbers
  and strings only, never arbitrary pickled objects (the trainer's checkpoints, converted models,
  torchvision-style state dicts).

Standard library at import time (torch is imported by the two torch functions), so the lowest rooms
(``config``, ``download``) can use it.
"""
from __future__ import annotations

import os
import pickle
import secrets
from contextlib import contextmanager
from typing import IO, Any, Iterator

__all__ = ["atomic_write", "save_torch", "load_checkpoint", "CheckpointError", "UnsafeCheckpointError"]


@contextmanager
def atomic_write(path, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """``with atomic_write(path, 'w') as f: ...`` writes ``path`` atomically.

    ``mode``: ``'w'`` (text; ``encoding``/``newline`` as for :func:`open`) or ``'wb'``. The temporary file
    is ``.<name>.<pid>.<random>.tmp`` beside ``path`` (same file system, so the rename is atomic; a unique
    name, so processes writing the same path do not collide: the last rename wins). It is fsynced before the
    rename. The new file gets the permissions a plain ``open`` would give (``0o666`` less the umask)."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write writes a whole file: mode 'w' or 'wb', not {mode!r}")
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    tmp = os.path.join(folder, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # O_EXCL: never another writer's file; 0o666: the kernel applies the umask, as open() does
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save_torch(obj: Any, path) -> None:
    """``torch.save(obj)`` to ``path`` atomically (:func:`atomic_write`)."""
    import torch

    with atomic_write(path, "wb") as f:
        torch.save(obj, f)


class CheckpointError(ValueError):
    """``path`` is not a PyTorch checkpoint (not a ``torch.save`` file, or truncated)."""


class UnsafeCheckpointError(pickle.UnpicklingError, CheckpointError):
    """``path`` holds pickled objects other than tensors, containers, numbers and strings."""


def _unpickler_reason(message: str) -> str:
    """The informative line of torch's weights-only refusal, without its boilerplate."""
    boiler = ("Weights only load failed", "Please file an issue", "Check the documentation")
    for ln in (ln.strip() for ln in message.splitlines()):
        if ln and not ln.startswith(boiler):
            return ln.split("WeightsUnpickler error:", 1)[-1].strip() or ln
    return "unreadable"


def _first_sentence(message: str) -> str:
    text = message.strip().splitlines()[0] if message.strip() else "unreadable"
    return text.split(". ")[0].rstrip(".")


def load_checkpoint(path, map_location="cpu") -> Any:
    """What ``torch.save`` wrote to ``path``, read with ``weights_only=True`` (tensors, containers,
    numbers, strings; no code runs), onto ``map_location`` (default the CPU). A file that is none
    raises :class:`CheckpointError` (a ValueError) naming it in one line; pickled code is refused
    with :class:`UnsafeCheckpointError` (also a ``pickle.UnpicklingError``)."""
    import torch

    path = os.fspath(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpointError(f"{path} is not a PyTorch checkpoint that torch.load(weights_only=True) "
                                    "accepts "
                                    f"({_unpickler_reason(str(e))}): a torch.save file of tensors, containers, "
                                    "numbers and strings only") from e
    except OSError:  # missing, unreadable: the caller's message names the path
        raise
    except Exception as e:  # not a zip/legacy torch file, or cut short (torch raises RuntimeError, EOFError,
        # or from its weights-only unpickler on arbitrary bytes IndexError, KeyError, ...)
        if not os.path.isfile(path):
            raise
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (a file torch.save wrote): "
                              f"{_first_sentence(str(e))}") from e
