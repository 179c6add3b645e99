"""Training machinery: LR schedule, sampler, loader, trainer checkpoints, torchrun runs, resume.

The end-to-end tests run the real scripts (scripts/train_mask_rcnn.py) on a tiny COCO-format set
this file writes (8 images of 128x96 / 96x128 with polygon masks) with a ResNet-18-FPN Mask R-CNN
cut down to a few channels, for a handful of iterations, on the CPU.
"""
from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from gluon_rcnn.config import SCHEDULES, get_default_config, schedule_steps
from gluon_rcnn.data.loader import (TrainingSampler, TransformedDataset, aspect_groups, build_test_loader,
                                    build_train_loader, collate, shard_indices)
from gluon_rcnn.engine.trainer import NonFiniteLossError, Trainer, WarmupStepLR, get_rng_state, set_rng_state
from gluon_rcnn.utils.io import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
TRAIN_MASK = REPO / "scripts" / "train_mask_rcnn.py"

# a ResNet-18-FPN Mask R-CNN small enough for a CPU test
TINY = ["BACKBONE.RESNET_NUM_BLOCKS=[2,2,2,2]", "FPN.NUM_CHANNEL=32", "FPN.FRCNN_FC_HEAD_DIM=64",
        "MRCNN.HEAD_DIM=32", "MRCNN.RESOLUTION=14", "RPN.TRAIN_PRE_NMS_TOPK=300", "RPN.TRAIN_POST_NMS_TOPK=100",
        "RPN.TRAIN_PER_LEVEL_NMS_TOPK=100", "RPN.TEST_PRE_NMS_TOPK=300", "RPN.TEST_POST_NMS_TOPK=50",
        "RPN.TEST_PER_LEVEL_NMS_TOPK=50", "RPN.BATCH_PER_IM=64", "FRCNN.BATCH_PER_IM=32",
        "PREPROC.TRAIN_SHORT_EDGE_SIZE=[64,96]", "PREPROC.TEST_SHORT_EDGE_SIZE=64", "PREPROC.MAX_SIZE=128",
        "TEST.RESULTS_PER_IM=20", "DATA.NUM_WORKERS=0", "TRAIN.LOG_PERIOD=1"]


# ---------------------------------------------------------------------------------------------
# fixtures
# ---------------------------------------------------------------------------------------------
def make_tiny_coco(root: Path, n: int = 8, seed: int = 0) -> tuple[str, str]:
    """n images alternating 128x96 (landscape) and 96x128 (portrait), a square and a triangle
    each, with polygon segmentations; category ids 3 and 7 (not contiguous)."""
    rng = np.random.RandomState(seed)
    img_dir = root / "images"
    img_dir.mkdir(parents=True, exist_ok=True)
    images, anns = [], []
    aid = 1
    for i in range(n):
        w, h = (128, 96) if i % 2 == 0 else (96, 128)
        img = (np.full((h, w, 3), 40) + rng.randint(0, 20, (h, w, 3))).astype(np.uint8)
        for k in range(2):
            x0, y0 = rng.randint(5, w // 2), rng.randint(5, h // 2)
            s = rng.randint(20, min(w, h) // 2)
            if k == 0:
                poly, cid, color = [x0, y0, x0 + s, y0, x0 + s, y0 + s, x0, y0 + s], 3, (220, 60, 60)
            else:
                poly, cid, color = [x0, y0 + s, x0 + s, y0 + s, x0 + s / 2, y0], 7, (60, 200, 90)
            pts = np.array(poly, np.float32).reshape(-1, 2)
            cv2.fillPoly(img, [pts.round().astype(np.int32)], color)
            (x1, y1), (x2, y2) = pts.min(0), pts.max(0)
            anns.append({"id": aid, "image_id": i + 1, "category_id": cid, "iscrowd": 0,
                         "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)],
                         "area": float((x2 - x1) * (y2 - y1)), "segmentation": [[float(v) for v in poly]]})
            aid += 1
        cv2.imwrite(str(img_dir / f"{i:04d}.png"), img[:, :, ::-1])
        images.append({"id": i + 1, "file_name": f"{i:04d}.png", "width": w, "height": h})
    ann = root / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns,
                               "categories": [{"id": 3, "name": "square"}, {"id": 7, "name": "triangle"}]}))
    return str(ann), str(img_dir)


