"""The training command line shared by ``scripts/train_faster_rcnn.py`` and ``scripts/train_mask_rcnn.py``.

    python scripts/train_mask_rcnn.py --annotations ann.json --images imgs/ --output runs/x \\
        --model mask_rcnn_fpn_resnet50_v1b_coco --config TRAIN.IMS_PER_GPU=2 PREPROC.MAX_SIZE=1024
    torchrun --nproc_per_node=8 scripts/train_mask_rcnn.py --dataset coco_train2017 --basedir ~/data/coco ...

Order of configuration: library defaults (or ``--model``'s zoo config) → ``--config FILE`` (JSON)
→ ``--config KEY=VALUE`` overrides → ``MODE_MASK`` from the script → ``--seed`` → the world size
and the dataset's classes → ``finalize()``; ``--max-iter`` cuts the schedule in the trainer.
See docs/training.md.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import sys
from typing import Sequence

import torch

from ..config import ConfigError, get_default_config
from ..engine import dist

__all__ = ["build_arg_parser", "build_config", "build_datasets", "schedule_for_iterations", "main"]

logger = logging.getLogger("gluon_rcnn.train")


def build_arg_parser(mask: bool) -> argparse.ArgumentParser:
    kind = "Mask R-CNN" if mask else "Faster R-CNN (and Cascade R-CNN with FPN.CASCADE=True)"
    p = argparse.ArgumentParser(
        prog="train_mask_rcnn.py" if mask else "train_faster_rcnn.py",
        description=f"Train a {kind} on a COCO-format dataset, in one process or under torchrun.",
        epilog="examples:\n"
               "  %(prog)s --annotations train.json --images imgs/ --output runs/a --config TRAIN.IMS_PER_GPU=2\n"
               "  torchrun --nproc_per_node=8 %(prog)s --dataset coco_train2017 --basedir ~/data/coco "
               "--model NAME --output runs/b\n"
               "  %(prog)s ... --output runs/b --resume      (continue from runs/b/last_checkpoint)\n"
               "See docs/training.md.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--dataset", nargs="+", action="extend", metavar="NAME",
                   help="registered training dataset name(s), e.g. coco_train2017 (sets DATA.TRAIN)")
    d.add_argument("--basedir", help="base folder of the registered datasets (sets DATA.BASEDIR)")
    d.add_argument("--annotations", help="training COCO instances JSON (instead of --dataset)")
    d.add_argument("--images", help="image folder of --annotations")
    d.add_argument("--val-annotations", help="validation COCO JSON, evaluated every TRAIN.EVAL_PERIOD and at the end")
    d.add_argument("--val-images", help="image folder of --val-annotations")
    d.add_argument("--val-dataset", nargs="+", action="extend", metavar="NAME",
                   help="registered validation dataset name(s) (sets DATA.VAL; default with --dataset: DATA.VAL "
                        "where its files exist)")
    d.add_argument("--no-eval", action="store_true", help="do not evaluate during or after training")
    m = p.add_argument_group("model and config")
    m.add_argument("--model", help="start from this model zoo entry's config (gluon_rcnn.list_models())")
    m.add_argument("--config", nargs="+", action="extend", default=[], metavar="FILE|KEY=VALUE",
                   help="a JSON config file and/or KEY=VALUE overrides, applied in order")
    m.add_argument("--seed", type=int, help="TRAIN.SEED: data order, augmentation and model randomness")
    m.add_argument("--max-iter", type=int, help="stop after N iterations (decay steps past N are dropped)")
    r = p.add_argument_group("run")
    r.add_argument("--output", default=os.path.join("runs", "train"),
                   help="folder for checkpoints, config.json, metrics.jsonl and TensorBoard events")
    r.add_argument("--resume", action="store_true", help="continue from OUTPUT/last_checkpoint when it exists")
    r.add_argument("--keep-checkpoints", type=int, default=3, help="periodic checkpoints kept (0 = all)")
    r.add_argument("--force-unlock", action="store_true",
                   help="take over OUTPUT/train.lock although it was written on another host (only when that run "
                        "is gone; a lock left by a killed run on this host is taken over without it)")
    r.add_argument("--deterministic", action="store_true", default=None,
                   help="torch.use_deterministic_algorithms (default on for CPU runs, off on GPU)")
    r.add_argument("--fast-step", action="store_true",
                   help="net.optimize_for_training(): frozen batch norms applied inside their convolutions and "
                        "channels_last, and PyTorch's fused SGD (a faster step, the same state dict; learns the same "
                        "up to float rounding)")
    return p


def build_config(args, mask: bool):
    """The config from the command line, not yet finalised (the world size is not known yet)."""
    if args.model:
        from .. import model_zoo
        cfg = model_zoo.get_config(args.model, finalize=False).clone()
        if bool(cfg.MODE_MASK) != mask:
            other = "train_mask_rcnn.py" if cfg.MODE_MASK else "train_faster_rcnn.py"
            raise ConfigError(f"zoo entry {args.model} has MODE_MASK={cfg.MODE_MASK}; train it with scripts/{other}")
    else:
        cfg = get_default_config()
    for item in args.config:
        if "=" in item and not os.path.isfile(item):
            cfg.update_args([item])
        else:
            cfg.update_file(item)
    overridden_mask = any(c.split("=", 1)[0].strip() == "MODE_MASK" for c in args.config if "=" in c)
    if overridden_mask and bool(cfg.MODE_MASK) != mask:
        other = "train_mask_rcnn.py" if cfg.MODE_MASK else "train_faster_rcnn.py"
        raise ConfigError(f"MODE_MASK={cfg.MODE_MASK} contradicts this script; use scripts/{other}")
    cfg.MODE_MASK = bool(mask)
    if args.seed is not None:
        cfg.TRAIN.SEED = int(args.seed)
    if args.dataset:
        cfg.DATA.TRAIN = list(args.dataset)
    if args.val_dataset:
        cfg.DATA.VAL = list(args.val_dataset)
    if args.basedir:
        cfg.DATA.BASEDIR = args.basedir
    return cfg


def build_datasets(args, cfg):
    """``(train_dataset, val_dataset or None)`` as raw COCODetection items (transforms come later).

    With several training datasets their classes must agree; the first one's class names line
    up the others. ``cfg.DATA.CLASS_NAMES`` (when set) chooses and orders the classes.
    """
    from ..data.coco import COCODetection, get_dataset_paths

    names = tuple(cfg.DATA.CLASS_NAMES) or None
    skip = bool(cfg.DATA.SKIP_BAD_IMAGES)  # undecodable images become bad-image markers, not errors
    kw = dict(with_masks=bool(cfg.MODE_MASK), class_names=names, skip_bad_images=skip)
    if args.annotations:
        if not args.images:
            raise ConfigError("--annotations needs --images DIR")
        train = COCODetection(args.annotations, args.images, train=True,
                              filter_empty=cfg.DATA.FILTER_EMPTY_ANNOTATIONS, **kw)
    else:
        parts = []
        for name in cfg.DATA.TRAIN:
            ann, img = get_dataset_paths(name, cfg.DATA.BASEDIR)
            parts.append(COCODetection(ann, img, train=True, filter_empty=cfg.DATA.FILTER_EMPTY_ANNOTATIONS, **kw))
            kw["class_names"] = parts[0].classes
        train = parts[0] if len(parts) == 1 else _Concat(parts)
    val = None
    if not args.no_eval:
        vkw = dict(with_masks=False, class_names=train.classes, skip_bad_images=skip)
        if args.val_annotations:
            if not args.val_images:
                raise ConfigError("--val-annotations needs --val-images DIR")
            val = COCODetection(args.val_annotations, args.val_images, train=False, **vkw)
        elif not args.annotations and cfg.DATA.VAL:
            paths = [get_dataset_paths(n, cfg.DATA.BASEDIR) for n in cfg.DATA.VAL]
            if all(os.path.isfile(a) for a, _ in paths):
                if len(paths) > 1:
                    logger.warning("evaluating on %s only (one validation set is scored)", cfg.DATA.VAL[0])
                val = COCODetection(*paths[0], train=False, **vkw)
            else:
                logger.warning("DATA.VAL=%s not found under %r: no evaluation", cfg.DATA.VAL, cfg.DATA.BASEDIR)
    return train, val


class _Concat(torch.utils.data.ConcatDataset):
    """Several datasets with the same classes as one.

    Exposes what the data wrappers ask of a dataset without decoding images (``aspect_ratios()``
    for the aspect-ratio grouping of ``data.loader.aspect_groups``, ``image_info(i)``), so that a
    ``TransformedDataset`` around it does not fall back to decoding every image at start-up.
    """

    @property
    def classes(self):
        return self.datasets[0].classes

    @property
    def image_ids(self) -> list:
        return [i for d in self.datasets for i in d.image_ids]

    def aspect_ratios(self):
        """float64 (N,): width / height of every item, the parts' concatenated (nothing decoded)."""
        import numpy as np
        return np.concatenate([np.asarray(d.aspect_ratios(), dtype=np.float64).reshape(-1)
                               for d in self.datasets])

    def image_info(self, idx: int) -> dict:
        """The ``image_info`` of item ``idx`` of the concatenation (from its part; nothing decoded)."""
        import bisect
        if idx < 0:
            if -idx > len(self):
                raise IndexError(f"index {idx} out of range for a dataset of {len(self)} images")
            idx += len(self)
        part = bisect.bisect_right(self.cumulative_sizes, idx)
        if part >= len(self.datasets):
            raise IndexError(f"index {idx} out of range for a dataset of {len(self)} images")
        start = self.cumulative_sizes[part - 1] if part else 0
        return self.datasets[part].image_info(idx - start)


