"""Geometric transforms of a dataset item: the data side's half of preprocessing.

An *item* is the dict a dataset yields (see :mod:`gluon_rcnn.data.coco`)::

    {"image": uint8 (H, W, 3) RGB, "boxes": float32 (K, 4) x1,y1,x2,y2 pixels, "labels": int64 (K,),
     "polygons": optional list (K) of list of float32 (2n,) [x0,y0,x1,y1,...] pixels, ...other keys}

Every item function is pure: it returns a new dict and leaves its input untouched; keys it does
not know are carried over. Boxes and polygons move together with the image. Coordinates are
continuous pixels (pixel ``i`` covers ``[i, i+1)``), with no ``+1`` anywhere.

The data side flips and rotates pixels (augmentation) and *chooses* the size each image is resized
to; it never resamples for the resize: that is :class:`gluon_rcnn.preprocess.Preprocessor`'s job,
the one program that turns pixels into network input for training, evaluation, prediction and
export. :class:`TrainTransform` / :class:`TestTransform` turn an item into what the loader collates::

    (image: uint8 (3, H, W) torch tensor at the decoded resolution (after flip/rotation),
     target: {"boxes": float32 (K, 4), "labels": int64 (K,), ["polygons": float32 (K, E, 4)]}
             in the pixels of the resized image (training) or of the decoded image (test),
     original_size: (H, W) of the decoded image,
     size: (h, w) the image is to be resized to (training), or None (test: the model's test size))
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np
import torch

from ..preprocess import capped_max_size, scaled_size
from ..profiles import resolve_rules

__all__ = ["scaled_size", "scale_geometry", "choose_train_size", "hflip", "rotate", "polygons_to_edges", "is_bad_image",
           "item_to_tensors", "TrainTransform", "TestTransform"]


def _polygons(item: dict):
    return item.get("polygons")


def _map_polygons(polys, fn):
    return [[fn(np.asarray(p, dtype=np.float32).reshape(-1, 2)).reshape(-1).astype(np.float32) for p in inst]
            for inst in polys]


def scale_geometry(item: dict, size: tuple[int, int]) -> dict:
    """Boxes and polygons of ``item`` mapped to an image resized to ``size`` = (h, w), by the exact
    per-axis factors ``w / W`` and ``h / H``. The image itself is left as it is (the model's
    preprocessing resizes it to ``size``); the item gains ``"size": (h, w)``."""
    img = item["image"]
    h, w = img.shape[:2]
    nh, nw = int(size[0]), int(size[1])
    sx, sy = nw / w, nh / h
    out = dict(item)
    f = np.array([sx, sy, sx, sy], dtype=np.float32)
    out["boxes"] = np.asarray(item["boxes"], dtype=np.float32).reshape(-1, 4) * f
    if _polygons(item) is not None:
        out["polygons"] = _map_polygons(item["polygons"], lambda p: p * np.float32([sx, sy]))
    out["size"] = (nh, nw)
    return out


def choose_train_size(h: int, w: int, short_range: Sequence[float], max_size: float,
                      rng: np.random.Generator | None = None, rounding="round") -> tuple[int, int]:
    """The resized (h, w) for a short edge drawn uniformly from the integers ``[min, max]``."""
    lo, hi = int(short_range[0]), int(short_range[1])
    if lo > hi:
        raise ValueError(f"short edge range must be [min, max], got {list(short_range)}")
    short = int(rng.integers(lo, hi + 1)) if rng is not None else int(torch.randint(lo, hi + 1, ()).item())
    return scaled_size(h, w, short, max_size, rounding)


def _uniform(lo: float, hi: float, rng: np.random.Generator | None) -> float:
    # torch's generator is re-seeded per DataLoader worker; numpy's global one is not
    u = rng.random() if rng is not None else torch.rand(()).item()
    return lo + (hi - lo) * u


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


def is_bad_image(item) -> bool:
    """True for the marker a dataset yields for an undecodable image when skipping is enabled
    (``{"image": None, "image_id": ..., "bad_image": message}``); transforms pass it through."""
    return isinstance(item, dict) and item.get("image") is None and "bad_image" in item


class TrainTransform:
    """Training augmentation from ``cfg.PREPROC``: a random short edge in ``TRAIN_SHORT_EDGE_SIZE``
    (capped by ``MAX_SIZE``, sized by the ``RULES.RESIZE`` rule), a left-right flip with probability 0.5
    when ``HORIZONTAL_FLIP``, and a rotation by a uniform angle in ``[-ROTATE_MAX, ROTATE_MAX]``
    degrees with probability ``ROTATE_PROB``. Flip and rotation act on the decoded pixels; the
    resize is only chosen here (targets are mapped to it) and done by the model's preprocessing.

    ``transform(item) -> (uint8 (3, H, W) tensor, target in resized pixels, (H, W), (h, w))``.
    Randomness comes from ``rng`` when given, else from torch's generator (seeded per loader worker).
    """

    def __init__(self, cfg, rng: np.random.Generator | None = None):
        p = cfg.PREPROC
        self.short_range = (int(p.TRAIN_SHORT_EDGE_SIZE[0]), int(p.TRAIN_SHORT_EDGE_SIZE[1]))
        rules = resolve_rules(cfg)
        # MAX_SIZE as the model's preprocessing uses it (builders.max_size: RULES.MAX_SIZE_ROUND_UP, FPN only)
        self.max_size = capped_max_size(p.MAX_SIZE, bool(cfg.MODE_FPN and rules.max_size_round_up))
        self.flip = bool(p.HORIZONTAL_FLIP)
        self.rotate_prob = float(p.ROTATE_PROB)
        self.rotate_max = float(p.ROTATE_MAX)
        self.rounding = rules.resize
        self.rng = rng

    def __call__(self, item: dict):
        if is_bad_image(item):
            return item
        h, w = item["image"].shape[:2]
        size = choose_train_size(h, w, self.short_range, self.max_size, self.rng, self.rounding)
        if self.flip and _uniform(0.0, 1.0, self.rng) < 0.5:
            item = hflip(item)
        if self.rotate_prob > 0 and self.rotate_max > 0 and _uniform(0.0, 1.0, self.rng) < self.rotate_prob:
            item = rotate(item, _uniform(-self.rotate_max, self.rotate_max, self.rng))
        item = scale_geometry(item, size)
        image, target = item_to_tensors(item)
        return image, target, (h, w), size


class TestTransform:
    """Test time: the decoded image as a tensor, to be resized by the model's preprocessing to its
    test size (``PREPROC.TEST_SHORT_EDGE_SIZE``, ``MAX_SIZE``). Targets stay in the decoded image's
    pixels. Output as :class:`TrainTransform`'s, with ``size`` None. Nothing to choose, so no arguments."""

    def __call__(self, item: dict):
        if is_bad_image(item):
            return item
        image, target = item_to_tensors(item)
        return image, target, tuple(item["image"].shape[:2]), None