@pytest.fixture(scope="module")
def tiny_coco(module_tmp):
    return make_tiny_coco(module_tmp("tiny_coco"))


def _env(threads: int = 1) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = str(threads)
    env.pop("RANK", None), env.pop("WORLD_SIZE", None), env.pop("LOCAL_RANK", None)
    return env


def _train_cmd(ann, imgs, out, *extra, nproc: int = 1) -> list[str]:
    launcher = [sys.executable]
    if nproc > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"]
    return [*launcher, str(TRAIN_MASK), "--annotations", ann, "--images", imgs, "--output", str(out), *extra]


def _run(cmd, timeout=300, threads=1) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, env=_env(threads), capture_output=True, text=True, timeout=timeout, cwd=str(REPO))


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _losses(out: Path) -> dict[int, dict]:
    return {r["iteration"]: {k: v for k, v in r.items() if k not in ("iteration", "img_per_s", "lr")}
            for r in _metrics(out) if "eval" not in r}


# ---------------------------------------------------------------------------------------------
# (e) LR schedule and linear scaling
# ---------------------------------------------------------------------------------------------
def test_lr_schedule_warmup_steps_and_scaling():
    # torchvision's rules: warm-up counted at batch 8 (RULES.WARMUP_SCALES_WITH_BATCH)
    cfg = get_default_config().clone().update_args(["RULES.PROFILE=torchvision"])
    cfg.TRAIN.IMS_PER_GPU = 2   # x 8 processes: total batch 16 = 2x the reference 8
    cfg.TRAIN.LR_SCHEDULE = "1x"
    cfg.finalize()
    assert schedule_steps(cfg.TRAIN.LR_SCHEDULE, 16) == [60000, 80000, 90000]  # 120k/160k/180k at batch 8, halved
    s = WarmupStepLR.from_config(cfg, world_size=8)
    assert s.base_lr == pytest.approx(0.02) and s.warmup_init_lr == pytest.approx(2e-5)
    assert s.warmup_iters == 500 and s.max_iter == 90000 and s.decay_steps == [60000, 80000]
    assert s.lr_at(0) == pytest.approx(2e-5)
    assert s.lr_at(250) == pytest.approx(2e-5 + (0.02 - 2e-5) * 0.5)
    assert s.lr_at(500) == pytest.approx(0.02)
    assert s.lr_at(59999) == pytest.approx(0.02)
    assert s.lr_at(60000) == pytest.approx(0.002)
    assert s.lr_at(80000) == pytest.approx(0.0002)
    lrs = [s.lr_at(i) for i in range(0, 501, 50)]
    assert all(b > a for a, b in zip(lrs, lrs[1:]))  # monotone warm-up

    # a single image per iteration: 8x the iterations, 1/8 of the LR
    one = WarmupStepLR(0.01, 1e-5, 1000, schedule_steps("2x", 1), 1)
    assert one.base_lr == pytest.approx(0.00125) and one.warmup_iters == 8000
    assert one.max_iter == 360000 * 8 and one.decay_steps == [240000 * 8, 320000 * 8]


@pytest.mark.parametrize("name", [f"{k}x" for k in range(1, 10)])
def test_schedule_names(name):
    k = int(name[0])
    expect = [120, 160, 180] if k == 1 else [180 * k - 120, 180 * k - 40, 180 * k]
    assert SCHEDULES[name] == expect
    assert schedule_steps(name, 8) == [v * 1000 for v in expect]
    assert schedule_steps(name, 32) == [v * 250 for v in expect]
    s = WarmupStepLR(0.01, 1e-5, 1000, schedule_steps(name, 32), 32)
    assert s.lr_at(s.decay_steps[0] - 1) == pytest.approx(0.04)
    assert s.lr_at(s.decay_steps[1]) == pytest.approx(0.0004)


