"""The checkpoint a converter writes: ``{"model": state_dict, "config": cfg[, "source": ...]}``, the
format the trainer writes, so ``gluon_rcnn.get_model(entry, pretrained=path)`` loads it."""
from __future__ import annotations

import os
from pathlib import Path

import torch


def save_checkpoint(model, path, source: dict | None = None) -> Path:
    """Write ``model`` (a converted GeneralizedRCNN) to ``path`` atomically (a temporary file, then a
    rename); ``source`` (where the weights came from) is stored beside the state dict and config."""
    path = Path(path)
    obj = {"model": model.state_dict(), "config": model.config.to_dict()}
    if source is not None:
        obj["source"] = source
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
