"""Drawing detections: boxes, class names, scores and masks over an image, saved as PNG."""
from __future__ import annotations

import colorsys

import cv2
import numpy as np

__all__ = ["draw_detections", "save_png", "plot_bbox", "vis_score_thresh"]

DEFAULT_VIS_THRESH = 0.5  # the default config's TEST.RESULT_SCORE_THRESH_VIS


def vis_score_thresh(model) -> float:
    """The score from which ``model``'s detections are drawn: its config's
    ``TEST.RESULT_SCORE_THRESH_VIS`` (tensorpack's visualisation threshold); 0.5 for a model
    without a gluon_rcnn config."""
    cfg = getattr(model, "config", None) or getattr(model, "cfg", None)
    try:
        return float(cfg.TEST.RESULT_SCORE_THRESH_VIS)
    except AttributeError:
        return DEFAULT_VIS_THRESH


def _color(i: int) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


def draw_detections(image: np.ndarray, boxes, scores=None, labels=None, classes=None, masks=None,
                    thresh: float = 0.5, mask_alpha: float = 0.45, thickness: int = 2) -> np.ndarray:
    """image: HxWx3 uint8 RGB (or HxW grey); boxes (N,4) x1,y1,x2,y2 in its pixels; scores (N,);
    labels (N,) in 1..C; classes: names of labels 1..C; masks (N,1,H,W) or (N,H,W) probabilities.
    Returns a new HxWx3 uint8 RGB image with the detections scoring >= ``thresh`` drawn."""
    img = np.ascontiguousarray(image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)).copy()
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    n = len(boxes)
    show_scores = scores is not None  # ground truth (no scores): class names only
    scores = np.ones(n) if scores is None else np.asarray(scores, dtype=np.float32)
    labels = np.ones(n, dtype=np.int64) if labels is None else np.asarray(labels).astype(np.int64)
    keep = np.nonzero(scores >= thresh)[0]
    if masks is not None:
        m = np.asarray(masks)
        m = m[:, 0] if m.ndim == 4 else m
        for i in keep:
            sel = m[i] >= 0.5
            c = np.array(_color(int(labels[i])), dtype=np.float32)
            img[sel] = (img[sel] * (1 - mask_alpha) + c * mask_alpha).astype(np.uint8)
    scale = max(0.35, min(img.shape[:2]) / 800)
    for i in keep:
        x1, y1, x2, y2 = (int(round(v)) for v in boxes[i])
        c = _color(int(labels[i]))
        cv2.rectangle(img, (x1, y1), (x2, y2), c, thickness)
        name = classes[labels[i] - 1] if classes is not None and 0 < labels[i] <= len(classes) else str(labels[i])
        text = f"{name} {scores[i]:.2f}" if show_scores else str(name)
        (tw, th), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, scale, 1)
        y = max(y1, th + 2)
        cv2.rectangle(img, (x1, y - th - 2), (x1 + tw + 2, y), c, -1)
        cv2.putText(img, text, (x1 + 1, y - 2), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)
    return img


def save_png(path: str, image_rgb: np.ndarray) -> None:
    if not cv2.imwrite(str(path), cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR)):
        raise OSError(f"could not write {path}")


def plot_bbox(image, bboxes, scores=None, labels=None, class_names=None, thresh=0.5, masks=None):
    """GluonCV-style name for :func:`draw_detections` (labels here are 1..C)."""
    return draw_detections(image, bboxes, scores, labels, class_names, masks, thresh)
