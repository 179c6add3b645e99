"""Geometric transforms of a dataset item, and the resizing of a list of images into a batch.

An *item* is the dict a dataset yields (see :mod:`gluon_rcnn.data.coco`)::

    {"image": uint8 (H, W, 3) RGB, "boxes": float32 (K, 4) x1,y1,x2,y2 pixels, "labels": int64 (K,),
     "polygons": optional list (K) of list of float32 (2n,) [x0,y0,x1,y1,...] pixels, ...other keys}

Every item function is pure: it returns a new dict and leaves its input untouched; keys it does
not know are carried over. Boxes and polygons move together with the image. Coordinates are
continuous pixels (pixel ``i`` covers ``[i, i+1)``), with no ``+1`` anywhere.

:class:`TrainTransform` / :class:`TestTransform` turn an item into what the loader collates::

    (image: uint8 (3, H', W') torch tensor,
     target: {"boxes": float32 (K, 4), "labels": int64 (K,), ["polygons": float32 (K, E, 4)]},
     original_size: (H, W) of the item's image)

:func:`resize_to_batch` is the torch version of the test-time resize used by the model when it
is given a plain list of float images.
"""
from __future__ import annotations

import math

from typing import Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..structures.image_list import ImageBatch

__all__ = ["scaled_size", "resize_short_edge", "random_resize_short_edge", "hflip", "rotate",
           "polygons_to_edges", "item_to_tensors", "TrainTransform", "TestTransform", "resize_to_batch"]


def scaled_size(h: int, w: int, short: float, max_size: float, rounding: str = "round") -> tuple[int, int, float]:
    """Size after scaling the short edge to ``short`` while the long edge stays <= ``max_size``.

    Returns ``(new_h, new_w, scale)``. ``rounding`` (``PREPROC.RESIZE_ROUNDING``): ``'round'``
    rounds the sides to the nearest integer (tensorpack); ``'torchvision'`` computes the scale in
    float32 and floors the sides, exactly as torchvision's ``GeneralizedRCNNTransform`` (so a
    short edge of 800 can come out as 799), which a model converted from torchvision needs to see
    the same pixels. ``max_size <= 0`` means no limit.
    """
    if h <= 0 or w <= 0:
        raise ValueError(f"image size must be positive, got {h}x{w}")
    if short <= 0:
        raise ValueError(f"short edge size must be positive, got {short}")
    if rounding == "torchvision":
        scale = np.float32(short) / np.float32(min(h, w))
        if max_size and max_size > 0:
            scale = min(scale, np.float32(max_size) / np.float32(max(h, w)))
        scale = float(scale)
        return max(1, math.floor(h * scale)), max(1, math.floor(w * scale)), scale
    if rounding != "round":
        raise ValueError(f"rounding must be 'round' or 'torchvision', got {rounding!r}")
    scale = short / min(h, w)
    if max_size and max_size > 0 and max(h, w) * scale > max_size:
        scale = max_size / max(h, w)
    return max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5)), float(scale)


def _polygons(item: dict):
    return item.get("polygons")


def _map_polygons(polys, fn):
    return [[fn(np.asarray(p, dtype=np.float32).reshape(-1, 2)).reshape(-1).astype(np.float32) for p in inst]
            for inst in polys]


def resize_short_edge(item: dict, short: float, max_size: float, rounding: str = "round") -> dict:
    """Resize so that the short edge is ``short`` pixels and the long edge at most ``max_size``.

    Boxes and polygons are scaled by the exact per-axis factors ``new_w / w`` and ``new_h / h``;
    the item gains ``"scale": (sx, sy)`` (the accumulated factors if it already had one).
    """
    img = item["image"]
    h, w = img.shape[:2]
    nh, nw, _ = scaled_size(h, w, short, max_size, rounding)
    sx, sy = nw / w, nh / h
    out = dict(item)
    out["image"] = img if (nh, nw) == (h, w) else cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR)
    f = np.array([sx, sy, sx, sy], dtype=np.float32)
    out["boxes"] = np.asarray(item["boxes"], dtype=np.float32).reshape(-1, 4) * f
    if _polygons(item) is not None:
        out["polygons"] = _map_polygons(item["polygons"], lambda p: p * np.float32([sx, sy]))
    px, py = item.get("scale", (1.0, 1.0))
    out["scale"] = (px * sx, py * sy)
    return out


def _uniform(lo: float, hi: float, rng: np.random.Generator | None) -> float:
    # torch's generator is re-seeded per DataLoader worker; numpy's global one is not
    u = rng.random() if rng is not None else torch.rand(()).item()
    return lo + (hi - lo) * u


def random_resize_short_edge(item: dict, short_range: Sequence[float], max_size: float,
                             rng: np.random.Generator | None = None, rounding: str = "round") -> dict:
    """:func:`resize_short_edge` with an integer short edge drawn uniformly from ``[min, max]`` inclusive."""
    lo, hi = int(short_range[0]), int(short_range[1])
    if lo > hi:
        raise ValueError(f"short edge range must be [min, max], got {list(short_range)}")
    if rng is not None:
        short = int(rng.integers(lo, hi + 1))
    else:
        short = int(torch.randint(lo, hi + 1, ()).item())
    return resize_short_edge(item, short, max_size, rounding)


