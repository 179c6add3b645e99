#!/usr/bin/env python
"""Convert a detectron2 model-zoo .pkl (model_final_*.pkl of its MODEL_ZOO.md) into a gluon_rcnn checkpoint.

    python scripts/convert_detectron2.py model_final_f10217.pkl out.pth --kind COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x

--kind is the model's detectron2 config path (without .yaml; ``--list`` prints the convertible ones and the zoo
models that cannot be expressed, with the reason). The pickle is read by a restricted unpickler (numpy arrays in
dicts only). Load the result with ``gluon_rcnn.get_model(ENTRY, pretrained='out.pth',
overrides=detectron2_overrides(KIND))`` (printed).
"""
from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", nargs="?", help="detectron2 .pkl")
    p.add_argument("dst", nargs="?", help="output .pth")
    p.add_argument("--kind", help="detectron2 config path of the model, e.g. COCO-Detection/faster_rcnn_R_50_FPN_3x")
    p.add_argument("--list", action="store_true", help="list the convertible zoo models and those that are not")
    p.add_argument("--non-strict", action="store_true", help="report, do not refuse, missing/unexpected names")
    a = p.parse_args(argv)
    from gluon_rcnn.convert.detectron2 import (DETECTRON2_KINDS, NOT_EXPRESSIBLE, Detectron2ConversionError,
                                               detectron2_overrides, from_detectron2, save_checkpoint, zoo_entry)
    if a.list:
        for k, m in DETECTRON2_KINDS.items():
            print(f"{k}  box AP {m.box_ap}  mask AP {m.mask_ap}  {m.url(k)}")
        for k, why in NOT_EXPRESSIBLE.items():
            print(f"not expressible: {k}: {why}")
        return 0
    if not (a.src and a.dst and a.kind):
        p.error("give SRC, DST and --kind (or --list)")
    try:
        model = from_detectron2(a.src, a.kind, strict=not a.non_strict)
    except (KeyError, Detectron2ConversionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for what in ("missing", "unexpected"):
        names = getattr(model, f"detectron2_{what}")
        if names:
            print(f"warning: {len(names)} {what}: {names}", file=sys.stderr)
    save_checkpoint(model, a.dst)
    entry = zoo_entry(a.kind)
    print(f"wrote {a.dst}: {a.kind}; load with gluon_rcnn.get_model({entry!r}, pretrained={a.dst!r}, "
          f"overrides={detectron2_overrides(a.kind)!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
