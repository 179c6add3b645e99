"""Downloads of published files (weights) into a cache: progress bar, timeout, atomic, resumable,
checksummed. Standard library and tqdm only; of gluon_rcnn only :func:`gluon_rcnn.utils.io.atomic_write`.

* Cache: ``$GLUON_RCNN_HOME/weights/`` (default ``~/.cache/gluon_rcnn/weights/``), one file per
  URL under the URL's own file name (:func:`cached_path`), so that a file downloaded by hand can be
  put there and is picked up without any network.
* A download streams into ``<file>.part`` and is moved into place with ``os.replace`` only after
  its length and checksum are right: the cache never holds a half or a wrong file under the final
  name. A short read (the connection closed before Content-Length bytes) keeps the ``.part``; the
  next call resumes it with an HTTP ``Range`` request (a server answering 200 instead of 206 makes
  it start again from 0).
* Checksums: ``sha256=`` and/or ``sha1=`` (the publisher's, where that is what they publish) are
  checked on the download and again on every later use of the cached file; a mismatch is an error.
  ``sha256_prefix=`` (torchvision publishes the first 8 hex digits in its file names) is checked the
  same way. Without a full checksum, the sha256 seen is logged and recorded in ``<file>.sha256`` (only
  once it has passed the prefix) and later uses are checked against it (a cached file that changed is
  detected); :func:`recorded_sha256` reads it.
* Content: ``validate=`` (a callable on the complete download, before it is moved into place)
  rejects a file of the right length but wrong content (e.g. not an npz): it raises, the download
  is deleted and :class:`DownloadError` names the URL, the cause and the manual path.
* Concurrency: on POSIX one process at a time downloads a given file, under an ``fcntl.flock`` on
  ``<file>.lock``; a second waits and then uses the first one's file. The lock file is removed when
  its holder is done, whether the download succeeded or failed. Where ``fcntl`` is missing
  (Windows) each process downloads into its own ``<file>.<pid>.part`` (no resume there).
* Failures (HTTP status, unreachable host, timeout, short read, checksum) raise
  :class:`DownloadError` naming the URL, the cause and the path where a file downloaded by hand is
  picked up.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from contextlib import contextmanager
from pathlib import Path

from tqdm import tqdm

from .utils.io import atomic_write

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

__all__ = ["DownloadError", "ChecksumError", "cache_dir", "cached_path", "download", "file_digest", "recorded_sha256"]

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


class DownloadError(OSError):
    """A published file could not be obtained (network, HTTP status, short read, checksum)."""


class ChecksumError(DownloadError, ValueError):
    """A downloaded or cached file has not the expected digest."""


def cache_dir() -> Path:
    """``$GLUON_RCNN_HOME`` when set, else ``~/.cache/gluon_rcnn``."""
    home = os.environ.get("GLUON_RCNN_HOME")
    return Path(home).expanduser() if home else Path.home() / ".cache" / "gluon_rcnn"


def _name(url: str, filename: str | None) -> str:
    if filename:
        name = filename
    else:
        name = os.path.basename(urllib.parse.unquote(urllib.parse.urlparse(url).path))
    if not name or name in (".", "..") or "/" in name or "\\" in name:
        raise ValueError(f"cannot derive a file name from {url!r}: pass filename=")
    return name


def cached_path(url: str, filename: str | None = None) -> Path:
    """Where the file of ``url`` lives (or will): ``<cache_dir()>/weights/<filename or the URL's
    file name>``. A file put there by hand is used instead of downloading."""
    return cache_dir() / "weights" / _name(url, filename)


def file_digest(path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _manual(url: str, dest: Path) -> str:
    return f"download it by hand ({url}) and put it at {dest}"


def _check(path: Path, expected: dict, what: str, remedy: str) -> None:
    """Raise ChecksumError when ``path``'s digests differ from ``expected`` ({algorithm: hex})."""
    for algo, want in expected.items():
        got = file_digest(path, algo)
        if got != want:
            raise ChecksumError(f"{what}: {algo} {got}, expected {want}; refusing to use it. {remedy}")


def _sidecar(dest: Path) -> Path:
    return dest.with_name(dest.name + ".sha256")


def _record(dest: Path, digest: str) -> None:
    with atomic_write(_sidecar(dest)) as f:
        f.write(f"{digest}  {dest.name}\n")


def _recorded(dest: Path) -> str | None:
    side = _sidecar(dest)
    try:
        text = side.read_text().split()
    except FileNotFoundError:
        return None
    return text[0].lower() if text else None


