"""Publisher rules as components.

Where tensorpack, torchvision, GluonCV and detectron2 compute the same step differently (anchor
cells, low-quality matching, RoI level mapping, mask paste, ...), each way is a small named object
in the module of its rule family. A profile (:mod:`gluon_rcnn.profiles`) names one choice per rule;
the builders hand the chosen objects to the components' constructors. No forward path branches on
a publisher's name: it calls the rule object it was given.

Every rule module exposes its choices as a dict ``{name: object}`` per rule (``CHOICES`` where the
module holds one rule), names describing what the rule does (never who publishes it); the table
of rules and choices is :data:`gluon_rcnn.profiles.RULES`; :func:`choose` looks one up with a clear
error.
"""
from __future__ import annotations

from typing import Mapping, TypeVar

T = TypeVar("T")

__all__ = ["choose"]


def choose(choices: Mapping[str, T], name, rule: str) -> T:
    """``choices[name]``, or a ValueError naming the rule and the allowed names."""
    try:
        return choices[name]
    except (KeyError, TypeError):
        raise ValueError(f"{rule}={name!r} is not one of {sorted(choices)}") from None
