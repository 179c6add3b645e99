"""One config tree for every detector in the family, after tensorpack's FasterRCNN config.

The tree is an :class:`AttrDict` of nested sections. Every key has a default and a type taken
from that default; :func:`Config.update_args` applies ``KEY=VALUE`` overrides (values parsed with
``ast.literal_eval``, never ``eval``) and refuses unknown keys or values of the wrong type with a
message naming the key. ``finalize()`` checks the combination. The tree holds knobs only: values that follow from others
(the schedule in iterations at the real batch, the anchor strides of the architecture, the number
of processes) are computed where they are used, never stored as keys.

Usage::

    from gluon_rcnn.config import get_default_config
    cfg = get_default_config()
    cfg.update_args(["MODE_FPN=True", "FPN.NORM='GN'", "TRAIN.LR_SCHEDULE=[240000,320000,360000]"])
    cfg.finalize()
"""
from __future__ import annotations

import ast
import copy
import json
from typing import Any, Iterable

from .profiles import RULES as RULE_TABLE
from .utils.io import atomic_write
from .rules.resize import RESIZE

__all__ = ["AttrDict", "ConfigError", "get_default_config", "load_config", "SCHEDULES"]


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the key."""


class _ReadOnlyList(list):
    """A list value of a read-only config: reading works as for a list; changing it raises."""

    def _refuse(self, *args, **kwargs):
        raise ConfigError("this config is read-only (its lists too): edit a copy from .clone()")

    __setitem__ = __delitem__ = __iadd__ = __imul__ = _refuse
    append = extend = insert = pop = remove = clear = sort = reverse = _refuse

    def __deepcopy__(self, memo):
        return [copy.deepcopy(v, memo) for v in self]

    def __reduce__(self):  # pickles (and copies) as a plain list
        return (list, (list(self),))


class AttrDict(dict):
    """A dict whose keys are also attributes; nested sections are AttrDicts.

    Once ``freeze()`` is called, new keys can no longer be added (values of existing keys may
    still be set by code; user overrides always go through :meth:`update_args`).
    """

    _frozen_keys = False
    _readonly = False

    def __getattr__(self, name: str) -> Any:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return self[name]
        except KeyError:
            raise AttributeError(f"config has no key {name!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
            return
        if self._frozen_keys and name not in self:
            raise ConfigError(f"config has no key {name!r}")
        self[name] = value

    def __setitem__(self, key, value) -> None:
        self._check_writable(key)
        dict.__setitem__(self, key, value)

    def __delitem__(self, key) -> None:
        self._check_writable(key)
        dict.__delitem__(self, key)

    def _check_writable(self, key=None) -> None:
        if self._readonly:
            what = f" (changing {key!r} would change nothing)" if key is not None else ""
            raise ConfigError(f"this config is a read-only record of what a model was built from{what}: build "
                              "another model, e.g. gluon_rcnn.get_model(name, overrides=['KEY=VALUE']), or edit a "
                              "copy from .clone()")

    def update(self, *args, **kwargs):
        self._check_writable()
        dict.update(self, *args, **kwargs)

    def setdefault(self, key, default=None):
        self._check_writable()
        return dict.setdefault(self, key, default)

    def pop(self, *args):
        self._check_writable()
        return dict.pop(self, *args)

    def popitem(self):
        self._check_writable()
        return dict.popitem(self)

    def clear(self):
        self._check_writable()
        dict.clear(self)

    def __ior__(self, other):
        self._check_writable()
        return dict.__ior__(self, other)

    def readonly(self) -> "AttrDict":
        """A deep copy that refuses every change, its lists included (``clone()`` of it is writable)."""
        new = copy.deepcopy(self)
        new._set_readonly(True)
        return new

    def _set_readonly(self, flag: bool) -> None:
        for k, v in self.items():
            if isinstance(v, AttrDict):
                v._set_readonly(flag)
            elif isinstance(v, list):
                dict.__setitem__(self, k, _ReadOnlyList(v) if flag else list(v))
        object.__setattr__(self, "_readonly", flag)

    def __deepcopy__(self, memo):
        new = type(self)()
        for k, v in self.items():
            dict.__setitem__(new, k, copy.deepcopy(v, memo))
        object.__setattr__(new, "_frozen_keys", self._frozen_keys)
        if self._readonly:  # a deep copy of a model keeps its record read-only, lists included
            new._set_readonly(True)
        return new

    # -- traversal -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {k: (v.to_dict() if isinstance(v, AttrDict) else copy.deepcopy(v)) for k, v in self.items()}

    def flat_items(self, prefix: str = "") -> Iterable[tuple[str, Any]]:
        for k, v in self.items():
            if isinstance(v, AttrDict):
                yield from v.flat_items(prefix + k + ".")
            else:
                yield prefix + k, v

    def freeze(self) -> "AttrDict":
        object.__setattr__(self, "_frozen_keys", True)
        for v in self.values():
            if isinstance(v, AttrDict):
                v.freeze()
        return self

    def _lookup(self, key: str) -> tuple["AttrDict", str]:
        node = self
        parts = key.split(".")
        for i, p in enumerate(parts[:-1]):
            child = node.get(p) if isinstance(node, dict) else None
            if not isinstance(child, AttrDict):
                raise ConfigError(f"unknown config key {key!r}: no section {'.'.join(parts[:i + 1])!r}")
            node = child
        if parts[-1] not in node or isinstance(node[parts[-1]], AttrDict):
            raise ConfigError(f"unknown config key {key!r}")
        return node, parts[-1]

    def get_key(self, key: str) -> Any:
        node, leaf = self._lookup(key)
        return node[leaf]

    def set_key(self, key: str, value: Any) -> None:
        """Set a dotted key with type checking against the current value."""
        if key in LEGACY_RULE_KEYS or key == "TRAINER":
            raise _legacy_key_error(key, value)
        node, leaf = self._lookup(key)
        node[leaf] = _coerce(key, node[leaf], value)


class Config(AttrDict):
    """The root of the tree; adds override parsing, file loading, saving and finalisation."""

    def update_args(self, args: Iterable[str]) -> "Config":
        """Apply ``KEY=VALUE`` strings. Values are Python literals; bare words are strings."""
        for arg in args:
            if "=" not in arg:
                raise ConfigError(f"config override {arg!r} is not of the form KEY=VALUE")
            key, text = arg.split("=", 1)
            key = key.strip()
            self.set_key(key, _parse_value(text.strip()))
        return self

    def update_dict(self, d: dict, prefix: str = "", unknown: str = "error") -> list[str]:
        """Apply a nested dict of values (a JSON config file, the config saved in a checkpoint).

        Values of known keys are always type-checked (:meth:`set_key`). ``unknown`` decides what
        happens to a key or section this version of the tree lacks:

        - ``"error"`` (default): raise :class:`ConfigError` naming it — for files a user writes;
        - ``"report"``: skip it and return it — for configs written by another version (an old
          checkpoint holding keys since removed, e.g. ``TRAIN.STEPS_PER_EPOCH``); the caller
          reports them, and whoever loads weights lets the strict state-dict load be the judge.

        Returns the dotted names of the skipped unknown keys (a whole unknown section is one
        name); always ``[]`` with ``unknown="error"``.
        """
        if unknown not in ("error", "report"):
            raise ValueError(f"unknown={unknown!r}: expected 'error' or 'report'")
        skipped: list[str] = []
        for k, v in d.items():
            key = prefix + k
            if unknown == "report" and (key in LEGACY_RULE_KEYS or key == "TRAINER"):
                self._migrate(key, v)  # a config saved by an earlier version: its rule keys carry over
                continue
            kind = self._key_kind(key)
            if kind is None and unknown == "report":
                skipped.append(key)
                continue
            if isinstance(v, dict):
                if kind is None:
                    raise ConfigError(f"unknown config section {key!r}")
                if kind != "section":
                    raise ConfigError(f"config key {key!r} is a value, not a section")
                skipped += self.update_dict(v, key + ".", unknown)
            else:
                self.set_key(key, v)  # unknown keys and sections given a value: ConfigError
        if unknown == "report" and not prefix and "MODE_FPN" in d and "RESAMPLE" not in (d.get("RULES") or {}):
            # a whole config saved before RULES.RESAMPLE existed: its model saw every image resized as float
            # bilinear (the only way then), and keeps seeing it so
            self.RULES.RESAMPLE = "float_bilinear"
        return skipped

    def _migrate(self, key: str, value) -> None:
        """An earlier version's rule key onto ``RULES`` (``TRAINER``, always 'torch' in practice, is dropped)."""
        if key == "TRAINER":
            if value != "torch":
                raise ConfigError(f"TRAINER={value!r}: only torchrun (torch.distributed) is supported now")
            return
        rule, choice = legacy_rule_value(key, value)
        if choice is None:
            return
        if key == "RPN.ANCHOR_ROUNDING" and self.RULES.ANCHOR_CELLS == "legacy":
            return  # RPN.LEGACY_ANCHORS=True came first and wins
        self.RULES[rule] = choice

    def update_file(self, path: str) -> "Config":
        """Apply a JSON config file (a nested object of keys); errors name the file and the key."""
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"cannot read config file {path}: {e}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a JSON object")
        try:
            self.update_dict(data)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None
        return self

    def _key_kind(self, key: str) -> str | None:
        """``"section"``, ``"value"``, or None when the dotted ``key`` is not in the tree."""
        node: Any = self
        for part in key.split("."):
            if not isinstance(node, AttrDict) or part not in node:
                return None
            node = node[part]
        return "section" if isinstance(node, AttrDict) else "value"

    def save(self, path: str) -> None:
        with atomic_write(path) as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)

    def clone(self) -> "Config":
        """A writable deep copy (also of a read-only config)."""
        new = copy.deepcopy(self)
        new._set_readonly(False)
        return new

    def finalize(self) -> "Config":
        """Check the combination of values and derive the dependent ones. Idempotent."""
        c = self
        for key, allowed in [
            ("BACKBONE.NORM", NORMS), ("FPN.NORM", ("None", "GN")), ("BACKBONE.VARIANT", ("v1b", "v1d")),
            ("FPN.PROPOSAL_MODE", ("Level", "Joint")), ("TRAIN.AMP", ("off", "bf16", "fp16")),
            ("FPN.FRCNN_HEAD_FUNC", ("fastrcnn_2fc_head", "fastrcnn_4conv1fc_head", "fastrcnn_4conv1fc_gn_head")),
            ("FPN.MRCNN_HEAD_FUNC", ("maskrcnn_up4conv_head", "maskrcnn_up4conv_gn_head")),
        ]:
            if c.get_key(key) not in allowed:
                raise ConfigError(f"{key}={c.get_key(key)!r} is not one of {list(allowed)}")
        if list(c.BACKBONE.RESNET_NUM_BLOCKS) not in ([2, 2, 2, 2], [3, 4, 6, 3], [3, 4, 23, 3]):
            raise ConfigError(f"BACKBONE.RESNET_NUM_BLOCKS={c.BACKBONE.RESNET_NUM_BLOCKS} is not ResNet-18/50/101")
        rules = _checked_rules(c)
        if rules["STRIDE_1X1"] and list(c.BACKBONE.RESNET_NUM_BLOCKS) == [2, 2, 2, 2]:
            raise ConfigError("RULES.STRIDE_1X1=True needs bottleneck blocks (ResNet-50/101); "
                              "ResNet-18 has no 1x1 conv")
        if c.BACKBONE.FREEZE_AT not in (0, 1, 2):
            raise ConfigError(f"BACKBONE.FREEZE_AT must be 0, 1 or 2, got {c.BACKBONE.FREEZE_AT}")
        # RULES.FREEZE_AFFINE acts on FreezeBN only: BN/SyncBN/GN always train gamma/beta, so True with
        # another norm changes nothing and is accepted.
        if c.FPN.CASCADE and not c.MODE_FPN:
            raise ConfigError("FPN.CASCADE=True needs MODE_FPN=True")
        if len(c.CASCADE.IOUS) != len(c.CASCADE.BBOX_REG_WEIGHTS):
            raise ConfigError("CASCADE.IOUS and CASCADE.BBOX_REG_WEIGHTS must have the same length")
        if c.MODE_FPN and len(c.RPN.ANCHOR_SIZES) != 5:
            raise ConfigError(f"RPN.ANCHOR_SIZES={c.RPN.ANCHOR_SIZES}: FPN needs one size per level P2-P6 (5 sizes)")
        if c.FPN.CASCADE and float(c.CASCADE.IOUS[0]) != float(c.FRCNN.FG_THRESH):
            raise ConfigError(f"CASCADE.IOUS[0]={c.CASCADE.IOUS[0]} disagrees with FRCNN.FG_THRESH={c.FRCNN.FG_THRESH}: "
                              "the first cascade stage is trained on the proposals sampled at FRCNN.FG_THRESH; "
                              "set both to the same value")
        if len(c.PREPROC.TRAIN_SHORT_EDGE_SIZE) != 2:
            raise ConfigError(f"PREPROC.TRAIN_SHORT_EDGE_SIZE must be [min, max], got {c.PREPROC.TRAIN_SHORT_EDGE_SIZE}")
        if c.DATA.NUM_CATEGORY < 1:
            raise ConfigError(f"DATA.NUM_CATEGORY must be >= 1, got {c.DATA.NUM_CATEGORY}")
        for key in ("RPN.FG_RATIO", "FRCNN.FG_RATIO"):
            if not 0 < c.get_key(key) <= 1:
                raise ConfigError(f"{key} must be in (0, 1], got {c.get_key(key)}")
        if RESIZE[rules["RESIZE"]].needs_max_size and c.PREPROC.MAX_SIZE <= 0:
            raise ConfigError(f"PREPROC.MAX_SIZE={c.PREPROC.MAX_SIZE}: RULES.RESIZE={rules['RESIZE']!r} needs a "
                              "positive MAX_SIZE (that rule always caps the long edge)")
        if not isinstance(c.FPN.RPN_HEAD_DIM, int) or isinstance(c.FPN.RPN_HEAD_DIM, bool) or c.FPN.RPN_HEAD_DIM < 0:
            raise ConfigError(f"FPN.RPN_HEAD_DIM must be 0 (= FPN.NUM_CHANNEL) or a positive width, "
                              f"got {c.FPN.RPN_HEAD_DIM!r}")
        if rules["BOX_HEAD_POOL"] != "pool7" and c.MODE_FPN and c.FPN.FRCNN_HEAD_FUNC != "fastrcnn_2fc_head":
            raise ConfigError(f"RULES.BOX_HEAD_POOL={rules['BOX_HEAD_POOL']!r} (14x14 pool + 3x3/2 average pool) needs "
                              f"FPN.FRCNN_HEAD_FUNC='fastrcnn_2fc_head', got {c.FPN.FRCNN_HEAD_FUNC!r}")
        if rules["DECODE_CLAMP"] == "log_max_size_over_16" and c.PREPROC.MAX_SIZE <= 0:
            raise ConfigError(f"PREPROC.MAX_SIZE={c.PREPROC.MAX_SIZE}: RULES.DECODE_CLAMP='log_max_size_over_16' "
                              "needs a positive MAX_SIZE")
        sd = c.PREPROC.SIZE_DIVISIBILITY
        if not isinstance(sd, int) or isinstance(sd, bool) or sd < 0:
            raise ConfigError(f"PREPROC.SIZE_DIVISIBILITY={sd!r}: must be 0 (what the architecture needs) or a "
                              "positive integer (a multiple of 32 with FPN, P5's stride, or 1: no padding, as "
                              "GluonCV's FPN, whose top-down path crops each upsampled map to the lateral's size)")
        if c.MRCNN.RESOLUTION < 2 or c.MRCNN.RESOLUTION % 2:
            raise ConfigError(f"MRCNN.RESOLUTION must be an even number >= 2, got {c.MRCNN.RESOLUTION}")
        lo, hi = c.PREPROC.TRAIN_SHORT_EDGE_SIZE
        if not (0 < lo <= hi):
            raise ConfigError(f"PREPROC.TRAIN_SHORT_EDGE_SIZE must be [min,max] with 0<min<=max, got {[lo, hi]}")
        if c.DATA.CLASS_NAMES and len(c.DATA.CLASS_NAMES) != c.DATA.NUM_CATEGORY:
            raise ConfigError(f"DATA.CLASS_NAMES has {len(c.DATA.CLASS_NAMES)} names but DATA.NUM_CATEGORY="
                              f"{c.DATA.NUM_CATEGORY}")
        if c.TRAIN.IMS_PER_GPU < 1:
            raise ConfigError("TRAIN.IMS_PER_GPU must be >= 1")
        schedule_steps(c.TRAIN.LR_SCHEDULE, 8)  # the schedule's form is checked here, used by the trainer
        return c


