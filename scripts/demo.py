#!/usr/bin/env python
"""The main job on the embedded default data, end to end on a CPU in a few minutes.

1. Builds the demo dataset: real FIRST radio cutouts shipped inside the `firstgalaxydata`
   wheel, labelled by ClaRAN's rules into the six morphology classes (gluon_rcnn.radio).
2. Trains a small Faster R-CNN (ResNet-18 FPN, GroupNorm, from scratch) on its training split.
3. Evaluates it on the held-out split: COCO box AP and ClaRAN's per-class AP@0.5 / mAP.
4. Writes a PNG of predictions on test images.

    python scripts/demo.py --output demo_out [--iters 600]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

try:
    import gluon_rcnn  # noqa: F401
except ModuleNotFoundError:  # running from a source checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch

MODEL = "faster_rcnn_fpn_resnet18_v1b_rgz"
# lighter than the zoo entry so that training fits in a few CPU minutes. WARMUP counts iterations at
# any batch (tensorpack's rule, TRAIN.WARMUP_SCALES_WITH_BATCH=False): 100 iterations = 400 images.
# One update per iteration of 4 images (TRAIN.ACCUMULATE_TO_8=False): tensorpack's accumulation to 8
# images halves the updates of this short run (bbox AP50 0.080 with it, 0.196 without: docs/results.md).
DEMO_CONFIG = ["FPN.NUM_CHANNEL=128", "FPN.FRCNN_FC_HEAD_DIM=512", "PREPROC.TRAIN_SHORT_EDGE_SIZE=[192,192]",
               "PREPROC.TEST_SHORT_EDGE_SIZE=192", "PREPROC.MAX_SIZE=320", "DATA.NUM_WORKERS=0",
               "TRAIN.IMS_PER_GPU=4", "TRAIN.BASE_LR=0.04", "TRAIN.WARMUP=100", "TRAIN.LOG_PERIOD=20",
               "TRAIN.ACCUMULATE_TO_8=False"]


IMS_PER_ITER = 4  # TRAIN.IMS_PER_GPU in DEMO_CONFIG, one process
# the architecture keys DEMO_CONFIG changes: loading the checkpoint as MODEL needs them too
# (get_model refuses a checkpoint whose architecture differs from the entry's)
DEMO_ARCH = [c for c in DEMO_CONFIG if c.split("=")[0] in ("FPN.NUM_CHANNEL", "FPN.FRCNN_FC_HEAD_DIM")]


def train_argv(iters: int, annotations, images, output, seed: int = 0) -> list[str]:
    """The training command line of step 2: ``iters`` iterations of 4 images, the LR divided by 10
    at 80 % and 95 % of the run (decays too close to the start, the end or each other are dropped,
    so any ``iters >= 1`` gives a valid schedule), ``--max-iter`` pinning the exact end."""
    from gluon_rcnn.cli.train import schedule_for_iterations
    sched = schedule_for_iterations(iters, IMS_PER_ITER, decay_at=(0.8, 0.95))
    return ["--model", MODEL, "--annotations", str(annotations), "--images", str(images), "--output", str(output),
            "--no-eval", "--seed", str(seed), "--resume", "--max-iter", str(int(iters)),
            "--config", *DEMO_CONFIG, f"TRAIN.LR_SCHEDULE={sched}"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="demo_out")
    p.add_argument("--iters", type=int, default=600, help="training iterations (4 images each; any N >= 1)")
    p.add_argument("--images", type=int, default=200, help="demo images to build")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.iters < 1:
        p.error(f"--iters must be >= 1, got {args.iters}")
    torch.set_num_threads(os.cpu_count() or 1)
    out = Path(args.output)
    data = out / "data"
    t0 = time.time()

    from gluon_rcnn.radio import build_demo_dataset
    if not (data / "annotations" / "instances_test.json").exists():
        print(f"[1/4] building the demo dataset in {data} (real FIRST cutouts from firstgalaxydata)")
        summary = build_demo_dataset(data, n_images=args.images, seed=args.seed)
        print(json.dumps({k: v for k, v in summary.items() if k in ("counts", "images")}, indent=1, default=str))
    else:
        print(f"[1/4] demo dataset already in {data}")

    from gluon_rcnn.cli.train import main as train_main
    run = out / "train"
    print(f"[2/4] training {MODEL} (lighter settings) for {args.iters} iterations on the CPU")
    rc = train_main(train_argv(args.iters, data / "annotations" / "instances_train.json", data / "images", run,
                               args.seed), mask=False)
    if rc:
        return rc

    print("[3/4] evaluating on the held-out split")
    from gluon_rcnn.cli.eval import main as eval_main
    rc = eval_main(["--model", MODEL, "--weights", str(run / "model_final.pth"),
                    "--annotations", str(data / "annotations" / "instances_test.json"), "--images", str(data / "images"),
                    "--output", str(out / "results_test.json"), "--voc", "--num-workers", "0",
                    "--config", *DEMO_ARCH])
    if rc:
        return rc

    print("[4/4] drawing predictions")
    import cv2
    from gluon_rcnn import get_model
    from gluon_rcnn.viz import draw_detections, save_png, vis_score_thresh
    net = get_model(MODEL, pretrained=str(run / "model_final.pth"), overrides=DEMO_ARCH)
    thresh = vis_score_thresh(net)  # TEST.RESULT_SCORE_THRESH_VIS
    test = json.loads((data / "annotations" / "instances_test.json").read_text())
    tiles = []
    for info in test["images"][:8]:
        img = cv2.cvtColor(cv2.imread(str(data / "images" / info["file_name"])), cv2.COLOR_BGR2RGB)
        with torch.no_grad():
            det = net([torch.from_numpy(img).permute(2, 0, 1).float() / 255])[0]
        big = cv2.resize(img, (300, 300), interpolation=cv2.INTER_NEAREST)
        s = 300 / img.shape[0]
        tiles.append(draw_detections(big, det["boxes"].numpy() * s, det["scores"].numpy(), det["labels"].numpy(),
                                     net.classes, thresh=thresh))
    rows = [np.concatenate(tiles[i:i + 4], axis=1) for i in range(0, len(tiles) - len(tiles) % 4 or 4, 4)]
    png = out / "predictions.png"
    save_png(png, np.concatenate(rows, axis=0))
    print(f"wrote {png}; total {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
