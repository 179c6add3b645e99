#!/usr/bin/env python
"""Train a Faster R-CNN (Cascade R-CNN with --config FPN.CASCADE=True) on a COCO-format dataset.

    python scripts/train_faster_rcnn.py --annotations train.json --images imgs/ --output runs/a
    torchrun --nproc_per_node=8 scripts/train_faster_rcnn.py --dataset coco_train2017 --basedir ~/data/coco ...

See ``python scripts/train_faster_rcnn.py --help`` and docs/training.md; the logic lives in
gluon_rcnn.cli.train.main.
"""
import importlib.util
import sys
from pathlib import Path

if importlib.util.find_spec("gluon_rcnn") is None:  # running from a source checkout, not installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gluon_rcnn.cli.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], mask=False))
