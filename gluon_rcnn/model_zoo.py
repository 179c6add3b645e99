"""Named zoo entries → config + weights. GluonCV's face: ``get_model``, ``list_models``.

Each entry is one JSON file in the repository's top-level ``model_zoo/`` folder (installed as
the package data ``gluon_rcnn/zoo_entries``), of the form::

    {"name": "...", "description": "...",
     "config": {KEY: VALUE or {SECTION KEY: VALUE}},   # overrides of the default config
     "dataset": "coco" | "rgz" | "demo" | "voc" | "cityscapes" | "lvis",  # names the classes (or the
                                                         # config's DATA.CLASS_NAMES do)
     "recipe": {"schedule": "1x", "total_batch": 8, "augmentation": "..."},
     "reference": {"source": "...", "box_AP": 38.2, "mask_AP": 34.8, "metric": "...", "note": "..."},  # theirs
     "weights": {"url": "", "sha256": ""},               # published weights: url, sha256 and/or sha1
     "reproduced": "yes: ..." | "architecture compared via ..." | "no: ..." | "no"}  # vs the publisher's code

``get_model(name, pretrained=PATH_OR_URL)`` verifies the file's sha256 where one is known (the
entry's, or ``sha256=`` given), loads it with ``weights_only=True`` and returns the model in eval
mode. ``pretrained=True`` uses the entry's own weights, downloaded into the cache by
:func:`gluon_rcnn.download.download` (``$GLUON_RCNN_HOME``; an optional ``"filename"`` in
``weights`` names the cached file, else the URL's file name).

Published tensorpack checkpoints: ``"weights": {"url": ".../COCO-MaskRCNN-R50C41x.npz", "sha256": "",
"format": "tensorpack-npz", "kind": "COCO-MaskRCNN-R50C41x"}`` (written by bench/build_zoo.py for the
entries of :data:`gluon_rcnn.convert.tensorpack.TENSORPACK_KINDS`). ``pretrained=True`` downloads the
npz (rejected before it enters the cache when it does not convert), records the sha256 it saw
(tensorpack publishes none; later loads check the file against it), converts it with
:func:`~gluon_rcnn.convert.tensorpack.from_tensorpack` and caches the converted checkpoint beside it as
``<npz stem>.<first 16 hex of the npz's sha256>.gluon_rcnn.pth``: later calls load that without
converting; a different npz (other sha256) is converted again. ``$GLUON_RCNN_TENSORPACK_URL`` (a base
URL, e.g. a mirror) replaces ``http://models.tensorpack.com/FasterRCNN/``; the cached file keeps the
published name. :func:`list_models` with ``details=True`` says which entries have published weights.

Published GluonCV parameters: ``"weights": {"url": ".../gluon/models/<name>-<sha1[:8]>.zip", "sha1":
"<GluonCV's sha1 of the .params>", "format": "gluoncv-params", "name": "<GluonCV net name>"}`` (written
by bench/build_zoo.py from GluonCV's model_store.py for the names :func:`~gluon_rcnn.convert.gluoncv.from_gluoncv`
converts). ``pretrained=True`` downloads the .zip, reads only its member ``<name>-<sha1[:8]>.params``
(nothing is extracted to disk, no other member is read), checks that file's sha1 against GluonCV's,
converts it and caches the converted checkpoint beside the .zip as ``<zip stem>.<first 16 hex of the
sha1>.gluon_rcnn.pth``; a .zip whose .params has another sha1 or does not convert is rejected before it
enters the cache. A .zip put there by hand is checked the same way. ``$GLUON_RCNN_GLUONCV_URL`` (like
GluonCV's ``$MXNET_GLUON_REPO``) replaces ``https://apache-mxnet.s3-accelerate.dualstack.amazonaws.com/``:
the file is then ``$BASE/gluon/models/<the zip's file name>``. GluonCV's legacy RPN anchors, which
``from_gluoncv`` sets outside the config, are saved in the converted checkpoint and set again on load.

Published torchvision weights: ``"weights": {"url": "https://download.pytorch.org/models/<name>-<sha256[:8]>.pth",
"sha256_prefix": "...", "format": "torchvision-pth", "arch": "fasterrcnn_resnet50_fpn"}`` (written by
bench/build_zoo.py from torchvision's weights enums). ``pretrained=True`` downloads the .pth, checks that its
sha256 starts with the prefix in its name (torch.hub's ``check_hash``; the full sha256 is recorded as for
tensorpack), loads it with ``weights_only=True`` into torchvision's model as its builder makes it for those
weights (:func:`torchvision_model`), converts it with :func:`~gluon_rcnn.convert.torchvision.from_torchvision`
and caches the conversion beside it. ``$GLUON_RCNN_TORCHVISION_URL`` replaces
``https://download.pytorch.org/models/``.

Published detectron2 weights: ``"weights": {"url": "https://dl.fbaipublicfiles.com/detectron2/<config path>/<model
id>/model_final_<md5[:6]>.pkl", "format": "detectron2-pkl", "kind": "<config path>"}`` (the rows of
:data:`gluon_rcnn.convert.detectron2.DETECTRON2_KINDS`). ``pretrained=True`` downloads the .pkl, checks that its md5
starts with the 6 hex in its name (detectron2's MODEL_ZOO.md: "any model on this page contains its md5 prefix in
its file name"), converts it with :func:`~gluon_rcnn.convert.detectron2.from_detectron2` (a restricted
unpickler) and caches the conversion beside it; the file's sha256 is recorded as for tensorpack.
``$GLUON_RCNN_DETECTRON2_URL`` replaces ``https://dl.fbaipublicfiles.com/detectron2/`` (the path after it is kept).

The four formats share one path (:func:`_cached_conversion`): a download that does not convert never enters
the cache, a file put there by hand is checked and converted the same way, and the error of a bad one names
it, the URL and what to do.

A checkpoint written by the trainer (``{"model": state_dict, "config": cfg.to_dict()}``) carries
the config it was trained with. Its keys fall in two kinds:

* **architecture** (:data:`ARCHITECTURE_KEYS`): they decide which parameters exist and their
  shapes, or how the network computes its outputs from them (norm layers, anchors, box coding,
  RoI pooling). The checkpoint must agree with the entry (plus the ``config``/``overrides`` given
  to ``get_model``) on each of them, else ``get_model`` refuses, naming both architectures. A key
  is compared only where it is used (e.g. ``RPN.HEAD_DIM`` for C4 models only).
* **dataset / recipe**: everything else, e.g. ``DATA.NUM_CATEGORY`` and ``DATA.CLASS_NAMES`` (a
  model fine-tuned on a custom dataset keeps the entry's architecture with its own classes),
  ``PREPROC.*`` (sizes, pixel statistics), ``TEST.*`` thresholds, proposal counts and NMS
  (``RPN.*_TOPK``, ``FPN.PROPOSAL_MODE``), ``TRAIN.*``. These are taken from the checkpoint; the
  ones that differ from the entry are reported in one log line.

Keys of the saved config that this version does not know (a checkpoint written by an older
version, e.g. ``TRAIN.STEPS_PER_EPOCH``) are skipped with a warning naming them; the model is built
from the known keys and the strict state-dict load decides (its error then names those keys).
"""
from __future__ import annotations