def recorded_sha256(path) -> str | None:
    """The sha256 recorded beside a cached file that has no published checksum (``<file>.sha256``,
    written when it was downloaded or first used), or None."""
    return _recorded(Path(path))


def _check_prefix(seen: str, prefix: str | None, what: str, remedy: str) -> None:
    """Raise ChecksumError when the sha256 ``seen`` does not start with the published ``prefix``."""
    if prefix and not seen.startswith(prefix):
        raise ChecksumError(f"{what}: sha256 {seen}, but its published file name says it starts with {prefix}; "
                            f"refusing to use it. {remedy}")


def _published(url: str, prefix: str | None) -> str:
    """How much of the checksum of ``url`` is published, for the messages that record the full one."""
    return (f"only the sha256 prefix {prefix} is published for {url} (checked)" if prefix
            else f"no checksum is published for {url}")


def _verify_cached(dest: Path, url: str, expected: dict, prefix: str | None = None) -> None:
    """Check a file already at ``dest`` (downloaded earlier, or put there by hand)."""
    remedy = f"Delete it to download it again, or {_manual(url, dest)}"
    if expected:
        _check(dest, expected, f"{dest} (the cached file of {url}) has the wrong checksum", remedy)
        return
    seen = file_digest(dest)
    _check_prefix(seen, prefix, f"{dest} (the cached file of {url}) has the wrong checksum", remedy)
    recorded = _recorded(dest)
    if recorded is None:
        logger.warning("%s; using %s (put there by hand?), sha256 %s (recorded in %s)", _published(url, prefix),
                       dest, seen, _sidecar(dest))
        _record(dest, seen)
    elif seen != recorded:
        raise ChecksumError(f"{dest} changed since it was first used: sha256 {seen}, recorded {recorded} in "
                            f"{_sidecar(dest)} ({_published(url, prefix)}); delete both files to "
                            f"download it again, or {_manual(url, dest)}")


def _lock_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".lock")


@contextmanager
def _lock(dest: Path):
    """Hold ``<file>.lock`` (``flock``) for the block and remove it at the end, success or failure, so
    that the cache keeps no 0-byte lock files. It is removed while still held; a process that was
    waiting on the removed file sees that the path no longer names the file it locked and locks anew."""
    if fcntl is None:  # pragma: no cover - Windows: private .part files instead
        yield False
        return
    path = _lock_path(dest)
    waited = False
    while True:
        f = open(path, "a")
        try:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not waited:
                    logger.warning("another process is downloading %s; waiting for it", dest)
                    waited = True
                fcntl.flock(f, fcntl.LOCK_EX)
            try:
                here = os.stat(path)
                mine = os.fstat(f.fileno())
                if (here.st_ino, here.st_dev) == (mine.st_ino, mine.st_dev):
                    break  # the lock file at the path: ours
            except FileNotFoundError:
                pass
        except BaseException:
            f.close()
            raise
        f.close()  # its holder removed it: lock the file now at the path
    try:
        yield True
    finally:
        path.unlink(missing_ok=True)
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def _fail(url: str, dest: Path, cause: str) -> DownloadError:
    return DownloadError(f"could not download {url}: {cause}; {_manual(url, dest)}")


def _open(url: str, offset: int, timeout: float, dest: Path):
    headers = {"User-Agent": "gluon_rcnn"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout)  # noqa: S310
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # the .part is not a prefix the server knows: start again
            return None
        raise _fail(url, dest, f"HTTP {err.code} {err.reason}") from None
    except urllib.error.URLError as err:
        reason = err.reason
        if isinstance(reason, TimeoutError):
            raise _fail(url, dest, f"no answer within {timeout:g} s ({reason or 'timed out'})") from None
        raise _fail(url, dest, f"network error: {reason}") from None
    except TimeoutError as err:
        raise _fail(url, dest, f"no answer within {timeout:g} s ({err or 'timed out'})") from None
    except (OSError, http.client.HTTPException) as err:
        raise _fail(url, dest, f"network error: {type(err).__name__}: {err}") from None


def _range_start(resp) -> int | None:
    """First byte of a 206 answer's Content-Range (``bytes START-END/TOTAL``), None if unreadable."""
    cr = resp.headers.get("Content-Range", "")
    try:
        return int(cr.split()[1].split("-")[0])
    except (IndexError, ValueError):
        return None


