"""Evaluation: model outputs -> COCO results -> COCO AP and VOC-style per-class AP@0.5.

This is the edge where the model's contiguous labels ``1..C`` become dataset category ids
(through a dataset's ``label_to_cat_id``).

COCO results are the standard list of dicts::

    {"image_id": int, "category_id": int, "bbox": [x, y, w, h] (pixels), "score": float,
     ["segmentation": {"size": [H, W], "counts": str}]   (compressed RLE)}

Functions (running a model over a dataset is ``engine.inference.evaluate_distributed``, the one
evaluation driver the trainer and ``scripts/eval.py`` share):
    detections_to_coco(outputs, image_ids, label_to_cat_id, with_masks) -> results
    coco_evaluate(coco_gt, results, iou_types) -> {iou_type: {AP, AP50, AP75, APs, APm, APl}}
    voc_ap_per_class(coco_gt, results, iou) -> ({category_id: AP}, mAP)
    load_results(path) / save_results(results, path)
    label_map_for_model(classes, dataset) -> {label: category id}
(The ``scripts/eval.py`` command line is ``gluon_rcnn.cli.eval``.)
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import sys
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..utils.io import atomic_write

__all__ = ["ResultsError", "COCO_METRICS", "detections_to_coco", "coco_evaluate",
           "format_coco_table", "label_map_for_model", "voc_ap", "voc_ap_per_class", "print_ap_table",
           "load_results", "save_results"]

COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


class ResultsError(ValueError):
    """A detection results file or list is malformed; the message names the entry index."""


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach()
        if x.is_floating_point():
            x = x.float()  # bf16/fp16 have no numpy equivalent
        x = x.cpu().numpy()
    return np.asarray(x)


# --------------------------------------------------------------------------------------------
# model outputs -> COCO results
# --------------------------------------------------------------------------------------------
def detections_to_coco(outputs: Sequence[Mapping[str, Any]], image_ids: Sequence[int],
                       label_to_cat_id: Mapping[int, int], with_masks: bool | None = None) -> list[dict]:
    """Convert per-image detections to COCO result dicts.

    outputs: one dict per image with ``boxes`` (N, 4) x1,y1,x2,y2 in original-image pixels,
        ``scores`` (N,), ``labels`` (N,) in 1..C, and for mask models ``masks`` (N, 1, H, W) or
        (N, H, W) float probabilities in the original image size (torch tensors or numpy arrays).
    image_ids: the dataset image id of each output.
    label_to_cat_id: label (1..C) -> dataset category id.
    with_masks: add ``segmentation`` (compressed RLE of ``mask > 0.5``, counts as str); ``None`` =
        whenever the outputs have ``masks``. ``True`` with an output lacking masks is an error.
    Returns the list of result dicts (bbox as [x, y, w, h]).
    """
    from pycocotools import mask as mask_utils

    if len(outputs) != len(image_ids):
        raise ValueError(f"{len(outputs)} outputs but {len(image_ids)} image ids")
    results: list[dict] = []
    for out, image_id in zip(outputs, image_ids):
        boxes = _to_numpy(out["boxes"]).astype(np.float64).reshape(-1, 4)
        scores = _to_numpy(out["scores"]).astype(np.float64).reshape(-1)
        labels = _to_numpy(out["labels"]).astype(np.int64).reshape(-1)
        if not (len(boxes) == len(scores) == len(labels)):
            raise ValueError(f"image {image_id}: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels")
        use_masks = ("masks" in out) if with_masks is None else bool(with_masks)
        rles = None
        if use_masks:
            if "masks" not in out:
                raise ValueError(f"image {image_id}: with_masks=True but the output has no 'masks'")
            masks = _to_numpy(out["masks"])
            if masks.ndim == 4:
                masks = masks[:, 0]
            if len(masks) != len(boxes):
                raise ValueError(f"image {image_id}: {len(masks)} masks for {len(boxes)} boxes")
            if len(masks):
                binary = np.asfortranarray((masks > 0.5).transpose(1, 2, 0).astype(np.uint8))  # (H, W, N)
                rles = mask_utils.encode(binary)
            else:
                rles = []
        for k in range(len(boxes)):
            label = int(labels[k])
            if label not in label_to_cat_id:
                raise ValueError(f"image {image_id}: label {label} has no category id "
                                 f"(labels known: 1..{len(label_to_cat_id)})")
            x1, y1, x2, y2 = boxes[k]
            r = {"image_id": int(image_id), "category_id": int(label_to_cat_id[label]),
                 "bbox": [float(x1), float(y1), float(x2 - x1), float(y2 - y1)], "score": float(scores[k])}
            if rles is not None:
                rle = rles[k]
                r["segmentation"] = {"size": [int(s) for s in rle["size"]],
                                     "counts": rle["counts"].decode("ascii") if isinstance(rle["counts"], bytes)
                                     else rle["counts"]}
            results.append(r)
    return results


# --------------------------------------------------------------------------------------------
# results files
# --------------------------------------------------------------------------------------------
def _check_result(i: int, r: Any, where: str) -> None:
    if not isinstance(r, dict):
        raise ResultsError(f"{where}: entry {i} is not an object: {r!r}")
    for k in ("image_id", "category_id", "bbox", "score"):
        if k not in r:
            raise ResultsError(f"{where}: entry {i} has no {k!r}: {r!r}")
    for k in ("image_id", "category_id"):
        if not isinstance(r[k], int) or isinstance(r[k], bool):
            raise ResultsError(f"{where}: entry {i}: {k} must be an integer, got {r[k]!r}")
    b = r["bbox"]
    if not (isinstance(b, (list, tuple)) and len(b) == 4
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in b)):
        raise ResultsError(f"{where}: entry {i}: bbox must be 4 finite numbers [x, y, w, h], got {b!r}")
    if b[2] < 0 or b[3] < 0:
        raise ResultsError(f"{where}: entry {i}: bbox {b!r} has a negative width or height")
    s = r["score"]
    if not (isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s)):
        raise ResultsError(f"{where}: entry {i}: score must be a finite number, got {s!r}")
    if "segmentation" in r:
        seg = r["segmentation"]
        if not (isinstance(seg, dict) and isinstance(seg.get("counts"), (str, bytes))
                and isinstance(seg.get("size"), (list, tuple)) and len(seg["size"]) == 2):
            raise ResultsError(f"{where}: entry {i}: segmentation must be a compressed RLE "
                               "{'size': [H, W], 'counts': str}")


def load_results(path: str) -> list[dict]:
    """Read and validate a COCO results JSON: a list of dicts with integer ``image_id`` and
    ``category_id``, ``bbox`` [x, y, w, h] (4 finite numbers, w, h >= 0), finite ``score`` and an
    optional compressed-RLE ``segmentation``. Raises ResultsError naming the file and entry index."""
    try:
        with open(path) as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ResultsError(f"{path}: results file not found") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ResultsError(f"{path}: not a readable JSON file: {e}") from None
    if not isinstance(data, list):
        raise ResultsError(f"{path}: a results file must hold a JSON list of detections, got {type(data).__name__}")
    for i, r in enumerate(data):
        _check_result(i, r, path)
    return data


def save_results(results: list[dict], path: str) -> None:
    """Write results as JSON (atomically: a temporary file renamed into place)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_write(path) as f:
        json.dump(results, f)


