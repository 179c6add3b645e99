"""The seeded random weights of the GluonCV references, from parameter names and shapes alone.

numpy only: bench/gluoncv_reference.py imports it in GluonCV's side venv (mxnet 1.9.1, numpy 1.23.5) to
write the reference nets' weights, and tests/test_convert_gluoncv.py to draw the same numbers again
(the committed references store names, shapes and seed, not weights)."""
from __future__ import annotations

import numpy as np

__all__ = ["spread"]


def spread(shapes: dict, seed: int = 0, classifier_std: float | None = None) -> dict:
    """Seeded random values for GluonCV R-CNN parameters: structural name → shape, in sorted order.

    Conv/Dense/deconv ``weight``: N(0, sqrt(1/fan_in)), fan_in = prod(shape[1:]) (x16 for
    ``class_predictor``, so the softmax is not flat, unless ``classifier_std`` gives its std);
    ``bias``, ``beta``, ``running_mean``: N(0, 0.1); ``gamma``: U(0.5, 1); ``running_var``: U(0.8, 1.5).
    Names containing ``anchor`` (GluonCV's constant anchor table) are left out."""
    rng = np.random.RandomState(seed)
    out = {}
    for name in sorted(shapes):
        shp = tuple(int(v) for v in shapes[name])
        if "anchor" in name:
            continue
        # structural names end in ".weight"; MXNet symbol names (FPN nets) in "_weight", "_running_var"
        leaf = next((k for k in ("running_mean", "running_var", "weight", "bias", "gamma", "beta")
                     if name.endswith(("." + k, "_" + k))), name)
        if leaf == "weight":
            fan_in = int(np.prod(shp[1:])) if len(shp) > 1 else 1
            std = np.sqrt(1.0 / fan_in)
            if name.startswith("class_predictor."):
                std = 16.0 * std if classifier_std is None else float(classifier_std)
            v = rng.normal(0, std, size=shp)
        elif leaf in ("bias", "beta", "running_mean"):
            v = rng.normal(0, 0.1, size=shp)
        elif leaf == "gamma":
            v = rng.uniform(0.5, 1.0, size=shp)
        elif leaf == "running_var":
            v = rng.uniform(0.8, 1.5, size=shp)
        else:
            raise ValueError(f"no rule for {name}")
        out[name] = v.astype("float32")
    return out