def schedule_for_iterations(iters: int, total_batch: int, decay_at: Sequence[float] = (0.8, 0.95)) -> list[int]:
    """A valid ``TRAIN.LR_SCHEDULE`` for a run of ``iters`` iterations of ``total_batch`` images
    that divides the LR by 10 at the fractions ``decay_at`` of the run.

    The result is counted, as tensorpack's schedules are, at 8 images per iteration; it is
    increasing and positive for any ``iters >= 1``: decay points that would fall on iteration 0,
    on the end or on each other are dropped (a run of 1 or 2 iterations has none). Rescaling to
    the real batch rounds (``finalize()`` turns a step ``s`` into ``s * 8 / total_batch``
    iterations), so pass ``--max-iter iters`` as well to stop at exactly ``iters``.
    """
    if int(iters) < 1:
        raise ConfigError(f"a run needs at least 1 iteration, got {iters}")
    if int(total_batch) < 1:
        raise ConfigError(f"total batch must be >= 1, got {total_batch}")
    scale = int(total_batch) / 8  # real iterations -> steps of 8 images
    last = max(1, int(math.ceil(int(iters) * scale)))
    steps: list[int] = []
    for frac in sorted(decay_at):
        if not 0 < frac < 1:
            raise ConfigError(f"decay points are fractions of the run in (0, 1), got {frac}")
        s = int(round(int(iters) * frac * scale))
        if 0 < s < last and (not steps or s > steps[-1]):
            steps.append(s)
    return steps + [last]


