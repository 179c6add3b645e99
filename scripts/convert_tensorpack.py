#!/usr/bin/env python
"""Convert a tensorpack COCO-MaskRCNN-*.npz into a gluon_rcnn checkpoint.

    python scripts/convert_tensorpack.py COCO-MaskRCNN-R50FPN2x.npz out.pth [--kind COCO-MaskRCNN-R50FPN2x]

--kind defaults to the input's file name. Load the result with
``gluon_rcnn.get_model(ENTRY, pretrained='out.pth', overrides=tensorpack_overrides(KIND))`` (the
entry is printed).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", help="tensorpack .npz")
    p.add_argument("dst", help="output .pth")
    p.add_argument("--kind", help="npz name of the README table (default: the input's file name)")
    p.add_argument("--non-strict", action="store_true", help="report, do not refuse, missing/unexpected names")
    a = p.parse_args(argv)
    from gluon_rcnn.convert.tensorpack import (TENSORPACK_KINDS, TensorpackConversionError, _kind_name,
                                               from_tensorpack, save_checkpoint, tensorpack_overrides)
    kind = a.kind or Path(a.src).stem
    try:
        kind = _kind_name(kind)
        model = from_tensorpack(a.src, kind, strict=not a.non_strict)
    except (KeyError, TensorpackConversionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for what in ("missing", "unexpected"):
        names = getattr(model, f"tensorpack_{what}")
        if names:
            print(f"warning: {len(names)} {what}: {names}", file=sys.stderr)
    save_checkpoint(model, a.dst)
    entry = TENSORPACK_KINDS[kind][0]
    print(f"wrote {a.dst}: {kind} as zoo entry {entry}; load with gluon_rcnn.get_model({entry!r}, "
          f"pretrained={a.dst!r}, overrides={tensorpack_overrides(kind)!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
