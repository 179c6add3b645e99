"""The ``scripts/eval.py`` command line: COCO AP (and VOC per-class AP@0.5) of a model or of a
results JSON. It builds the model through the face (``get_model``) and runs the one evaluation
driver (``gluon_rcnn.engine.inference.evaluate_distributed``), the one the trainer uses."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Mapping, Sequence

from ..engine.evaluate import (ResultsError, coco_evaluate, label_map_for_model, load_results, print_ap_table,
                               voc_ap_per_class)
from .optimize import add_optimize_args, apply_optimize, check_optimize_args

__all__ = ["build_arg_parser", "main"]


# --------------------------------------------------------------------------------------------
# the eval.py command line
# --------------------------------------------------------------------------------------------
def build_arg_parser() -> argparse.ArgumentParser:
    from .weights import WEIGHTS_HELP, add_weights_args
    p = argparse.ArgumentParser(
        prog="eval.py",
        description="COCO AP (and optionally VOC per-class AP@0.5) of a model or of a results JSON.",
        epilog="examples:\n"
               "  eval.py --annotations ann.json --results dets.json --voc\n"
               "  eval.py --dataset coco_val2017 --basedir ~/data/coco --model mask_rcnn_fpn_resnet50_v1b_coco "
               "--weights w.pth --output dets.json --config TEST.IMS_PER_GPU=2\n\n" + WEIGHTS_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("ground truth")
    src.add_argument("--annotations", help="COCO instances JSON")
    src.add_argument("--images", help="image folder (needed to run a model)")
    src.add_argument("--dataset", help="a registered dataset name, e.g. coco_val2017")
    src.add_argument("--basedir", default="", help="base folder of --dataset (tensorpack layout)")
    what = p.add_argument_group("what to evaluate")
    what.add_argument("--results", help="score this existing COCO results JSON (no model is run)")
    what.add_argument("--model", help="model zoo name (see gluon_rcnn.list_models())")
    add_weights_args(what)  # --weights FILE | --pretrained | --random-weights, one required with --model
    what.add_argument("--config", nargs="+", action="extend", default=[], metavar="FILE|KEY=VALUE",
                      help="a JSON config file and/or KEY=VALUE overrides for --model")
    run = p.add_argument_group("running the model")
    run.add_argument("--output", help="where to write the results JSON (default ./results.json)")
    run.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda when available)")
    run.add_argument("--batch-size", type=int, default=None,
                     help="images per model call in each process (default cfg.TEST.IMS_PER_GPU)")
    run.add_argument("--num-workers", type=int, default=2, help="image-decoding processes per evaluating process")
    run.add_argument("--limit", type=int, default=None, help="only the first N images (and score only those)")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")
    run.add_argument("--amp", choices=["off", "bf16", "fp16"], default=None,
                     help="autocast for inference (default: the model config's TRAIN.AMP, which a checkpoint "
                          "carries: the precision the trainer evaluated it with)")
    p.add_argument("--voc", action="store_true", help="also print VOC-style per-class AP@0.5 and mAP")
    add_optimize_args(p)
    p.add_argument("--hybridize", action="store_true",
                   help="net.hybridize(): torch.compile of backbone/FPN, RPN head, box and mask heads (results change "
                        "by rounding only); with --optimize, hybridize(freeze=True): the weights compiled in as constants")
    p.add_argument("--protocol", choices=["entry", "gluoncv"], default="entry",
                   help="gluoncv: GluonCV's evaluation thresholds for its net names (reproducing GluonCV's "
                        "published AP; gluon_rcnn.convert.gluoncv.gluoncv_eval_overrides), before --config")
    return p


class ModelLoadError(Exception):
    """The model of ``--model``/``--weights``/``--config`` cannot be built: an unknown zoo name, a missing
    or unreadable weights file, a checkpoint of another architecture, an unknown config key."""


def _load_model(name: str, weights: str | None, config: Sequence[str]):
    """The zoo entry with ``--config``'s JSON file (at most one) and KEY=VALUE overrides. Every way
    the user's choice can fail (a zoo name, a file, a key, another architecture) is a
    :class:`ModelLoadError` with the message: ``main`` prints it as one line and exits 2."""
    import warnings

    from .. import get_model
    from ..model_zoo import RandomWeightsWarning

    files = [c for c in config if "=" not in c]
    if len(files) > 1:
        raise ModelLoadError(f"--config takes at most one file, got {files}")
    try:
        with warnings.catch_warnings():
            if weights is None:  # --random-weights: resolve_weights has said it once already
                warnings.simplefilter("ignore", RandomWeightsWarning)
            return get_model(name, pretrained=weights, config=files[0] if files else None,
                             overrides=[c for c in config if "=" in c])
    except (KeyError, ValueError, OSError) as e:  # ZooError is a KeyError and a ValueError; ConfigError a ValueError
        raise ModelLoadError(str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)) from None


def main(argv: Sequence[str] | None = None) -> int:
    """The ``scripts/eval.py`` command line; returns the exit status."""
    from ..config import ConfigError
    from ..data.coco import COCODetection, DatasetError, get_dataset_paths
    from ..engine.inference import EvaluationError
    from .weights import resolve_weights

    parser = build_arg_parser()
    args = parser.parse_args(argv)
    if args.dataset and args.annotations:
        parser.error("give either --dataset or --annotations, not both")
    if not args.dataset and not args.annotations:
        parser.error("give the ground truth: --annotations JSON [--images DIR] or --dataset NAME [--basedir DIR]")
    if bool(args.results) == bool(args.model):
        parser.error("give exactly one of --results FILE (score a results JSON) or --model NAME (run a model)")
    if args.results and (args.output or args.weights or args.pretrained or args.random_weights or args.config):
        parser.error("--output/--weights/--pretrained/--random-weights/--config are for --model runs, "
                     "not for --results")
    check_optimize_args(parser, args)
    weights = resolve_weights(parser, args, args.model) if args.model else None
    if args.protocol == "gluoncv":
        from ..convert.gluoncv import GLUONCV_NAMES, gluoncv_eval_overrides
        if args.model not in GLUONCV_NAMES:
            parser.error(f"--protocol gluoncv needs --model one of {list(GLUONCV_NAMES)}")
        args.config = gluoncv_eval_overrides(args.model) + list(args.config)
    if args.dataset:
        try:
            ann_file, image_dir = get_dataset_paths(args.dataset, args.basedir)
        except KeyError as e:
            parser.error(str(e.args[0]))
    else:
        ann_file, image_dir = args.annotations, args.images or ""
    if args.model and not image_dir:
        parser.error("--model needs --images DIR (or --dataset)")

    try:
        if args.results:
            dataset = COCODetection(ann_file, image_dir, train=False)
            results = load_results(args.results)
            eval_ids = None
            print(f"{args.results}: {len(results)} detections on {len(dataset)} images of {ann_file}", flush=True)
            iou_types = ("bbox", "segm") if any("segmentation" in r for r in results) else ("bbox",)
            metrics = coco_evaluate(dataset.coco, results, iou_types)
        else:
            ran = _run_model(args, weights, ann_file, image_dir)
            if ran is None:  # not rank 0 of a torchrun world: rank 0 reports
                return 0
            dataset, results, eval_ids, metrics = ran
        print("metrics: " + json.dumps(_flat_metrics(metrics)), flush=True)  # full precision, as metrics.jsonl
        if args.voc:
            aps, mean_ap = voc_ap_per_class(dataset.coco, results, 0.5, image_ids=eval_ids)
            names = {c["id"]: c["name"] for c in dataset.coco.dataset["categories"]}
            print()
            print_ap_table(aps, mean_ap, names)
    except (DatasetError, ResultsError, ConfigError, ModelLoadError) as e:
        from .train import last_line  # a worker's error arrives with the worker's traceback in its text
        print(f"error: {last_line(e)}", file=sys.stderr)
        return 2
    except EvaluationError as e:  # another rank failed (it prints its own traceback)
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def _flat_metrics(metrics: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """``{'bbox': {'AP': ..}}`` -> ``{'bbox/AP': ..}``, the keys of the trainer's metrics.jsonl."""
    return {f"{t}/{k}": float(v) for t, m in metrics.items() for k, v in m.items()}


