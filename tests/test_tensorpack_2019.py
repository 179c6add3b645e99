"""The ``tensorpack-2019`` rule profile (tensorpack examples/FasterRCNN at 02c38f26, 2019-02-19): each rule
that differs from later tensorpack against a direct transcription of that commit's code (numpy/cv2, below),
the profile's full choice list, and the converter kinds of the seven checkpoints its README published.

The transcriptions follow ``git show 02c38f26:examples/FasterRCNN/<file>``: utils/generate_anchors.py
(py-faster-rcnn) and data.py ``get_all_anchors``; model_box.py ``decode_bbox_target``/``clip_boxes`` and
model_rpn.py ``generate_rpn_proposals``; model_frcnn.py ``fastrcnn_predictions``; eval.py ``_paste_mask``.
TF's ``non_max_suppression`` is transcribed from its kernel's rule (greedy by score, lower index first on
ties; IoU in float32 as ``inter / (area_i + area_j - inter)``, 0 for an empty box; suppressed above the
threshold). The end-to-end comparison with the 2019 graph itself is bench/compare_tensorpack.py.
"""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from numpy.testing import assert_array_equal

from gluon_rcnn.builders import build_model
from gluon_rcnn.convert.tensorpack import (TENSORPACK_2019_KINDS, TENSORPACK_KINDS, URL, name_map,
                                           tensorpack_config, tensorpack_detector_layout, tensorpack_state_dict)
from gluon_rcnn.profiles import PROFILES, RULES, get_profile
from gluon_rcnn.roi_heads.inference import select_detections
from gluon_rcnn.rpn import RPN, AnchorGenerator, RPNHead
from gluon_rcnn.rules import anchors, detections, paste, proposals
from gluon_rcnn.structures.boxes import BoxCoder

MANIFESTS = Path(__file__).parent / "data" / "tensorpack_manifests"
RULES_2019 = get_profile("tensorpack-2019").rules()


# ------------------------------------------------------------------------------ transcriptions of 02c38f26
def _whctrs(anchor):
    w = anchor[2] - anchor[0] + 1
    h = anchor[3] - anchor[1] + 1
    return w, h, anchor[0] + 0.5 * (w - 1), anchor[1] + 0.5 * (h - 1)


def _mkanchors(ws, hs, x_ctr, y_ctr):
    ws, hs = ws[:, np.newaxis], hs[:, np.newaxis]
    return np.hstack((x_ctr - 0.5 * (ws - 1), y_ctr - 0.5 * (hs - 1), x_ctr + 0.5 * (ws - 1), y_ctr + 0.5 * (hs - 1)))


def _generate_anchors(base_size, ratios, scales):
    """utils/generate_anchors.py (py-faster-rcnn): ``_ratio_enum`` then ``_scale_enum`` per ratio."""
    base_anchor = np.array([1, 1, base_size, base_size], dtype="float32") - 1
    w, h, x_ctr, y_ctr = _whctrs(base_anchor)
    size_ratios = (w * h) / ratios
    ws = np.round(np.sqrt(size_ratios))
    hs = np.round(ws * ratios)
    ratio_anchors = _mkanchors(ws, hs, x_ctr, y_ctr)
    out = []
    for i in range(ratio_anchors.shape[0]):
        w, h, x_ctr, y_ctr = _whctrs(ratio_anchors[i, :])
        out.append(_mkanchors(w * scales, h * scales, x_ctr, y_ctr))
    return np.vstack(out)


def _get_all_anchors(stride, sizes, ratios=(0.5, 1.0, 2.0), max_size=1333):
    """data.py get_all_anchors: SxSxAx4 float32, S = ceil(MAX_SIZE / stride)."""
    cell_anchors = _generate_anchors(stride, scales=np.array(sizes, dtype=float) / stride,
                                     ratios=np.array(ratios, dtype=float))
    field_size = int(np.ceil(max_size / stride))
    shifts = np.arange(0, field_size) * stride
    shift_x, shift_y = np.meshgrid(shifts, shifts)
    shift_x, shift_y = shift_x.flatten(), shift_y.flatten()
    shifts = np.vstack((shift_x, shift_y, shift_x, shift_y)).transpose()
    K, A = shifts.shape[0], cell_anchors.shape[0]
    field = cell_anchors.reshape((1, A, 4)) + shifts.reshape((1, K, 4)).transpose((1, 0, 2))
    field = field.reshape((field_size, field_size, A, 4)).astype("float32")
    field[:, :, :, [2, 3]] += 1
    return field