def last_line(e: BaseException) -> str:
    """The message of ``e``, or, for an error a DataLoader worker re-raised with the worker's
    traceback in its text, that traceback's last line (the original message)."""
    lines = [ln for ln in str(e).splitlines() if ln.strip()]
    return lines[-1].split(": ", 1)[-1] if len(lines) > 1 and "Traceback" in str(e) else str(e)


def main(argv: Sequence[str] | None = None, mask: bool = False) -> int:
    """Parse ``argv``, train, return the exit status (0 done, 1 non-finite loss, 2 bad input)."""
    parser = build_arg_parser(mask)
    args = parser.parse_args(argv)
    if args.annotations and args.dataset:
        parser.error("give either --dataset NAME or --annotations JSON --images DIR, not both")
    logging.basicConfig(level=logging.INFO, format="[%(asctime)s %(name)s] %(message)s", datefmt="%H:%M:%S")
    from ..data.coco import DatasetError
    from ..engine.runlock import OutputLockedError
    from ..engine.trainer import NonFiniteLossError, Trainer, seed_all

    try:
        cfg = build_config(args, mask)
        rank, world, _ = dist.init_distributed()
    except (ConfigError, RuntimeError, KeyError) as e:  # KeyError: an unknown zoo name
        print(f"error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        return 2
    if rank != 0:
        logging.getLogger().setLevel(logging.WARNING)
    try:
        try:
            train_set, val_set = build_datasets(args, cfg)
            if not cfg.DATA.CLASS_NAMES:
                cfg.DATA.CLASS_NAMES = list(train_set.classes)
                cfg.DATA.NUM_CATEGORY = len(train_set.classes)
            cfg.finalize()
            if args.max_iter is not None and args.max_iter < 1:
                raise ConfigError(f"--max-iter must be >= 1, got {args.max_iter}")
        except (ConfigError, DatasetError, KeyError) as e:
            print(f"error: {e.args[0] if isinstance(e, KeyError) else e}", file=sys.stderr)
            return 2
        if rank == 0:
            logger.info("%d training images, %d classes; %s", len(train_set), cfg.DATA.NUM_CATEGORY,
                        f"{len(val_set)} validation images" if val_set is not None else "no validation set")
        from ..builders import build_model

        seed_all(cfg.TRAIN.SEED)  # the same initial weights on every rank and in every run
        model = build_model(cfg)
        if args.fast_step:
            from ..nn.norm import FrozenBNConv2d
            model.optimize_for_training()
            if rank == 0:
                logger.info("fast step: %d frozen batch norms applied inside their convolutions, channels_last, fused SGD",
                            sum(isinstance(m, FrozenBNConv2d) for m in model.modules()))
        try:
            trainer = Trainer(cfg, model, train_set, args.output, resume=args.resume, val_dataset=val_set,
                              keep_checkpoints=args.keep_checkpoints, deterministic=args.deterministic,
                              max_iter=args.max_iter, force_unlock=args.force_unlock,
                              fused_optimizer=args.fast_step)
        except (ValueError, OutputLockedError) as e:  # e.g. fewer images than one batch per process; --output in use
            print(f"error: {e}", file=sys.stderr)
            return 2
        try:
            trainer.train()
        except NonFiniteLossError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        except DatasetError as e:  # a bad image (re-raised from a loader worker with its traceback)
            print(f"error: {last_line(e)} (DATA.SKIP_BAD_IMAGES=True skips bad images instead)", file=sys.stderr)
            return 2
        if rank == 0:
            logger.info("done: %s", os.path.join(args.output, "model_final.pth"))
        return 0
    finally:
        dist.cleanup()