def _stream(url: str, part: Path, dest: Path, timeout: float, progress: bool) -> None:
    """Bring ``part`` to the whole file of ``url``, resuming what it holds; raise on a short read."""
    offset = part.stat().st_size if part.exists() else 0
    resp = _open(url, offset, timeout, dest)
    if resp is None:  # 416 on the Range request
        offset = 0
        resp = _open(url, 0, timeout, dest)
    if offset and getattr(resp, "status", 200) == 206 and _range_start(resp) != offset:
        resp.close()  # a part we did not ask for: start again
        offset, resp = 0, _open(url, 0, timeout, dest)
    with resp:
        if offset and getattr(resp, "status", 200) != 206:
            offset = 0  # the server sends the whole file (200): start again
        length = resp.headers.get("Content-Length")
        total = offset + int(length) if length and length.isdigit() else None
        bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                   file=sys.stderr, disable=not progress, leave=False)
        got = offset
        try:
            with open(part, "ab" if offset else "wb") as f:
                while True:
                    try:
                        chunk = resp.read(_CHUNK)
                    except TimeoutError as err:
                        raise _fail(url, dest, f"no data for {timeout:g} s after {got} bytes ({err or 'timed out'}); "
                                    f"{part} is kept and the next call resumes it") from None
                    except http.client.IncompleteRead as err:
                        f.write(err.partial)
                        got += len(err.partial)
                        bar.update(len(err.partial))
                        break
                    except (OSError, http.client.HTTPException) as err:
                        raise _fail(url, dest, f"connection lost after {got} bytes ({type(err).__name__}: {err}); "
                                    f"{part} is kept and the next call resumes it") from None
                    if not chunk:
                        break
                    f.write(chunk)
                    got += len(chunk)
                    bar.update(len(chunk))
        finally:
            bar.close()
    if total is not None and got != total:
        raise _fail(url, dest, f"truncated download: {got} of {total} bytes received; {part} is kept and the "
                    "next call resumes it")


def download(url: str, *, sha256: str | None = None, sha1: str | None = None, sha256_prefix: str | None = None,
             filename: str | None = None, timeout: float = 60.0, progress: bool = True, validate=None) -> Path:
    """The local path of ``url``'s file in the cache (:func:`cached_path`), downloaded if absent.

    sha256 / sha1: expected hex digests (either or both); checked on the download and on every
    later call. Without either, the sha256 seen is logged and recorded beside the file, and later
    calls check against it. sha256_prefix: the start of the sha256, where that is all the publisher gives
    (torchvision's file names): checked on the download and on every later call, like a full
    checksum; the full sha256 is then recorded as without one. timeout: seconds for the connection and each read. progress: a tqdm
    bar on stderr. Raises :class:`DownloadError` (:class:`ChecksumError` for a digest mismatch)
    naming the URL, the cause and the path where a file downloaded by hand is picked up.
    validate: called with the path of a complete, checksum-checked download before it is moved into
    place (not on a file already in the cache); any exception it raises deletes the download and
    becomes a :class:`DownloadError` naming the URL, the cause and the manual path.
    """
    dest = cached_path(url, filename)
    expected = {a: v.strip().lower() for a, v in (("sha256", sha256), ("sha1", sha1)) if v}
    prefix = (sha256_prefix or "").strip().lower() or None
    if dest.is_file():
        _verify_cached(dest, url, expected, prefix)
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with _lock(dest) as locked:
        if dest.is_file():  # another process finished it while we waited
            _verify_cached(dest, url, expected, prefix)
            return dest
        part = dest.with_name(dest.name + (".part" if locked else f".{os.getpid()}.part"))
        _stream(url, part, dest, timeout, progress)
        seen = None if expected else file_digest(part)
        what = f"the download of {url} has the wrong checksum"
        remedy = f"It was deleted; try again, or {_manual(url, dest)}"
        try:
            _check(part, expected, what, remedy)
            if seen:
                _check_prefix(seen, prefix, what, remedy)
        except ChecksumError:
            part.unlink(missing_ok=True)
            raise
        if validate is not None:
            try:
                validate(part)
            except Exception as err:  # noqa: BLE001 - any rejection: the download is not the file
                part.unlink(missing_ok=True)
                why = str(err) if len(str(err)) <= 600 else str(err)[:600] + " [...]"
                raise _fail(url, dest, f"the downloaded file is not what was expected ({type(err).__name__}: "
                            f"{why}); it was deleted, nothing was put at {dest}") from err
        os.replace(part, dest)
        if seen:
            logger.warning("%s; sha256 of the downloaded file: %s (recorded in %s)", _published(url, prefix), seen,
                           _sidecar(dest))
            _record(dest, seen)
    return dest
