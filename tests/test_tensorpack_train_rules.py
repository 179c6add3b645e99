"""tensorpack's two remaining training rules: ``RULES.MASK_TARGETS`` and ``RULES.ACCUMULATE_TO_8``.

* Mask targets ('bitmap_crop'): each matched instance's full-image pycocotools bitmap of the resized
  image (``H x ceil(W/8)*8``, tensorpack's data.py), bilinearly cropped to each foreground RoI by
  tensorpack's ``model_box.crop_and_resize(..., pad_border=False)``. Checked against a numpy
  reference of ``tf.image.crop_and_resize`` written from TF's definition (normalised box
  ``y1, x1, y2, x2``; sample ``y1*(H-1) + i*(y2-y1)*(H-1)/(crop_h-1)``; bilinear between
  ``floor``/``ceil``; ``extrapolation_value`` 0 outside ``[0, H-1]``) fed the boxes of tensorpack's
  ``transform_fpcoor_for_tf``.
* Gradient accumulation: k = 8 // (IMS_PER_GPU x world) iterations per optimiser step, replayed by
  hand with tensorpack's rule (``AccumGradOptimizer`` sums the k gradients, each a sum over the
  towers, and ``MomentumOptimizer(lr / 8, 0.9)`` applies the sum with the LR of the step that
  applies it; warm-up step based, decay at ``LR_SCHEDULE * 8 / NUM_GPUS`` steps); exact resume from
  a checkpoint taken inside a group; and a short run of the real Mask R-CNN with IMS_PER_GPU=2.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from gluon_rcnn.config import ConfigError, get_default_config
from gluon_rcnn.data.transforms import polygons_to_edges
from gluon_rcnn.engine.trainer import Trainer, WarmupStepLR, accumulation_steps
from gluon_rcnn.utils.io import load_checkpoint
from gluon_rcnn.profiles import PROFILES, rule_names
from gluon_rcnn.roi_heads import mask_loss
from gluon_rcnn.rules import mask_targets
from gluon_rcnn.structures.masks import (crop_and_resize_bitmaps, edges_to_polygons, polygons_to_bitmap,
                                       polygons_to_rle_ends)

sys.path.insert(0, str(Path(__file__).resolve().parent))


# ---------------------------------------------------------------------------------------------
# references
# ---------------------------------------------------------------------------------------------
def tf_crop_and_resize(image: np.ndarray, box: np.ndarray, crop_h: int, crop_w: int) -> np.ndarray:
    """``tf.image.crop_and_resize`` (bilinear, extrapolation_value=0) of one (H, W) image and one
    normalised ``[y1, x1, y2, x2]`` box, from TF's definition (crop_and_resize_op.cc), in float64."""
    H, W = image.shape
    y1, x1, y2, x2 = box
    hs = (y2 - y1) * (H - 1) / (crop_h - 1) if crop_h > 1 else 0.0
    ws = (x2 - x1) * (W - 1) / (crop_w - 1) if crop_w > 1 else 0.0
    out = np.zeros((crop_h, crop_w))
    for y in range(crop_h):
        in_y = y1 * (H - 1) + y * hs if crop_h > 1 else 0.5 * (y1 + y2) * (H - 1)
        if in_y < 0 or in_y > H - 1:
            continue
        top, bottom = int(math.floor(in_y)), int(math.ceil(in_y))
        y_lerp = in_y - top
        for x in range(crop_w):
            in_x = x1 * (W - 1) + x * ws if crop_w > 1 else 0.5 * (x1 + x2) * (W - 1)
            if in_x < 0 or in_x > W - 1:
                continue
            left, right = int(math.floor(in_x)), int(math.ceil(in_x))
            x_lerp = in_x - left
            t = image[top, left] + (image[top, right] - image[top, left]) * x_lerp
            b = image[bottom, left] + (image[bottom, right] - image[bottom, left]) * x_lerp
            out[y, x] = t + (b - t) * y_lerp
    return out


