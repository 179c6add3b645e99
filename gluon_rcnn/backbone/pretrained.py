"""ImageNet weights for a ResNet trunk or a res5 stage (``BACKBONE.WEIGHTS``): a torchvision-style state
dict (``.pth``) or tensorpack's ImageNet ``.npz`` as published, checked against the model's norm kinds.

Its own module so that :mod:`~gluon_rcnn.backbone.resnet` (the model) and
:mod:`~gluon_rcnn.backbone.tensorpack_npz` (the ``.npz`` reader, which builds a ResNet to check shapes)
import each other in one direction only.
"""
from __future__ import annotations

import logging
import os
import warnings
from typing import Sequence

from torch import nn

from ..utils.io import load_checkpoint
from .resnet import check_norm_kinds
from .tensorpack_npz import imagenet_state_dict

__all__ = ["load_pretrained"]

logger = logging.getLogger(__name__)


def load_pretrained(model: nn.Module, path: str, *, prefix: str = "", strict: bool = False,
                    skip: Sequence[str] = ("fc.",)) -> tuple[list[str], list[str]]:
    """Load a local torchvision-style state dict (``.pth``), or a tensorpack ImageNet ResNet ``.npz``, into ``model``.

    Args:
        model: a :class:`ResNet` (or any module with matching names, e.g. a res5 stage).
        path: file written by ``torch.save(state_dict)``; a dict wrapping it under
            ``'state_dict'`` or ``'model'`` is unwrapped. Loaded with ``weights_only=True``.
            A ``.npz`` is read as tensorpack's ImageNet weights (``ImageNet-R50-AlignPadding.npz``,
            ``ImageNet-R50-GroupNorm32-AlignPadding.npz``, ...) by
            :func:`gluon_rcnn.backbone.tensorpack_npz.imagenet_state_dict` (BGR conv1 → RGB;
            TF_PAD_MODE=True files refused).
        prefix: use only keys starting with it, stripped (``'layer4.'`` for a C4 res5 head).
        strict: raise if any key is missing or unused.
        skip: key prefixes to ignore (the ImageNet classifier ``fc.``).

    Returns ``(missing, unexpected)`` key lists. Missing keys are warned about (those tensors
    keep their random init); unused keys are logged. Shape mismatches always raise, and so do
    norm kinds that disagree (:func:`gluon_rcnn.backbone.resnet.check_norm_kinds`): BatchNorm weights for a GroupNorm model,
    or weights without BatchNorm statistics for a BatchNorm/FreezeBN model.
    """
    if not path or not os.path.isfile(path):
        raise FileNotFoundError(
            f"pretrained weights {path!r} not found: give a local torchvision-style ResNet state dict "
            f"(e.g. resnet50-0676ba61.pth) or tensorpack ImageNet .npz (e.g. ImageNet-R50-AlignPadding.npz) in "
            f"BACKBONE.WEIGHTS, or leave it empty to train from scratch")
    if str(path).endswith(".npz"):
        state, unused = imagenet_state_dict(path)
        if unused:
            logger.info("%s: not part of the backbone, not loaded: %s", path, unused)
    else:
        state = load_checkpoint(path)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__})")
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    state = {k: v for k, v in state.items() if not any(k.startswith(s) for s in skip)}
    if not state:
        raise ValueError(f"{path} has no tensors{' under ' + repr(prefix) if prefix else ''}")
    check_norm_kinds(model, state, path)
    result = model.load_state_dict(state, strict=False)
    # BN step counters are bookkeeping, not weights
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")]
    unexpected = list(result.unexpected_keys)
    if strict and (missing or unexpected):
        raise RuntimeError(f"loading {path} into {type(model).__name__}: missing keys {missing}, "
                           f"unexpected keys {unexpected}")
    if missing:
        warnings.warn(f"{path}: {len(missing)} tensors of {type(model).__name__} not in the file, left at "
                      f"their initial values: {missing[:8]}{' ...' if len(missing) > 8 else ''}", stacklevel=2)
    if unexpected:
        logger.info("%s: %d tensors not used by %s: %s%s", path, len(unexpected), type(model).__name__,
                    unexpected[:8], " ..." if len(unexpected) > 8 else "")
    logger.info("loaded %d tensors from %s", len(state) - len(unexpected), path)
    return missing, unexpected