def test_max_iter_override_drops_later_steps():
    cfg = get_default_config()
    cfg.TRAIN.LR_SCHEDULE = [100, 200, 300]  # counted at batch 8 = this batch (8 processes x 1)
    cfg.finalize()
    s = WarmupStepLR.from_config(cfg.finalize(), world_size=8, max_iter=150)  # finalize() twice: no effect
    assert s.max_iter == 150 and s.decay_steps == [100]
    with pytest.raises(ValueError, match="max_iter"):
        WarmupStepLR.from_config(cfg, world_size=8, max_iter=0)


# ---------------------------------------------------------------------------------------------
# (f) sampler: resume equality, shards, aspect groups; collate; test shards
# ---------------------------------------------------------------------------------------------
def _take(it, n):
    return [next(it) for _ in range(n)]


def test_sampler_resume_equals_uninterrupted():
    groups = np.array([0, 1, 1, 0, 0, 1, 0, 0, 1, 1, 0])  # 6 landscape, 5 portrait
    ref = TrainingSampler(groups, 2, rank=1, world_size=2, seed=5)
    per_epoch = ref.batches_per_epoch(0)
    stream = _take(iter(ref), 4 * per_epoch + 1)
    for k in [0, 1, per_epoch - 1, per_epoch, 2 * per_epoch + 1]:
        s = TrainingSampler(groups, 2, rank=1, world_size=2, seed=5)
        s.advance(k)
        saved = s.state_dict()
        r = TrainingSampler(groups, 2, rank=1, world_size=2, seed=5)
        r.load_state_dict(saved)
        assert _take(iter(r), 2 * per_epoch) == stream[k:k + 2 * per_epoch], k
    other = _take(iter(TrainingSampler(groups, 2, rank=1, world_size=2, seed=6)), 4 * per_epoch)
    assert other != stream[:4 * per_epoch]
    with pytest.raises(ValueError, match="seed"):
        TrainingSampler(groups, 2, seed=6).load_state_dict(ref.state_dict())


@pytest.mark.parametrize("world,ims", [(1, 1), (2, 2), (3, 2), (4, 1)])
def test_sampler_shards_are_disjoint_grouped_and_even(world, ims):
    rng = np.random.RandomState(0)
    groups = rng.randint(0, 2, size=37)
    samplers = [TrainingSampler(groups, ims, r, world, seed=1) for r in range(world)]
    for epoch in range(3):
        per_rank = [s.epoch_batches(epoch) for s in samplers]
        assert len({len(b) for b in per_rank}) == 1  # same count on every rank
        flat = [i for b in per_rank for batch in b for i, _ in batch]
        assert len(flat) == len(set(flat))  # no image twice in one epoch
        for b in per_rank:
            for batch in b:
                assert len(batch) == ims
                assert len({groups[i] for i, _ in batch}) == 1  # one aspect group per batch
        # at most (ims-1) leftovers per group plus the cut to a multiple of world batches
        assert len(flat) >= len(groups) - 2 * (ims - 1) - (world - 1) * ims
    # every image appears over a few epochs
    seen = {i for s in samplers for e in range(6) for batch in s.epoch_batches(e) for i, _ in batch}
    assert seen == set(range(len(groups)))
    # the rank's stream follows its epochs, and shuffles differ between epochs
    s = samplers[0]
    stream = _take(iter(s), s.batches_per_epoch(0) + s.batches_per_epoch(1))
    assert [[i for i, _ in b] for b in stream] == [[i for i, _ in b] for e in (0, 1) for b in s.epoch_batches(e)]
    assert s.epoch_batches(0) != s.epoch_batches(1)


def test_sampler_too_small_dataset_is_a_clear_error():
    with pytest.raises(ValueError, match="cannot make even one batch"):
        TrainingSampler([0, 1, 0], 2, rank=0, world_size=2)


