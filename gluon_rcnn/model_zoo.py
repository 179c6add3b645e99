"""Named zoo entries → config + weights. GluonCV's face: ``get_model``, ``list_models``.

Each entry is one JSON file in the repository's top-level ``model_zoo/`` folder (installed as
the package data ``gluon_rcnn/zoo_entries``), the zoo's only copy, of the form::

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

Weights published by another implementation carry a ``"format"``: ``tensorpack-npz``, ``gluoncv-params``,
``torchvision-pth`` or ``detectron2-pkl``. Each is a :class:`~gluon_rcnn.convert.source.WeightSource` beside
its converter (:mod:`gluon_rcnn.convert.tensorpack`, ``.gluoncv``, ``.torchvision``, ``.detectron2``: the
fields each needs, the checksums it checks, its ``$GLUON_RCNN_*_URL`` mirror variable): ``pretrained=True``
downloads the file (a download that does not convert never enters the cache), converts it once and caches
the gluon_rcnn checkpoint beside it (``<stem>.<digest[:16]>.gluon_rcnn.pth``); a file put there by hand is
checked and converted the same way. :func:`list_models` with ``details=True`` says which entries have
published weights.

A checkpoint written by the trainer (``{"model": state_dict, "config": cfg.to_dict()}``) carries
the config it was trained with. ``get_model`` builds the entry's model (plus the ``config``/``overrides``
given to it) and the checkpoint's on the meta device (:mod:`gluon_rcnn.zoo_check`); when their parameters
differ in names or shapes it refuses, naming both architectures, the config keys that make the difference
(found by building, each changed alone) and the tensors. The classes (``DATA.NUM_CATEGORY``,
``DATA.CLASS_NAMES``) always come from the checkpoint unless ``classes=`` is given: a model fine-tuned on a
custom dataset keeps the entry's architecture with its own classes. Every other key of the saved config
(``PREPROC.*`` sizes and pixel statistics, ``TEST.*`` thresholds, proposal counts and NMS, ``TRAIN.*``, and
the settings that change how the same parameters compute: anchors, box coding, RoI pooling) is taken from
the checkpoint, the weights' own; the ones that differ from the entry are reported in one log line, and
``config``/``overrides``/``classes`` still apply on top.

Keys of the saved config that this version does not know (a checkpoint written by an older
version, e.g. ``TRAIN.STEPS_PER_EPOCH``) are skipped with a warning naming them; the model is built
from the known keys and the strict state-dict load decides (its error then names those keys).
"""
from __future__ import annotations

import json
import logging
import os
import reprlib
import urllib.parse
import warnings
from functools import lru_cache
from pathlib import Path


from .config import Config, ConfigError, get_default_config, load_config
from .profiles import rule_names
from .convert.source import WeightSourceError, file_name, weight_source
from .download import cached_path, download, file_digest
from .utils.io import load_checkpoint
from .zoo_check import architecture_differences, describe, parameter_differences, same_value, signature

__all__ = ["get_model", "list_models", "get_entry", "get_config", "COCO_CLASSES", "ZooError",
           "RandomWeightsWarning"]

logger = logging.getLogger(__name__)

from .structures.categories import COCO_CLASSES, RGZ_CLASSES  # noqa: E402 - re-exported here

DATASET_CLASSES = {"coco": COCO_CLASSES, "rgz": RGZ_CLASSES, "demo": RGZ_CLASSES}


class ZooError(KeyError, ValueError):
    def __str__(self):
        return str(self.args[0]) if self.args else ""


class RandomWeightsWarning(UserWarning):
    """``get_model(name)`` without ``pretrained``: the detection heads are random (warned once per entry)."""


_WARNED_RANDOM: set[str] = set()


# dataset/recipe keys not worth reporting when a checkpoint brings them (where files lived)
_NOT_REPORTED = ("BACKBONE.WEIGHTS", "DATA.BASEDIR", "DATA.NUM_WORKERS")


def _check_architecture(requested, seen, classes_given: bool, name: str, path: str) -> None:
    """Refuse the checkpoint ``path`` (its config applied: ``seen``) when its model's parameters are not
    those of ``requested`` (the entry + the caller's config/overrides), both built on the meta device. The
    classes are the checkpoint's unless the caller gave ``classes``."""
    want = requested.clone()
    if not classes_given:
        want.DATA.NUM_CATEGORY, want.DATA.CLASS_NAMES = seen.DATA.NUM_CATEGORY, list(seen.DATA.CLASS_NAMES)
    try:
        sig_want, sig_seen = signature(want), signature(seen)
    except (ConfigError, ValueError) as err:
        raise ZooError(f"{name} with the config saved in {path} cannot be built: {err}") from None
    if sig_want == sig_seen:
        return
    keys = architecture_differences(want, seen, sig_want, sig_seen)
    params = parameter_differences(sig_want, sig_seen, few=3, names=("the entry's model", "the checkpoint"))
    raise ZooError(
        f"{name} is a {describe(requested)}; {path} holds a {describe(seen, classes=True)}: they differ in "
        f"{'; '.join(keys) or 'keys that change only together'} (entry vs checkpoint), which changes their "
        f"parameters ({params}). Load it with the zoo entry it was trained from, or pass the keys you changed "
        "for training as overrides=[...] (--config KEY=VALUE)")