import json
import logging
import os
import re
import reprlib
import urllib.parse
import warnings
from functools import lru_cache
from pathlib import Path

import torch

from .config import Config, ConfigError, get_default_config, load_config
from .download import cached_path, download, file_digest, recorded_sha256

__all__ = ["get_model", "list_models", "get_entry", "get_config", "describe", "COCO_CLASSES", "ZooError",
           "ARCHITECTURE_KEYS", "weights_url", "TENSORPACK_URL_ENV",
           "GLUONCV_URL_ENV", "TORCHVISION_URL_ENV", "DETECTRON2_URL_ENV", "torchvision_model"]

logger = logging.getLogger(__name__)

from .structures.categories import COCO_CLASSES, RGZ_CLASSES  # noqa: E402 - re-exported here

DATASET_CLASSES = {"coco": COCO_CLASSES, "rgz": RGZ_CLASSES, "demo": RGZ_CLASSES}


class ZooError(KeyError, ValueError):
    def __str__(self):
        return str(self.args[0]) if self.args else ""


# Where a key is used: a key is compared only when the entry's or the checkpoint's model uses it.
_WHERE = {
    "always": lambda c: True,
    "FPN": lambda c: bool(c.MODE_FPN),
    "C4": lambda c: not c.MODE_FPN,
    "v1d": lambda c: c.BACKBONE.VARIANT == "v1d",
    "FPN conv box head": lambda c: bool(c.MODE_FPN) and c.FPN.FRCNN_HEAD_FUNC != "fastrcnn_2fc_head",
    "mask": lambda c: bool(c.MODE_MASK),
    "FPN mask": lambda c: bool(c.MODE_FPN and c.MODE_MASK),
    "cascade": lambda c: bool(c.MODE_FPN and c.FPN.CASCADE),
    "FPN GN": lambda c: bool(c.MODE_FPN) and c.FPN.NORM == "GN",
    "FPN GN head": lambda c: bool(c.MODE_FPN) and (c.FPN.FRCNN_HEAD_FUNC == "fastrcnn_4conv1fc_gn_head" or bool(
        c.MODE_MASK and c.FPN.MRCNN_HEAD_FUNC == "maskrcnn_up4conv_gn_head")),
    "not cascade": lambda c: not (c.MODE_FPN and c.FPN.CASCADE),
}