@pytest.mark.parametrize("n,world", [(7, 3), (2, 4), (10, 1), (16, 5)])
def test_test_shards_cover_every_image_once(n, world):
    shards = [list(shard_indices(n, r, world)) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    ds = [(torch.zeros(3, 4, 5, dtype=torch.uint8), {"image_id": i}, (4, 5)) for i in range(n)]
    ids = [i for r in range(world) for b, _ in build_test_loader(ds, r, world, batch_size=2) for i in b.image_ids]
    assert ids == list(range(n))


def test_collate_keeps_images_sizes_and_ids_and_drops_bad_images():
    a = torch.full((3, 50, 70), 7, dtype=torch.uint8)
    b = torch.full((3, 65, 33), 9, dtype=torch.uint8)
    ta = {"boxes": np.array([[1, 2, 30, 40]], np.float32), "labels": np.array([2]), "image_id": 11,
          "polygons": [[np.array([1, 2, 30, 2, 30, 40], np.float32)]]}
    tb = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64), "image_id": 12,
          "polygons": torch.zeros(0, 1, 4)}
    bad = {"image": None, "image_id": 13, "bad_image": "x.jpg: truncated (image id 13)"}
    batch, targets = collate([(a, ta, (50, 70), (100, 140)), bad, (b, tb, (65, 33))])
    assert len(batch) == 2 and batch.images[0] is a and batch.images[1] is b  # decoded pixels, untouched
    assert batch.sizes == [(100, 140), None] and batch.original_sizes == [(50, 70), (65, 33)]
    assert batch.image_ids == [11, 12] and batch.skipped == ["x.jpg: truncated (image id 13)"]
    assert set(targets[0]) == {"boxes", "labels", "polygons"}  # tensors only: the model moves them
    assert targets[0]["polygons"].shape == (1, 3, 4)
    assert targets[0]["polygons"][0, 2].tolist() == [30, 40, 1, 2]  # closed polygon
    assert targets[0]["labels"].dtype == torch.int64 and targets[1]["boxes"].shape == (0, 4)
    only_bad, t = collate([bad])
    assert len(only_bad) == 0 and t == [] and only_bad.skipped == [bad["bad_image"]]


class _RawSet:
    """Raw items (numpy HWC) of alternating orientation, like COCODetection's."""

    def __init__(self, n=10):
        self.n = n

    def __len__(self):
        return self.n

    def aspect_ratios(self):
        return np.array([1.5 if i % 3 else 0.6 for i in range(self.n)])

    def __getitem__(self, i):
        h, w = (40, 60) if i % 3 else (60, 36)
        img = np.full((h, w, 3), i, np.uint8)
        return {"image": img, "image_id": 100 + i, "boxes": np.array([[1, 1, 20, 30]], np.float32),
                "labels": np.array([1]), "polygons": [[np.array([1, 1, 20, 1, 20, 30], np.float32)]]}


def _loader_cfg(workers=0, ims=2):
    cfg = get_default_config()
    cfg.update_args([f"DATA.NUM_WORKERS={workers}", f"TRAIN.IMS_PER_GPU={ims}", "TRAIN.SEED=3",
                     "PREPROC.TRAIN_SHORT_EDGE_SIZE=[20,40]", "PREPROC.MAX_SIZE=80"])
    return cfg.finalize()


def _signature(batch):
    images, targets = batch
    return (images.image_ids, images.sizes, [tuple(i.shape) for i in images.images], [t["boxes"].tolist() for t in targets])


def test_train_loader_resumes_exactly_and_ignores_worker_count():
    from gluon_rcnn.data.transforms import TrainTransform

    cfg = _loader_cfg(workers=0)
    ds = TransformedDataset(_RawSet(), TrainTransform(cfg))
    assert aspect_groups(ds).tolist() == [1 if i % 3 == 0 else 0 for i in range(10)]
    ref = build_train_loader(cfg, ds)
    stream = [_signature(next(ref)) for _ in range(9)]
    state_after_4 = None
    again = build_train_loader(cfg, ds)
    for _ in range(4):
        next(again)
    state_after_4 = again.state_dict()
    for kw in ({"state": state_after_4}, {"start_iter": 4}):
        resumed = build_train_loader(cfg, ds, **kw)
        assert [_signature(next(resumed)) for _ in range(5)] == stream[4:]
    # with worker processes (which prefetch ahead) the batches, the augmentation and the
    # consumed position are the same
    cfg2 = _loader_cfg(workers=2)
    with_workers = build_train_loader(cfg2, ds)
    got = [_signature(next(with_workers)) for _ in range(4)]
    assert got == stream[:4]
    assert with_workers.state_dict() == state_after_4
    # augmentation is random (sizes vary) but different seeds differ
    assert len({s[1][0] for s in stream}) > 1
    cfg3 = _loader_cfg(workers=0)
    cfg3.TRAIN.SEED = 4
    assert [_signature(next(build_train_loader(cfg3, ds))) for _ in range(4)] != stream[:4]