NORMS = ("FreezeBN", "BN", "SyncBN", "GN", "None")

#: The config keys of earlier versions that became rules (gluon_rcnn.profiles): old key -> (rule,
#: {old value: choice} or None when the value carries over). A checkpoint saved by an earlier version
#: is read through them (:meth:`Config.update_dict` with ``unknown="report"``); a user's override or
#: config file naming one gets an error that says the new key and value.
LEGACY_RULE_KEYS = {
    "BACKBONE.STRIDE_1X1": ("STRIDE_1X1", None),
    "BACKBONE.FREEZE_AFFINE": ("FREEZE_AFFINE", None),
    "BACKBONE.ZERO_INIT_RESIDUAL": ("ZERO_INIT_RESIDUAL", None),
    "BACKBONE.FLOOR_STRIDE2": ("FLOOR_STRIDE2", None),
    "TRAIN.WARMUP_SCALES_WITH_BATCH": ("WARMUP_SCALES_WITH_BATCH", None),
    "TRAIN.ACCUMULATE_TO_8": ("ACCUMULATE_TO_8", None),
    "PREPROC.RESIZE_ROUNDING": ("RESIZE", {"round": "round", "torchvision": "floor"}),
    "PREPROC.MAX_SIZE_ROUND_UP": ("MAX_SIZE_ROUND_UP", None),
    "RPN.ANCHOR_STRIDE_FROM_SIZE": ("ANCHOR_GRID", {True: "stride_from_size", False: "fixed_stride"}),
    # the two anchor keys make one rule: LEGACY_ANCHORS=True wins, else ANCHOR_ROUNDING picks (see _migrate)
    "RPN.ANCHOR_ROUNDING": ("ANCHOR_CELLS", {True: "rounded", False: "exact"}),
    "RPN.LEGACY_ANCHORS": ("ANCHOR_CELLS", {True: "legacy"}),
    "RPN.IGNORE_BORDER_ANCHORS": ("BORDER_ANCHORS", {True: "ignore_outside", False: "label_all"}),
    "RPN.LOW_QUALITY_MATCHES": ("LOW_QUALITY_MATCHES", {"tensorpack": "best_unless_negative",
                                                        "torchvision": "keep_best"}),
    "FRCNN.ROI_ALIGNED": ("ROI_ALIGNED", None),
    "FRCNN.BBOX_DECODE_CLAMP": ("DECODE_CLAMP", {"tensorpack": "log_max_size_over_16",
                                                 "torchvision": "log_1000_over_16"}),
    "FPN.FC_INIT": ("FC_INIT", {"tensorpack": "fan_in_truncated_normal", "torch": "torch_default"}),
    "FPN.GN_HEAD_ORDER": ("GN_HEAD_ORDER", None),
    "FPN.GN_CONV_BIAS": ("GN_CONV_BIAS", None),
    "FPN.TOP_BLOCK": ("P6", None),
    "FPN.ROI_LEVEL_RULE": ("ROI_LEVELS", {"tensorpack": "sqrt_area", "gluoncv": "sqrt_area_plus_one"}),
    "FPN.FRCNN_POOL_AVG": ("BOX_HEAD_POOL", {True: "pool14_avg3x3s2", False: "pool7"}),
    "MRCNN.ACCURATE_PASTE": ("MASK_PASTE", {True: "subpixel", False: "integer_box"}),
    "MRCNN.MASK_TARGETS": ("MASK_TARGETS", {"tensorpack": "bitmap_crop", "polygon": "polygon_bins"}),
    "TEST.RESCALE_BOXES": ("RESCALE_BOXES", {"tensorpack": "mean_scale_clipped", "torchvision": "per_axis"}),
    "TEST.CLIP_BEFORE_NMS": ("DETECTIONS", {True: "clip_then_nms", False: "nms_then_clip"}),
}


