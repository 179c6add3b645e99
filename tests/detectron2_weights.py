"""The seeded "spread" weights of the detectron2 references, from state-dict names and shapes alone.

numpy only: bench/detectron2_reference.py imports it in detectron2's side venv to write the reference
models' weights, and tests/test_detectron2_reference.py to draw the same numbers again (the committed
references store names, shapes and seed, not weights)."""
from __future__ import annotations

import numpy as np

__all__ = ["spread", "input_std", "CLASS_SCALE"]

#: the classifier's std multiplier: sharper than fan-in, so the softmax over 81 classes is not flat
#: and the seeded model gives detections above detectron2's 0.05 score threshold
CLASS_SCALE = 4.0


def spread(shapes: dict, seed: int = 0, input_std: float = 1.0) -> dict:
    """Seeded values for a detectron2 R-CNN state dict: name → shape, drawn in sorted-name order from
    ``numpy.random.RandomState(seed)``, float32.

    - ``*.norm.weight`` (FrozenBN or GN gamma): U(0.5, 1); ``*.norm.bias``, ``*.norm.running_mean``:
      N(0, 0.1); ``*.norm.running_var``: U(0.8, 1.5);
    - other ``*.weight`` (conv, linear, ``deconv``): N(0, 1/sqrt(fan_in)), fan_in = prod(shape[1:]) for
      a conv or linear (out, in, kh, kw), in*kh*kw for the ConvTranspose2d ``deconv`` (in, out, kh, kw);
      x :data:`CLASS_SCALE` for ``cls_score``; / ``input_std`` for the stem's ``stem.conv1`` (the std of the
      normalised image's pixels: 58 for the configs with ``PIXEL_STD`` 1, whose MSRA trunks read 0-255
      pixels, about 1 for ImageNet's std; :func:`input_std`), so that res2 is of order 1 either way;
    - other ``*.bias``: N(0, 0.1).

    Every stage stays in a sane range (features of order 1-10, RPN logits of order 1, hundreds of
    detections above 0.05): detectron2's own initialisation gives features in the thousands and a
    handful of RoIs."""
    rng = np.random.RandomState(seed)
    out = {}
    for name in sorted(shapes):
        shp = tuple(int(v) for v in shapes[name])
        if name.endswith(".norm.weight"):
            v = rng.uniform(0.5, 1.0, size=shp)
        elif name.endswith((".norm.bias", ".norm.running_mean")):
            v = rng.normal(0, 0.1, size=shp)
        elif name.endswith(".norm.running_var"):
            v = rng.uniform(0.8, 1.5, size=shp)
        elif name.endswith(".weight") and len(shp) >= 2:
            fan_in = shp[0] * int(np.prod(shp[2:])) if name.endswith("deconv.weight") else int(np.prod(shp[1:]))
            std = np.sqrt(1.0 / fan_in) * (CLASS_SCALE if name.endswith("cls_score.weight") else 1.0)
            if name.endswith("stem.conv1.weight"):
                std /= input_std
            v = rng.normal(0, std, size=shp)
        elif name.endswith(".bias"):
            v = rng.normal(0, 0.1, size=shp)
        else:
            raise ValueError(f"no rule for {name} {shp}")
        out[name] = v.astype("float32")
    return out


def input_std(pixel_std) -> float:
    """The std of a normalised image's pixels for a config's ``MODEL.PIXEL_STD``: 58 (the spread of 0-255
    photographs) over their mean."""
    return 58.0 / float(np.mean(pixel_std))