def tensorpack_crop_and_resize(image: np.ndarray, box_xyxy: np.ndarray, M: int) -> np.ndarray:
    """tensorpack's ``model_box.crop_and_resize(image, boxes, box_ind, M, pad_border=False)`` for one
    image and one box: ``transform_fpcoor_for_tf`` then ``tf.image.crop_and_resize``."""
    H, W = image.shape
    x0, y0, x1, y1 = [float(v) for v in box_xyxy]
    spacing_w, spacing_h = (x1 - x0) / M, (y1 - y0) / M
    nx0 = (x0 + spacing_w / 2 - 0.5) / (W - 1)
    ny0 = (y0 + spacing_h / 2 - 0.5) / (H - 1)
    nw = spacing_w * (M - 1) / (W - 1)
    nh = spacing_h * (M - 1) / (H - 1)
    return tf_crop_and_resize(image.astype(np.float64), np.array([ny0, nx0, ny0 + nh, nx0 + nw]), M, M)


def _random_boxes(rng, n, H, W):
    """Boxes inside the image, crossing each border, larger than it, and tiny ones."""
    out = []
    for k in range(n):
        kind = k % 4
        if kind == 0:  # inside
            x1, y1 = rng.uniform(0, W - 4), rng.uniform(0, H - 4)
            x2, y2 = rng.uniform(x1 + 1, W), rng.uniform(y1 + 1, H)
        elif kind == 1:  # crossing the left/top or right/bottom border
            x1, y1 = rng.uniform(-8, W / 2), rng.uniform(-8, H / 2)
            x2, y2 = rng.uniform(W - 6, W + 8), rng.uniform(H - 6, H + 8)
        elif kind == 2:  # larger than the image
            x1, y1 = rng.uniform(-20, -1), rng.uniform(-20, -1)
            x2, y2 = rng.uniform(W + 1, W + 20), rng.uniform(H + 1, H + 20)
        else:  # tiny (sub-pixel)
            x1, y1 = rng.uniform(0, W - 1), rng.uniform(0, H - 1)
            x2, y2 = x1 + rng.uniform(0.05, 1.5), y1 + rng.uniform(0.05, 1.5)
        out.append([x1, y1, x2, y2])
    return np.array(out)


# ---------------------------------------------------------------------------------------------
# 1. mask targets
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("M", [28, 14, 5])
def test_crop_and_resize_equals_tensorflow_reference(M):
    rng = np.random.RandomState(M)
    maps = [rng.rand(31, 47), (rng.rand(20, 13) > 0.5).astype(np.float64), rng.rand(1 + 16, 64)]
    flat = torch.cat([torch.from_numpy(m.astype(np.float32)).reshape(-1) for m in maps])
    offs = np.cumsum([0] + [m.size for m in maps])[:-1]
    boxes, owner = [], []
    for i, m in enumerate(maps):
        b = _random_boxes(rng, 24, *m.shape)
        boxes.append(b)
        owner += [i] * len(b)
    boxes = np.concatenate(boxes)
    owner = np.array(owner)
    got = crop_and_resize_bitmaps(flat, torch.from_numpy(offs[owner]), torch.tensor([maps[i].shape[0] for i in owner]),
                                  torch.tensor([maps[i].shape[1] for i in owner]),
                                  torch.from_numpy(boxes).float(), M).numpy()
    want = np.stack([tensorpack_crop_and_resize(maps[i].astype(np.float32), b.astype(np.float32), M)
                     for i, b in zip(owner, boxes)])
    assert got.shape == (len(boxes), M, M)
    err = np.abs(got - want).max()
    print(f"M={M}: {len(boxes)} boxes, max |ours - tf reference| = {err:.3g}")
    assert err < 2e-6
    assert (want[owner == 0] > 0).any() and (want == 0).any()  # both in and out of the image sampled


