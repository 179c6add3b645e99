#!/usr/bin/env python
"""The main job on the embedded default data, end to end on a CPU in a few minutes.

1. Builds the demo dataset from the real FIRST radio cutouts shipped inside the `firstgalaxydata`
   wheel: a test split of 60 cutouts that the Radio Galaxy Zoo consensus catalogue covers (human
   labels, gluon_rcnn.radio.consensus), and 200 training cutouts more than 0.25 deg from every test
   cutout (no shared sky), labelled by gluon_rcnn's rule labeller (RGZ's contour ladder), not by humans.
2. Trains a small Faster R-CNN (ResNet-18 FPN, GroupNorm, from scratch) on the training split, on
   rule labels (default), or with ``--train-labels human`` on the volunteers' consensus of the training
   cutouts it covers (those cutouts only), or ``--train-labels mixed``: the consensus where it covers a
   cutout, rule labels for the rest (the test split stays sky-disjoint either way).
3. Evaluates it on the test split twice, saying which labels each number uses: against the
   volunteers' consensus (human labels; emission they did not label is ignored), and against the
   rule's labels of the same images (how well the network imitates the rule). ClaRAN's per-class
   AP@0.5 / mAP and COCO box AP.
4. Writes demo_out/predictions.png: human labels beside predictions for 8 test images, with a legend.

    python scripts/demo.py --output demo_out [--iters 600] [--train-labels rule|human|mixed]
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
# any batch (tensorpack's rule, RULES.WARMUP_SCALES_WITH_BATCH=False): 100 iterations = 400 images.
# One update per iteration of 4 images (RULES.ACCUMULATE_TO_8=False): tensorpack's accumulation to 8
# images halves the updates of this short run (bbox AP50 0.080 with it, 0.196 without: docs/results.md).
DEMO_CONFIG = ["FPN.NUM_CHANNEL=128", "FPN.FRCNN_FC_HEAD_DIM=512", "PREPROC.TRAIN_SHORT_EDGE_SIZE=[192,192]",
               "PREPROC.TEST_SHORT_EDGE_SIZE=192", "PREPROC.MAX_SIZE=320", "DATA.NUM_WORKERS=0",
               "TRAIN.IMS_PER_GPU=4", "TRAIN.BASE_LR=0.04", "TRAIN.WARMUP=100", "TRAIN.LOG_PERIOD=20",
               "RULES.ACCUMULATE_TO_8=False"]
# the sky scale of the demo's training images, recorded in the checkpoint's config so that prediction on
# FITS images tiles at it (gluon_rcnn.radio.survey.model_scale): firstgalaxydata's 300 px FIRST cutouts
# (1.8"/pixel, 5.4" beam) scaled to 150 px (build_demo_dataset's size): 3.6"/pixel, 150 px tiles
DEMO_SIZE, FIRST_CUTOUT, FIRST_PIXEL, FIRST_BEAM = 150, 300, 1.8, 5.4
DEMO_CONFIG += [f"RADIO.PIXEL_SCALE={FIRST_PIXEL * FIRST_CUTOUT / DEMO_SIZE}", f"RADIO.TILE={DEMO_SIZE}",
                f"RADIO.BEAM={FIRST_BEAM}"]


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


def mixed_labels(rule_json, human_json, out_json) -> dict:
    """COCO annotations for the training split with human labels where the consensus covers an image and
    rule labels elsewhere: every image of ``rule_json``; for the images in ``human_json`` (same ids) its
    annotations (sources and ignore regions), for the others ``rule_json``'s. Writes ``out_json``; returns
    ``{"images", "human_images", "annotations"}``."""
    rule, human = json.loads(Path(rule_json).read_text()), json.loads(Path(human_json).read_text())
    covered = {im["id"] for im in human["images"]}
    anns = [a for a in rule["annotations"] if a["image_id"] not in covered]
    anns += [a for a in human["annotations"] if a["image_id"] in covered]
    anns = [dict(a, id=i) for i, a in enumerate(sorted(anns, key=lambda a: (a["image_id"], a["id"])), start=1)]
    human_by_id = {im["id"]: im for im in human["images"]}
    images = [human_by_id.get(im["id"], im) for im in rule["images"]]
    info = dict(rule.get("info", {}), labels="RGZ consensus (human) where it covers an image, the rule labeller elsewhere")
    Path(out_json).write_text(json.dumps({"info": info, "images": images, "annotations": anns,
                                          "categories": rule["categories"]}))
    return {"images": len(images), "human_images": len(covered & {im["id"] for im in images}), "annotations": len(anns)}


def results_name(test_json: Path, train_labels: str) -> str:
    """The file name of one evaluation's detections: ``results_<test labels>.json`` for the default
    (rule-trained) run, as before, ``results_<test labels>_trained_<labels>.json`` otherwise, so that the
    three trainings' results can share one ``--output`` (``results_instances_test_human.json`` was both
    the rule run's human-label file and the human run's rule-label file)."""
    tag = "" if train_labels == "rule" else f"_trained_{train_labels}"
    return f"results_{Path(test_json).stem}{tag}.json"


def training_labels(data: Path, which: str) -> Path:
    """The training split's annotation file for ``which`` ('rule', 'human', 'mixed'), written if needed."""
    ann = data / "annotations"
    if which == "rule":
        return ann / "instances_train.json"
    human = ann / "instances_train_human.json"
    if not human.exists():
        from gluon_rcnn.radio.dataset import write_human_labels
        h = write_human_labels(data, "train")
        print(f"      training split: {h['images']} cutouts the RGZ consensus covers: {h['counts']}, "
              f"{h['ignore']} ignore regions")
    if which == "human":
        return human
    mixed = ann / "instances_train_mixed.json"
    m = mixed_labels(ann / "instances_train.json", human, mixed)
    print(f"      mixed training labels: {m['human_images']} of {m['images']} cutouts human-labelled, the rest rule")
    return mixed


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="demo_out")
    p.add_argument("--iters", type=int, default=600, help="training iterations (4 images each; any N >= 1)")
    p.add_argument("--images", type=int, default=200, help="demo images to build")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--human-test", type=int, default=60, help="human-labelled test cutouts (0: a random split)")
    p.add_argument("--train-labels", choices=("rule", "human", "mixed"), default="rule",
                   help="training labels: the rule labeller's (default), the RGZ consensus on the training cutouts "
                        "it covers (those only), or the consensus where it covers a cutout and the rule elsewhere")
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
        summary = build_demo_dataset(data, n_images=args.images, size=DEMO_SIZE, seed=args.seed,
                                     human_test=args.human_test)
        print(json.dumps({k: v for k, v in summary.items() if k in ("counts", "images")}, indent=1, default=str))
        if "human" in summary:
            h = summary["human"]
            print(f"      test split: {h['images']} cutouts with human labels (RGZ consensus): {h['counts']}, "
                  f"{h['ignore']} ignore regions; training cutouts at least "
                  f"{h['min_train_test_separation_deg']:.2f} deg from every test cutout")
    else:
        print(f"[1/4] demo dataset already in {data}")

    from gluon_rcnn.cli.train import main as train_main
    tag = "" if args.train_labels == "rule" else f"_{args.train_labels}"  # rule: the names of before
    run = out / f"train{tag}"
    train_json = training_labels(data, args.train_labels)
    print(f"[2/4] training {MODEL} (lighter settings) for {args.iters} iterations on the CPU, "
          f"{args.train_labels} labels ({train_json.name})")
    rc = train_main(train_argv(args.iters, train_json, data / "images", run,
                               args.seed), mask=False)
    if rc:
        return rc

    print("[3/4] evaluating on the held-out split")
    from gluon_rcnn.cli.eval import main as eval_main
    human = data / "annotations" / "instances_test_human.json"
    runs = [("human labels (RGZ volunteers' consensus)", human)] if human.exists() else []
    runs.append(("rule labels (gluon_rcnn's rule labeller: imitation of the rule, not accuracy)",
                 data / "annotations" / "instances_test.json"))
    for what, ann in runs:
        print(f"\n--- scored against {what}: {ann.name}")
        rc = eval_main(["--model", MODEL, "--weights", str(run / "model_final.pth"), "--annotations", str(ann),
                        "--images", str(data / "images"), "--output", str(out / results_name(ann, args.train_labels)),
                        "--voc", "--num-workers", "0", "--config", *DEMO_ARCH])
        if rc:
            return rc

    print("[4/4] drawing human labels beside predictions")
    png = draw_demo(data, run, out, human if human.exists() else data / "annotations" / "instances_test.json",
                    png_name=f"predictions{tag}.png")
    print(f"wrote {png}; total {time.time() - t0:.0f} s")
    return 0


