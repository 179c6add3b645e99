"""Published weights of other implementations → cached gluon_rcnn checkpoints: one :class:`WeightSource`
per format, registered under the name a zoo entry gives as ``weights.format``.

Each format's source sits beside its converter (``tensorpack-npz``: :mod:`.tensorpack`, ``gluoncv-params``:
:mod:`.gluoncv`, ``torchvision-pth``: :mod:`.torchvision`, ``detectron2-pkl``: :mod:`.detectron2`) and
says three things: where the file is (:meth:`WeightSource.url`: the entry's URL, or under the base URL of
its ``$GLUON_RCNN_*_URL`` variable), which checksums guard it (:meth:`WeightSource.checksums`, a sha256
prefix where that is all that is published: checked by the download like the others, before any
full sha256 is recorded, so the two never disagree) and how it
becomes a gluon_rcnn model (:meth:`WeightSource.convert`, which also checks what only the format knows:
GluonCV's sha1 of the .params inside the zip, the digest prefix in torchvision's and detectron2's file
names). :meth:`WeightSource.fetch_and_convert` is the one path they share: the file is downloaded into the
cache by :func:`gluon_rcnn.download.download` (a download that does not convert never enters the cache),
converted once into ``<stem>.<digest[:16]>.gluon_rcnn.pth`` beside it and that checkpoint reused; a file
put there by hand is checked and converted the same way, and the error of a bad one names it, the URL and
what to do.
"""
from __future__ import annotations

import os
import re
import urllib.parse
from pathlib import Path

from ..download import cached_path, download, file_digest, recorded_sha256

__all__ = ["WeightSource", "WeightSourceError", "register", "weight_source", "formats", "file_name",
           "converted_path", "check_name_digest"]


class WeightSourceError(ValueError):
    """An entry's ``weights`` lack what their format needs, or a cached file is not the published one."""


def file_name(url: str) -> str:
    """The file name at the end of ``url``'s path (percent-decoded)."""
    return os.path.basename(urllib.parse.unquote(urllib.parse.urlparse(url).path))


def converted_path(path: Path, digest: str) -> Path:
    """Where the conversion of the published file ``path`` whose digest is ``digest`` is cached."""
    return path.with_name(f"{path.stem}.{digest[:16]}.gluon_rcnn.pth")


def check_name_digest(got: str, name: str, algorithm: str, pattern: re.Pattern, publisher: str) -> None:
    """``got``, the ``algorithm`` digest of a file, must start with the hex prefix ``pattern`` finds in its
    published file ``name`` (torch.hub's ``check_hash``; detectron2's md5 prefix)."""
    m = pattern.search(name)
    if not m:
        raise ValueError(f"{name} carries no {algorithm} prefix")
    if not got.startswith(m.group(1)):
        raise ValueError(f"{algorithm} of the file is {got}; {publisher}'s file name {name} says it starts "
                         f"with {m.group(1)}")


class WeightSource:
    """One published format. Subclasses set the class attributes and implement :meth:`convert`."""

    #: ``weights.format`` of the zoo entries in this format
    format: str = ""
    #: how ``list_models(details=True)`` names such a file, e.g. ``"tensorpack npz"``
    label: str = ""
    #: the ``weights`` field naming what is converted (tensorpack's kind, torchvision's arch, ...)
    field: str = ""
    #: the file in errors, formatted with the value of ``field``: ``"tensorpack's {} checkpoint"``
    what: str = ""
    #: environment variable: a base URL (a mirror, a local server) replacing :attr:`base`
    url_env: str = ""
    #: the publisher's base URL
    base: str = ""

    def url(self, weights: dict) -> str:
        """Where the file is downloaded from: ``weights["url"]``, or ``$url_env`` + its file name when the
        variable is set (:mod:`.gluoncv` and :mod:`.detectron2` keep more of the path)."""
        url = weights.get("url") or ""
        base = os.environ.get(self.url_env, "").strip() if self.url_env else ""
        return base.rstrip("/") + "/" + file_name(url) if url and base else url

    def checksums(self, weights: dict, sha256: str | None = None) -> dict:
        """``download()``'s ``sha256``/``sha1``/``sha256_prefix`` and the ``key`` the conversion is cached
        under (None: the file's sha256). ``sha256``: the caller's expected digest of the file, where the
        entry has none."""
        return {"key": None, "sha256": weights.get("sha256") or sha256 or None, "sha1": weights.get("sha1") or None,
                "sha256_prefix": None}

    def convert(self, path: Path, weights: dict, url: str, digest: str, dest: Path) -> Path:
        """Check and convert the published file ``path`` into the gluon_rcnn checkpoint ``dest`` (written
        atomically by :func:`~gluon_rcnn.convert.checkpoint.save_checkpoint`); raise if it is not the file."""
        raise NotImplementedError

    def fetch_and_convert(self, weights: dict, sha256: str | None = None) -> Path:
        """The cached gluon_rcnn checkpoint converted from the file ``weights`` describe: downloaded (a
        download :meth:`convert` rejects never enters the cache) and converted once. Raises
        :class:`WeightSourceError` when ``weights`` lack :attr:`field` or the cached file is not the
        publisher's; :class:`~gluon_rcnn.download.DownloadError` when it cannot be downloaded."""
        value = weights.get(self.field)
        if not value:
            raise WeightSourceError(f"weights of format {self.format!r} need a {self.field!r}")
        url = self.url(weights)
        sums = self.checksums(weights, sha256)
        key, sha256 = sums["key"], sums["sha256"]
        what = self.what.format(value)
        filename = weights.get("filename") or file_name(weights["url"])
        src = cached_path(url, filename)

        def convert_download(part: Path) -> None:  # before the file is moved into place: it must convert
            digest = (key or sha256 or file_digest(part)).lower()
            self.convert(part, weights, url, digest, converted_path(src, digest))

        path = download(url, sha256=sha256, sha1=sums["sha1"], sha256_prefix=sums.get("sha256_prefix"),
                        filename=filename, validate=convert_download)
        digest = (key or sha256 or recorded_sha256(path) or file_digest(path)).lower()
        converted = converted_path(path, digest)
        if not converted.is_file():  # a file put there by hand, or a cache from before
            try:
                self.convert(path, weights, url, digest, converted)
            except Exception as err:  # noqa: BLE001 - the file is not the published one
                raise WeightSourceError(
                    f"{path} (the cached file of {url}, digest {digest}) is not {what}: {type(err).__name__}: "
                    f"{err}. Delete it (and {path}.sha256) to download it again, or download it by hand ({url}) "
                    f"and put it at {path}") from None
        for old in path.parent.glob(f"{path.stem}.*.gluon_rcnn.pth"):
            if old != converted:  # a conversion of an earlier file of that name
                old.unlink(missing_ok=True)
        return converted


_SOURCES: dict[str, WeightSource] = {}


def register(cls: type[WeightSource]) -> type[WeightSource]:
    """Class decorator: make an instance of ``cls`` the source of ``cls.format``."""
    if not cls.format or cls.format in _SOURCES:
        raise ValueError(f"weight source format {cls.format!r} is empty or registered twice")
    _SOURCES[cls.format] = cls()
    return cls


def weight_source(fmt: str | None) -> WeightSource | None:
    """The source registered for ``weights.format`` ``fmt``; None for a plain gluon_rcnn checkpoint (no
    format) or an unknown one."""
    return _SOURCES.get(fmt or "")


def formats() -> list[str]:
    """The registered formats."""
    return sorted(_SOURCES)
