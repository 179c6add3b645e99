"""One training run per output folder: the lock file ``OUTPUT/train.lock``.

:class:`gluon_rcnn.engine.trainer.Trainer` takes it (on rank 0 only, before any rank reads or
writes the folder) and removes it when ``train()`` ends; a second run on the same folder stops
with :class:`OutputLockedError` naming the owner (the CLIs exit 2).

The file is created with ``O_CREAT | O_EXCL`` and holds the owner's pid, host, start time and
command line (JSON). The owner also holds an exclusive ``flock`` on it for its whole life; the
kernel drops that lock when the owner dies, even by ``kill -9``, so liveness needs no pid
guessing (no false "alive" for a recycled pid):

* lock file present, its ``flock`` held: another live run, refused;
* present, not held, written on this host: its run is gone (killed, crashed): taken over with a
  warning naming the old pid;
* present, not held, written on another host (an output folder on a shared file system, where a
  ``flock`` may not reach across machines): refused unless ``force=True`` (the training scripts'
  ``--force-unlock``), since this host cannot tell whether that run still lives.

Without ``fcntl`` (Windows) liveness cannot be read: any existing lock needs ``force=True``.
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import socket
import sys

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["LOCK_NAME", "OutputLock", "OutputLockedError"]

LOCK_NAME = "train.lock"
logger = logging.getLogger(__name__)


class OutputLockedError(RuntimeError):
    """Another run holds the output folder (or may: a lock written on another host)."""


def _describe(owner: dict) -> str:
    if not owner:
        return "a run that is still writing the lock file"
    cmd = owner.get("command", "")
    return (f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}, started {owner.get('started', '?')}"
            + (f" ({cmd[:200]})" if cmd else ""))


class OutputLock:
    """The lock of ``folder`` (created if missing); ``acquire()`` takes it or raises
    :class:`OutputLockedError`, ``release()`` removes it. Also a context manager."""

    def __init__(self, folder: str, force: bool = False):
        self.folder = str(folder)
        self.path = os.path.join(self.folder, LOCK_NAME)
        self.force = bool(force)
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "OutputLock":
        if self._fd is not None:
            return self
        os.makedirs(self.folder, exist_ok=True)
        host = socket.gethostname()
        for _ in range(50):  # only a lock file that keeps changing under us loops
            try:
                fd, created = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
            except FileExistsError:
                try:
                    fd, created = os.open(self.path, os.O_RDWR), False
                except FileNotFoundError:  # released meanwhile
                    continue
            try:
                if not self._try_flock(fd, created):
                    raise OutputLockedError(
                        f"{self.folder} is in use by another training run: {_describe(_read(fd))}. Wait for it to "
                        f"finish, stop it, or give another --output")
                if not _same_file(fd, self.path):  # removed or replaced between our open and our lock
                    os.close(fd)
                    continue
                owner = {} if created else _read(fd)
                if owner:
                    if owner.get("host") != host and not self.force:
                        raise OutputLockedError(
                            f"{self.folder} is locked by a run on another host: {_describe(owner)} ({self.path}). "
                            f"If that run is no longer running, pass --force-unlock (Trainer(force_unlock=True)) "
                            f"to take the lock over")
                    why = "forced (--force-unlock)" if self.force else "that run is no longer running"
                    logger.warning("%s: taking over the lock of %s: %s", self.folder, _describe(owner), why)
                me = {"pid": os.getpid(), "host": host,
                      "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
                      "command": " ".join(sys.argv)}
                os.ftruncate(fd, 0)
                os.pwrite(fd, (json.dumps(me) + "\n").encode(), 0)
                os.fsync(fd)
            except BaseException:
                try:
                    os.close(fd)
                except OSError:
                    pass
                raise
            self._fd = fd
            return self
        raise OutputLockedError(f"could not take the lock {self.path}: it kept changing (several runs starting "
                                f"on one --output at once?)")

    def _try_flock(self, fd: int, created: bool) -> bool:
        """Whether this process now holds the lock of ``fd``'s file."""
        if fcntl is None:  # pragma: no cover - Windows: no liveness test
            return created or self.force
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def release(self) -> None:
        """Remove the lock file (if it is still ours) and drop the lock; idempotent."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            if _same_file(fd, self.path):
                os.unlink(self.path)  # before the flock goes: a waiter then sees a removed file and retries
        except OSError:
            pass
        finally:
            os.close(fd)

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read(fd: int) -> dict:
    try:
        data = os.pread(fd, 65536, 0)
        owner = json.loads(data.decode("utf-8", errors="replace")) if data.strip() else {}
        return owner if isinstance(owner, dict) else {"pid": "?", "host": "?"}
    except (OSError, ValueError):
        return {"pid": "?", "host": "?"}


def _same_file(fd: int, path: str) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)