def legacy_rule_value(key: str, value):
    """``(rule, choice)`` an earlier version's ``key=value`` means; ``choice`` None: no change
    (``RPN.LEGACY_ANCHORS=False`` leaves the anchor cells to ``RPN.ANCHOR_ROUNDING``)."""
    rule, table = LEGACY_RULE_KEYS[key]
    if table is None:
        return rule, value
    if rule == "DECODE_CLAMP" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return rule, float(value)
    if key == "RPN.LEGACY_ANCHORS" and value is False:
        return rule, None
    try:
        return rule, table[value]
    except (KeyError, TypeError):
        raise ConfigError(f"{key}={value!r} (a key of an earlier version, now RULES.{rule}) is not one of "
                          f"{sorted(table, key=str)}") from None


def _legacy_key_error(key: str, value) -> ConfigError:
    if key == "TRAINER":
        return ConfigError("TRAINER was removed: torchrun (torch.distributed) is the distributed engine")
    rule, choice = legacy_rule_value(key, value)
    return ConfigError(f"config key {key!r} was replaced by RULES.{rule} (a publisher rule, gluon_rcnn.profiles): "
                       f"write RULES.{rule}={choice!r}" if choice is not None else
                       f"config key {key!r} was replaced by RULES.{rule} (gluon_rcnn.profiles)")