def _tf_iou(a, b):
    a, b = a.astype(np.float32), b.astype(np.float32)
    area_a = (a[3] - a[1]) * (a[2] - a[0])
    area_b = (b[3] - b[1]) * (b[2] - b[0])
    if area_a <= 0 or area_b <= 0:
        return np.float32(0)
    inter = (max(np.float32(min(a[3], b[3]) - max(a[1], b[1])), np.float32(0)) *
             max(np.float32(min(a[2], b[2]) - max(a[0], b[0])), np.float32(0)))
    return np.float32(inter / (area_a + area_b - inter))


def _tf_nms(boxes, scores, max_output, thresh):
    """tf.image.non_max_suppression: indices kept, by decreasing score."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    keep = []
    for i in order:
        if len(keep) == max_output:
            break
        if all(_tf_iou(boxes[i], boxes[j]) <= thresh for j in keep):
            keep.append(i)
    return keep


def _decode_clip(deltas, anchors, hw, max_size=1333):
    """model_box.py decode_bbox_target (RPN: no weights), then clip_boxes to [0, w] x [0, h]."""
    deltas, anchors = deltas.astype(np.float32), anchors.astype(np.float32)
    waha = anchors[:, 2:] - anchors[:, :2]
    xaya = (anchors[:, 2:] + anchors[:, :2]) * np.float32(0.5)
    wbhb = np.exp(np.minimum(deltas[:, 2:], np.float32(np.log(max_size / 16.)))) * waha
    xbyb = deltas[:, :2] * waha + xaya
    boxes = np.concatenate([xbyb - wbhb * np.float32(0.5), xbyb + wbhb * np.float32(0.5)], 1)
    h, w = hw
    return np.minimum(np.maximum(boxes, 0), np.array([w, h, w, h], np.float32))


def _generate_rpn_proposals(boxes, scores, pre_nms_topk, post_nms_topk, nms_thresh=0.7, min_size=0):
    """model_rpn.py generate_rpn_proposals (boxes already decoded and clipped)."""
    top = np.argsort(-scores, kind="stable")[:pre_nms_topk]
    b, s = boxes[top], scores[top]
    wbhb = b[:, 2:] - b[:, :2]
    valid = np.all(wbhb > min_size, axis=1)
    b, s = b[valid], s[valid]
    keep = _tf_nms(b, s, post_nms_topk, nms_thresh)
    return b[keep], s[keep]


def _fastrcnn_predictions(boxes, scores, score_thresh=0.05, nms_thresh=0.5, per_im=100):
    """model_frcnn.py fastrcnn_predictions: per class (score > thresh, NMS, <= per_im), union, top per_im.
    boxes (R, C+1, 4), scores (R, C+1) → set of (class 1..C, RoI index)."""
    sel = []
    for c in range(1, scores.shape[1]):
        ids = np.nonzero(scores[:, c] > score_thresh)[0]
        keep = _tf_nms(boxes[ids, c], scores[ids, c], per_im, nms_thresh)
        sel += [(c, int(ids[k])) for k in keep]
    sel.sort(key=lambda cb: (cb[0], cb[1]))  # tf.where(masks): (class, box) order
    order = sorted(range(len(sel)), key=lambda i: (-float(scores[sel[i][1], sel[i][0]]), i))[:per_im]
    return {sel[i] for i in order}


def _paste_mask(box, mask, shape):
    """eval.py _paste_mask at 02c38f26, verbatim but for the returned probabilities (``> 0.5`` is
    the mask it returns)."""
    x0, y0 = list(map(int, box[:2] + 0.5))
    x1, y1 = list(map(int, box[2:] - 0.5))    # inclusive
    x1 = max(x0, x1)    # require at least 1x1
    y1 = max(y0, y1)
    w = x1 + 1 - x0
    h = y1 + 1 - y0
    probs = cv2.resize(mask, (w, h))
    ret = np.zeros(shape, dtype="float32")
    ret[y0:y1 + 1, x0:x1 + 1] = probs
    binary = np.zeros(shape, dtype="uint8")
    binary[y0:y1 + 1, x0:x1 + 1] = (probs > 0.5).astype("uint8")
    return ret, binary


# ---------------------------------------------------------------------------------------------- profile
def test_profile_choices():
    assert dict(PROFILES["tensorpack-2019"].choices) == {
        "ANCHOR_CELLS": "legacy_end_plus_one", "ANCHOR_GRID": "fixed_stride", "ANCHOR_ORDER": "ratio_major",
        "LOW_QUALITY_MATCHES": "best_unless_negative", "BORDER_ANCHORS": "ignore_outside",
        "DECODE_CLAMP": "log_max_size_over_16", "PROPOSAL_MIN_SIZE": "above", "ROI_LEVELS": "sqrt_area",
        "ROI_ALIGNED": True, "P6": "maxpool", "BOX_HEAD_POOL": "pool7", "FC_INIT": "fan_in_truncated_normal",
        "GN_HEAD_ORDER": "conv_relu_gn", "GN_CONV_BIAS": True, "MASK_TARGETS": "bitmap_crop",
        "MASK_PASTE": "rounded_box", "DETECTIONS": "clip_then_per_class_nms", "RESIZE": "round",
        "RESAMPLE": "uint8_fixed_point",
        "MAX_SIZE_ROUND_UP": True, "RESCALE_BOXES": "mean_scale_clipped", "STRIDE_1X1": False,
        "FLOOR_STRIDE2": True, "FREEZE_AFFINE": False, "ZERO_INIT_RESIDUAL": True,
        "WARMUP_SCALES_WITH_BATCH": False, "ACCUMULATE_TO_8": True}
    new, old = PROFILES["tensorpack-2019"].choices, PROFILES["tensorpack"].choices
    assert {r for r in RULES if new[r] != old[r]} == {"ANCHOR_CELLS", "ANCHOR_ORDER", "PROPOSAL_MIN_SIZE",
                                                      "DETECTIONS", "MASK_PASTE"}


# ---------------------------------------------------------------------------------------------- anchors
#: DIFFERENCES_2019.md's table: cell (0, 0) of each FPN level, ratios 0.5 / 1 / 2
CELL00 = {4: [[-22, -10, 26, 14], [-14, -14, 18, 18], [-10, -22, 14, 26]],
          8: [[-40, -20, 48, 28], [-28, -28, 36, 36], [-20, -44, 28, 52]],
          16: [[-84, -40, 100, 56], [-56, -56, 72, 72], [-36, -80, 52, 96]],
          32: [[-164, -72, 196, 104], [-112, -112, 144, 144], [-76, -168, 108, 200]],
          64: [[-332, -152, 396, 216], [-224, -224, 288, 288], [-148, -328, 212, 392]]}


def _formula(stride, sizes, ratios=(0.5, 1.0, 2.0)):
    """DIFFERENCES_2019.md: w0 = round(sqrt(s*s/r)) (ties to even), h0 = round(w0*r), W = k*w0, centred on s/2."""
    out = []
    for r in ratios:
        w0 = np.round(np.sqrt(stride * stride / r))
        h0 = np.round(w0 * r)
        for size in sizes:
            W, H = size / stride * w0, size / stride * h0
            out.append([(stride - W) / 2, (stride - H) / 2, (stride + W) / 2, (stride + H) / 2])
    return np.array(out)


@pytest.mark.parametrize("stride,sizes", [(4, [32]), (8, [64]), (16, [128]), (32, [256]), (64, [512]),
                                          (16, [32, 64, 128, 256, 512])])
def test_anchors_are_get_all_anchors_bit_for_bit(stride, sizes):
    """Every anchor of the grid (800x1067 at MAX_SIZE 1344: FPN; 1333: C4) equals data.py's, in float32."""
    max_size = 1333 if len(sizes) > 1 else 1344
    theirs = _get_all_anchors(stride, sizes, max_size=max_size)
    fh, fw = -(-800 // stride), -(-1067 // stride)
    gen = AnchorGenerator([sizes], [0.5, 1.0, 2.0], [stride], cells=RULES_2019.anchor_cells,
                          grid=RULES_2019.anchor_grid)
    ours = gen([(fh, fw)], "cpu")[0]
    assert ours.dtype == torch.float32
    assert_array_equal(ours.numpy().reshape(fh, fw, -1, 4), theirs[:fh, :fw])
    assert_array_equal(RULES_2019.anchor_cells(stride, sizes, [0.5, 1.0, 2.0]).numpy(), _formula(stride, sizes))
    if len(sizes) == 1:
        assert_array_equal(theirs[0, 0], np.array(CELL00[stride], np.float32))
    else:  # C4: (w0, h0) = (23, 12), (16, 16), (11, 22) times k = 2..32, ratio-major
        wh = theirs[0, 0, :, 2:] - theirs[0, 0, :, :2]
        assert_array_equal(wh, [[w * k, h * k] for w, h in [(23, 12), (16, 16), (11, 22)] for k in (2, 4, 8, 16, 32)])


def test_c4_rpn_channels_keep_the_2019_order():
    """02c38f26's 15 C4 anchors are ratio-major (generate_anchors stacks _scale_enum per ratio), as ours:
    its rpn/class and rpn/box channels load unpermuted; the later code's (size-major) are permuted."""
    cells = anchors.CELLS["legacy_end_plus_one"](16, [32, 64, 128, 256, 512], [0.5, 1.0, 2.0]).numpy()
    assert_array_equal(cells.astype(np.float32), _get_all_anchors(16, [32, 64, 128, 256, 512])[0, 0])
    cfg = tensorpack_config("COCO-R50C4-MaskRCNN-Standard")
    assert anchors.ORDERS["ratio_major"].perm(5, 3).tolist() == list(range(15))
    w = torch.arange(15 * 1024, dtype=torch.float32).reshape(1, 1, 1024, 15)  # HWIO
    b = torch.arange(15 * 4, dtype=torch.float32)
    assert torch.equal(tensorpack_detector_layout(w, "rpn_c4_cls", cfg), w.permute(3, 2, 0, 1))
    assert torch.equal(tensorpack_detector_layout(b, "rpn_c4_box_bias", cfg), b)
    later = tensorpack_config("COCO-MaskRCNN-R50C41x")  # since 141ab53c: size-major
    perm = anchors.ORDERS["size_major"].perm(5, 3)
    assert perm[:6].tolist() == [0, 3, 6, 9, 12, 1]
    assert torch.equal(tensorpack_detector_layout(w, "rpn_c4_cls", later), w.permute(3, 2, 0, 1)[perm])
    assert torch.equal(tensorpack_detector_layout(b, "rpn_c4_box_bias", later), b.reshape(15, 4)[perm].reshape(-1))


# ------------------------------------------------------------------------------------------------ RPN
def _rpn(rule, pre, post):
    gen = AnchorGenerator([[32, 64, 128, 256, 512]], [0.5, 1.0, 2.0], [16], cells=RULES_2019.anchor_cells,
                          grid=RULES_2019.anchor_grid)
    return RPN(gen, RPNHead(8, 15), BoxCoder([1.0, 1.0, 1.0, 1.0], float(np.log(1333 / 16))), per_level=False,
               pre_nms_topk=(pre, pre), post_nms_topk=(post, post), nms_thresh=0.7, min_size=0.0,
               border_anchors=RULES_2019.border_anchors, low_quality=RULES_2019.low_quality_matches,
               small_proposals=proposals.MIN_SIZE[rule]).eval()


def test_rpn_removes_zero_size_proposals_before_nms():
    """A C4 RPN on a 6x8 map (96x128 image) whose deltas push many boxes off the image: after clipping
    they have zero width or height; 2019 drops them before NMS (``wbhb > MIN_SIZE``)."""
    g = torch.Generator().manual_seed(0)
    H, W, A = 6, 8, 15
    logits = torch.randn(1, H * W * A, generator=g)
    deltas = torch.randn(1, H * W * A, 4, generator=g) * 1.5
    deltas[0, ::3, 0] += 6.0  # far to the right: many clip to x1 = x2 = w
    rpn = _rpn("above", 300, 100)
    anchors_ = rpn.anchor_generator([(H, W)], "cpu")
    ours = rpn._proposals([logits], [deltas], anchors_, [(96, 128)])[0].numpy()
    boxes = _decode_clip(deltas[0].numpy(), anchors_[0].numpy(), (96, 128))
    top = np.argsort(-logits[0].numpy(), kind="stable")[:300]
    degenerate = ((boxes[top, 2] - boxes[top, 0]) <= 0) | ((boxes[top, 3] - boxes[top, 1]) <= 0)
    assert degenerate.sum() >= 20  # the case this rule is about
    theirs, _ = _generate_rpn_proposals(boxes, logits[0].numpy(), 300, 100)
    assert len(ours) == len(theirs)
    d = np.abs(theirs[:, None, :] - ours[None, :, :]).max(-1)  # as sets: each of theirs has one of ours
    assert (d.min(1) < 1e-4).all() and (d.min(0) < 1e-4).all()
    assert ((ours[:, 2:] - ours[:, :2]) > 0).all()
    kept = _rpn("at_least", 300, 100)._proposals([logits], [deltas], anchors_, [(96, 128)])[0]
    assert (((kept[:, 2:] - kept[:, :2]) <= 0).any(1)).sum() > 0  # the later code keeps them


def test_min_size_rules():
    b = torch.tensor([[0.0, 0.0, 0.0, 5.0], [1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 1.0]])
    assert proposals.MIN_SIZE["above"].keep(b, 0.0).tolist() == [False, True, True]
    assert proposals.MIN_SIZE["at_least"].keep(b, 0.0).tolist() == [True, True, True]
    assert proposals.MIN_SIZE["above"].keep(b, 1.0).tolist() == [False, True, False]
    assert proposals.MIN_SIZE["at_least"].keep(b, 1.0).tolist() == [False, True, True]


# ------------------------------------------------------------------------------------ final detections
def _near_half_pairs():
    """Pairs of 20 px boxes whose float32 IoU is within 1e-4 of 0.5 (shifts 6.6600..6.6800 px)."""
    pairs = []
    for i in range(0, 200, 2):
        s = np.float32(6.66 + i * 1e-4)
        a = np.array([1000, 1000, 1020, 1020], np.float32)
        pairs.append((a, a + np.array([s, 0, s, 0], np.float32)))
    return pairs


def _select(boxes, probs, rule):
    out = select_detections(torch.from_numpy(boxes.reshape(len(boxes), -1)), torch.from_numpy(probs),
                            [len(boxes)], score_thresh=0.05, nms_thresh=0.5, detections_per_img=100,
                            min_box_size=0.0, nms=detections.CHOICES[rule].nms)[0]
    return out


def _as_set(out, boxes):
    """(label, RoI) of each detection, the RoI found by its box (boxes are distinct per class)."""
    res = set()
    for b, lab in zip(out["boxes"].numpy(), out["labels"].tolist()):
        rois = np.nonzero((boxes[:, lab] == b).all(1))[0]
        assert len(rois) == 1
        res.add((lab, int(rois[0])))
    return res


def test_final_nms_class_by_class_near_iou_half():
    """Class 80 pairs at IoU 0.5 +- 1e-4 (a class-1 box spans the image, so the class offsets are ~1e5 px):
    class-by-class NMS keeps exactly what 2019's per-class tf NMS keeps; the one-NMS offset form
    (torchvision's batched_nms below 1000 boxes) decides some of them differently."""
    pairs = _near_half_pairs()
    R, C = 2 * len(pairs) + 1, 81
    boxes = np.zeros((R, C, 4), np.float32)
    probs = np.zeros((R, C), np.float32)
    for k, (a, b) in enumerate(pairs):  # each pair alone in class 80 would need its own image: one RoI pair
        boxes[2 * k, 80], boxes[2 * k + 1, 80] = a + [0, 40 * k, 0, 40 * k], b + [0, 40 * k, 0, 40 * k]
        probs[2 * k, 80], probs[2 * k + 1, 80] = 0.9, 0.8
    boxes[-1, 1] = [0, 0, 1333, 4000]
    probs[-1, 1] = 0.7
    theirs = _fastrcnn_predictions(boxes, probs, per_im=1000)
    ours = select_detections(torch.from_numpy(boxes.reshape(R, -1)), torch.from_numpy(probs), [R],
                             score_thresh=0.05, nms_thresh=0.5, detections_per_img=1000, min_box_size=0.0,
                             nms=detections.CHOICES["clip_then_per_class_nms"].nms)[0]
    assert _as_set(ours, boxes) == theirs
    kept_second = sum((80, 2 * k + 1) in theirs for k in range(len(pairs)))
    assert 0 < kept_second < len(pairs)  # both sides of 0.5 are in the sample
    offset = select_detections(torch.from_numpy(boxes.reshape(R, -1)), torch.from_numpy(probs), [R],
                               score_thresh=0.05, nms_thresh=0.5, detections_per_img=1000, min_box_size=0.0,
                               nms=detections.CHOICES["clip_then_nms"].nms)[0]
    assert int((probs > 0.05).sum()) < 1000 and _as_set(offset, boxes) != theirs  # < 1000: the offset form


def test_final_detections_match_fastrcnn_predictions():
    """Random RoIs and scores (ties included, a class with more than 100 survivors): the same set as
    2019's per-class NMS (<= 100 per class, score > 0.05), union, top 100."""
    rng = np.random.default_rng(0)
    R, C = 300, 81
    xy = rng.uniform(0, 600, (R, C, 2)).astype(np.float32)
    wh = rng.uniform(4, 80, (R, C, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + wh], -1)
    probs = rng.dirichlet(np.full(C, 0.05), R).astype(np.float32)
    probs[:150, 3] = np.round(rng.uniform(0.3, 0.6, 150), 2)  # ties
    boxes[:150, 3] = np.stack([np.arange(150) * 30, np.zeros(150), np.arange(150) * 30 + 20, np.full(150, 20)],
                              1)  # 150 disjoint boxes: all survive NMS in class 3
    for rule in ("clip_then_per_class_nms",):
        ours = _select(boxes, probs, rule)
        assert len(ours["boxes"]) == 100
        theirs = _fastrcnn_predictions(boxes, probs)
        # equal scores at the 100th place may be cut differently: compare above the cut score
        cut = float(ours["scores"].min())
        assert {d for d in _as_set(ours, boxes) if probs[d[1], d[0]] > cut} == \
            {d for d in theirs if probs[d[1], d[0]] > cut}
        assert sum(probs[d[1], d[0]] >= cut for d in theirs) >= 100


# ---------------------------------------------------------------------------------------------- paste
def _paste_cases(H=60, W=80, n=400, seed=0):
    rng = np.random.default_rng(seed)
    x1 = rng.uniform(-2, W, n)
    y1 = rng.uniform(-2, H, n)
    size = np.where(rng.uniform(size=(n, 2)) < 0.3, rng.uniform(0, 2, (n, 2)), rng.uniform(0, 70, (n, 2)))
    boxes = np.stack([x1, y1, x1 + size[:, 0], y1 + size[:, 1]], 1)
    special = np.array([[0, 0, W, H], [W, H, W, H], [W - 0.5, 3, W, 9], [0, 0, 0.4, 0.4], [3.5, 4.5, 17.5, 18.5],
                        [10, 10, 24, 24], [10, 10, 38, 38], [10.49, 7.51, 38.51, 35.49], [79.2, 0, 80, 60],
                        [2.5, 2.5, 2.5, 2.5], [0.5, 0.5, 1.5, 1.5], [11, 11, 25.5, 25.5]])
    boxes = np.concatenate([boxes, special])
    boxes = np.minimum(np.maximum(boxes, 0), [W, H, W, H]).astype(np.float32)  # predict_image clips
    return boxes, H, W


@pytest.mark.parametrize("M", [28, 14])
def test_rounded_box_paste_is_paste_mask(M):
    """RoundedBoxPaste against eval.py _paste_mask (cv2.resize) over 412 boxes: sub-pixel corners, boxes
    under a pixel, zero-size boxes at the right/bottom border, exact 2x down-scaling (cv2 averages then).
    Probabilities agree to float32 rounding (one rounding per interpolation pass, in another order than
    OpenCV's: 2 ulp of 1, 2.4e-7; 1.2e-7 seen); the masks (> 0.5) agree everywhere but where a probability
    is that close to 0.5 (0.01 and 0.99 cells averaged give 0.5 itself)."""
    boxes, H, W = _paste_cases()
    rng = np.random.default_rng(M)
    masks = rng.uniform(0, 1, (len(boxes), M, M)).astype(np.float32)
    masks[::3] = (masks[::3] > 0.5).astype(np.float32) * 0.98 + 0.01  # sharp edges, as trained heads give
    ours = paste.MASK_PASTE["rounded_box"](torch.from_numpy(masks), torch.from_numpy(boxes), (H, W))[:, 0].numpy()
    assert ours.shape == (len(boxes), H, W)
    tol = 2.4e-7
    for k, (box, mask) in enumerate(zip(boxes, masks)):
        probs, binary = _paste_mask(box, mask, (H, W))
        np.testing.assert_allclose(ours[k], probs, rtol=0, atol=tol, err_msg=f"box {k} {box}")
        assert_array_equal((ours[k] > 0.5) | (np.abs(probs - 0.5) <= tol), binary | (np.abs(probs - 0.5) <= tol),
                           err_msg=f"box {k} {box}")
        assert_array_equal(ours[k] != 0, probs != 0)  # the same window (probabilities are > 0 inside)


def test_rounded_box_windows_by_hand():
    win = paste.RoundedBoxPaste.windows(torch.tensor([[3.3, 4.7, 20.2, 30.9], [0.0, 0.0, 0.2, 0.2],
                                                      [10.5, 10.5, 12.5, 13.5]]))
    # int(3.3 + .5) = 3, int(4.7 + .5) = 5, int(20.2 - .5) = 19, int(30.9 - .5) = 30; a tiny box: 1 x 1
    assert win.tolist() == [[3, 5, 19, 30], [0, 0, 0, 0], [11, 11, 12, 13]]


# ------------------------------------------------------------------------------------ kinds and manifests
def test_kinds_configs_and_manifests():
    """Each of the seven 2019 checkpoints is a kind (in TENSORPACK_KINDS too) with the README row's
    settings on the 2019 defaults; its manifest (the variables of the 2019 graph, tests/data) is the one
    the converter consumes, with the names and shapes of the later kind of the same architecture."""
    same = {"COCO-R50C4-MaskRCNN-Standard": "COCO-MaskRCNN-R50C41x",
            "COCO-R50FPN-MaskRCNN-Standard": "COCO-MaskRCNN-R50FPN2x",
            "COCO-R50FPN-MaskRCNN-StandardGN": "COCO-MaskRCNN-R50FPN2xGN",
            "COCO-R101C4-MaskRCNN-Standard": "COCO-MaskRCNN-R101C41x",
            "COCO-R101FPN-MaskRCNN-Standard": "COCO-MaskRCNN-R101FPN1x",
            "COCO-R101FPN-MaskRCNN-BetterParams": "COCO-MaskRCNN-R101FPN3xCasAug",
            "COCO-R101FPN-MaskRCNN-ScratchGN": "COCO-MaskRCNN-R101FPN9xGNCasAugScratch"}
    assert sorted(TENSORPACK_2019_KINDS) == sorted(same)
    for kind, later in same.items():
        assert TENSORPACK_KINDS[kind] == TENSORPACK_2019_KINDS[kind]
        cfg = tensorpack_config(kind)
        assert cfg.RULES.PROFILE == "tensorpack-2019" and cfg.MODE_MASK and all(cfg.RULES[r] is None for r in RULES)
        assert cfg.MODE_FPN == ("FPN" in kind) and cfg.FPN.CASCADE == (later.count("Cas") > 0)
        assert list(cfg.BACKBONE.RESNET_NUM_BLOCKS) == ([3, 4, 23, 3] if "R101" in kind else [3, 4, 6, 3])
        assert cfg.BACKBONE.NORM == ("GN" if kind.endswith("GN") else "FreezeBN")
        man = json.loads((MANIFESTS / f"{kind}.json").read_text())
        assert man["url"] == URL.format(kind) and man["readme_config"] == list(TENSORPACK_2019_KINDS[kind][1])
        variables = {v["name"]: tuple(v["shape"]) for v in man["variables"]}
        later_vars = {v["name"]: tuple(v["shape"]) for v in
                      json.loads((MANIFESTS / f"{later}.json").read_text())["variables"]}
        assert variables == later_vars, kind
        assert sorted(variables) == sorted(tp for tp, _, _ in name_map(cfg))
    # every element of each kind lands where it belongs: tests/test_convert_tensorpack.py (all TENSORPACK_KINDS)
    cfg = tensorpack_config("COCO-R50C4-MaskRCNN-Standard")
    with torch.device("meta"):
        ref = build_model(cfg).state_dict()
    src = {v["name"]: np.broadcast_to(np.float32(1), v["shape"])
           for v in json.loads((MANIFESTS / "COCO-R50C4-MaskRCNN-Standard.json").read_text())["variables"]}
    state, missing, unexpected = tensorpack_state_dict(src, cfg, ref, strict=True)
    assert missing == [] and unexpected == [] and set(state) == set(ref)


def test_the_imagenet_backbones_the_2019_rows_start_from_load():
    """02c38f26's README trains from ImageNet-R50-AlignPadding.npz (and the R101 one: 'fine-tuned from
    ImageNet pre-trained R50/R101 models in tensorpack model zoo'); the GN row from the zoo's GroupNorm32
    ResNet: each is a known ImageNet kind (its reader and manifest: tests/test_convert_tensorpack.py)."""
    from gluon_rcnn.convert.tensorpack import TENSORPACK_IMAGENET
    from gluon_rcnn import model_zoo

    for kind, (name, _) in TENSORPACK_2019_KINDS.items():
        note = model_zoo.get_entry(name)["reference"]["note"]
        if kind.endswith("ScratchGN"):
            assert "from scratch" in note.lower()
            continue
        backbone = f"ImageNet-R{101 if 'R101' in kind else 50}-{'GroupNorm32-' if kind.endswith('GN') else ''}AlignPadding"
        assert backbone in TENSORPACK_IMAGENET and f"{backbone}.npz" in note, kind
        assert (MANIFESTS / f"{backbone}.json").exists()


def test_claran_kind_uses_the_2019_profile():
    cfg = tensorpack_config("ClaRAN-v0.2-FasterRCNN-R50FPN")
    assert cfg.RULES.PROFILE == "tensorpack-2019" and all(cfg.RULES[r] is None for r in RULES)
    assert cfg.MODE_FPN and not cfg.MODE_MASK and list(cfg.TRAIN.LR_SCHEDULE) == [20000, 30000, 40000]