def test_rng_state_roundtrip_is_weights_only_loadable(tmp_path):
    import random

    st = get_rng_state()
    torch.save({"rng": [st]}, tmp_path / "r.pth")
    a = (random.random(), np.random.rand(), torch.rand(3).tolist())
    loaded = torch.load(tmp_path / "r.pth", weights_only=True)["rng"][0]
    set_rng_state(loaded)
    assert (random.random(), np.random.rand(), torch.rand(3).tolist()) == a


# ---------------------------------------------------------------------------------------------
# (d) a non-finite loss stops training with the iteration named (in-process, with a loss
#     double that turns NaN at a known step; the real-model variant is below)
# ---------------------------------------------------------------------------------------------
class _LossDouble(torch.nn.Module):
    """Stands in for the detector's train-mode contract (a dict of scalar losses)."""

    def __init__(self, nan_at: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(4, 3))
        self.bn = torch.nn.BatchNorm1d(4)
        self.calls, self.nan_at = 0, nan_at

    def forward(self, images, targets):
        self.calls += 1
        x = torch.stack([im.float().mean((1, 2)) for im in images.images]) / 255.0
        y = self.bn(x @ self.w.t())
        box = (y - torch.stack([t["boxes"].mean() for t in targets])[:, None] / 100).abs().mean()
        cls = y.pow(2).mean() * (float("nan") if self.calls == self.nan_at else 1.0)
        return {"frcnn_box": box, "frcnn_cls": cls}


def test_nan_loss_stops_with_iteration_named(tmp_path):
    from gluon_rcnn.data.transforms import TrainTransform

    cfg = _loader_cfg(workers=0)
    cfg.update_args(["TRAIN.CHECKPOINT_PERIOD=2", "TRAIN.LR_SCHEDULE=[80]", "TRAIN.LOG_PERIOD=1"])
    cfg.finalize()
    ds = TransformedDataset(_RawSet(), TrainTransform(cfg))
    trainer = Trainer(cfg, _LossDouble(nan_at=5), ds, str(tmp_path))
    with pytest.raises(NonFiniteLossError, match=r"non-finite loss at iteration 5 .*frcnn_cls=nan") as e:
        trainer.train()
    assert "model_0000004.pth" in str(e.value)
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000004.pth"
    assert [r["iteration"] for r in _metrics(tmp_path)] == [1, 2, 3, 4]
    ck = load_checkpoint(str(tmp_path / "model_0000004.pth"))
    assert ck["iteration"] == 4 and torch.isfinite(ck["model"]["w"]).all()
    assert not (tmp_path / "model_final.pth").exists()


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_amp_and_grad_clip_in_process(tmp_path, amp):
    """AMP on the CPU autocast (fp16 with a GradScaler), gradient clipping, checkpoint contents."""
    from gluon_rcnn.data.transforms import TrainTransform

    cfg = _loader_cfg(workers=0)
    cfg.update_args([f"TRAIN.AMP={amp}", "TRAIN.GRAD_CLIP=0.5", "TRAIN.CHECKPOINT_PERIOD=2", "TRAIN.LOG_PERIOD=1",
                     "RULES.ACCUMULATE_TO_8=False"])  # an optimiser step every iteration
    cfg.finalize()
    ds = TransformedDataset(_RawSet(), TrainTransform(cfg))
    Trainer(cfg, _LossDouble(nan_at=-1), ds, str(tmp_path), max_iter=3).train()  # what --max-iter 3 does
    rows = _metrics(tmp_path)
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) for r in rows)
    if amp == "bf16":
        assert all(0 < r["grad_norm"] for r in rows) and "loss_scale" not in rows[0]
    else:  # fp16: GradScaler starts at 2**16, skips overflowing steps and halves its scale
        assert rows[-1]["grad_norm"] > 0 and rows[0]["loss_scale"] == 2.0 ** 16
        assert all(r["grad_norm"] is None for r in rows if r["loss_scale"] > rows[-1]["loss_scale"])
    ck = load_checkpoint(str(tmp_path / "model_0000003.pth"))
    assert (amp == "fp16") == bool(ck["scaler"])  # the fp16 GradScaler state is saved
    assert ck["config"]["TRAIN"]["AMP"] == amp and ck["sampler"]["epoch"] == 0
    assert json.loads((tmp_path / "config.json").read_text())["TRAIN"]["AMP"] == amp
    assert sorted(p.name for p in tmp_path.glob("model_*.pth")) == ["model_0000002.pth", "model_0000003.pth",
                                                                    "model_final.pth"]


