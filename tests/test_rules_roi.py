"""The ROI-side publisher rules (gluon_rcnn/rules: levels, detections, mask_targets, init), each
choice against an independent re-computation (numpy, float64), and a clear error for a bad name."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gluon_rcnn.rules import choose, detections, init, levels, mask_targets
from gluon_rcnn.structures.masks import polygons_to_bitmap
from gluon_rcnn.data.transforms import polygons_to_edges


@pytest.mark.parametrize("module,rule", [(levels, "ROI_LEVELS"), (detections, "DETECTIONS"),
                                         (mask_targets, "MASK_TARGETS"), (init, "FC_INIT")])
def test_choices_and_bad_names(module, rule):
    for name, obj in module.CHOICES.items():
        assert obj.name == name and choose(module.CHOICES, name, rule) is obj
    for bad in ("tensorpack", "gluoncv", None):  # publishers are profiles, not choices
        with pytest.raises(ValueError, match=rf"{rule}={bad!r} is not one of \{sorted(module.CHOICES)}"):
            choose(module.CHOICES, bad, rule)


# ---------------------------------------------------------------------------------------- levels
def _rois(rng, n):
    x1, y1 = rng.uniform(0, 800, n), rng.uniform(0, 800, n)
    w, h = np.exp(rng.uniform(np.log(2), np.log(1200), n)), np.exp(rng.uniform(np.log(2), np.log(1200), n))
    return np.stack([np.zeros(n), x1, y1, x1 + w, y1 + h], 1).astype(np.float32)


def test_levels_against_float64():
    rois = _rois(np.random.RandomState(0), 4000)
    r = rois.astype(np.float64)
    w, h = r[:, 3] - r[:, 1], r[:, 4] - r[:, 2]
    want = {"sqrt_area": 4 + np.log2(np.sqrt(w * h) / 224) + 1e-6,
            "sqrt_area_plus_one": 4 + np.log2(np.sqrt((w + 1) * (h + 1)) / 224 + 1e-6)}
    for name, x in want.items():
        got = levels.CHOICES[name](torch.from_numpy(rois))
        assert got.dtype == torch.float32
        clear = np.abs(x - np.round(x)) > 1e-4  # float32 may round a value this close to an integer either way
        assert clear.mean() > 0.99
        assert np.array_equal(got.numpy()[clear], np.floor(x)[clear]), name
        assert len(np.unique(got.numpy())) >= 6  # levels 0..7 or so are all exercised


def test_levels_at_the_boundary():
    """A 224 x 224 RoI is level 4 by both rules; 223 x 223 only with the +1 (and the 1e-6 inside the log)."""
    rois = torch.tensor([[0, 0, 0, 224, 224], [0, 10, 10, 233, 233], [0, 0, 0, 222, 222], [0, 0, 0, 112, 112]],
                        dtype=torch.float32)
    assert levels.CHOICES["sqrt_area"](rois).tolist() == [4, 3, 3, 3]
    assert levels.CHOICES["sqrt_area_plus_one"](rois).tolist() == [4, 4, 3, 3]


def test_pooler_pools_each_roi_from_the_level_its_rule_names():
    from torchvision.ops import roi_align

    from gluon_rcnn.roi_heads.pooler import ROIPooler

    feats = [torch.randn(1, 3, 64 // s, 64 // s) for s in (4, 8, 16, 32)]
    rois = torch.tensor([[0, 1, 1, 20, 30], [0, 5, 2, 60, 60], [0, 0, 0, 63, 63]], dtype=torch.float32)

    class Fixed:  # a rule naming level 3 (stride 8) for every RoI
        def __call__(self, r):
            return torch.full((r.shape[0],), 3.0)

    out = ROIPooler(7, [4, 8, 16, 32], 2, aligned=True, level_mapper=Fixed())(feats, rois)
    assert torch.equal(out, roi_align(feats[1], rois, 7, 1 / 8, 2, True))
    with pytest.raises(ValueError, match="level_mapper"):
        ROIPooler(7, [4, 8, 16, 32], aligned=True, level_mapper=None)
    with pytest.raises(ValueError, match="level_mapper"):
        ROIPooler(7, [16], aligned=True, level_mapper=levels.SqrtArea())


# ------------------------------------------------------------------------------------ detections
def test_detections_clip_before_or_after():
    boxes = torch.tensor([[-5.0, 2, 70, 40, 3, -1, 10, 90], [10, 10, 20, 20, 55, 5, 61, 39]])
    hw = torch.tensor([[40, 60], [40, 60]])
    b = boxes.numpy().astype(np.float64).reshape(2, 2, 4)
    clipped = np.stack([b[..., 0].clip(0, 60), b[..., 1].clip(0, 40), b[..., 2].clip(0, 60), b[..., 3].clip(0, 40)], -1)
    clip_first, nms_first = detections.CHOICES["clip_then_nms"], detections.CHOICES["nms_then_clip"]
    assert np.array_equal(clip_first.before_nms(boxes, hw).numpy(), clipped.reshape(2, 8))
    assert torch.equal(nms_first.before_nms(boxes, hw), boxes)
    kept, size = boxes[:, :4], torch.tensor([40, 60])
    assert torch.equal(clip_first.after_masks(kept, size), kept)
    assert np.array_equal(nms_first.after_masks(kept, size).numpy(), clipped[:, 0])


# ---------------------------------------------------------------------------------- mask targets
def _inside_even_odd(px, py, polys):
    """Even-odd rule for one point and a list of flat polygons, float64."""
    inside = False
    for p in polys:
        xs, ys = p[0::2].astype(np.float64), p[1::2].astype(np.float64)
        for k in range(len(xs)):
            xa, ya, xb, yb = xs[k], ys[k], xs[(k + 1) % len(xs)], ys[(k + 1) % len(xs)]
            if (ya > py) != (yb > py) and px < xa + (py - ya) * (xb - xa) / (yb - ya):
                inside = not inside
    return inside


def _near_edge(px, py, polys, eps=1e-3):
    for p in polys:
        xs, ys = p[0::2].astype(np.float64), p[1::2].astype(np.float64)
        for k in range(len(xs)):
            a, b = np.array([xs[k], ys[k]]), np.array([xs[(k + 1) % len(xs)], ys[(k + 1) % len(xs)]])
            t = np.clip(np.dot([px, py] - a, b - a) / max(np.dot(b - a, b - a), 1e-12), 0, 1)
            if np.hypot(*([px, py] - (a + t * (b - a)))) < eps:
                return True
    return False


POLYS = [  # two images: image 0 with two instances (one of two parts), image 1 with one
    [[np.array([2, 3, 58.5, 6, 60.7, 40, 10, 44], np.float32)],
     [np.array([20, 10, 40, 12, 30, 30], np.float32), np.array([45, 30, 55, 30, 50, 42], np.float32)]],
    [[np.array([5, 5, 35, 8, 30, 45, 3, 40], np.float32)]],
]
SIZES = [(45, 61), (50, 40)]


def _targets(with_empty=False):
    out = [{"boxes": torch.zeros(len(p), 4), "labels": torch.ones(len(p), dtype=torch.long),
            "polygons": torch.from_numpy(polygons_to_edges(p))} for p in POLYS]
    if with_empty:  # an image without GT
        out.append({"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
                    "polygons": torch.zeros(0, 0, 4)})
    return out


def _roi_set(rng, n_per_image):
    img, gt, boxes = [], [], []
    for i, p in enumerate(POLYS + [None]):
        h, w = SIZES[i] if i < len(SIZES) else (30, 30)
        for _ in range(n_per_image):
            x1, y1 = rng.uniform(-5, w - 6), rng.uniform(-5, h - 6)
            boxes.append([x1, y1, x1 + rng.uniform(2, w), y1 + rng.uniform(2, h)])
            img.append(i)
            gt.append(rng.randint(len(p)) if p is not None else 0)
    return (torch.tensor(img), torch.tensor(gt), torch.tensor(np.array(boxes, np.float32)))


def test_polygon_bins_against_float64():
    img, gt, rois = _roi_set(np.random.RandomState(1), 12)
    M = 14
    got = mask_targets.CHOICES["polygon_bins"](_targets(with_empty=True), SIZES + [(30, 30)], img, gt,
                                               torch.ones(len(img), dtype=torch.bool), rois, M)
    assert got.shape == (len(img), M, M) and got.dtype == torch.float32
    checked = near = 0
    for r in range(len(img)):
        i, g = int(img[r]), int(gt[r])
        x1, y1, x2, y2 = rois[r].double().tolist()
        for a in range(M):
            for b in range(M):
                px, py = x1 + (b + 0.5) / M * (x2 - x1), y1 + (a + 0.5) / M * (y2 - y1)
                if i == len(POLYS):  # the image without GT: nothing inside
                    assert got[r, a, b] == 0
                    continue
                if _near_edge(px, py, POLYS[i][g]):
                    near += 1
                    continue
                assert bool(got[r, a, b]) == _inside_even_odd(px, py, POLYS[i][g]), (r, a, b)
                checked += 1
    assert checked > 50 * near and got.sum() > 100


def _tensorpack_crop(bitmap, box, M):
    """tensorpack's crop_and_resize (pad_border=False) by its definition: bilinear samples at
    ``(y1 + (i + 0.5) * h / M - 0.5, x1 + (j + 0.5) * w / M - 0.5)`` pixel coordinates, 0 beyond
    the outermost pixel centres (tf.image.crop_and_resize's extrapolation value)."""
    H, W = bitmap.shape
    x1, y1, x2, y2 = box
    out = np.zeros((M, M))
    for a in range(M):
        y = y1 + (a + 0.5) * (y2 - y1) / M - 0.5
        for b in range(M):
            x = x1 + (b + 0.5) * (x2 - x1) / M - 0.5
            if not (0 <= y <= H - 1 and 0 <= x <= W - 1):
                continue
            y0, x0 = int(math.floor(y)), int(math.floor(x))
            ya, xa = min(y0 + 1, H - 1), min(x0 + 1, W - 1)
            fy, fx = y - y0, x - x0
            top = bitmap[y0, x0] * (1 - fx) + bitmap[y0, xa] * fx
            bottom = bitmap[ya, x0] * (1 - fx) + bitmap[ya, xa] * fx
            out[a, b] = top * (1 - fy) + bottom * fy
    return out


def test_bitmap_crop_against_float64():
    img, gt, rois = _roi_set(np.random.RandomState(2), 10)
    fg = torch.ones(len(img), dtype=torch.bool)
    fg[::3] = False  # background RoIs: their instance is rasterised only if a foreground RoI matched it
    M = 14
    got = mask_targets.CHOICES["bitmap_crop"](_targets(with_empty=True), SIZES + [(30, 30)], img, gt, fg, rois, M)
    assert got.shape == (len(img), M, M) and got.dtype == torch.float32
    matched = {(int(i), int(g)) for i, g, f in zip(img, gt, fg) if f and i < len(POLYS)}  # image 2 has no GT
    soft = False
    for r in range(len(img)):
        i, g = int(img[r]), int(gt[r])
        if (i, g) not in matched:  # nothing rasterised for it (the image without GT included): zeros
            assert not got[r].any()
            continue
        h, w = SIZES[i]
        w8 = int(math.ceil(w / 8) * 8)  # the bitmap's width, padded to a multiple of 8
        bitmap = polygons_to_bitmap([q.astype(np.float64) for q in POLYS[i][g]], h, w8).astype(np.float64)
        want = _tensorpack_crop(bitmap, rois[r].double().tolist(), M)
        assert np.abs(got[r].numpy() - want).max() < 2e-6, r
        soft |= bool(((want > 0) & (want < 1)).any())
    assert soft


# ------------------------------------------------------------------------------------------ init
def test_fan_in_truncated_normal():
    torch.manual_seed(0)
    fc = torch.nn.Linear(2048, 512)
    init.CHOICES["fan_in_truncated_normal"](fc)
    w = fc.weight.detach().double().numpy().ravel()
    target = math.sqrt(1.0 / 2048)                       # variance_scaling: scale 1 / fan_in
    sigma = target / 0.87962566103423978                  # TF's truncated-normal correction
    assert abs(w.std() - target) < 0.01 * target and abs(w.mean()) < 0.01 * target
    assert np.abs(w).max() <= 2 * sigma * (1 + 1e-6) and np.abs(w).max() > 1.98 * sigma
    p1, p2 = math.erf(1 / math.sqrt(2)), math.erf(2 / math.sqrt(2))  # share beyond 1 sigma of N(0,1) cut at 2
    assert abs((np.abs(w) > sigma).mean() - (p2 - p1) / p2) < 0.005
    assert not fc.bias.detach().any()


def test_torch_default_draws_nothing():
    torch.manual_seed(0)
    ref = torch.nn.Linear(64, 32)
    torch.manual_seed(0)
    fc = torch.nn.Linear(64, 32)
    state = torch.get_rng_state()
    init.CHOICES["torch_default"](fc)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(fc.weight, ref.weight) and torch.equal(fc.bias, ref.bias)


def test_box_heads_take_the_rule_object():
    from gluon_rcnn.roi_heads.box_head import FastRCNN2FCHead, FastRCNNConvFCHead

    torch.manual_seed(0)
    head = FastRCNN2FCHead(4, 7, 32, fc_init=init.FanInTruncatedNormal(), avg_pool=False)
    assert not head.fc6.bias.any() and not head.fc7.bias.any()
    head = FastRCNNConvFCHead(4, 7, 8, 32, num_convs=1, gn_order="conv_gn_relu",
                              fc_init=init.FanInTruncatedNormal())
    assert not head.fc.bias.any()
    with pytest.raises(TypeError, match="rules.init"):
        FastRCNN2FCHead(4, 7, 32, fc_init="tensorpack", avg_pool=False)
    with pytest.raises(TypeError, match="fc_init"):
        FastRCNN2FCHead(4, 7, 32, avg_pool=False)  # no default: the profile chooses