def _check_against_gt(coco_gt, results: Sequence[dict]) -> None:
    img_ids = set(coco_gt.getImgIds())
    cat_ids = set(coco_gt.getCatIds())
    for i, r in enumerate(results):
        _check_result(i, r, "results")
        if r["image_id"] not in img_ids:
            raise ResultsError(f"results entry {i}: image_id {r['image_id']} is not an image of the ground truth")
        if r["category_id"] not in cat_ids:
            raise ResultsError(f"results entry {i}: category_id {r['category_id']} is not a category of the "
                               "ground truth (were labels mapped through label_to_cat_id?)")


# --------------------------------------------------------------------------------------------
# COCO AP
# --------------------------------------------------------------------------------------------
def _fmt(v: float) -> str:
    return "   n/a" if (v is None or not math.isfinite(v) or v < 0) else f"{v:6.3f}"


def format_coco_table(metrics: Mapping[str, Mapping[str, float]]) -> str:
    """The metrics of :func:`coco_evaluate` as a text table, one row per IoU type
    (``n/a`` where COCOeval has no ground truth in that area range)."""
    lines = ["COCO AP (IoU=0.50:0.95, area=all, maxDets=100; APs/APm/APl by area)",
             f"{'IoU type':<8} | " + " | ".join(f"{k:>6}" for k in COCO_METRICS)]
    lines.append("-" * len(lines[-1]))
    for t, m in metrics.items():
        lines.append(f"{t:<8} | " + " | ".join(_fmt(m[k]) for k in COCO_METRICS))
    return "\n".join(lines)


