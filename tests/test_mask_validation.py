"""Annotated masks are checked like boxes: an RLE of another size than its image, run lengths that do
not cover the image, a polygon of fewer than 3 points and an empty mask each stop the dataset's
construction with a DatasetError naming the file, the image id and the annotation id (the command
lines turn it into exit 2: tests/test_cli_errors.py). Before, ``{"size": [239, 320], "counts": [0, 100,
10000]}`` on a 478x640 image was accepted and trained as rectangles in the wrong place."""
from __future__ import annotations

import copy
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from gluon_rcnn.data.coco import COCODetection, DatasetError, rle_to_polygons
from gluon_rcnn.structures.masks import _rle_string_to_counts, rle_problem

H, W = 478, 640
BASE = {"images": [{"id": 7, "file_name": "a.jpg", "width": W, "height": H}],
        "categories": [{"id": 1, "name": "thing"}],
        "annotations": [{"id": 11, "image_id": 7, "category_id": 1, "bbox": [20, 20, 40, 20], "iscrowd": 0}]}


def _compressed(mask: np.ndarray) -> dict:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}


def _box_mask(h=H, w=W) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[20:40, 20:60] = 1
    return m


def _dataset(tmp_path, seg, iscrowd=0, bbox=None, **kw):
    data = copy.deepcopy(BASE)
    a = data["annotations"][0]
    a["segmentation"], a["iscrowd"] = seg, iscrowd
    if bbox is not None:
        a["bbox"] = bbox
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return COCODetection(str(path), str(tmp_path), **kw)


def _refused(tmp_path, seg, *words, **kw):
    with pytest.raises(DatasetError) as err:
        _dataset(tmp_path, seg, **kw)
    msg = str(err.value)
    for w in (str(tmp_path / "ann.json"), "image id=7", "a.jpg", "annotation id=11", *words):
        assert w in msg, msg
    return msg


def test_the_issue_rle_is_refused(tmp_path):
    msg = _refused(tmp_path, {"size": [239, 320], "counts": [0, 100, 10000]}, "[239, 320]", "[478, 640]")
    assert "size" in msg


def test_uncompressed_counts_must_cover_the_image(tmp_path):
    _refused(tmp_path, {"size": [H, W], "counts": [0, 100, 10000]}, "10100", str(H * W))
    _refused(tmp_path, {"size": [H, W], "counts": [H * W + 5, -5]}, "non-negative")


def test_compressed_rle_of_another_size_or_length_is_refused(tmp_path):
    small = _compressed(_box_mask(H // 2, W // 2))
    _refused(tmp_path, small, "[239, 320]")
    _refused(tmp_path, dict(small, size=[H, W]), str((H // 2) * (W // 2)), str(H * W))  # counts of the small mask
    _refused(tmp_path, {"size": [H, W], "counts": "not an rle!"}, "not a pycocotools RLE string")


def test_crowd_rle_is_checked_too(tmp_path):
    """Crowd masks never become targets, but COCOeval reads them: their size is checked as well;
    an empty crowd region is harmless and accepted."""
    _refused(tmp_path, {"size": [239, 320], "counts": [239 * 320]}, "[239, 320]", iscrowd=1)
    _dataset(tmp_path, {"size": [H, W], "counts": [H * W]}, iscrowd=1, with_masks=True)


def test_empty_masks_and_short_polygons_are_refused_as_mask_targets(tmp_path):
    _refused(tmp_path, _compressed(np.zeros((H, W))), "empty", with_masks=True)
    _refused(tmp_path, {"size": [H, W], "counts": [H * W]}, "empty", with_masks=True)
    _refused(tmp_path, [[20, 20, 60, 20]], "polygon 0 has 2 point(s)", "at least 3", with_masks=True)
    _refused(tmp_path, [[20, 20, 60, 20, 60, 40], [5, 5]], "polygon 1 has 1 point(s)", with_masks=True)
    _refused(tmp_path, [[20, 20, 40, 30, 60, 40]], "no area", with_masks=True)  # collinear
    _refused(tmp_path, [], "empty", with_masks=True)
    # a box-only dataset does not use the masks: only the RLE's size and length are its business
    assert len(_dataset(tmp_path, [[20, 20, 60, 20]])) == 1
    assert len(_dataset(tmp_path, {"size": [H, W], "counts": [H * W]})) == 1


def test_annotations_that_are_no_target_are_not_refused_for_their_mask(tmp_path):
    """COCO train2017 has such an annotation (id 918: a zero-height box, a 4-point polygon of no
    area): zero-area boxes are dropped before their masks matter, and crowds never become targets."""
    seg = [[296.65, 388.33, 296.65, 388.33, 297.68, 388.33, 297.68, 388.33]]
    ds = _dataset(tmp_path, seg, bbox=[296.65, 388.33, 1.03, 0.0], with_masks=True, train=False)
    assert len(ds._records[0]["boxes"]) == 0
    assert len(_dataset(tmp_path, [[20, 20, 60, 20]], iscrowd=1, with_masks=True, train=False)) == 1


def _uncompressed(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, from a run of zeros."""
    flat = np.asarray(mask, bool).flatten(order="F")
    edges = np.flatnonzero(np.diff(np.concatenate([[False], flat, [not flat[-1]]])))
    return {"size": list(mask.shape), "counts": np.diff(np.concatenate([[0], edges])).tolist()}


def test_valid_masks_still_become_exact_polygons(tmp_path):
    rect = [20, 20, 60, 20, 60, 40, 20, 40]  # pixels x 20..59, y 20..39 as one rectangle
    for seg in (_compressed(_box_mask()), _uncompressed(_box_mask())):
        assert rle_problem(seg, H, W, allow_empty=False) is None
        ds = _dataset(tmp_path, seg, with_masks=True)
        assert [p.tolist() for p in rle_to_polygons(ds._records[0]["segmentations"][0], H, W)] == [rect]
    ds = _dataset(tmp_path, [rect], with_masks=True)
    assert [p.tolist() for p in ds._records[0]["segmentations"][0]] == [rect]


def test_compressed_counts_are_read_as_pycocotools_reads_them():
    """The run lengths the check adds up are pycocotools' own: the ones it sums to the area."""
    rng = np.random.default_rng(0)
    for _ in range(20):
        h, w = rng.integers(1, 60, size=2)
        m = rng.random((h, w)) < rng.random()
        rle = _compressed(m)
        counts = _rle_string_to_counts(rle["counts"].encode())
        assert counts.sum() == h * w and counts[1::2].sum() == mask_utils.area(mask_utils.encode(
            np.asfortranarray(m.astype(np.uint8)))) == m.sum()
        assert rle_problem(rle, h, w) is None