def test_edges_back_to_polygons_and_pycocotools_bitmap():
    from pycocotools import mask as mask_utils

    polys = [np.array([1.5, 2, 20, 3, 18.5, 17, 4, 15], np.float32),          # quad
             np.array([30, 5, 40, 5, 35, 12.25], np.float32),                # triangle
             np.array([1.5, 2, 6, 1, 7, 6], np.float32)]                      # shares the quad's first vertex
    edges = polygons_to_edges([polys, polys[:1]])  # two instances: padded to the longer
    back = edges_to_polygons(torch.from_numpy(edges[0]))
    assert [p.tolist() for p in back] == [p.astype(np.float64).tolist() for p in polys]
    assert [p.tolist() for p in edges_to_polygons(edges[1])] == [polys[0].astype(np.float64).tolist()]
    bm = polygons_to_bitmap(back, 25, 48)
    # tensorpack's common.polygons_to_mask
    ref = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([p.flatten().tolist() for p in polys], 25, 48)))
    assert bm.shape == (25, 48) and bm.dtype == np.uint8 and np.array_equal(bm, ref) and bm.sum() > 100
    assert polygons_to_bitmap([], 3, 8).sum() == 0


def test_run_length_bitmaps_equal_the_decoded_ones():
    """The head keeps each pycocotools bitmap run-length encoded (no full-image buffer): the runs read
    back from pycocotools' compressed string give exactly ``decode``'s pixels, and the crop of the
    runs equals the crop of the decoded bitmap."""
    from gluon_rcnn.structures.masks import crop_and_resize_rle

    rng = np.random.RandomState(7)
    for trial in range(30):
        h, w = int(rng.randint(5, 900)), int(rng.randint(1, 160)) * 8
        polys = []
        for _ in range(int(rng.randint(1, 4))):
            n = int(rng.randint(3, 40))
            cx, cy, r = rng.uniform(-0.2, 1.2) * w, rng.uniform(-0.2, 1.2) * h, rng.uniform(1, 0.7 * max(h, w))
            a = np.sort(rng.uniform(0, 2 * np.pi, n))
            polys.append(np.stack([cx + r * np.cos(a) * rng.uniform(0.3, 1, n),
                                   cy + r * np.sin(a) * rng.uniform(0.3, 1, n)], 1).reshape(-1))
        bm = polygons_to_bitmap(polys, h, w)
        ends = polygons_to_rle_ends(polys, h, w)
        assert ends[-1] == h * w
        col_major = bm.T.reshape(-1)
        assert np.array_equal((np.searchsorted(ends, np.arange(h * w), side="right") % 2).astype(np.uint8), col_major)
        boxes = torch.from_numpy(_random_boxes(rng, 8, h, w)).float()
        n = len(boxes)
        dense = crop_and_resize_bitmaps(torch.from_numpy(bm).reshape(-1), torch.zeros(n, dtype=torch.long),
                                        torch.full((n,), h), torch.full((n,), w), boxes, 14)
        runs = crop_and_resize_rle(torch.from_numpy(ends)[None], torch.zeros(n, dtype=torch.long), torch.full((n,), h),
                                   torch.full((n,), w), boxes, 14)
        assert torch.equal(dense, runs)


def _heads(targets_rule):
    from gluon_rcnn.roi_heads.pooler import ROIPooler
    from gluon_rcnn.roi_heads.mask_head import MaskRCNNUpConvHead
    from gluon_rcnn.roi_heads import BoxStage, StandardROIHeads
    from gluon_rcnn.roi_heads.box_head import FastRCNN2FCHead
    from gluon_rcnn.rules.detections import ClipThenNMS
    from gluon_rcnn.rules.init import TorchDefault
    from gluon_rcnn.structures.boxes import BBOX_XFORM_CLIP

    torch.manual_seed(0)
    head = FastRCNN2FCHead(4, 7, 16, fc_init=TorchDefault(), avg_pool=False)
    stage = BoxStage(head, 3, False, [10.0, 10.0, 5.0, 5.0], clip=BBOX_XFORM_CLIP)
    mask_head = MaskRCNNUpConvHead(4, 2, 8, num_convs=1, gn_order="conv_gn_relu")
    return StandardROIHeads(ROIPooler(7, [4], 2, aligned=True, level_mapper=None), stage, fg_iou=0.5, num_classes=3,
                            batch_per_im=16, fg_ratio=0.5, mask_head=mask_head,
                            mask_pooler=ROIPooler(7, [4], 2, aligned=True, level_mapper=None), mask_resolution=14,
                            mask_targets=targets_rule, detections=ClipThenNMS())


class _Spy:
    """A mask-targets rule that records its arguments and result."""

    def __init__(self, rule):
        self.rule, self.calls = rule, []

    def __call__(self, *args):
        out = self.rule(*args)
        self.calls.append((args, out))
        return out


