#!/usr/bin/env python
"""Convert a tensorpack .npz or TF checkpoint (COCO-MaskRCNN-*, a radio kind, an ImageNet ResNet) to a gluon_rcnn file.

    python scripts/convert_tensorpack.py COCO-MaskRCNN-R50FPN2x.npz out.pth [--kind COCO-MaskRCNN-R50FPN2x]
    python scripts/convert_tensorpack.py model-70000.index claran.pth --kind ClaRAN-v0.2-FasterRCNN-R50FPN
    python scripts/convert_tensorpack.py model-70000.npz claran.pth --kind ClaRAN-v0.2-FasterRCNN-R50FPN
    python scripts/convert_tensorpack.py ImageNet-R50-AlignPadding.npz r50.pth [--backbone]

A TF checkpoint (tensorpack's training output, ClaRAN's published model) is read directly, without
TensorFlow: give its prefix (``model-70000``), its ``.index`` or its ``.data-00000-of-00001`` file, and
--kind. Its model variables are kept as tensorpack's dump-model-params.py keeps them: with --meta
graph-*.meta exactly its rule (TRAINABLE or MODEL variables), without it every variable but the training
state (optimizer slots, ``EMA/`` summaries, ``global_step``, ``learning_rate``).

--kind defaults to the input's file name. Load a detector with
``gluon_rcnn.get_model(ENTRY, pretrained='out.pth', overrides=tensorpack_overrides(KIND))`` (the
entry is printed). An ImageNet file (``--backbone``, implied by a name starting with ``ImageNet-``)
becomes a torchvision-style ResNet state dict for ``BACKBONE.WEIGHTS`` (which also takes the .npz as is).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("src", help="tensorpack .npz, or a TF checkpoint (model-XXXX, model-XXXX.index, .data-*)")
    p.add_argument("--meta", help="TF checkpoint: tensorpack's graph-*.meta, to keep exactly the variables that "
                                  "its dump-model-params.py keeps (TRAINABLE or MODEL)")
    p.add_argument("dst", help="output .pth")
    p.add_argument("--kind", help="npz name of the README table or a radio kind (default: the input's file name)")
    p.add_argument("--backbone", action="store_true",
                   help="an ImageNet ResNet (ImageNet-R*-AlignPadding.npz, ...): write the backbone state dict")
    p.add_argument("--tf-pad-mode-false", action="store_true",
                   help="--backbone: state that a file not named *AlignPadding* was trained with TF_PAD_MODE=False")
    p.add_argument("--non-strict", action="store_true", help="report, do not refuse, missing/unexpected names")
    a = p.parse_args(argv)
    from gluon_rcnn.convert.tensorpack import (RADIO_KINDS, TENSORPACK_KINDS, TensorpackConversionError, kind_name,
                                               from_tensorpack, imagenet_state_dict, save_backbone, save_checkpoint,
                                               tensorpack_overrides)
    from gluon_rcnn.convert.tf_checkpoint import TFCheckpointError, is_tf_checkpoint, read_tensorpack_checkpoint
    src = a.src
    if is_tf_checkpoint(a.src):
        if a.kind is None and not a.backbone:
            print("error: a TF checkpoint's file name does not say which model it holds: give --kind", file=sys.stderr)
            return 2
        try:
            src = read_tensorpack_checkpoint(a.src, a.meta)
        except TFCheckpointError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        print(f"read {len(src)} model variables from the TF checkpoint {a.src}")
    elif a.meta:
        print("error: --meta is for a TF checkpoint", file=sys.stderr)
        return 2
    if a.backbone or (a.kind is None and Path(a.src).name.startswith("ImageNet-")):
        try:
            state, unused = imagenet_state_dict(src, tf_pad_mode=False if a.tf_pad_mode_false else None,
                                                strict=not a.non_strict)
        except TensorpackConversionError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        if unused:
            print(f"not part of the backbone, not written: {unused}", file=sys.stderr)
        save_backbone(state, a.dst)
        print(f"wrote {a.dst}: {len(state)} ResNet tensors (torchvision names, conv1 RGB); use it as "
              f"BACKBONE.WEIGHTS={a.dst} (BACKBONE.WEIGHTS also takes {a.src} as is)")
        return 0
    kind = a.kind or Path(a.src).stem
    try:
        kind = kind_name(kind)
        model = from_tensorpack(src, kind, strict=not a.non_strict)
    except (KeyError, TensorpackConversionError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for what in ("missing", "unexpected"):
        names = getattr(model, f"tensorpack_{what}")
        if names:
            print(f"warning: {len(names)} {what}: {names}", file=sys.stderr)
    save_checkpoint(model, a.dst)
    entry = {**TENSORPACK_KINDS, **RADIO_KINDS}[kind][0]
    print(f"wrote {a.dst}: {kind} as zoo entry {entry}; load with gluon_rcnn.get_model({entry!r}, "
          f"pretrained={a.dst!r}, overrides={tensorpack_overrides(kind)!r})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