def draw_demo(data: Path, run: Path, out: Path, labels_json: Path, n: int = 8, size: int = 300,
              png_name: str = "predictions.png") -> Path:
    """8 test images: the labels of ``labels_json`` (left) beside the detections (right), each pair
    framed, and a legend of the six classes with their colours."""
    import cv2
    from gluon_rcnn import get_model
    from gluon_rcnn.viz import _color, draw_detections, save_png, vis_score_thresh
    net = get_model(MODEL, pretrained=str(run / "model_final.pth"), overrides=DEMO_ARCH)
    thresh = vis_score_thresh(net)  # TEST.RESULT_SCORE_THRESH_VIS
    gt = json.loads(labels_json.read_text())
    by_img: dict = {}
    for a in gt["annotations"]:
        if not a.get("iscrowd"):
            by_img.setdefault(a["image_id"], []).append(a)
    panels = []
    for info in gt["images"][:n]:
        img = cv2.cvtColor(cv2.imread(str(data / "images" / info["file_name"])), cv2.COLOR_BGR2RGB)
        with torch.no_grad():
            det = net([torch.from_numpy(img).permute(2, 0, 1).float() / 255])[0]
        s = size / img.shape[0]
        big = cv2.resize(img, (size, size), interpolation=cv2.INTER_NEAREST)
        anns = by_img.get(info["id"], [])
        gboxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], np.float32).reshape(-1, 4)
        left = draw_detections(big, gboxes * s, None, [a["category_id"] for a in anns], net.classes, thresh=0)
        right = draw_detections(big, det["boxes"].numpy() * s, det["scores"].numpy(), det["labels"].numpy(),
                                net.classes, thresh=thresh)
        pair = np.concatenate([left, np.full((size, 4, 3), 255, np.uint8), right], axis=1)
        panels.append(cv2.copyMakeBorder(pair, 4, 4, 4, 4, cv2.BORDER_CONSTANT, value=(255, 255, 255)))
    rows = [np.concatenate(panels[i:i + 2], axis=1) for i in range(0, len(panels) - len(panels) % 2, 2)]
    grid = np.concatenate(rows, axis=0)
    legend = np.zeros((40, grid.shape[1], 3), np.uint8)
    x = 8
    title = f"left: {'human' if 'human' in labels_json.name else 'rule'} labels   right: predictions >= {thresh:.2f}   |"
    cv2.putText(legend, title, (x, 26), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    x += cv2.getTextSize(title, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)[0][0] + 12
    for i, name in enumerate(net.classes, start=1):
        cv2.rectangle(legend, (x, 12), (x + 18, 30), _color(i), -1)
        cv2.putText(legend, name, (x + 24, 26), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
        x += 24 + cv2.getTextSize(name, cv2.FONT_HERSHEY_SIMPLEX, 0.5, 1)[0][0] + 16
    png = out / png_name
    save_png(png, np.concatenate([grid, legend], axis=0))
    return png


if __name__ == "__main__":
    sys.exit(main())