def test_tensorpack_mask_targets_in_the_heads_equal_the_reference():
    """The head's soft targets: pycocotools bitmap at H x ceil(W/8)*8 of the resized image, cropped as
    tensorpack does, for the instance each foreground RoI matched; the loss is the mean sigmoid
    cross-entropy with those soft labels (tf.nn.sigmoid_cross_entropy_with_logits)."""
    from gluon_rcnn.rules.mask_targets import BitmapCrop

    spy = _Spy(BitmapCrop())
    heads = _heads(spy).train()
    rng = np.random.RandomState(3)
    sizes = [(45, 61), (50, 40)]  # 61: not a multiple of 8 (tensorpack's bitmap is 64 wide)
    polys = [[[np.array([2, 3, 58.5, 6, 60.7, 40, 10, 44], np.float32)],
              [np.array([20, 10, 40, 12, 30, 30], np.float32), np.array([45, 30, 55, 30, 50, 42], np.float32)]],
             [[np.array([5, 5, 35, 8, 30, 45, 3, 40], np.float32)]]]
    targets = []
    for p in polys:
        boxes = np.array([[min(q[0::2].min() for q in inst), min(q[1::2].min() for q in inst),
                           max(q[0::2].max() for q in inst), max(q[1::2].max() for q in inst)] for inst in p], np.float32)
        targets.append({"boxes": torch.from_numpy(boxes), "labels": torch.tensor([1, 2][:len(p)]),
                        "polygons": torch.from_numpy(polygons_to_edges(p))})
    proposals = [t["boxes"][:, None, :].repeat(1, 6, 1).reshape(-1, 4) + torch.from_numpy(
        rng.uniform(-4, 4, (6 * len(t["boxes"]), 4)).astype(np.float32)) for t in targets]
    proposals[0][0] = torch.tensor([30.0, 1.0, 63.5, 44.8])  # crosses the right border (61) into the padding
    features = [torch.randn(2, 4, 13, 16)]
    losses = heads(features, proposals, sizes, targets)
    assert len(spy.calls) == 1
    (_, _, roi_image, roi_gt, fg, rois, M), got = spy.calls[0]
    got = got.numpy()
    assert M == 14 and got.shape[0] == rois.shape[0] > 0 and bool(fg.all())  # on the CPU: the positives only
    for r in range(rois.shape[0]):
        i, g = int(roi_image[r]), int(roi_gt[r])
        h, w = sizes[i]
        w8 = int(math.ceil(w / 8) * 8)
        bitmap = polygons_to_bitmap([q.astype(np.float64) for q in polys[i][g]], h, w8).astype(np.float32)
        want = tensorpack_crop_and_resize(bitmap, rois[r].numpy(), M)
        assert np.abs(got[r] - want).max() < 2e-6, r
    assert ((got > 0) & (got < 1)).any()  # soft targets
    assert math.isfinite(float(losses["mask"].detach()))
    # the loss is tensorpack's: mean of max(x, 0) - x z + log(1 + exp(-|x|)) with soft z
    x = torch.randn(5, 2, 14, 14)
    z = torch.rand(5, 14, 14)
    lab = torch.tensor([1, 2, 2, 1, 2])
    sel = x[torch.arange(5), lab - 1]
    tf_loss = (sel.clamp(min=0) - sel * z + torch.log1p(torch.exp(-sel.abs()))).mean()
    assert torch.allclose(mask_loss(x, z, lab, torch.ones(5)), tf_loss, atol=1e-6)


