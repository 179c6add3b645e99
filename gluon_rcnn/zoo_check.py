"""Do two configs build the same parameters? The zoo's check of a checkpoint against an entry.

The architecture of a config is what :func:`~gluon_rcnn.builders.build_model` makes of it: the names and
shapes of its state dict (:func:`signature`, built on the ``meta`` device: no memory, no initialisation,
some 30-70 ms for a ResNet-101). Two configs have the same architecture when their signatures are equal;
nothing keeps a list of the keys that matter. Where they differ, :func:`architecture_differences` names
the config keys responsible, found by building too: each key on which the two configs disagree is
changed alone, in either config, to the other's value, and it is named when that changes the
signature (a key a model does not use changes nothing: ``RPN.HEAD_DIM`` of an FPN model, the GN head
order without a GN head). :func:`parameter_differences` lists the tensors themselves.
"""
from __future__ import annotations

import torch

from .profiles import rule_names

__all__ = ["signature", "architecture_differences", "parameter_differences", "describe", "same_value"]

_DEPTHS = {(2, 2, 2, 2): 18, (3, 4, 6, 3): 50, (3, 4, 23, 3): 101}


def same_value(a, b) -> bool:
    """Config values equal up to int/float and list/tuple."""
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same_value(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b)
    return a == b


def signature(cfg) -> dict[str, tuple[int, ...]]:
    """``{name: shape}`` of every tensor in the state dict of the model ``cfg`` builds (built on the meta
    device, without ``BACKBONE.WEIGHTS``). Raises what finalising or building raises."""
    from .builders import build_model

    cfg = cfg.clone()
    cfg.BACKBONE.WEIGHTS = ""  # the parameters' names and shapes, not their values
    with torch.device("meta"):
        model = build_model(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _signature_or_none(cfg):
    try:
        return signature(cfg)
    except Exception:  # noqa: BLE001 - a value that cannot be built alone: its combination decides
        return None


def _changes_parameters(base, sig, key: str, value) -> bool | None:
    """Whether setting ``key`` of ``base`` (signature ``sig``) to ``value`` changes the signature; None when
    the config does not build with that one change."""
    other = base.clone()
    try:
        other.set_key(key, value)
    except Exception:  # noqa: BLE001 - e.g. a value the other config allows only with other keys
        return None
    got = _signature_or_none(other)
    return None if got is None else got != sig


def _rules_spelled_out(cfg):
    """A copy of ``cfg`` whose ``RULES.<rule>`` keys hold the choice each rule resolves to (the profile's
    where the key is None), so two configs compare rule by rule whatever their profiles."""
    out = cfg.clone()
    for rule, value in rule_names(cfg).items():
        out.RULES[rule] = value
    return out


def architecture_differences(a, b, sig_a=None, sig_b=None) -> list[str]:
    """``'KEY: a_value vs b_value'`` for each config key on which ``a`` and ``b`` disagree that changes
    the parameters (names, shapes) of the model, in ``a``'s key order; ``[]`` when both build the same
    parameters. A key is named when changing it alone, in ``a`` or in ``b``, to the other's value changes
    that config's signature, or when it cannot be changed alone in either (it changes together with
    others). sig_a, sig_b: the configs' signatures when already known."""
    sig_a = signature(a) if sig_a is None else sig_a
    sig_b = signature(b) if sig_b is None else sig_b
    if sig_a == sig_b:
        return []
    a, b = _rules_spelled_out(a), _rules_spelled_out(b)  # 'RULES.P6: conv vs maxpool', never 'None vs ...'
    out = []
    for key, va in a.flat_items():
        vb = b.get_key(key)
        if same_value(va, vb) or key == "BACKBONE.WEIGHTS":
            continue
        there = _changes_parameters(a, sig_a, key, vb)
        back = _changes_parameters(b, sig_b, key, va) if not there else None
        if there or back or (there is None and back is None):
            out.append(f"{key}: {va!r} vs {vb!r}")
    return out


def parameter_differences(sig_a: dict, sig_b: dict, few: int = 5, names=("the first", "the second")) -> str:
    """The tensors of signature ``sig_a`` that ``sig_b`` lacks, those it adds and those of another shape, a
    few of each: ``'N only in the first [...] (+M more); N only in the second [...]; N of another shape
    ['name (a) vs (b)', ...]'``; ``names`` name the two sides."""
    def some(items):
        return f"{items[:few]}" + (f" (+{len(items) - few} more)" if len(items) > few else "")
    only_a = [k for k in sig_a if k not in sig_b]
    only_b = [k for k in sig_b if k not in sig_a]
    shapes = [f"{k} {sig_a[k]} vs {sig_b[k]}" for k in sig_a if k in sig_b and sig_a[k] != sig_b[k]]
    parts = [f"{len(only_a)} only in {names[0]} {some(only_a)}" if only_a else "",
             f"{len(only_b)} only in {names[1]} {some(only_b)}" if only_b else "",
             f"{len(shapes)} of another shape {some(shapes)}" if shapes else ""]
    return "; ".join(p for p in parts if p)


def describe(cfg, classes: bool = False) -> str:
    """The architecture of ``cfg`` in words, e.g. ``'Mask R-CNN C4 ResNet-101 v1d'`` (with
    ``classes``: ``'... (2 classes)'``)."""
    b = cfg.BACKBONE
    blocks = tuple(int(n) for n in b.RESNET_NUM_BLOCKS)
    depth = _DEPTHS.get(blocks)
    words = ["Cascade" if cfg.MODE_FPN and cfg.FPN.CASCADE else "",
             "Mask R-CNN" if cfg.MODE_MASK else "Faster R-CNN", "FPN" if cfg.MODE_FPN else "C4"]
    if b.NORM != "FreezeBN":
        words.append("no-norm" if b.NORM == "None" else b.NORM)
    if cfg.MODE_FPN and cfg.FPN.NORM == "GN" and b.NORM != "GN":
        words.append("GN-FPN")
    words += [f"ResNet-{depth}" if depth else f"ResNet{list(blocks)}", b.VARIANT]
    text = " ".join(w for w in words if w)
    if classes:
        text += f" ({cfg.DATA.NUM_CATEGORY} classes)"
    return text