def hflip(item: dict) -> dict:
    """Mirror left-right: ``x -> W - x`` for boxes (x1 and x2 swap roles) and polygons."""
    img = item["image"]
    w = img.shape[1]
    out = dict(item)
    out["image"] = np.ascontiguousarray(img[:, ::-1])
    b = np.asarray(item["boxes"], dtype=np.float32).reshape(-1, 4)
    out["boxes"] = np.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], axis=1).astype(np.float32)
    if _polygons(item) is not None:
        out["polygons"] = _map_polygons(item["polygons"], lambda p: np.stack([w - p[:, 0], p[:, 1]], axis=1))
    return out


def rotate(item: dict, angle: float) -> dict:
    """Rotate the image by ``angle`` degrees (counter-clockwise as displayed) about its centre.

    The output keeps the input's size: corners that leave the frame are cut, uncovered pixels are 0.
    Polygons are rotated exactly; each box becomes the bounding box of its rotated polygons when the
    item has polygons, else of its four rotated corners; boxes are then clipped to the image and
    instances whose box has no area left are dropped (labels and polygons with them).
    """
    img = item["image"]
    h, w = img.shape[:2]
    # OpenCV indexes pixel centres at integers: the centre of the continuous frame [0,w]x[0,h]
    # is ((w-1)/2, (h-1)/2) there. Points use the continuous frame and centre (w/2, h/2).
    m_img = cv2.getRotationMatrix2D(((w - 1) / 2.0, (h - 1) / 2.0), float(angle), 1.0)
    m_pts = cv2.getRotationMatrix2D((w / 2.0, h / 2.0), float(angle), 1.0).astype(np.float32)

    def tf(p: np.ndarray) -> np.ndarray:
        return p @ m_pts[:, :2].T + m_pts[:, 2]

    out = dict(item)
    out["image"] = cv2.warpAffine(img, m_img, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                                  borderValue=0)
    b = np.asarray(item["boxes"], dtype=np.float32).reshape(-1, 4)
    polys = _polygons(item)
    if polys is not None:
        polys = _map_polygons(polys, tf)
        boxes = np.zeros((len(polys), 4), dtype=np.float32)
        for k, inst in enumerate(polys):
            pts = np.concatenate([p.reshape(-1, 2) for p in inst], axis=0)
            boxes[k] = [pts[:, 0].min(), pts[:, 1].min(), pts[:, 0].max(), pts[:, 1].max()]
    else:
        corners = b[:, [0, 1, 2, 1, 2, 3, 0, 3]].reshape(-1, 4, 2)
        rc = tf(corners.reshape(-1, 2)).reshape(-1, 4, 2)
        boxes = np.concatenate([rc.min(axis=1), rc.max(axis=1)], axis=1).astype(np.float32)
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, w)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, h)
    keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
    out["boxes"] = boxes[keep]
    out["labels"] = np.asarray(item["labels"])[keep]
    if polys is not None:
        out["polygons"] = [p for p, k in zip(polys, keep) if k]
    return out


def polygons_to_edges(polygons_per_instance: Sequence[Sequence[np.ndarray]]) -> np.ndarray:
    """Each instance's polygons as one zero-padded list of edges.

    polygons_per_instance: K instances, each a list of (2n,) arrays ``[x0,y0,...,x_{n-1},y_{n-1}]``.
    Returns float32 (K, E, 4): row ``[xa, ya, xb, yb]`` is an edge; every polygon is closed (its last
    vertex joins its first); E is the largest edge count over the instances (at least 1) and shorter
    instances are padded with all-zero edges (a zero edge never crosses a scan line).
    """
    per_inst = []
    for inst in polygons_per_instance:
        edges = []
        for p in inst:
            pts = np.asarray(p, dtype=np.float32).reshape(-1, 2)
            if len(pts) < 2:
                continue
            edges.append(np.concatenate([pts, np.roll(pts, -1, axis=0)], axis=1))
        per_inst.append(np.concatenate(edges, axis=0) if edges else np.zeros((0, 4), np.float32))
    e = max([len(x) for x in per_inst] + [1])
    out = np.zeros((len(per_inst), e, 4), dtype=np.float32)
    for k, x in enumerate(per_inst):
        out[k, :len(x)] = x
    return out


def item_to_tensors(item: dict) -> tuple[torch.Tensor, dict]:
    """uint8 (3, H, W) image tensor and the target dict (boxes, labels[, polygons as edges])."""
    image = torch.from_numpy(np.ascontiguousarray(item["image"].transpose(2, 0, 1)))
    target = {"boxes": torch.from_numpy(np.asarray(item["boxes"], dtype=np.float32).reshape(-1, 4).copy()),
              "labels": torch.from_numpy(np.asarray(item["labels"], dtype=np.int64).reshape(-1).copy())}
    if item.get("polygons") is not None:
        target["polygons"] = torch.from_numpy(polygons_to_edges(item["polygons"]))
    return image, target


