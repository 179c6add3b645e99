"""What the detector importers (tensorpack, detectron2) share besides
:func:`gluon_rcnn.backbone.tensorpack_npz.map_rows`: the end of an import (:func:`check_mapping`) and the
C4 RPN's anchor order (:func:`c4_anchor_perm`)."""
from __future__ import annotations

from typing import Mapping

import torch

__all__ = ["c4_anchor_perm", "check_mapping"]


def c4_anchor_perm(cfg) -> torch.Tensor:
    """perm[o] = the publisher's anchor index for our anchor o: a C4 RPN has several sizes and ratios at one
    level; ours are ratio-major, the publisher's as ``cfg``'s ``RULES.ANCHOR_ORDER`` says (tensorpack's
    and detectron2's size-major, tensorpack's at 02c38f26 ratio-major: rules/anchors.py)."""
    from ..profiles import resolve_rules  # here: profiles imports the rules, not the converters

    return resolve_rules(cfg).anchor_order.perm(len(cfg.RPN.ANCHOR_SIZES), len(cfg.RPN.ANCHOR_RATIOS))


def check_mapping(src: Mapping, rows, reference: Mapping[str, torch.Tensor], state, used, missing, problems, *,
                  source: str, error: type, strict: bool):
    """The end of an import: ``(missing, unexpected)`` (our keys no row fills, foreign names not used);
    raises ``error`` on shape problems, and with ``strict`` on anything missing or unexpected."""
    mapped = {ours for _, ours, _ in rows}
    missing = missing + [f"{k} (no {source} name maps to it)" for k in reference if k not in mapped]
    unexpected = sorted(set(src) - used)
    if problems:
        raise error(f"{source} conversion failed:\n  " + "\n  ".join(problems))
    if strict and (missing or unexpected):
        raise error(f"{source} file does not match the model: {len(missing)} missing, {len(unexpected)} "
                    f"unexpected\n  missing: {missing}\n  unexpected: {unexpected}")
    return missing, unexpected