def _checked_rules(c) -> dict:
    """Every rule's choice for config ``c`` (profile, then deviations), each checked; errors name the key."""
    from .profiles import check_rule, rule_names
    try:
        names = rule_names(c)
        for rule, value in names.items():
            check_rule(rule, value)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return names


# tensorpack's schedule names, in thousands of iterations at a total batch of 8 images.
SCHEDULES = {"1x": [120, 160, 180]}
SCHEDULES.update({f"{k}x": [180 * k - 120, 180 * k - 40, 180 * k] for k in range(2, 10)})


def schedule_steps(schedule, total_batch: int) -> list[int]:
    """LR decay steps and the last iteration, rescaled from a total batch of 8 to ``total_batch``.

    ``schedule`` is a name ('1x', '2x', '3x', '9x') or explicit steps ``[s1, s2, ..., last]``
    counted, as in tensorpack, at 8 images per iteration.
    """
    if isinstance(schedule, str):
        if schedule not in SCHEDULES:
            raise ConfigError(f"TRAIN.LR_SCHEDULE={schedule!r} is not one of {sorted(SCHEDULES)} or a list of steps")
        steps = [k * 1000 for k in SCHEDULES[schedule]]
    else:
        steps = [int(s) for s in schedule]
        if not steps or any(b <= a for a, b in zip(steps, steps[1:])) or steps[0] <= 0:
            raise ConfigError(f"TRAIN.LR_SCHEDULE={schedule!r} must be increasing positive steps")
    return [max(1, int(round(s * 8 / total_batch))) for s in steps]