def test_mask_target_rules_and_builders():
    from gluon_rcnn.builders import build_model

    tp, tv = PROFILES["tensorpack"].choices, PROFILES["torchvision"].choices
    assert (tp["MASK_TARGETS"], tv["MASK_TARGETS"]) == ("bitmap_crop", "polygon_bins")
    assert (tp["ACCUMULATE_TO_8"], tv["ACCUMULATE_TO_8"]) == (True, False)
    cfg = rule_names(get_default_config())
    assert cfg["MASK_TARGETS"] == "bitmap_crop" and cfg["ACCUMULATE_TO_8"] is True
    small = ["MODE_MASK=True", "BACKBONE.RESNET_NUM_BLOCKS=[2,2,2,2]", "FPN.NUM_CHANNEL=16", "FPN.FRCNN_FC_HEAD_DIM=32",
             "MRCNN.HEAD_DIM=8", "DATA.NUM_CATEGORY=2"]
    for rule in ("bitmap_crop", "polygon_bins"):
        c = get_default_config().update_args(small + [f"RULES.MASK_TARGETS={rule}"]).finalize()
        assert build_model(c).roi_heads.mask_targets is mask_targets.CHOICES[rule]
    tv_cfg = rule_names(get_default_config().update_args(["RULES.PROFILE=torchvision"]))
    assert tv_cfg["MASK_TARGETS"] == "polygon_bins" and tv_cfg["ACCUMULATE_TO_8"] is False
    with pytest.raises(ConfigError, match="RULES.MASK_TARGETS"):
        get_default_config().update_args(["RULES.MASK_TARGETS=bitmap"]).finalize()
    with pytest.raises(ConfigError, match="RULES.ACCUMULATE_TO_8"):
        get_default_config().update_args(["RULES.ACCUMULATE_TO_8=1"]).finalize()
    # the keys these rules replaced name their replacement
    with pytest.raises(ConfigError, match="RULES.MASK_TARGETS='polygon_bins'"):
        get_default_config().update_args(["MRCNN.MASK_TARGETS=polygon"])
    with pytest.raises(ConfigError, match="RULES.ACCUMULATE_TO_8=False"):
        get_default_config().update_args(["TRAIN.ACCUMULATE_TO_8=False"])


# ---------------------------------------------------------------------------------------------
# 2. gradient accumulation
# ---------------------------------------------------------------------------------------------
def test_accumulation_steps_and_lr_scaling():
    assert [accumulation_steps(n, True) for n in (1, 2, 3, 4, 5, 7, 8, 16)] == [8, 4, 2, 2, 1, 1, 1, 1]
    assert accumulation_steps(2, False) == 1
    cfg = get_default_config()
    cfg.update_args(["TRAIN.IMS_PER_GPU=2", "TRAIN.BASE_LR=0.02", "TRAIN.WARMUP_INIT_LR=0.001"])
    s = WarmupStepLR.from_config(cfg.finalize(), world_size=1)
    # tensorpack at NUM_GPUS=2: lr var 0.02 (warm-up from 0.001), applied as lr/8 to the sum of 4 x 2 images'
    # gradients = the mean gradient of 8 images at 0.02; decay at LR_SCHEDULE * 8 / 2 steps
    assert s.accumulate == 4 and s.base_lr == pytest.approx(0.02) and s.warmup_init_lr == pytest.approx(0.001)
    assert s.warmup_iters == 1000 and s.decay_steps == [480000, 640000] and s.max_iter == 720000
    cfg.RULES.ACCUMULATE_TO_8 = False
    s = WarmupStepLR.from_config(cfg, world_size=1)
    assert s.accumulate == 1 and s.base_lr == pytest.approx(0.005) and s.warmup_init_lr == pytest.approx(0.00025)


class _RawSet:
    """Tiny raw items (different per index, so the micro-batches' gradients differ)."""

    n = 12

    def __len__(self):
        return self.n

    def aspect_ratios(self):
        return np.ones(self.n)

    def __getitem__(self, i):
        img = np.zeros((32, 40, 3), np.uint8)
        img[..., 0], img[..., 1], img[..., 2] = 20 * i % 251, (37 * i + 11) % 253, (i * i * 7) % 255
        return {"image": img, "image_id": 1 + i, "boxes": np.array([[1, 1, 20, 30]], np.float32),
                "labels": np.array([1]), "polygons": [[np.array([1, 1, 20, 1, 20, 30], np.float32)]]}