def coco_evaluate(coco_gt, results: Sequence[dict], iou_types: Iterable[str] = ("bbox",),
                  image_ids: Sequence[int] | None = None, verbose: bool = True) -> dict:
    """COCO AP of ``results`` against ``coco_gt`` (a pycocotools COCO object).

    iou_types: any of 'bbox', 'segm' ('segm' needs a ``segmentation`` in every result).
    image_ids: evaluate only these images (default: every image of the ground truth; images
        without detections count as misses).
    Returns ``{iou_type: {"AP", "AP50", "AP75", "APs", "APm", "APl"}}`` floats in 0..1 (-1 where
    COCOeval has no ground truth for that entry); empty results give zeros. Prints the table when
    ``verbose``.
    """
    from pycocotools.cocoeval import COCOeval

    iou_types = tuple(iou_types)
    for t in iou_types:
        if t not in ("bbox", "segm"):
            raise ValueError(f"unknown iou type {t!r}; use 'bbox' or 'segm'")
    _check_against_gt(coco_gt, results)
    metrics: dict[str, dict[str, float]] = {}
    for t in iou_types:
        res = [dict(r) for r in results]  # loadRes adds keys to the dicts it is given
        if t == "segm":
            for i, r in enumerate(res):
                if "segmentation" not in r:
                    raise ResultsError(f"results entry {i} has no segmentation; cannot evaluate 'segm'")
                r.pop("bbox", None)  # so that loadRes takes the area from the mask, not the box
        if not res:
            metrics[t] = {k: 0.0 for k in COCO_METRICS}
            continue
        with contextlib.redirect_stdout(io.StringIO()):
            coco_dt = coco_gt.loadRes(res)
            ev = COCOeval(coco_gt, coco_dt, t)
            if image_ids is not None:
                ev.params.imgIds = sorted(int(i) for i in image_ids)
            ev.evaluate()
            ev.accumulate()
            ev.summarize()
        metrics[t] = {k: float(v) for k, v in zip(COCO_METRICS, ev.stats[:6])}
    if verbose:
        print(format_coco_table(metrics), flush=True)
    return metrics


# --------------------------------------------------------------------------------------------
# VOC AP@0.5 per class
# --------------------------------------------------------------------------------------------
def voc_ap(rec: np.ndarray, prec: np.ndarray) -> float:
    """Area under the precision/recall curve with all points (VOC2010+, ``use_07_metric=False``):
    precision is made monotonically non-increasing, then summed over the recall steps."""
    mrec = np.concatenate(([0.0], np.asarray(rec, dtype=np.float64), [1.0]))
    mpre = np.concatenate(([0.0], np.asarray(prec, dtype=np.float64), [0.0]))
    mpre = np.maximum.accumulate(mpre[::-1])[::-1]
    i = np.where(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[i + 1] - mrec[i]) * mpre[i + 1]))