class _ParamLoss(torch.nn.Module):
    """The smallest train-mode contract: a dict of scalar losses (the batch is not looked at)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))

    def forward(self, *batch, **kw):
        return {"frcnn_cls": self.w.pow(2).mean()}


def _train_two_steps(out):
    from gluon_rcnn.data.transforms import TrainTransform

    cfg = _loader_cfg(workers=0)
    cfg.update_args(["TRAIN.LOG_PERIOD=1"])
    cfg.finalize()
    Trainer(cfg, _ParamLoss(), TransformedDataset(_RawSet(), TrainTransform(cfg)), str(out), max_iter=2).train()


def test_tensorboard_events_when_installed(tmp_path):
    pytest.importorskip("tensorboard", reason="TensorBoard logging needs the optional extra: "
                                              "pip install 'gluon_rcnn[tensorboard]'")
    _train_two_steps(tmp_path)
    assert list(tmp_path.glob("events.out.tfevents.*"))
    assert [r["iteration"] for r in _metrics(tmp_path)] == [1, 2]


def test_training_without_tensorboard_logs_one_line_and_continues(tmp_path, monkeypatch, caplog):
    """The tensorboard extra absent (its import blocked here): one log line, metrics.jsonl, no events."""
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` now raises ImportError
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with caplog.at_level("INFO", logger="gluon_rcnn"):
        _train_two_steps(tmp_path)
    lines = [r for r in caplog.records if "TensorBoard" in r.getMessage()]
    assert len(lines) == 1 and "not installed" in lines[0].getMessage()
    assert "gluon_rcnn[tensorboard]" in lines[0].getMessage() and lines[0].levelname == "INFO"
    assert [r["iteration"] for r in _metrics(tmp_path)] == [1, 2]
    assert (tmp_path / "model_final.pth").exists() and not list(tmp_path.glob("events.out.tfevents.*"))


def _have_tensorboard() -> bool:
    import importlib.util
    try:
        return importlib.util.find_spec("tensorboard") is not None
    except ValueError:
        return False


# ---------------------------------------------------------------------------------------------
# end to end with the real detector and scripts
# ---------------------------------------------------------------------------------------------
def test_torchrun_two_process_mask_rcnn(tiny_coco, tmp_path):
    """(a) torchrun --nproc_per_node=2 on gloo, SyncBN across the two CPU processes."""
    ann, imgs = tiny_coco
    out = tmp_path / "run"
    r = _run(_train_cmd(ann, imgs, out, "--max-iter", "3", "--val-annotations", ann, "--val-images", imgs,
                        "--seed", "1", "--config", *TINY, "TRAIN.CHECKPOINT_PERIOD=2", "TRAIN.EVAL_PERIOD=2",
                        "BACKBONE.NORM=SyncBN", "BACKBONE.FREEZE_AT=0", nproc=2))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-5000:]
    assert (out / "last_checkpoint").read_text() == "model_0000003.pth"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["MODE_MASK"] is True and cfg["DATA"]["NUM_CATEGORY"] == 2
    ck = load_checkpoint(str(out / "model_0000003.pth"))
    assert ck["iteration"] == 3 and ck["world_size"] == 2 and len(ck["rng"]) == 2
    assert any(".running_mean" in k for k in ck["model"])  # trainable BN made sync, weights unwrapped
    assert not any(k.startswith("module.") for k in ck["model"])
    final = load_checkpoint(str(out / "model_final.pth"))
    assert set(final) == {"model", "config"}
    assert (out / "model_0000002.pth").exists()
    rows = _losses(out)
    assert sorted(rows) == [1, 2, 3]
    assert all(math.isfinite(v) for row in rows.values() for v in row.values())
    assert {"rpn_cls", "rpn_box", "frcnn_cls", "frcnn_box", "mask", "loss"} <= set(rows[1])
    evals = [x for x in _metrics(out) if "eval" in x]  # every EVAL_PERIOD and at the end
    assert [x["iteration"] for x in evals] == [2, 3]
    assert {"bbox/AP", "segm/AP"} <= set(evals[-1]["eval"])
    dets = json.loads((out / "eval_0000003.json").read_text())
    assert {d["image_id"] for d in dets} <= set(range(1, 9)) and all("segmentation" in d for d in dets)
    if _have_tensorboard():  # the optional extra; without it see test_training_without_tensorboard_...
        assert list((out).glob("events.out.tfevents.*"))  # TensorBoard


def test_kill_and_resume_matches_uninterrupted(tiny_coco, tmp_path):
    """(b) SIGKILL after a checkpoint, --resume: the losses after the resume point are those of an
    uninterrupted run with the same seed, bit for bit. The interrupted run loads its data in two
    worker processes (which prefetch past the checkpoint), the reference in the main process."""
    ann, imgs = tiny_coco
    common = ["--max-iter", "6", "--no-eval", "--seed", "7", "--config", *TINY, "TRAIN.CHECKPOINT_PERIOD=2",
              "TRAIN.IMS_PER_GPU=2"]
    ref_out, out = tmp_path / "ref", tmp_path / "killed"
    r = _run(_train_cmd(ann, imgs, ref_out, *common))
    assert r.returncode == 0, r.stderr[-5000:]
    ref = _losses(ref_out)
    assert sorted(ref) == [1, 2, 3, 4, 5, 6]

    common += ["DATA.NUM_WORKERS=2"]
    p = subprocess.Popen(_train_cmd(ann, imgs, out, *common), env=_env(), cwd=str(REPO),
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 240
        while time.time() < deadline and p.poll() is None:
            if (out / "last_checkpoint").exists():
                break
            time.sleep(0.05)
        assert p.poll() is None, "the run ended before it could be killed"
        p.send_signal(signal.SIGKILL)
        p.wait(30)
    finally:
        if p.poll() is None:
            p.kill()
    resume_at = int((out / "last_checkpoint").read_text()[6:13])
    assert 2 <= resume_at < 6 and not (out / "model_final.pth").exists()
    r = _run(_train_cmd(ann, imgs, out, *common, "--resume"))
    assert r.returncode == 0, r.stderr[-5000:]
    got = _losses(out)
    assert sorted(got) == [1, 2, 3, 4, 5, 6]  # no duplicate records from the killed run
    for it in range(resume_at + 1, 7):
        for k, v in ref[it].items():
            assert got[it][k] == v, (it, k)  # bit-identical
    a = load_checkpoint(str(ref_out / "model_final.pth"))["model"]
    b = load_checkpoint(str(out / "model_final.pth"))["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_loss_script_exits_nonzero(tiny_coco, tmp_path):
    """(d) the real detector with an absurd LR diverges; the script stops naming the iteration."""
    ann, imgs = tiny_coco
    out = tmp_path / "nan"
    r = _run(_train_cmd(ann, imgs, out, "--max-iter", "8", "--no-eval", "--config", *TINY,
                        "TRAIN.CHECKPOINT_PERIOD=1", "TRAIN.BASE_LR=1e12", "TRAIN.WARMUP_INIT_LR=1e12",
                        "RULES.ACCUMULATE_TO_8=False"))  # an update every iteration (else the 1st at 4)
    assert r.returncode == 1, r.stderr[-5000:]
    m = re.search(r"non-finite loss at iteration (\d+) \(of 8\): (.*)", r.stderr)
    assert m, r.stderr[-3000:]
    bad = int(m.group(1))
    assert re.search(r"=(nan|inf|-inf)", m.group(2))
    assert [x["iteration"] for x in _metrics(out)] == list(range(1, bad))
    last = (out / "last_checkpoint").read_text()
    assert last == f"model_{bad - 1:07d}.pth"
    ck = load_checkpoint(str(out / last))
    assert ck["iteration"] == bad - 1
    assert not (out / "model_final.pth").exists()


_EVAL_SCRIPT = r"""
import json, sys
import torch
from gluon_rcnn.config import get_default_config
from gluon_rcnn.data.coco import COCODetection
from gluon_rcnn.builders import build_model
from gluon_rcnn.engine import dist
from gluon_rcnn.engine.inference import evaluate_distributed
from gluon_rcnn.engine.trainer import seed_all