#: The saved-config keys that define the *architecture* of a checkpoint: the parameters that exist
#: and their shapes, or the computation those parameters were trained for. ``get_model(name,
#: pretrained=ckpt)`` refuses a checkpoint that differs from the entry on any of them (each is
#: compared where it is used, the value here). Every other key (classes, PREPROC sizes and pixel
#: statistics, TEST thresholds, RPN proposal counts/NMS, TRAIN.*) is dataset/recipe: taken from
#: the checkpoint.
ARCHITECTURE_KEYS = {
    # which detector
    "MODE_MASK": "always",
    "MODE_FPN": "always",
    "FPN.CASCADE": "always",
    # backbone
    "BACKBONE.RESNET_NUM_BLOCKS": "always",
    "BACKBONE.VARIANT": "always",
    "BACKBONE.NORM": "always",
    "BACKBONE.STRIDE_1X1": "always",  # same parameters, another computation (detectron2's MSRA trunks)
    "BACKBONE.STEM_WIDTH": "v1d",
    # FPN neck
    "FPN.NUM_CHANNEL": "FPN",
    "FPN.NORM": "FPN",
    "FPN.GN_CONV_BIAS": "FPN GN",
    "FPN.TOP_BLOCK": "FPN",           # P6 by max-pool (no parameters) or by a conv (GluonCV)
    "FPN.RPN_HEAD_DIM": "FPN",        # the RPN conv's width (GluonCV: 1024)
    "FPN.ROI_LEVEL_RULE": "FPN",      # which level a RoI is pooled from
    "FPN.FRCNN_POOL_AVG": "FPN",      # 14x14 pool + average pool before fc6 (same fc6 shape: GluonCV)
    # RPN: head width, anchors per location and where they sit, box coding
    "RPN.HEAD_DIM": "C4",
    "RPN.ANCHOR_SIZES": "always",
    "RPN.ANCHOR_RATIOS": "always",
    "RPN.ANCHOR_STRIDE_FROM_SIZE": "always",
    "RPN.ANCHOR_ROUNDING": "always",  # the anchors the RPN's deltas were trained against (<= 0.5 px apart)
    "RPN.LEGACY_ANCHORS": "always",   # GluonCV's Detectron-1 anchors (width 31 centred at 7.5 for size 32)
    "RPN.BBOX_REG_WEIGHTS": "always",
    # box head(s): RoI pooling, head function and widths, box coding (per cascade stage)
    "FRCNN.ROI_ALIGNED": "always",
    "FRCNN.ROI_SAMPLING_RATIO": "always",
    "FPN.FRCNN_HEAD_FUNC": "FPN",
    "FPN.FRCNN_FC_HEAD_DIM": "FPN",
    "FPN.FRCNN_CONV_HEAD_DIM": "FPN conv box head",
    "FRCNN.BBOX_REG_WEIGHTS": "not cascade",
    "CASCADE.BBOX_REG_WEIGHTS": "cascade",
    # mask head
    "FPN.MRCNN_HEAD_FUNC": "FPN mask",
    "MRCNN.HEAD_DIM": "mask",
    "MRCNN.RESOLUTION": "FPN mask",  # C4 heads always predict 14x14
    # GN conv heads (box and/or mask): conv bias and where the GN sits
    "FPN.GN_HEAD_ORDER": "FPN GN head",
}

# dataset/recipe keys not worth reporting when a checkpoint brings them (where files lived)
_NOT_REPORTED = ("BACKBONE.WEIGHTS", "DATA.BASEDIR", "DATA.NUM_WORKERS")

_DEPTHS = {(2, 2, 2, 2): 18, (3, 4, 6, 3): 50, (3, 4, 23, 3): 101}


def describe(cfg, classes: bool = False) -> str:
    """The architecture of ``cfg`` in words, e.g. ``'Mask R-CNN C4 ResNet-101 v1d'`` (with
    ``classes``: ``'... (2 classes)'``)."""
    b = cfg.BACKBONE
    blocks = tuple(int(n) for n in b.RESNET_NUM_BLOCKS)
    depth = _DEPTHS.get(blocks)
    words = ["Cascade" if cfg.MODE_FPN and cfg.FPN.CASCADE else "",
             "Mask R-CNN" if cfg.MODE_MASK else "Faster R-CNN", "FPN" if cfg.MODE_FPN else "C4"]
    if b.NORM != "FreezeBN":
        words.append("no-norm" if b.NORM == "None" else b.NORM)
    if cfg.MODE_FPN and cfg.FPN.NORM == "GN" and b.NORM != "GN":
        words.append("GN-FPN")
    words += [f"ResNet-{depth}" if depth else f"ResNet{list(blocks)}", b.VARIANT]
    text = " ".join(w for w in words if w)
    if classes:
        text += f" ({cfg.DATA.NUM_CATEGORY} classes)"
    return text