def _apply_checkpoint_config(cfg, saved: dict, requested, classes_given: bool, name: str, path: str) -> list[str]:
    """Apply the config saved in checkpoint ``path`` onto ``cfg`` (the entry's config) after
    checking its architecture against ``requested`` (the entry + the caller's config/overrides).
    Returns the saved keys this version does not know (warned about)."""
    seen = requested.clone()
    try:
        unknown = seen.update_dict(saved, unknown="report")
    except ConfigError as err:
        raise ConfigError(f"config saved in {path}: {err}") from None
    _check_architecture(requested, seen, classes_given, name, path)
    if unknown:
        warnings.warn(f"{path}: its saved config has keys this version of gluon_rcnn does not know, ignored: "
                      f"{', '.join(unknown)} (written by another version; the strict weight load decides whether "
                      "they mattered)", stacklevel=3)
    entry = cfg.clone()
    cfg.update_dict(saved, unknown="report")
    short = reprlib.Repr()
    short.maxlist, short.maxstring, short.maxother = 4, 40, 40
    changed, n_train = [], 0
    old_rules, new_rules = rule_names(entry), rule_names(cfg)
    for rule, old in old_rules.items():  # rules as the choices they resolve to, never 'None'
        if not same_value(old, new_rules[rule]):
            changed.append(f"RULES.{rule} {short.repr(old)} -> {short.repr(new_rules[rule])}")
    for key, old in entry.flat_items():
        new = cfg.get_key(key)
        if key in _NOT_REPORTED or key.startswith("RULES.") or same_value(old, new):
            continue
        if key.startswith("TRAIN."):
            n_train += 1
        else:
            changed.append(f"{key} {short.repr(old)} -> {short.repr(new)}")
    if changed or n_train:
        tail = f"{'; and ' if changed else ''}{n_train} TRAIN.* recipe key(s)" if n_train else ""
        logger.warning("%s: settings taken from %s: %s%s", name, path, "; ".join(changed), tail)
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


def _weights_url(w: dict) -> str:
    """Where ``w`` (an entry's ``weights``) are downloaded from: its format's mirror variable applied."""
    source = weight_source(w.get("format"))
    return source.url(w) if source else (w.get("url") or "")


def _weights_row(name: str, e: dict) -> dict:
    w = e.get("weights") or {}
    url = _weights_url(w)
    if not url:
        return {"name": name, "weights": None, "file": None, "reproduced": e.get("reproduced", "no")}
    source = weight_source(w.get("format"))
    try:
        file = str(cached_path(url, w.get("filename") or file_name(w["url"])))
    except ValueError:
        file = None
    return {"name": name, "weights": f"{source.label if source else 'checkpoint'} {url}", "file": file,
            "reproduced": e.get("reproduced", "no")}


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
    state = load_checkpoint(path)
    saved_cfg = None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        saved_cfg = state.get("config") if isinstance(state.get("config"), dict) else None
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"{path} holds no state dict")
    return state, saved_cfg, path


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

    pretrained: None/False (random init, or ImageNet backbone if the config names one; a
        :class:`RandomWeightsWarning` says so, once per entry and process), True (the
        entry's published weights; a tensorpack npz, GluonCV's .params zip, torchvision's .pth or
        detectron2's .pkl is downloaded, converted once and the conversion cached, see the module
        docstring), or a path / URL of a checkpoint.
    sha256: expected digest of the weights file (the entry's is used for ``pretrained=True``; for a
        tensorpack entry, of the npz).
    config: a JSON config file applied on top of the entry; overrides: KEY=VALUE strings after it.
    classes: class names when the model was trained on a custom dataset (sets DATA.NUM_CATEGORY).

    A checkpoint's saved config must build the parameters (names, shapes) the entry builds (after
    ``config`` and ``overrides``; the classes are the checkpoint's), else a :class:`ZooError` names both
    architectures, the config keys that make the difference and the tensors, e.g.
    ``mask_rcnn_resnet101_v1d_coco is a Mask R-CNN C4 ResNet-101 v1d; model_final.pth holds a Faster R-CNN
    FPN ResNet-18 v1b (2 classes): their parameters differ (...), through MODE_MASK: True vs False; ...``.
    Its keys (classes, PREPROC, TEST, RPN proposal settings, TRAIN, anchors...; see the module docstring)
    are taken from it, those differing from the entry reported in one ``logging`` warning; ``config``,
    ``overrides`` and ``classes`` still apply on top. Saved keys this version does not know are
    skipped with a ``UserWarning``. The weights are then loaded strictly (names and shapes).
    """
    from .builders import build_model

    cfg = get_config(name, finalize=False)
    if not pretrained and name not in _WARNED_RANDOM:
        _WARNED_RANDOM.add(name)
        warnings.warn(f"get_model({name!r}) without pretrained: its detection heads are random (untrained), its "
                      "detections noise. Pass pretrained=True (the published weights) or pretrained=PATH (a "
                      "checkpoint); building it to train or to test the pipeline is fine (warned once per entry)",
                      RandomWeightsWarning, stacklevel=2)
    state = None
    unknown: list[str] = []
    if pretrained:
        if pretrained is True:
            w = get_entry(name).get("weights", {})
            if not w.get("url"):
                raise ZooError(f"zoo entry {name!r} has no published weights yet; pass pretrained=PATH "
                               "to a checkpoint you trained")
            source = weight_source(w.get("format"))
            if source is not None:  # another implementation's file: downloaded, converted once, cached
                try:
                    converted = source.fetch_and_convert(w, sha256)
                except WeightSourceError as err:
                    raise ZooError(f"zoo entry {name!r}: {err}") from None
                state, saved, path = _read_checkpoint(str(converted), None)
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
            unknown = _apply_checkpoint_config(cfg, saved, requested, classes is not None, name, path)
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
