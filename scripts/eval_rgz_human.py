#!/usr/bin/env python
"""Honest evaluation: a detector trained on other sky positions, scored against human labels.

1. Test set: every real FIRST image at hand that the RGZ consensus catalogue labels
   (gluon_rcnn.radio.consensus.label_image: the MiraBest FITS in --mirabest and the
   firstgalaxydata cutouts), labelled by the volunteers' consensus; emission the catalogue does not
   cover is an ignore region (crowd boxes, one per class).
2. Training set: every other image at hand whose centre is more than --radius degrees from every
   test image's centre (default 0.25 deg: more than the 0.212 deg diagonal of a 9'x9' FIRST
   cutout, so no training pixel is on the sky of any test image), labelled by the RULE labeller
   (derive_sources with RGZ's ladder, gluon_rcnn.radio.dataset.rule_settings): the catalogue covers
   none of them. The disjointness is checked: the minimum angular separation between every
   training and every test centre is computed, printed and asserted > --radius.
3. Trains scripts/demo.py's small model (faster_rcnn_fpn_resnet18_v1b_rgz, lighter settings) for
   --iters iterations of 4 images, on the CPU.
4. Scores its detections against the human labels: ClaRAN's per-class AP@0.5 (VOC all-point) and
   COCO AP50, on all test images and per kind; and, for comparison, the same detections against
   the rule's labels of the same test images.

    python scripts/eval_rgz_human.py --output /tmp/rgz_human [--iters 600] [--threads 1]
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
from pathlib import Path

try:
    import gluon_rcnn  # noqa: F401
except ModuleNotFoundError:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MIRABEST = ROOT.parent / "shared" / "data" / "mirabest_fits"
SCALE = 0.5  # 300x300 FIRST cutouts (1.8"/px) -> 150x150, as the demo dataset


def build(out: Path, mirabest, radius: float, seed: int = 0, catalogue=None) -> dict:
    from gluon_rcnn.radio.consensus import angular_separation_deg, label_image, load_consensus
    from gluon_rcnn.radio.dataset import image_record, real_images_at_hand, rule_settings, write_coco
    from gluon_rcnn.radio.labels import derive_sources

    (out / "images").mkdir(parents=True, exist_ok=True)
    cat = load_consensus(catalogue)
    images = real_images_at_hand(mirabest)
    test_h, test_r, train, test_pos = [], [], [], []
    unlabelled = []
    for d in images:
        img, wcs = d["load"]()
        lab = label_image(img, wcs, cat)
        if lab.sources:
            name = ("MB_" if d["kind"] == "mirabest" else "FG_") + Path(d["name"]).stem + ".png"
            extra = {"ra": d["ra"], "dec": d["dec"], "origin": d["name"]}
            test_h.append(image_record(name, img, lab, SCALE, d["kind"], "rgz_consensus", out, extra))
            rl = derive_sources(img, **rule_settings(d["kind"]))
            rec = image_record(name, img, rl, SCALE, d["kind"], "rule", out, extra)
            test_r.append(rec)
            test_pos.append((d["ra"], d["dec"]))
        else:
            unlabelled.append((d, img))
    tp = np.array(test_pos)
    cand = np.array([(d["ra"], d["dec"]) for d, _ in unlabelled])
    far = angular_separation_deg(cand[:, 0], cand[:, 1], tp[:, 0], tp[:, 1]).min(axis=1) > radius
    n_near = int((~far).sum())
    for (d, img), ok in zip(unlabelled, far):
        if not ok:
            continue
        rl = derive_sources(img, **rule_settings(d["kind"]))
        if not rl.sources:
            continue
        name = ("MB_" if d["kind"] == "mirabest" else "FG_") + Path(d["name"]).stem + ".png"
        train.append(image_record(name, img, rl, SCALE, d["kind"], "rule", out,
                                  {"ra": d["ra"], "dec": d["dec"], "origin": d["name"]}))
    # the disjointness check, on what is written
    tr = np.array([(r["image"]["ra"], r["image"]["dec"]) for r in train])
    te = np.array([(r["image"]["ra"], r["image"]["dec"]) for r in test_h])
    min_sep = float(angular_separation_deg(tr[:, 0], tr[:, 1], te[:, 0], te[:, 1]).min())
    assert min_sep > radius, f"a training image is {min_sep} deg from a test image (limit {radius})"
    assert not {r["image"]["file_name"] for r in train} & {r["image"]["file_name"] for r in test_h}

    def write(sub, train_recs, test_recs, info):
        d = out / sub
        s = write_coco(d, train_recs + test_recs, np.array([False] * len(train_recs) + [True] * len(test_recs)),
                       extra_info=info)
        return s

    s_h = write("human", train, test_h, {"train_labels": "rule (derive_sources, RGZ ladder)",
                                         "test_labels": "RGZ consensus (human)", "radius_deg": radius})
    s_r = write("rule", train, test_r, {"train_labels": "rule", "test_labels": "rule", "radius_deg": radius})
    info = {"images_at_hand": len(images), "test_images": len(test_h),
            "test_kinds": {k: sum(r["image"]["kind"] == k for r in test_h) for k in ("mirabest", "firstgalaxydata")},
            "unlabelled_within_radius_dropped": n_near, "train_images": len(train),
            "train_kinds": {k: sum(r["image"]["kind"] == k for r in train) for k in ("mirabest", "firstgalaxydata")},
            "min_train_test_separation_deg": min_sep, "radius_deg": radius,
            "test_counts_human": s_h["test"], "test_ignore_crowd_annotations": s_h["ignore"]["test"],
            "test_counts_rule": s_r["test"], "train_counts_rule": s_h["train"]}
    (out / "split.json").write_text(json.dumps(info, indent=1))
    return info


def score(gt_json: Path, results_json: Path, title: str) -> dict:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from gluon_rcnn.engine.evaluate import print_ap_table, voc_ap_per_class
    from gluon_rcnn.structures.categories import RGZ_CLASSES

    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(gt_json))
    res = json.loads(Path(results_json).read_text())
    out = {}
    names = {i + 1: n for i, n in enumerate(RGZ_CLASSES)}
    kinds = {"all": None}
    for k in ("mirabest", "firstgalaxydata"):
        kinds[k] = [i["id"] for i in gt.dataset["images"] if i["kind"] == k]
    for kind, ids in kinds.items():
        aps, m = voc_ap_per_class(gt, res, image_ids=ids)
        print_ap_table(aps, m, names, title=f"{title}: VOC AP@0.5 per class, {kind} test images "
                       f"({len(ids) if ids is not None else len(gt.dataset['images'])})")
        ids_ = ids if ids is not None else [i["id"] for i in gt.dataset["images"]]
        r_sub = [r for r in res if r["image_id"] in set(ids_)]
        ap50 = float("nan")
        if r_sub:
            with contextlib.redirect_stdout(io.StringIO()):
                ev = COCOeval(gt, gt.loadRes([dict(r) for r in r_sub]), "bbox")  # loadRes edits its input
                ev.params.imgIds = ids_
                ev.evaluate(); ev.accumulate(); ev.summarize()
            ap50 = float(ev.stats[1])
        print(f"{title}: COCO AP50 (bbox), {kind}: {ap50:.3f}\n")
        out[kind] = {"voc": {names[c]: v for c, v in aps.items()}, "voc_mAP": m, "coco_AP50": ap50}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output", default="rgz_human_eval")
    p.add_argument("--mirabest", default=str(DEFAULT_MIRABEST))
    p.add_argument("--radius", type=float, default=0.25, help="min. separation of train and test centres, degrees")
    p.add_argument("--catalogue", default=None, help="consensus catalogue CSV (default: the shipped one)")
    p.add_argument("--iters", type=int, default=600)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    import torch
    torch.set_num_threads(args.threads)
    out = Path(args.output)
    t0 = time.time()
    mb = args.mirabest if args.mirabest and Path(args.mirabest).is_dir() else None
    if not (out / "split.json").exists():
        print("[1/4] building: test = consensus-labelled images, train = rule-labelled images at other positions")
        from gluon_rcnn.radio.consensus import CatalogueError
        from gluon_rcnn.radio.fits import FITSError
        try:
            info = build(out, mb, args.radius, args.seed, args.catalogue)
        except (CatalogueError, FITSError) as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
    else:
        info = json.loads((out / "split.json").read_text())
    print(json.dumps(info, indent=1))
    print(f"disjointness: min separation train centre <-> test centre = {info['min_train_test_separation_deg']:.4f} deg "
          f"> {info['radius_deg']} deg (asserted; a FIRST cutout's diagonal is 0.212 deg)")
    sys.path.insert(0, str(ROOT / "scripts"))
    from demo import DEMO_ARCH, MODEL, train_argv

    from gluon_rcnn.cli.eval import main as eval_main
    from gluon_rcnn.cli.train import main as train_main
    run = out / "train"
    if not (run / "model_final.pth").exists():
        print(f"[2/4] training {MODEL} for {args.iters} iterations of 4 images, {args.threads} thread(s)")
        t1 = time.time()
        rc = train_main(train_argv(args.iters, out / "human" / "annotations" / "instances_train.json",
                                   out / "images", run, args.seed), mask=False)
        if rc:
            return rc
        print(f"training took {time.time() - t1:.0f} s")
    res = out / "results_test.json"
    print("[3/4] detecting on the test images")
    rc = eval_main(["--model", MODEL, "--weights", str(run / "model_final.pth"), "--device", "cpu",
                    "--annotations", str(out / "human" / "annotations" / "instances_test.json"),
                    "--images", str(out / "images"), "--output", str(res), "--num-workers", "0", "--no-progress",
                    "--config", *DEMO_ARCH])
    if rc:
        return rc
    print("[4/4] scoring the same detections against human labels and against the rule's labels")
    summary = {"split": info, "iters": args.iters, "threads": args.threads,
               "human": score(out / "human" / "annotations" / "instances_test.json", res, "HUMAN labels (RGZ consensus)"),
               "rule": score(out / "rule" / "annotations" / "instances_test.json", res, "RULE labels (derive_sources)")}
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"wrote {out / 'summary.json'}; total {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
