#!/usr/bin/env python
"""Evaluate a detector (or an existing results JSON) on a COCO-format dataset.

    python scripts/eval.py --annotations ann.json --results dets.json [--voc]
    python scripts/eval.py --dataset coco_val2017 --basedir DATA --model NAME --weights W.pth --output dets.json
    torchrun --nproc_per_node=2 scripts/eval.py --annotations ann.json --images DIR --model NAME --weights W.pth

A model is evaluated by the same driver the trainer uses for its validation AP
(gluon_rcnn.engine.inference.evaluate_distributed): same test transform, loader and batching, so
the results JSON and AP equal the trainer's for the same weights.

See ``python scripts/eval.py --help``; the logic lives in gluon_rcnn.cli.eval.main.
"""
import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("gluon_rcnn") is None:  # running from a source checkout, not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gluon_rcnn.cli.eval import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