class _Quadratic(torch.nn.Module):
    """loss = mean over the batch's images of 0.5 * ||w - x_img||^2 (x_img: the image's channel means
    / 255, recorded): per-image gradient w - x_img; w is 2-D, so it gets weight decay."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor([[0.5, -0.25, 1.0]], dtype=torch.float64))
        self.seen: list[np.ndarray] = []

    def forward(self, images, targets):
        x = torch.stack([im.double().mean((1, 2)) for im in images.images]) / 255.0
        self.seen.append(x.numpy().copy())
        return {"frcnn_cls": 0.5 * (self.w - x).pow(2).sum(1).mean()}


def _accum_cfg(extra=()):
    cfg = get_default_config()
    cfg.update_args(["DATA.NUM_WORKERS=0", "TRAIN.IMS_PER_GPU=2", "TRAIN.SEED=5", "PREPROC.TRAIN_SHORT_EDGE_SIZE=[20,40]",
                     "PREPROC.MAX_SIZE=80", "TRAIN.LOG_PERIOD=1", "TRAIN.BASE_LR=0.4", "TRAIN.WARMUP_INIT_LR=0.04",
                     "TRAIN.WARMUP=5", "TRAIN.WEIGHT_DECAY=0.01", "TRAIN.LR_SCHEDULE=[2,10]", *extra])
    return cfg.finalize()


def _tensorpack_replay(seen, w0, num_gpus, k, base_lr, init_lr, warmup, decay_steps, wd, momentum=0.9):
    """tensorpack's update, by hand: per step the towers' summed gradient (each tower one image:
    w - x + wd w from regularize_cost's wd * l2_loss) is added to the accumulator; every k-th step
    MomentumOptimizer(lr / 8) applies it (v = m v + g; w -= lr/8 v) with the LR variable of that step:
    ScheduledHyperParamSetter's linear warm-up from WARMUP_INIT_LR * min(8 / NUM_GPUS, 1) at step 0 to
    BASE_LR at step WARMUP, then x0.1 at each decay step."""
    w, v, acc = w0.copy(), np.zeros_like(w0), np.zeros_like(w0)
    init = init_lr * min(8.0 / num_gpus, 1.0)
    for step, x in enumerate(seen):
        acc += sum(w - xi + wd * w for xi in x)
        if (step + 1) % k == 0:
            lr = init + step / warmup * (base_lr - init) if step < warmup else base_lr
            lr *= 0.1 ** sum(step >= s for s in decay_steps)
            v = momentum * v + acc
            w = w - lr / 8 * v
            acc = np.zeros_like(w0)
    return w


def test_accumulated_update_equals_tensorpack_rule(tmp_path):
    from gluon_rcnn.data.loader import TransformedDataset
    from gluon_rcnn.data.transforms import TrainTransform

    cfg = _accum_cfg()
    model = _Quadratic()
    w0 = model.w.detach().numpy().copy()
    trainer = Trainer(cfg, model, TransformedDataset(_RawSet(), TrainTransform(cfg)), str(tmp_path / "a"), max_iter=14)
    assert trainer.accumulate == 4
    trainer.train()
    seen = model.seen
    assert len(seen) == 14 and all(x.shape == (2, 3) for x in seen)
    # LR_SCHEDULE [2, 10] at batch 8 -> decay at step 8 of batch 2; updates at steps 3 (warm-up), 7, 11 (decayed);
    # steps 12, 13 do not complete a group and never reach the weights
    want = _tensorpack_replay(seen, w0, 2, 4, 0.4, 0.04, 5, [8], 0.01)
    got = model.w.detach().numpy()
    print("tensorpack rule:", want, "trainer:", got)
    assert np.abs(got - want).max() < 1e-9
    assert np.abs(_tensorpack_replay(seen[:12], w0, 2, 4, 0.4, 0.04, 5, [8], 0.01) - got).max() < 1e-9
    # not the same as one step per iteration
    assert np.abs(_tensorpack_replay(seen, w0, 2, 1, 0.1, 0.04 / 4, 5, [8], 0.01) - got).max() > 1e-3
    rows = [r for r in _metrics(tmp_path / "a")]
    assert [r["iteration"] for r in rows] == list(range(1, 15))
    ck = load_checkpoint(str(tmp_path / "a" / "model_0000014.pth"))
    assert ck["iteration"] == 14 and len(ck["accum_grads"]) == 1 and "w" in ck["accum_grads"][0]


def _metrics(out: Path) -> list[dict]:
    import json
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]


@pytest.mark.parametrize("stop", [6, 8])
def test_resume_inside_and_at_the_end_of_a_group_is_exact(tmp_path, stop):
    """Stopped at iteration 6 (inside a group of 4: its gradients are in the checkpoint) or 8 (a
    boundary) and resumed to 14: the weights, optimiser and losses are those of an uninterrupted run."""
    from gluon_rcnn.data.loader import TransformedDataset
    from gluon_rcnn.data.transforms import TrainTransform

    cfg = _accum_cfg(["TRAIN.CHECKPOINT_PERIOD=3"])
    ds = TransformedDataset(_RawSet(), TrainTransform(cfg))
    ref = _Quadratic()
    Trainer(cfg, ref, ds, str(tmp_path / "ref"), max_iter=14).train()
    out = tmp_path / "cut"
    Trainer(cfg, _Quadratic(), ds, str(out), max_iter=stop).train()
    ck = load_checkpoint(str(out / f"model_{stop:07d}.pth"))
    assert ("accum_grads" in ck) == (stop % 4 != 0)
    resumed = _Quadratic()
    t = Trainer(cfg, resumed, ds, str(out), resume=True, max_iter=14)
    assert t.start_iter == stop
    t.train()
    assert torch.equal(resumed.w, ref.w)
    assert resumed.seen == [] or all(np.array_equal(a, b) for a, b in zip(resumed.seen, ref.seen[stop:]))
    a, b = _metrics(tmp_path / "ref"), _metrics(out)
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    ka = load_checkpoint(str(tmp_path / "ref" / "model_0000014.pth"))
    kb = load_checkpoint(str(out / "model_0000014.pth"))
    assert torch.equal(ka["accum_grads"][0]["w"], kb["accum_grads"][0]["w"])
    assert str(ka["optimizer"]["state"]) == str(kb["optimizer"]["state"])


def test_mask_rcnn_ims_per_gpu_2_accumulates_and_resumes_exactly(tmp_path):
    """The real scripts: ResNet-18-FPN Mask R-CNN (tensorpack's mask targets, 4 iterations of 2 images
    per step) for 6 iterations, and the same cut at 3 (inside the first group) and resumed."""
    from test_train import TINY, _losses, _run, _train_cmd, make_tiny_coco

    ann, imgs = make_tiny_coco(tmp_path / "data")
    common = ["--no-eval", "--seed", "7", "--config", *TINY, "TRAIN.CHECKPOINT_PERIOD=2", "TRAIN.IMS_PER_GPU=2"]
    ref_out, out = tmp_path / "ref", tmp_path / "cut"
    r = _run(_train_cmd(ann, imgs, ref_out, "--max-iter", "6", *common))
    assert r.returncode == 0, r.stderr[-5000:]
    cfg = get_default_config()
    cfg.update_dict(load_checkpoint(str(ref_out / "model_final.pth"))["config"])
    assert rule_names(cfg)["ACCUMULATE_TO_8"] is True and rule_names(cfg)["MASK_TARGETS"] == "bitmap_crop"
    ref = _losses(ref_out)
    assert sorted(ref) == [1, 2, 3, 4, 5, 6] and all(math.isfinite(v) for row in ref.values() for v in row.values())
    r = _run(_train_cmd(ann, imgs, out, "--max-iter", "3", *common))
    assert r.returncode == 0, r.stderr[-5000:]
    ck = load_checkpoint(str(out / "model_0000003.pth"))
    assert ck["iteration"] == 3 and "accum_grads" in ck  # inside the group of 4
    r = _run(_train_cmd(ann, imgs, out, "--max-iter", "6", *common, "--resume"))
    assert r.returncode == 0, r.stderr[-5000:]
    got = _losses(out)
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    for it in range(4, 7):
        assert got[it] == ref[it], it  # bit-identical
    a = load_checkpoint(str(ref_out / "model_final.pth"))["model"]
    b = load_checkpoint(str(out / "model_final.pth"))["model"]
    c = load_checkpoint(str(out / "model_0000003.pth"))["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert any(not torch.equal(a[k], c[k]) for k in a)  # the step at iteration 4 changed the weights