def _iou_one_to_many(box: np.ndarray, gts: np.ndarray) -> np.ndarray:
    ix1 = np.maximum(gts[:, 0], box[0])
    iy1 = np.maximum(gts[:, 1], box[1])
    ix2 = np.minimum(gts[:, 2], box[2])
    iy2 = np.minimum(gts[:, 3], box[3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    union = (box[2] - box[0]) * (box[3] - box[1]) + (gts[:, 2] - gts[:, 0]) * (gts[:, 3] - gts[:, 1]) - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


def voc_ap_per_class(coco_gt, results: Sequence[dict], iou: float = 0.5,
                     image_ids: Sequence[int] | None = None) -> tuple[dict[int, float], float]:
    """Per-class AP at one IoU threshold, as py-faster-rcnn / ClaRAN ``voc_eval(use_07_metric=False)``.

    Detections of a class, highest score first, are greedily matched to the unmatched ground-truth
    box of the same image with the largest IoU (a match needs IoU > ``iou``; boxes are x,y,w,h in
    pixels, no ``+1``). Crowd ground truth plays VOC's "difficult": it is not counted as a positive,
    and a detection whose best match is a crowd box is neither a true nor a false positive.

    Returns ``({category_id: AP}, mAP)``; a category without non-crowd ground truth has AP NaN and is
    left out of the mean (mAP is NaN when no category has any).
    """
    _check_against_gt(coco_gt, results)
    keep_imgs = None if image_ids is None else {int(i) for i in image_ids}
    gt: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
    npos: dict[int, int] = {c: 0 for c in coco_gt.getCatIds()}
    grouped: dict[tuple[int, int], list] = {}
    for a in coco_gt.dataset["annotations"]:
        if keep_imgs is not None and a["image_id"] not in keep_imgs:
            continue
        grouped.setdefault((a["image_id"], a["category_id"]), []).append(a)
    for key, anns in grouped.items():
        b = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)
        b[:, 2:] += b[:, :2]
        crowd = np.array([bool(a.get("iscrowd", 0)) for a in anns])
        gt[key] = (b, crowd)
        npos[key[1]] += int((~crowd).sum())

    dets: dict[int, list[dict]] = {c: [] for c in npos}
    for r in results:
        if keep_imgs is None or r["image_id"] in keep_imgs:
            dets[r["category_id"]].append(r)

    aps: dict[int, float] = {}
    for cat in sorted(npos):
        if npos[cat] == 0:
            aps[cat] = float("nan")
            continue
        ds = sorted(dets[cat], key=lambda r: -r["score"])  # stable: ties keep the input order
        matched = {k: np.zeros(len(v[0]), dtype=bool) for k, v in gt.items() if k[1] == cat}
        tp = np.zeros(len(ds))
        fp = np.zeros(len(ds))
        for d, r in enumerate(ds):
            key = (r["image_id"], cat)
            x, y, w, h = r["bbox"]
            if key not in gt:
                fp[d] = 1
                continue
            boxes, crowd = gt[key]
            ov = _iou_one_to_many(np.array([x, y, x + w, y + h], dtype=np.float64), boxes)
            j = int(np.argmax(ov))
            if ov[j] > iou:
                if crowd[j]:
                    continue  # "difficult": ignored
                if not matched[key][j]:
                    tp[d] = 1
                    matched[key][j] = True
                else:
                    fp[d] = 1
            else:
                fp[d] = 1
        tp = np.cumsum(tp)
        fp = np.cumsum(fp)
        rec = tp / npos[cat]
        prec = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
        aps[cat] = voc_ap(rec, prec)
    valid = [v for v in aps.values() if math.isfinite(v)]
    mean_ap = float(np.mean(valid)) if valid else float("nan")
    return aps, mean_ap


def print_ap_table(aps: Mapping[int, float], mean_ap: float, class_names: Mapping[int, str] | None = None,
                   title: str = "VOC AP@0.50 per class", file=None) -> None:
    """Print one row per category (``n/a``: no ground truth) and the mean.

    aps: {category_id: AP}; class_names: {category_id: name} (default: the ids)."""
    file = file or sys.stdout
    names = {c: (class_names or {}).get(c, str(c)) for c in aps}
    width = max([len(n) for n in names.values()] + [len("category"), 4])
    print(title, file=file)
    print(f"{'category':<{width}} | {'AP':>6}", file=file)
    print("-" * (width + 9), file=file)
    for c, v in aps.items():
        print(f"{names[c]:<{width}} | {_fmt(v)}", file=file)
    print("-" * (width + 9), file=file)
    print(f"{'mAP':<{width}} | {_fmt(mean_ap)}", file=file, flush=True)


def label_map_for_model(classes: Sequence[str] | None, dataset) -> dict[int, int]:
    """label (1..C) -> category id for a model whose ``classes[i]`` names label ``i+1``.

    Model class names are matched to the dataset's category names; a model without real names
    (``None``, or names the dataset lacks) but with as many classes as the dataset is assumed to
    follow the dataset's category-id order (with a warning); anything else is a DatasetError.
    """
    from ..data.coco import DatasetError

    if not classes or tuple(classes) == tuple(dataset.classes):
        return dict(dataset.label_to_cat_id)
    by_name: dict[str, int] = {}
    for c in sorted(dataset.coco.dataset["categories"], key=lambda c: c["id"]):
        by_name.setdefault(c["name"], c["id"])
    if all(n in by_name for n in classes):
        return {i + 1: by_name[n] for i, n in enumerate(classes)}
    if len(classes) == len(dataset.classes):
        print(f"warning: the model's class names ({list(classes)[:3]}...) are not the dataset's; assuming its "
              "labels 1..C follow the dataset's categories in id order", file=sys.stderr)
        return dict(dataset.label_to_cat_id)
    missing = [n for n in classes if n not in by_name]
    raise DatasetError(f"{dataset.annotation_file}: the model has {len(classes)} classes, the dataset "
                       f"{len(dataset.classes)}, and model classes {missing[:5]} are not dataset categories")