def _parse_value(text: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare word such as GN or fastrcnn_2fc_head is a string


def _coerce(key: str, old: Any, new: Any) -> Any:
    """Check ``new`` against the type of the default ``old``; convert harmless cases."""
    if key.startswith("RULES.") and key != "RULES.PROFILE":
        if isinstance(new, (bool, str)) or new is None:
            return new
        if isinstance(new, (int, float)):  # RULES.DECODE_CLAMP: a number; finalize() checks every rule
            return float(new)
        raise ConfigError(f"config key {key!r} wants a rule choice name or True/False, got {new!r}")
    if isinstance(old, str) and new is None:
        return "None"  # FPN.NORM=None means the norm named 'None', not Python's None
    if old is None or new is None:
        return new
    if isinstance(old, bool):
        if isinstance(new, bool):
            return new
        if isinstance(new, str) and new.lower() in ("true", "false"):
            return new.lower() == "true"
        raise ConfigError(f"config key {key!r} wants a bool, got {new!r}")
    if isinstance(old, int):
        if isinstance(new, int) and not isinstance(new, bool):
            return new
        if isinstance(new, float) and new.is_integer():
            return int(new)
        raise ConfigError(f"config key {key!r} wants an int, got {new!r}")
    if isinstance(old, float):
        if isinstance(new, (int, float)) and not isinstance(new, bool):
            return float(new)
        raise ConfigError(f"config key {key!r} wants a number, got {new!r}")
    if isinstance(old, str):
        if key == "TRAIN.LR_SCHEDULE" and isinstance(new, (list, tuple)):
            return list(new)
        if isinstance(new, str):
            return new
        raise ConfigError(f"config key {key!r} wants a string, got {new!r}")
    if isinstance(old, (list, tuple)):
        if key == "TRAIN.LR_SCHEDULE" and isinstance(new, str):
            return new
        if not isinstance(new, (list, tuple)):
            raise ConfigError(f"config key {key!r} wants a list, got {new!r}")
        return list(new)
    return new


def get_default_config() -> Config:
    """A fresh tree with every default (tensorpack's, plus the keys this library adds)."""
    C = Config()
    C.MODE_MASK = False          # Mask R-CNN when True
    C.MODE_FPN = True            # FPN when True, C4 when False

    C.DATA = AttrDict()
    C.DATA.BASEDIR = ""          # root holding the COCO folders (annotations/, train2017/, ...)
    C.DATA.TRAIN = ["coco_train2017"]   # registered dataset names
    C.DATA.VAL = ["coco_val2017"]
    C.DATA.NUM_CATEGORY = 80     # foreground classes; the model has NUM_CATEGORY+1 outputs
    C.DATA.CLASS_NAMES = []      # filled from the dataset when empty
    C.DATA.FILTER_EMPTY_ANNOTATIONS = True
    C.DATA.NUM_WORKERS = 4
    C.DATA.SKIP_BAD_IMAGES = False  # True: an undecodable image is logged and left out, not an error

    C.RADIO = AttrDict()         # the sky scale of the training images: prediction tiles a FITS image at it
    C.RADIO.PIXEL_SCALE = 0.0    # arcsec per pixel of the training images; 0: unknown (the survey's is used)
    C.RADIO.TILE = 0             # their side in pixels: prediction tiles have this side; 0: unknown (300)
    C.RADIO.BEAM = 0.0           # their resolution, beam FWHM arcsec: sharper inputs are convolved to it,
                                 # coarser ones refused; 0: unknown (no resolution matching)

    C.BACKBONE = AttrDict()
    C.BACKBONE.WEIGHTS = ""      # torchvision-style ImageNet state dict; empty = from scratch
    C.BACKBONE.RESNET_NUM_BLOCKS = [3, 4, 6, 3]
    C.BACKBONE.VARIANT = "v1b"   # v1b: stride in the 3x3 conv; v1d: + deep stem and avg-pool downsampling
    C.BACKBONE.NORM = "FreezeBN"  # FreezeBN, BN, SyncBN, GN, None
    C.BACKBONE.FREEZE_AT = 2     # 0: nothing frozen, 1: stem, 2: stem and res2
    C.BACKBONE.STEM_WIDTH = 32   # deep-stem width (v1d)

    C.TRAIN = AttrDict()
    C.TRAIN.IMS_PER_GPU = 1
    C.TRAIN.WEIGHT_DECAY = 1e-4
    C.TRAIN.BASE_LR = 1e-2       # for a total batch of 8, scaled linearly with the real batch
    C.TRAIN.MOMENTUM = 0.9
    C.TRAIN.WARMUP = 1000        # iterations at a total batch of 8
    C.TRAIN.WARMUP_INIT_LR = 1e-5  # for a total batch of 8
    C.TRAIN.LR_SCHEDULE = "1x"   # '1x','2x',...,'9x' or [steps..., last], counted at a total batch of 8
    C.TRAIN.EVAL_PERIOD = 0      # evaluate every N iterations (0 = only at the end)
    C.TRAIN.CHECKPOINT_PERIOD = 1000  # iterations between checkpoints
    C.TRAIN.AMP = "off"          # off | bf16 | fp16 (losses are always fp32)
    C.TRAIN.GRAD_CLIP = 0.0      # max global grad norm; 0 = off
    C.TRAIN.SEED = 42
    C.TRAIN.LOG_PERIOD = 20

    C.PREPROC = AttrDict()
    C.PREPROC.TRAIN_SHORT_EDGE_SIZE = [800, 800]  # [min, max]: a random short edge per image
    C.PREPROC.TEST_SHORT_EDGE_SIZE = 800
    C.PREPROC.MAX_SIZE = 1333
    C.PREPROC.PIXEL_MEAN = [123.675, 116.28, 103.53]  # RGB, 0-255
    C.PREPROC.PIXEL_STD = [58.395, 57.12, 57.375]
    # the padded batch's sides are multiples of this; 0: what the architecture needs (FPN: 32, C4: 1,
    # i.e. a single C4 image is not padded, as in tensorpack; builders.size_divisibility)
    C.PREPROC.SIZE_DIVISIBILITY = 0
    C.PREPROC.HORIZONTAL_FLIP = True
    C.PREPROC.ROTATE_PROB = 0.0  # random rotation (ClaRAN): probability ...
    C.PREPROC.ROTATE_MAX = 0.0   # ... and the largest angle in degrees

    C.RPN = AttrDict()
    C.RPN.ANCHOR_SIZES = [32, 64, 128, 256, 512]
    C.RPN.ANCHOR_RATIOS = [0.5, 1.0, 2.0]
    C.RPN.POSITIVE_ANCHOR_THRESH = 0.7
    C.RPN.NEGATIVE_ANCHOR_THRESH = 0.3
    C.RPN.FG_RATIO = 0.5
    C.RPN.BATCH_PER_IM = 256
    C.RPN.MIN_SIZE = 0.0
    C.RPN.PROPOSAL_NMS_THRESH = 0.7
    C.RPN.HEAD_DIM = 1024        # C4 only
    C.RPN.TRAIN_PRE_NMS_TOPK = 12000
    C.RPN.TRAIN_POST_NMS_TOPK = 2000
    C.RPN.TEST_PRE_NMS_TOPK = 6000
    C.RPN.TEST_POST_NMS_TOPK = 1000
    C.RPN.TRAIN_PER_LEVEL_NMS_TOPK = 2000
    C.RPN.TEST_PER_LEVEL_NMS_TOPK = 1000
    C.RPN.SCORE_THRESH = 0.0     # on sigmoid(objectness), torchvision's rpn_score_thresh
    C.RPN.BBOX_REG_WEIGHTS = [1.0, 1.0, 1.0, 1.0]
    C.RPN.SMOOTH_L1_BETA = 1.0 / 9

    C.FRCNN = AttrDict()
    C.FRCNN.BATCH_PER_IM = 512
    C.FRCNN.BBOX_REG_WEIGHTS = [10.0, 10.0, 5.0, 5.0]
    C.FRCNN.FG_THRESH = 0.5
    C.FRCNN.FG_RATIO = 0.25
    C.FRCNN.ROI_SAMPLING_RATIO = 2
    C.FRCNN.SMOOTH_L1_BETA = 0.0  # 0 = L1, as tensorpack; torchvision uses 1/9

    C.FPN = AttrDict()
    C.FPN.PROPOSAL_MODE = "Level"  # 'Level' or 'Joint'
    C.FPN.NUM_CHANNEL = 256
    C.FPN.NORM = "None"          # 'None' or 'GN'
    C.FPN.FRCNN_HEAD_FUNC = "fastrcnn_2fc_head"
    C.FPN.FRCNN_CONV_HEAD_DIM = 256
    C.FPN.FRCNN_FC_HEAD_DIM = 1024
    C.FPN.MRCNN_HEAD_FUNC = "maskrcnn_up4conv_head"
    C.FPN.CASCADE = False
    # GluonCV's FPN nets (gluoncv/model_zoo/rcnn/*/predefined_models.py, nn/feature.py FPNFeatureExpander):
    # the RPN's 3x3 conv width (0: FPN.NUM_CHANNEL, tensorpack/torchvision; GluonCV's rpn_channel=1024)
    C.FPN.RPN_HEAD_DIM = 0

    C.CASCADE = AttrDict()
    C.CASCADE.IOUS = [0.5, 0.6, 0.7]
    C.CASCADE.BBOX_REG_WEIGHTS = [[10.0, 10.0, 5.0, 5.0], [20.0, 20.0, 10.0, 10.0], [30.0, 30.0, 15.0, 15.0]]

    C.MRCNN = AttrDict()
    C.MRCNN.HEAD_DIM = 256
    C.MRCNN.RESOLUTION = 28      # FPN mask target/prediction size (pooled at half); C4 predicts 14x14

    C.TEST = AttrDict()
    C.TEST.FRCNN_NMS_THRESH = 0.5
    C.TEST.RESULT_SCORE_THRESH = 0.05
    C.TEST.RESULT_SCORE_THRESH_VIS = 0.5  # lowest score drawn/listed by predict.py --score-thresh (default) and demo
    C.TEST.RESULTS_PER_IM = 100
    C.TEST.MIN_BOX_SIZE = 0.0    # drop detections smaller than this (torchvision: 1e-2)
    C.TEST.IMS_PER_GPU = 1

    # Publisher rules (gluon_rcnn.profiles): the profile names one choice per rule; RULES.<RULE> = None
    # takes the profile's, a value deviates from it (RULES.ANCHOR_CELLS='legacy'). The rules, their
    # choices and every profile's are listed in docs/architecture.md and gluon_rcnn/profiles.py.
    C.RULES = AttrDict()
    C.RULES.PROFILE = "tensorpack"
    for rule in RULE_TABLE:
        C.RULES[rule] = None
    return C.freeze()


def load_config(path: str | None = None, overrides: Iterable[str] = (), base: Config | None = None) -> Config:
    """Defaults (or ``base``), then a JSON config file, then ``KEY=VALUE`` overrides; finalised."""
    cfg = base.clone() if base is not None else get_default_config()
    if path:
        cfg.update_file(path)
    cfg.update_args(overrides)
    return cfg.finalize()