class TrainTransform:
    """Training augmentation from ``cfg.PREPROC``: random short edge in ``TRAIN_SHORT_EDGE_SIZE``
    (capped by ``MAX_SIZE``), a left-right flip with probability 0.5 when ``HORIZONTAL_FLIP``, and a
    rotation by a uniform angle in ``[-ROTATE_MAX, ROTATE_MAX]`` degrees with probability ``ROTATE_PROB``.

    ``transform(item) -> (uint8 (3, H', W') tensor, target, (H, W) original size)``.
    Randomness comes from ``rng`` when given, else from torch's generator (seeded per loader worker).
    """

    def __init__(self, cfg, rng: np.random.Generator | None = None):
        p = cfg.PREPROC
        self.short_range = (int(p.TRAIN_SHORT_EDGE_SIZE[0]), int(p.TRAIN_SHORT_EDGE_SIZE[1]))
        self.max_size = float(p.MAX_SIZE)
        self.flip = bool(p.HORIZONTAL_FLIP)
        self.rotate_prob = float(p.ROTATE_PROB)
        self.rotate_max = float(p.ROTATE_MAX)
        self.rounding = p.RESIZE_ROUNDING
        self.rng = rng

    def __call__(self, item: dict) -> tuple[torch.Tensor, dict, tuple[int, int]]:
        original = tuple(item["image"].shape[:2])
        item = random_resize_short_edge(item, self.short_range, self.max_size, self.rng, self.rounding)
        if self.flip and _uniform(0.0, 1.0, self.rng) < 0.5:
            item = hflip(item)
        if self.rotate_prob > 0 and self.rotate_max > 0 and _uniform(0.0, 1.0, self.rng) < self.rotate_prob:
            item = rotate(item, _uniform(-self.rotate_max, self.rotate_max, self.rng))
        image, target = item_to_tensors(item)
        return image, target, original


class TestTransform:
    """Test-time resize from ``cfg.PREPROC`` (``TEST_SHORT_EDGE_SIZE``, ``MAX_SIZE``); same output as
    :class:`TrainTransform`."""

    def __init__(self, cfg):
        self.short = float(cfg.PREPROC.TEST_SHORT_EDGE_SIZE)
        self.max_size = float(cfg.PREPROC.MAX_SIZE)
        self.rounding = cfg.PREPROC.RESIZE_ROUNDING

    def __call__(self, item: dict) -> tuple[torch.Tensor, dict, tuple[int, int]]:
        original = tuple(item["image"].shape[:2])
        item = resize_short_edge(item, self.short, self.max_size, self.rounding)
        image, target = item_to_tensors(item)
        return image, target, original


def resize_to_batch(images: Sequence[torch.Tensor], short: float, max_size: float, mean: Sequence[float],
                    std: Sequence[float], size_div: int, rounding: str = "round") -> ImageBatch:
    """Resize, normalise and pad a list of images into one batch, with torch on their device.

    images: N float tensors (3, H_i, W_i), RGB in 0-1, any sizes.
    short, max_size: as :func:`scaled_size` (bilinear, ``align_corners=False``).
    mean, std: per-channel RGB statistics on the 0-255 scale (``PREPROC.PIXEL_MEAN/PIXEL_STD``).
    size_div: the padded height and width are multiples of it (``PREPROC.SIZE_DIVISIBILITY``).
    Returns ``ImageBatch(tensor (N, 3, Hp, Wp) float normalised, zero padding after normalisation,
    image_sizes = resized (h, w), original_sizes = (H_i, W_i), normalized=True)``.
    """
    if len(images) == 0:
        raise ValueError("resize_to_batch needs at least one image")
    for i, im in enumerate(images):
        if not isinstance(im, torch.Tensor) or im.dim() != 3 or im.shape[0] != 3:
            raise ValueError(f"image {i} must be a (3, H, W) tensor, got "
                             f"{tuple(im.shape) if isinstance(im, torch.Tensor) else type(im).__name__}")
        if not im.is_floating_point():
            raise ValueError(f"image {i} has dtype {im.dtype}; pass float RGB in 0-1 (e.g. uint8 / 255)")
    device = images[0].device
    mean_t = torch.as_tensor(mean, dtype=torch.float32, device=device).view(3, 1, 1)
    std_t = torch.as_tensor(std, dtype=torch.float32, device=device).view(3, 1, 1)
    resized, sizes, originals = [], [], []
    for im in images:
        h, w = int(im.shape[1]), int(im.shape[2])
        nh, nw, _ = scaled_size(h, w, short, max_size, rounding)
        x = im.to(device=device, dtype=torch.float32)
        if (nh, nw) != (h, w):
            x = F.interpolate(x[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
        resized.append((x * 255.0 - mean_t) / std_t)
        sizes.append((nh, nw))
        originals.append((h, w))
    div = max(1, int(size_div))
    hp = -(-max(s[0] for s in sizes) // div) * div
    wp = -(-max(s[1] for s in sizes) // div) * div
    batch = torch.zeros((len(images), 3, hp, wp), dtype=torch.float32, device=device)
    for i, x in enumerate(resized):
        batch[i, :, :x.shape[1], :x.shape[2]] = x
    return ImageBatch(batch, sizes, originals, normalized=True)