def _dataset_options(cfg) -> dict:
    """COCODetection keyword arguments from the model's config: ``skip_bad_images`` from
    ``DATA.SKIP_BAD_IMAGES`` (``--config DATA.SKIP_BAD_IMAGES=True``, or the checkpoint's config)."""
    try:
        return {"skip_bad_images": bool(cfg.DATA.SKIP_BAD_IMAGES)}
    except (AttributeError, KeyError):  # no config (a stand-in model)
        return {}


def _config_amp(cfg) -> str:
    """The trainer evaluates under its TRAIN.AMP: eval.py does the same for the same numbers."""
    try:
        return str(cfg.TRAIN.AMP)
    except (AttributeError, KeyError):  # no config (a stand-in model)
        return "off"


def _run_model(args, weights, ann_file: str, image_dir: str):
    """eval.py --model: the evaluation driver the trainer uses, in this process or in every process
    of a torchrun world. Returns ``(dataset, results, evaluated image ids, metrics)`` on rank 0 and
    None on the other ranks."""
    import torch

    from ..data.coco import COCODetection
    from ..engine import dist
    from ..engine.inference import evaluate_distributed

    had_group = torch.distributed.is_available() and torch.distributed.is_initialized()
    rank, world, _ = dist.init_distributed()  # torchrun: gloo on the CPU, NCCL on GPUs; else a world of one
    try:
        model = _load_model(args.model, weights, args.config)
        device = torch.device(args.device) if args.device else dist.get_device()
        model.to(device)
        apply_optimize(model, args)
        if args.hybridize:  # torch.compile of the static parts (dynamic shapes: one compile for every size);
            model.hybridize(freeze=args.optimize != "off")  # an optimized model's weights as constants
        cfg = getattr(model, "cfg", None)
        dataset = COCODetection(ann_file, image_dir, train=False, **_dataset_options(cfg))
        label_to_cat_id = label_map_for_model(getattr(model, "classes", None), dataset)
        if not args.output:
            args.output = "results.json"
            if rank == 0:
                print("no --output given: writing the detections to ./results.json", flush=True)
        out = evaluate_distributed(model, dataset, cfg=cfg, batch_size=args.batch_size, num_workers=args.num_workers,
                                   label_to_cat_id=label_to_cat_id, output_file=args.output, device=device,
                                   progress=False if args.no_progress else None, limit=args.limit,
                                   amp=args.amp or _config_amp(cfg))
    finally:
        if not had_group:  # a caller's process group is the caller's to end
            dist.cleanup()
    if rank != 0:
        return None
    where = f" on {world} processes" if world > 1 else ""
    print(f"evaluated {out.num_images} images{where} in {out.seconds:.1f} s; wrote {len(out.results)} detections "
          f"to {args.output}", flush=True)
    if out.skipped:
        print(f"skipped {len(out.skipped)} bad image(s), not scored:", flush=True)
        for msg in out.skipped:
            print(f"  {msg}", flush=True)
    return dataset, out.results, out.image_ids, out.metrics
