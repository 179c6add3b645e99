"""Named zoo entries → config + weights. GluonCV's face: ``get_model``, ``list_models``.

Each entry is one JSON file in the repository's top-level ``model_zoo/`` folder (installed as
the package data ``gluon_rcnn/zoo_entries``), of the form::

    {"name": "...", "description": "...",
     "config": {KEY: VALUE or {SECTION KEY: VALUE}},   # overrides of the default config
     "dataset": "coco" | "rgz" | "demo",                 # names the classes
     "recipe": {"schedule": "1x", "total_batch": 8, "augmentation": "..."},
     "reference": {"source": "...", "box_AP": 38.2, "mask_AP": 34.8, "note": "..."},  # theirs, not ours
     "weights": {"url": "", "sha256": ""}}               # ours, when trained

``get_model(name, pretrained=PATH_OR_URL)`` verifies the file's sha256 where one is known (the
entry's, or ``sha256=`` given), loads it with ``weights_only=True`` and returns the model in eval
mode. ``pretrained=True`` uses the entry's own weights.
"""
from __future__ import annotations

import hashlib
import json
import os
import urllib.parse
import urllib.request
from functools import lru_cache
from pathlib import Path

import torch

from .config import Config, ConfigError, get_default_config, load_config

__all__ = ["get_model", "list_models", "get_entry", "get_config", "COCO_CLASSES", "ZooError"]

COCO_CLASSES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush")
RGZ_CLASSES = ("1C_1P", "1C_2P", "1C_3P", "2C_2P", "2C_3P", "3C_3P")
DATASET_CLASSES = {"coco": COCO_CLASSES, "rgz": RGZ_CLASSES, "demo": RGZ_CLASSES}


class ZooError(KeyError, ValueError):
    def __str__(self):
        return str(self.args[0]) if self.args else ""


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


def list_models() -> list[str]:
    """Names of every zoo entry, sorted."""
    return sorted(_entries())


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


def sha256sum(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch(url: str, sha256: str | None) -> str:
    """A local path for ``url``: a file path, file://, or http(s):// downloaded once into the cache
    (``$GLUON_RCNN_HOME``, default ~/.cache/gluon_rcnn), keyed by the URL."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme in ("", "file"):
        path = parsed.path if parsed.scheme == "file" else url
        if not os.path.isfile(path):
            raise FileNotFoundError(f"weights file {path} does not exist")
        return path
    if parsed.scheme not in ("http", "https"):
        raise ValueError(f"unsupported weights URL scheme {parsed.scheme!r} in {url}")
    cache = Path(os.environ.get("GLUON_RCNN_HOME", Path.home() / ".cache" / "gluon_rcnn"))
    cache.mkdir(parents=True, exist_ok=True)
    key = hashlib.sha256(url.encode()).hexdigest()[:12]
    dest = cache / f"{key}-{os.path.basename(parsed.path) or 'weights.pth'}"
    if not dest.exists():
        tmp = dest.with_suffix(dest.suffix + ".part")
        urllib.request.urlretrieve(url, tmp)  # noqa: S310 - http(s) only, checked above
        os.replace(tmp, dest)
    return str(dest)


def _read_checkpoint(path_or_url: str, sha256: str | None):
    """(state_dict, saved config dict or None) of a checkpoint file, sha256-checked, weights_only."""
    path = _fetch(path_or_url, sha256)
    if sha256:
        got = sha256sum(path)
        if got != sha256.lower():
            if path != path_or_url and urllib.parse.urlparse(path_or_url).scheme in ("http", "https"):
                os.remove(path)  # a bad download must not poison the cache
            raise ValueError(f"sha256 of {path_or_url} is {got}, expected {sha256}: refusing to load")
    state = torch.load(path, map_location="cpu", weights_only=True)
    saved_cfg = None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        saved_cfg = state.get("config") if isinstance(state.get("config"), dict) else None
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no state dict")
    return state, saved_cfg, path


def load_weights(model: torch.nn.Module, path_or_url: str, sha256: str | None = None) -> None:
    """Load a checkpoint (a state dict, or a dict with ``model``) into ``model``, strictly.

    The file's sha256 is checked against ``sha256`` when given; loading uses ``weights_only=True``.
    """
    state, _, path = _read_checkpoint(path_or_url, sha256)
    _load_state(model, state, path)


def _load_state(model, state, path):
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"weights {path} do not fit the model: missing {list(missing)[:5]}, "
                         f"unexpected {list(unexpected)[:5]}")


def get_model(name: str, pretrained=None, *, sha256: str | None = None, config: str | None = None,
              overrides=(), classes=None, device=None):
    """Build the zoo entry ``name`` in eval mode.

    pretrained: None/False (random init, or ImageNet backbone if the config names one), True (the
        entry's published weights), or a path / URL of a checkpoint.
    sha256: expected digest of the weights file (the entry's is used for ``pretrained=True``).
    config: a JSON config file applied on top of the entry; overrides: KEY=VALUE strings after it.
    classes: class names when the model was trained on a custom dataset (sets DATA.NUM_CATEGORY).
    """
    from .detector import build_model

    cfg = get_config(name, finalize=False)
    state = None
    if pretrained:
        if pretrained is True:
            w = get_entry(name).get("weights", {})
            if not w.get("url"):
                raise ZooError(f"zoo entry {name!r} has no published weights yet; pass pretrained=PATH "
                               "to a checkpoint you trained")
            state, saved, path = _read_checkpoint(w["url"], w.get("sha256") or sha256)
        else:
            state, saved, path = _read_checkpoint(str(pretrained), sha256)
        if saved:
            # a checkpoint written by our trainer carries the config it was trained with
            # (classes, sizes, heads): that is the model these weights belong to
            try:
                cfg.update_dict({k: v for k, v in saved.items() if k != "TRAIN"})
            except ConfigError as err:
                raise ConfigError(f"config saved in {path}: {err}") from None
        cfg.BACKBONE.WEIGHTS = ""  # the checkpoint holds the whole model
    if classes is not None:
        cfg.DATA.NUM_CATEGORY = len(classes)
        cfg.DATA.CLASS_NAMES = list(classes)
    cfg = load_config(config, overrides, base=cfg)
    model = build_model(cfg)
    if state is not None:
        _load_state(model, state, path)
    if device is not None:
        model.to(device)
    return model.eval()
