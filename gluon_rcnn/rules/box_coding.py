"""The cap on decoded log-scale changes dw, dh of every box coder (RPN and every box stage).

- ``"log_1000_over_16"``: ``log(1000 / 16)`` (Detectron's ``BBOX_XFORM_CLIP``, torchvision, detectron2).
- ``"log_max_size_over_16"``: ``log(max_size / 16)`` with the long-edge cap the preprocessing uses
  (tensorpack's ``decode_bbox_target``).
- a positive number: the cap itself (GluonCV's ``clip``: 4.14 for its Faster FPN, 4.42 for Mask R-CNN).
"""
from __future__ import annotations

import math

from ..structures.boxes import BBOX_XFORM_CLIP

__all__ = ["FixedClamp", "MaxSizeClamp", "DECODE_CLAMP", "decode_clamp"]


class FixedClamp:
    def __init__(self, value: float, name: str | None = None):
        if not value > 0:
            raise ValueError(f"a decode clamp must be positive, got {value!r}")
        self.value_ = float(value)
        self.name = name or repr(float(value))

    def value(self, max_size: float) -> float:
        return self.value_

    def __repr__(self) -> str:
        return f"FixedClamp({self.value_:.6g})"


class MaxSizeClamp:
    name = "log_max_size_over_16"

    def value(self, max_size: float) -> float:
        if not max_size > 0:
            raise ValueError(f"the log(max_size / 16) decode clamp needs a positive max size, got {max_size}")
        return math.log(max_size / 16.0)

    def __repr__(self) -> str:
        return "MaxSizeClamp()"


DECODE_CLAMP = {"log_1000_over_16": FixedClamp(BBOX_XFORM_CLIP, "log_1000_over_16"),
                "log_max_size_over_16": MaxSizeClamp()}


def decode_clamp(value):
    """A choice name of :data:`DECODE_CLAMP`, or a positive number → the rule object."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return FixedClamp(float(value))
    if value in DECODE_CLAMP:
        return DECODE_CLAMP[value]
    raise ValueError(f"DECODE_CLAMP={value!r} is not one of {sorted(DECODE_CLAMP)} or a positive number")