ann, imgs, out, *overrides = sys.argv[1:]
rank, world, _ = dist.init_distributed()
ds = COCODetection(ann, imgs, train=False)
cfg = get_default_config()
cfg.update_args(overrides)
cfg.MODE_MASK = True
cfg.DATA.NUM_CATEGORY, cfg.DATA.CLASS_NAMES = len(ds.classes), list(ds.classes)
cfg.finalize()
seed_all(0)
model = build_model(cfg)
metrics, results = evaluate_distributed(model, ds, cfg=cfg, output_file=out + "/results.json")
if rank == 0:
    json.dump({"metrics": metrics, "world": world}, open(out + "/metrics.json", "w"))
dist.cleanup()
"""


def test_two_process_evaluation_equals_one(tiny_coco, tmp_path):
    """(c) 2-process sharded evaluation: same AP and the same (sorted) results JSON as 1 process."""
    ann, imgs = tiny_coco
    script = tmp_path / "ev.py"
    script.write_text(_EVAL_SCRIPT)
    outs = []
    for nproc in (1, 2):
        out = tmp_path / f"ev{nproc}"
        out.mkdir()
        launcher = ([sys.executable] if nproc == 1 else
                    [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"])
        r = _run([*launcher, str(script), ann, imgs, str(out), *TINY, "TEST.RESULT_SCORE_THRESH=0.0"])
        assert r.returncode == 0, r.stderr[-5000:]
        outs.append(out)
    m1, m2 = (json.loads((o / "metrics.json").read_text()) for o in outs)
    assert (m1["world"], m2["world"]) == (1, 2)
    assert set(m1["metrics"]) == {"bbox", "segm"}
    assert m1["metrics"] == m2["metrics"]
    r1, r2 = (json.loads((o / "results.json").read_text()) for o in outs)
    assert len(r1) > 0 and r1 == r2
    assert {r["image_id"] for r in r1} <= set(range(1, 9)) and {r["category_id"] for r in r1} <= {3, 7}


def test_fast_step_trains_and_saves_the_plain_state_dict(tiny_coco, tmp_path):
    """--fast-step (net.optimize_for_training()): the frozen norms of the ResNet go inside their
    convolutions, training runs, and the checkpoint has the plain model's keys, shapes and dtypes (it
    loads into a model built without the flag)."""
    from gluon_rcnn.utils.io import load_checkpoint
    ann, imgs = tiny_coco
    outs = {}
    for fast in (False, True):
        out = tmp_path / ("fast" if fast else "plain")
        r = _run(_train_cmd(ann, imgs, out, "--max-iter", "2", "--no-eval", "--seed", "3", "--config", *TINY,
                            *(["--fast-step"] if fast else [])))
        assert r.returncode == 0, r.stderr[-5000:]
        assert ("fast step: 20 frozen batch norms applied inside their convolutions, channels_last, fused SGD" in
                r.stderr + r.stdout) == fast
        assert sorted(_losses(out)) == [1, 2] and all(
            math.isfinite(v) for rec in _losses(out).values() for v in rec.values() if isinstance(v, float))
        outs[fast] = load_checkpoint(out / "model_final.pth")["model"]
    plain, fast = outs[False], outs[True]
    assert plain.keys() == fast.keys()
    assert all(plain[k].shape == fast[k].shape and plain[k].dtype == fast[k].dtype for k in plain)