def _same(a, b) -> bool:
    """Config values equal up to int/float and list/tuple."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def architecture_differences(a, b) -> list[str]:
    """``KEY: a_value vs b_value`` for each :data:`ARCHITECTURE_KEYS` key used by ``a`` or ``b``
    on which the two configs disagree."""
    out = []
    for key, where in ARCHITECTURE_KEYS.items():
        used = _WHERE[where]
        if not (used(a) or used(b)):
            continue
        va, vb = a.get_key(key), b.get_key(key)
        if not _same(va, vb):
            out.append(f"{key}: {va!r} vs {vb!r}")
    return out


def _apply_checkpoint_config(cfg, saved: dict, requested, name: str, path: str) -> list[str]:
    """Apply the config saved in checkpoint ``path`` onto ``cfg`` (the entry's config) after
    checking its architecture against ``requested`` (the entry + the caller's config/overrides).
    Returns the saved keys this version does not know (warned about)."""
    seen = requested.clone()
    try:
        unknown = seen.update_dict(saved, unknown="report")
    except ConfigError as err:
        raise ConfigError(f"config saved in {path}: {err}") from None
    diffs = architecture_differences(requested, seen)
    if diffs:
        raise ZooError(
            f"{name} is a {describe(requested)}; {path} holds a {describe(seen, classes=True)}: they differ in "
            f"{'; '.join(diffs)} (entry vs checkpoint). Load it with the zoo entry it was trained from, or pass "
            "the keys you changed for training as overrides=[...] (--config KEY=VALUE)")
    if unknown:
        warnings.warn(f"{path}: its saved config has keys this version of gluon_rcnn does not know, ignored: "
                      f"{', '.join(unknown)} (written by another version; the strict weight load decides whether "
                      "they mattered)", stacklevel=3)
    entry = cfg.clone()
    cfg.update_dict(saved, unknown="report")
    short = reprlib.Repr()
    short.maxlist, short.maxstring, short.maxother = 4, 40, 40
    changed, n_train = [], 0
    for key, old in entry.flat_items():
        new = cfg.get_key(key)
        if key in ARCHITECTURE_KEYS or key in _NOT_REPORTED or _same(old, new):
            continue
        if key.startswith("TRAIN."):
            n_train += 1
        else:
            changed.append(f"{key} {short.repr(old)} -> {short.repr(new)}")
    if changed or n_train:
        tail = f"{'; and ' if changed else ''}{n_train} TRAIN.* recipe key(s)" if n_train else ""
        logger.warning("%s: dataset/recipe settings taken from %s: %s%s", name, path, "; ".join(changed), tail)
    return unknown


def _zoo_dir() -> Path:
    """Installed: the top-level model_zoo/ folder travels as gluon_rcnn/zoo_entries (setup.py);
    in a source checkout it is model_zoo/ beside the package."""
    here = Path(__file__).resolve().parent
    installed = here / "zoo_entries"
    return installed if installed.is_dir() else here.parent / "model_zoo"


@lru_cache(maxsize=None)
def _entries() -> dict:
    out = {}
    d = _zoo_dir()
    if not d.is_dir():
        raise ZooError(f"the model zoo folder {d} is missing: reinstall gluon_rcnn")
    for f in sorted(d.glob("*.json")):
        try:
            e = json.loads(f.read_text())
        except json.JSONDecodeError as err:
            raise ZooError(f"zoo entry {f} is not valid JSON: {err}") from None
        name = e.get("name")
        if name != f.stem:
            raise ZooError(f"zoo entry {f} has name {name!r}; it must equal the file name")
        out[name] = e
    return out


#: environment variable: a base URL replacing tensorpack's (``http://models.tensorpack.com/FasterRCNN/``)
#: for every ``tensorpack-npz`` entry, e.g. a mirror or a local server: ``$BASE/<the npz's file name>``
TENSORPACK_URL_ENV = "GLUON_RCNN_TENSORPACK_URL"
TENSORPACK_FORMAT = "tensorpack-npz"
#: environment variable: a repository base URL replacing GluonCV's (as its ``$MXNET_GLUON_REPO``) for every
#: ``gluoncv-params`` entry: ``$BASE/gluon/models/<the zip's file name>``
GLUONCV_URL_ENV = "GLUON_RCNN_GLUONCV_URL"
GLUONCV_FORMAT = "gluoncv-params"
#: environment variable: a base URL replacing torchvision's (``https://download.pytorch.org/models/``) for
#: every ``torchvision-pth`` entry: ``$BASE/<the .pth's file name>``
TORCHVISION_URL_ENV = "GLUON_RCNN_TORCHVISION_URL"
TORCHVISION_FORMAT = "torchvision-pth"
TORCHVISION_BASE = "https://download.pytorch.org/models/"
#: environment variable: a base URL replacing detectron2's (``https://dl.fbaipublicfiles.com/detectron2/``) for
#: every ``detectron2-pkl`` entry, keeping the path after it: ``$BASE/<config path>/<model id>/model_final_*.pkl``
DETECTRON2_URL_ENV = "GLUON_RCNN_DETECTRON2_URL"
DETECTRON2_FORMAT = "detectron2-pkl"
DETECTRON2_BASE = "https://dl.fbaipublicfiles.com/detectron2/"
_MAX_PARAMS_BYTES = 4 << 30  # a zip member announcing more is not GluonCV's R-CNN file


def _file_name(url: str) -> str:
    return os.path.basename(urllib.parse.unquote(urllib.parse.urlparse(url).path))


def weights_url(entry: dict) -> str:
    """Where ``entry``'s published weights are downloaded from: its ``weights.url``, or under the base
    URL of ``$GLUON_RCNN_{TENSORPACK,GLUONCV,TORCHVISION,DETECTRON2}_URL`` when the variable of the
    entry's format is set; ``""`` when the entry has none."""
    w = entry.get("weights") or {}
    url = w.get("url") or ""
    base = os.environ.get(TENSORPACK_URL_ENV, "").strip()
    if url and base and w.get("format") == TENSORPACK_FORMAT:
        url = base.rstrip("/") + "/" + _file_name(url)
    base = os.environ.get(GLUONCV_URL_ENV, "").strip()
    if url and base and w.get("format") == GLUONCV_FORMAT:
        url = base.rstrip("/") + "/gluon/models/" + _file_name(url)
    base = os.environ.get(TORCHVISION_URL_ENV, "").strip()
    if url and base and w.get("format") == TORCHVISION_FORMAT:
        url = base.rstrip("/") + "/" + _file_name(url)
    base = os.environ.get(DETECTRON2_URL_ENV, "").strip()
    if url and base and w.get("format") == DETECTRON2_FORMAT and url.startswith(DETECTRON2_BASE):
        url = base.rstrip("/") + "/" + url[len(DETECTRON2_BASE):]
    return url


def _weights_row(name: str, e: dict) -> dict:
    w = e.get("weights") or {}
    url = weights_url(e)
    if not url:
        return {"name": name, "weights": None, "file": None, "reproduced": e.get("reproduced", "no")}
    what = {TENSORPACK_FORMAT: "tensorpack npz", GLUONCV_FORMAT: "gluoncv params",
            TORCHVISION_FORMAT: "torchvision pth", DETECTRON2_FORMAT: "detectron2 pkl"}.get(w.get("format"), "checkpoint")
    try:
        file = str(cached_path(url, w.get("filename") or _file_name(w["url"])))
    except ValueError:
        file = None
    return {"name": name, "weights": f"{what} {url}", "file": file, "reproduced": e.get("reproduced", "no")}


def list_models(details: bool = False) -> list:
    """Names of every zoo entry, sorted.

    details=True: one dict per entry instead, ``{"name", "weights", "file", "reproduced"}``: ``weights`` is
    ``'tensorpack npz <url>'`` (tensorpack's published file, converted on load), ``'gluoncv params
    <url>'`` (GluonCV's published .zip, its .params converted on load), ``'torchvision pth <url>'``,
    ``'detectron2 pkl <url>'`` or ``'checkpoint <url>'`` for an entry ``get_model(name, pretrained=True)``
    can load, else None; ``file`` is where the download is cached and where a file downloaded by hand is
    picked up (None without weights); ``reproduced`` says whether this library's outputs were compared
    numerically with the publisher's code (the entry's ``"reproduced"``, e.g. ``'yes: ...'`` or ``'no'``).
    ``python -m gluon_rcnn.cli.weights list`` prints the same."""
    if not details:
        return sorted(_entries())
    return [_weights_row(n, e) for n, e in sorted(_entries().items())]


def get_entry(name: str) -> dict:
    e = _entries().get(name)
    if e is None:
        close = [m for m in list_models() if name.split("_")[0] in m][:8]
        raise ZooError(f"no zoo entry {name!r}; see gluon_rcnn.list_models() (e.g. {close})")
    return json.loads(json.dumps(e))


def get_config(name: str, overrides=(), finalize: bool = True) -> Config:
    """The entry's config (defaults + the entry's values + ``overrides`` KEY=VALUE strings)."""
    e = get_entry(name)
    cfg = get_default_config()
    try:
        cfg.update_dict(e.get("config", {}))
    except ConfigError as err:
        raise ConfigError(f"zoo entry {name}: {err}") from None
    classes = DATASET_CLASSES.get(e.get("dataset", ""))
    if classes and not cfg.DATA.CLASS_NAMES:
        cfg.DATA.NUM_CATEGORY = len(classes)
        cfg.DATA.CLASS_NAMES = list(classes)
    cfg.update_args(list(overrides))
    return cfg.finalize() if finalize else cfg


def _fetch(url: str, sha256: str | None, sha1: str | None = None, filename: str | None = None) -> str:
    """A local path for ``url``: a file path, file://, or http(s):// downloaded once into the cache
    (``$GLUON_RCNN_HOME/weights``, default ~/.cache/gluon_rcnn/weights; see :mod:`.download`:
    progress bar, timeout, atomic, resumable, sha256/sha1-checked, a file put there by hand is used)."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme == "file" else url
        if not os.path.isfile(path):
            raise FileNotFoundError(f"weights file {path} does not exist")
        return path
    if parsed.scheme not in ("http", "https"):
        raise ValueError(f"unsupported weights URL scheme {parsed.scheme!r} in {url}")
    return str(download(url, sha256=sha256 or None, sha1=sha1 or None, filename=filename or None))


def _read_checkpoint(path_or_url: str, sha256: str | None, sha1: str | None = None, filename: str | None = None):
    """(state_dict, saved config dict or None) of a checkpoint file, sha256-checked, weights_only."""
    path = _fetch(path_or_url, sha256, sha1, filename)
    downloaded = urllib.parse.urlparse(path_or_url).scheme in ("http", "https")  # download() checked it
    if sha256 and not downloaded:
        got = file_digest(path, "sha256")
        if got != sha256.lower():
            raise ValueError(f"sha256 of {path_or_url} is {got}, expected {sha256}: refusing to load")
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved_cfg = None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        saved_cfg = state.get("config") if isinstance(state.get("config"), dict) else None
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no state dict")
    return state, saved_cfg, path


def _converted_path(npz: Path, digest: str) -> Path:
    return npz.with_name(f"{npz.stem}.{digest[:16]}.gluon_rcnn.pth")


def _convert_tensorpack(npz: Path, kind: str, url: str, digest: str, dest: Path) -> Path:
    """Convert tensorpack's ``npz`` (sha256 ``digest``) into the gluon_rcnn checkpoint ``dest``
    (``{"model", "config", "source"}``), written atomically; older conversions of the same file
    name are removed. Raises whatever the conversion raises."""
    from .convert.checkpoint import save_checkpoint
    from .convert.tensorpack import from_tensorpack

    logger.info("converting tensorpack's %s (%s) into %s", npz, kind, dest)
    return save_checkpoint(from_tensorpack(str(npz), kind), dest, {"url": url, "kind": kind, "npz_sha256": digest})


def _cached_conversion(url: str, filename: str, what: str, convert, *, key: str | None = None,
                       sha256: str | None = None, sha1: str | None = None) -> str:
    """The gluon_rcnn checkpoint converted from the published file ``url`` (cached as ``filename``):
    downloaded (a download ``convert`` rejects never enters the cache), converted once by
    ``convert(path, digest, dest)`` into ``<stem>.<digest[:16]>.gluon_rcnn.pth`` beside it. ``digest``
    is ``key`` (a publisher's checksum known beforehand), else the file's sha256 (the published one,
    or the one recorded at the first download). ``what`` names the file in errors ("tensorpack's ...")."""
    src = cached_path(url, filename)

    def convert_download(part: Path) -> None:  # before the file is moved into place: it must convert
        digest = (key or sha256 or file_digest(part)).lower()
        convert(part, digest, _converted_path(src, digest))

    path = download(url, sha256=sha256, sha1=sha1, filename=filename, validate=convert_download)
    digest = (key or sha256 or recorded_sha256(path) or file_digest(path)).lower()
    converted = _converted_path(path, digest)
    if not converted.is_file():  # a file put there by hand, or a cache from before
        try:
            convert(path, digest, converted)
        except Exception as err:  # noqa: BLE001 - the file is not the published one
            raise ZooError(f"{path} (the cached file of {url}, digest {digest}) is not {what}: "
                           f"{type(err).__name__}: {err}. Delete it (and {path}.sha256) to download it again, "
                           f"or download it by hand ({url}) and put it at {path}") from None
    for old in path.parent.glob(f"{path.stem}.*.gluon_rcnn.pth"):
        if old != converted:  # a conversion of an earlier file of that name
            old.unlink(missing_ok=True)
    return str(converted)


def _gluoncv_member(zip_path: Path, member: str, sha1: str) -> bytes:
    """The bytes of the single member ``member`` of GluonCV's .zip, read in memory (nothing is
    extracted: no path from the archive is ever used), its sha1 checked against ``sha1``."""
    import hashlib
    import zipfile

    try:
        with zipfile.ZipFile(zip_path) as zf:
            infos = {i.filename: i for i in zf.infolist()}
            info = infos.get(member)
            if info is None or info.is_dir():
                raise ValueError(f"the zip holds no {member} (members: {reprlib.repr(sorted(infos))})")
            if info.file_size > _MAX_PARAMS_BYTES:
                raise ValueError(f"{member} announces {info.file_size} bytes, more than any GluonCV R-CNN file")
            with zf.open(info) as f:  # zipfile checks the CRC and the announced size
                data = f.read(_MAX_PARAMS_BYTES + 1)
    except zipfile.BadZipFile as err:
        raise ValueError(f"not a zip file: {err}") from None
    got = hashlib.sha1(data).hexdigest()
    if got != sha1.lower():
        raise ValueError(f"{member} has sha1 {got}, expected GluonCV's {sha1.lower()}")
    return data


def _convert_gluoncv(data: bytes, gname: str, url: str, sha1: str, dest: Path) -> Path:
    """Convert GluonCV's .params ``data`` (net ``gname``, sha1 ``sha1``) into the gluon_rcnn checkpoint
    ``dest`` (``{"model", "config", "source"}``; the legacy anchors are in the config), written atomically."""
    from .convert.checkpoint import save_checkpoint
    from .convert.gluoncv import from_gluoncv

    logger.info("converting GluonCV's %s (sha1 %s) into %s", gname, sha1, dest)
    return save_checkpoint(from_gluoncv(data, gname), dest, {"url": url, "name": gname, "params_sha1": sha1})


def _gluoncv_checkpoint(name: str, w: dict) -> str:
    """The cached gluon_rcnn checkpoint converted from GluonCV's published .zip of entry ``name``:
    downloaded (a zip whose .params has the wrong sha1 or does not convert never enters the cache),
    converted once."""
    url, sha1 = weights_url({"weights": w}), (w.get("sha1") or "").strip().lower()
    gname = w.get("name") or name
    if not sha1:
        raise ZooError(f"zoo entry {name!r}: weights of format {GLUONCV_FORMAT!r} need GluonCV's 'sha1'")
    filename = w.get("filename") or _file_name(w["url"])
    member = w.get("member") or f"{Path(filename).stem}.params"

    def convert(zpath, digest, dest):
        return _convert_gluoncv(_gluoncv_member(zpath, member, sha1), gname, url, sha1, dest)

    return _cached_conversion(url, filename, f"GluonCV's {gname} zip", convert, key=sha1,
                              sha256=w.get("sha256") or None)


_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")  # torch.hub's HASH_REGEX


def _check_name_digest(got: str, file_name: str, algorithm: str, pattern, publisher: str) -> None:
    """``got``, the ``algorithm`` digest of a file, must start with the hex prefix ``pattern`` finds in its
    published ``file_name`` (torch.hub's ``check_hash``; detectron2's md5 prefix)."""
    m = pattern.search(file_name)
    if not m:
        raise ValueError(f"{file_name} carries no {algorithm} prefix")
    if not got.startswith(m.group(1)):
        raise ValueError(f"{algorithm} of the file is {got}; {publisher}'s file name {file_name} says it starts "
                         f"with {m.group(1)}")


def torchvision_model(arch: str):
    """torchvision's ``arch`` (``fasterrcnn_resnet50_fpn`` / ``maskrcnn_resnet50_fpn``) as built for its
    published COCO weights, without weights: FrozenBatchNorm2d trunk (``eps=0``, as its builder sets for the
    COCO_V1 weights), 3 trainable layers, 91 labels.
    (``arch(weights=None, weights_backbone=None)`` would build a BatchNorm2d trunk with every layer
    trainable: another architecture, and a state dict with ``num_batches_tracked`` keys the file lacks.)"""
    from torchvision.models import resnet50
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d

    cls = {"fasterrcnn_resnet50_fpn": FasterRCNN, "maskrcnn_resnet50_fpn": MaskRCNN}.get(arch)
    if cls is None:
        raise ZooError(f"unknown torchvision detector {arch!r} (known: fasterrcnn_resnet50_fpn, maskrcnn_resnet50_fpn)")
    from torchvision.models.detection._utils import overwrite_eps

    backbone = _resnet_fpn_extractor(resnet50(weights=None, norm_layer=FrozenBatchNorm2d), 3)
    model = cls(backbone, num_classes=91).eval()
    overwrite_eps(model, 0.0)  # as torchvision's builder does for its COCO_V1 weights
    return model


def _convert_torchvision(path: Path, arch: str, url: str, digest: str, dest: Path) -> Path:
    """Check torchvision's ``.pth`` against the sha256 prefix in its published name, load it
    (``weights_only``) into torchvision's ``arch``, convert (``from_torchvision``) and save to ``dest``."""
    from .convert.checkpoint import save_checkpoint
    from .convert.torchvision import from_torchvision

    _check_name_digest(digest, _file_name(url), "sha256", _HASH_IN_NAME, "torchvision")  # digest: its sha256
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no state dict")
    model = torchvision_model(arch)
    model.load_state_dict(state, strict=True)
    logger.info("converting torchvision's %s (%s) into %s", path, arch, dest)
    return save_checkpoint(from_torchvision(model), dest, {"url": url, "arch": arch, "pth_sha256": digest})


_MD5_IN_NAME = re.compile(r"_([a-f0-9]{6})\.pkl$")  # MODEL_ZOO.md: "its md5 prefix in its file name"


def _convert_detectron2(path: Path, kind: str, url: str, digest: str, dest: Path) -> Path:
    """Check detectron2's ``.pkl`` against the md5 prefix in its published name, convert it
    (restricted unpickler, ``from_detectron2``) and save to ``dest``."""
    from .convert.checkpoint import save_checkpoint
    from .convert.detectron2 import from_detectron2

    _check_name_digest(file_digest(path, "md5"), _file_name(url), "md5", _MD5_IN_NAME, "detectron2")
    logger.info("converting detectron2's %s (%s) into %s", path, kind, dest)
    return save_checkpoint(from_detectron2(str(path), kind), dest, {"url": url, "kind": kind, "pkl_sha256": digest})


#: format → (the weights field naming what to convert, its converter ``f(path, value, url, digest, dest)``,
#: how an error names the file)
_CONVERTERS = {TENSORPACK_FORMAT: ("kind", _convert_tensorpack, "tensorpack's {} checkpoint"),
               TORCHVISION_FORMAT: ("arch", _convert_torchvision, "torchvision's {} weights"),
               DETECTRON2_FORMAT: ("kind", _convert_detectron2, "detectron2's {} model")}


def _published_checkpoint(name: str, w: dict, sha256: str | None = None) -> str:
    """The cached gluon_rcnn checkpoint converted from the published file of entry ``name`` (a tensorpack
    npz, torchvision pth or detectron2 pkl): downloaded (a download that does not convert never enters the
    cache) and converted once. sha256: the caller's expected digest of the file, where the entry has none."""
    fmt = w.get("format")
    field, converter, what = _CONVERTERS[fmt]
    url, value = weights_url({"weights": w}), w.get(field)
    if not value:
        raise ZooError(f"zoo entry {name!r}: weights of format {fmt!r} need a {field!r}")

    def convert(path, digest, dest):
        return converter(path, value, url, digest, dest)

    return _cached_conversion(url, w.get("filename") or _file_name(w["url"]), what.format(value), convert,
                              sha256=w.get("sha256") or sha256 or None, sha1=w.get("sha1") or None)


def load_weights(model: torch.nn.Module, path_or_url: str, sha256: str | None = None) -> None:
    """Load a checkpoint (a state dict, or a dict with ``model``) into ``model``, strictly.

    The file's sha256 is checked against ``sha256`` when given; loading uses ``weights_only=True``.
    """
    state, _, path = _read_checkpoint(path_or_url, sha256)
    _load_state(model, state, path)


def _load_state(model, state, path, hint: str = ""):
    """Load ``state`` into ``model`` strictly: every tensor present, none extra, every shape equal;
    else a ValueError listing what does not fit (and ``hint``, the likely reason)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} in the file, {tuple(v.shape)} in the model" for k, v in own.items()
              if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or shapes:
        def few(items):
            return f"{items[:5]}" + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
        raise ValueError(f"weights {path} do not fit the model: missing {few(missing)}, unexpected "
                         f"{few(unexpected)}, shape mismatch {few(shapes)}{hint}")
    model.load_state_dict(state, strict=True)


def get_model(name: str, pretrained=None, *, sha256: str | None = None, config: str | None = None,
              overrides=(), classes=None, device=None):
    """Build the zoo entry ``name`` in eval mode.

    pretrained: None/False (random init, or ImageNet backbone if the config names one), True (the
        entry's published weights; a tensorpack npz, GluonCV's .params zip, torchvision's .pth or
        detectron2's .pkl is downloaded, converted once and the conversion cached, see the module
        docstring), or a path / URL of a checkpoint.
    sha256: expected digest of the weights file (the entry's is used for ``pretrained=True``; for a
        tensorpack entry, of the npz).
    config: a JSON config file applied on top of the entry; overrides: KEY=VALUE strings after it.
    classes: class names when the model was trained on a custom dataset (sets DATA.NUM_CATEGORY).

    A checkpoint's saved config must agree with the entry (after ``config`` and ``overrides``) on
    every :data:`ARCHITECTURE_KEYS` key used by either model, else a :class:`ZooError` names both
    architectures and the keys, e.g. ``mask_rcnn_resnet101_v1d_coco is a Mask R-CNN C4 ResNet-101
    v1d; model_final.pth holds a Faster R-CNN FPN ResNet-18 v1b (2 classes): ...``. Its other keys
    (classes, PREPROC, TEST, RPN proposal settings, TRAIN; see the module docstring) are taken
    from it, those differing from the entry reported in one ``logging`` warning; ``config``,
    ``overrides`` and ``classes`` still apply on top. Saved keys this version does not know are
    skipped with a ``UserWarning``. The weights are then loaded strictly (names and shapes).
    """
    from .builders import build_model

    cfg = get_config(name, finalize=False)
    state = None
    unknown: list[str] = []
    if pretrained:
        if pretrained is True:
            w = get_entry(name).get("weights", {})
            if not w.get("url"):
                raise ZooError(f"zoo entry {name!r} has no published weights yet; pass pretrained=PATH "
                               "to a checkpoint you trained")
            if w.get("format") in _CONVERTERS:
                state, saved, path = _read_checkpoint(_published_checkpoint(name, w, sha256), None)
            elif w.get("format") == GLUONCV_FORMAT:
                state, saved, path = _read_checkpoint(_gluoncv_checkpoint(name, w), None)
            else:
                state, saved, path = _read_checkpoint(w["url"], w.get("sha256") or sha256, w.get("sha1"),
                                                      w.get("filename"))
        else:
            state, saved, path = _read_checkpoint(str(pretrained), sha256)
        if saved:
            # a checkpoint written by our trainer carries the config it was trained with: its
            # architecture must be the entry's; its classes, sizes and thresholds come with it
            requested = cfg.clone()
            if classes is not None:
                requested.DATA.NUM_CATEGORY = len(classes)
                requested.DATA.CLASS_NAMES = list(classes)
            requested = load_config(config, overrides, base=requested)
            unknown = _apply_checkpoint_config(cfg, saved, requested, name, path)
        cfg.BACKBONE.WEIGHTS = ""  # the checkpoint holds the whole model
    if classes is not None:
        cfg.DATA.NUM_CATEGORY = len(classes)
        cfg.DATA.CLASS_NAMES = list(classes)
    cfg = load_config(config, overrides, base=cfg)
    model = build_model(cfg)
    if state is not None:
        hint = (f". The config saved in it has keys this version does not know ({', '.join(unknown)}): "
                "they likely changed the architecture the weights were trained for" if unknown else "")
        _load_state(model, state, path, hint)
    if device is not None:
        model.to(device)
    return model.eval()
