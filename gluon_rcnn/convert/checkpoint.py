"""The checkpoint a converter writes: ``{"model": state_dict, "config": cfg[, "source": ...]}``, the
format the trainer writes, so ``gluon_rcnn.get_model(entry, pretrained=path)`` loads it."""
from __future__ import annotations

from pathlib import Path

from ..utils.io import save_torch


def save_checkpoint(model, path, source: dict | None = None) -> Path:
    """Write ``model`` (a converted GeneralizedRCNN) to ``path`` atomically (:func:`gluon_rcnn.utils.io.save_torch`);
    ``source`` (where the weights came from) is stored beside the state dict and config."""
    path = Path(path)
    obj = {"model": model.state_dict(), "config": model.config.to_dict()}
    if source is not None:
        obj["source"] = source
    save_torch(obj, path)
    return path
