"""COCODetection (validation, category mapping, crowd/empty handling, decoding), the dataset
registry, and the item transforms of gluon_rcnn.data.transforms."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from gluon_rcnn.config import get_default_config
from gluon_rcnn.data.coco import COCODetection, DatasetError, get_dataset_paths, register_coco, rle_to_polygons
from gluon_rcnn.data.transforms import TestTransform as _TestTransform  # not a test class
from gluon_rcnn.data.transforms import (TrainTransform, hflip, polygons_to_edges, resize_short_edge,
                                        resize_to_batch, rotate, scaled_size)

COCO128 = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "coco128"
COCO128_ANN = COCO128 / "annotations" / "instances_train2017.json"


def need_coco128():
    if not COCO128_ANN.is_file():
        pytest.skip(f"coco128 not found at {COCO128.resolve()} (../shared/data/coco128 next to the repo)")


# --------------------------------------------------------------------------------------------
# a tiny synthetic COCO dataset written into tmp_path
# --------------------------------------------------------------------------------------------
def write_image(path: Path, h: int, w: int, rgb=(200, 30, 10)) -> None:
    img = np.zeros((h, w, 3), np.uint8)
    img[:] = rgb[::-1]  # cv2 writes BGR
    assert cv2.imwrite(str(path), img)


def make_dataset(tmp_path: Path) -> dict:
    """Three 40x60 images; categories 11 'zebra', 3 'cat', 7 'dog' (deliberately unsorted)."""
    imgdir = tmp_path / "images"
    imgdir.mkdir()
    images = []
    for i, name in enumerate(["a.png", "b.png", "c.png"]):
        write_image(imgdir / name, 40, 60)
        images.append({"id": 100 + i, "file_name": name, "width": 60, "height": 40})
    anns = [
        # image 100: two normal boxes, one crowd, one clipped, one zero-area after clipping
        {"id": 1, "image_id": 100, "category_id": 7, "bbox": [10, 5, 20, 10], "iscrowd": 0,
         "segmentation": [[10, 5, 30, 5, 30, 15, 10, 15]], "area": 200},
        {"id": 2, "image_id": 100, "category_id": 11, "bbox": [50, 30, 20, 20], "iscrowd": 0,
         "segmentation": [[50, 30, 60, 30, 60, 40, 50, 40]], "area": 100},
        {"id": 3, "image_id": 100, "category_id": 3, "bbox": [0, 0, 60, 40], "iscrowd": 1,
         "segmentation": {"size": [40, 60], "counts": [0, 2400]}, "area": 2400},
        {"id": 4, "image_id": 100, "category_id": 3, "bbox": [70, 10, 5, 5], "iscrowd": 0,
         "segmentation": [[70, 10, 75, 10, 75, 15]], "area": 25},
        # image 101: only a crowd region
        {"id": 5, "image_id": 101, "category_id": 3, "bbox": [0, 0, 10, 10], "iscrowd": 1,
         "segmentation": {"size": [40, 60], "counts": [0, 100, 2300]}, "area": 100},
        # image 102: no annotation at all
    ]
    cats = [{"id": 11, "name": "zebra"}, {"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}]
    ann_file = tmp_path / "ann.json"
    data = {"images": images, "annotations": anns, "categories": cats}
    ann_file.write_text(json.dumps(data))
    return {"ann": ann_file, "imgdir": imgdir, "data": data}


# --------------------------------------------------------------------------------------------
# dataset
# --------------------------------------------------------------------------------------------
def test_category_mapping_round_trip(tmp_path):
    d = make_dataset(tmp_path)
    ds = COCODetection(d["ann"], d["imgdir"])
    assert ds.classes == ("cat", "dog", "zebra")  # sorted by category id 3, 7, 11
    assert ds.cat_id_to_label == {3: 1, 7: 2, 11: 3}
    assert ds.label_to_cat_id == {1: 3, 2: 7, 3: 11}
    for cid, lab in ds.cat_id_to_label.items():
        assert ds.label_to_cat_id[lab] == cid
    item = ds[0]
    assert item["labels"].dtype == np.int64
    assert [ds.label_to_cat_id[int(l)] for l in item["labels"]] == [7, 11]


def test_class_names_select_and_order_labels(tmp_path):
    d = make_dataset(tmp_path)
    ds = COCODetection(d["ann"], d["imgdir"], class_names=["zebra", "dog"])
    assert ds.classes == ("zebra", "dog") and ds.label_to_cat_id == {1: 11, 2: 7}
    assert ds[0]["labels"].tolist() == [2, 1]
    with pytest.raises(DatasetError, match="horse"):
        COCODetection(d["ann"], d["imgdir"], class_names=["horse"])


def test_crowd_dropped_and_empty_images_filtered(tmp_path):
    d = make_dataset(tmp_path)
    train = COCODetection(d["ann"], d["imgdir"], train=True)
    assert train.image_ids == [100]  # 101 has only crowd, 102 nothing
    boxes = train[0]["boxes"]
    # ann 1 and 2 only: the crowd (3) is dropped, ann 4 lies outside the image (zero area once clipped)
    np.testing.assert_allclose(boxes, [[10, 5, 30, 15], [50, 30, 60, 40]])  # ann 2 clipped to 60x40
    assert boxes.dtype == np.float32

    test = COCODetection(d["ann"], d["imgdir"], train=False)
    assert test.image_ids == [100, 101, 102]
    assert test[1]["boxes"].shape == (0, 4) and test[1]["labels"].shape == (0,)
    assert COCODetection(d["ann"], d["imgdir"], train=True, filter_empty=False).image_ids == [100, 101, 102]
    # the crowd annotation is still in the COCO object used for evaluation
    assert any(a["iscrowd"] for a in test.coco.dataset["annotations"])


def test_image_decoded_as_rgb(tmp_path):
    d = make_dataset(tmp_path)
    img = COCODetection(d["ann"], d["imgdir"])[0]["image"]
    assert img.shape == (40, 60, 3) and img.dtype == np.uint8
    np.testing.assert_array_equal(img[0, 0], [200, 30, 10])


def test_corrupt_image_raises_naming_file(tmp_path):
    d = make_dataset(tmp_path)
    bad = d["imgdir"] / "a.png"
    bad.write_bytes(b"this is certainly not a PNG file\x00\x01\x02" * 10)
    ds = COCODetection(d["ann"], d["imgdir"])
    with pytest.raises(DatasetError, match=str(bad)):
        ds[0]
    (d["imgdir"] / "a.png").unlink()
    with pytest.raises(DatasetError, match="not found"):
        ds[0]
    write_image(d["imgdir"] / "a.png", 41, 60)  # not the 40x60 the annotation file says
    with pytest.raises(DatasetError, match="differs from the annotated 60x40"):
        ds[0]


def _mutated(tmp_path, fn):
    d = make_dataset(tmp_path)
    fn(d["data"])
    d["ann"].write_text(json.dumps(d["data"]))
    return d


@pytest.mark.parametrize("mutate, expect", [
    (lambda j: j.pop("images"), "'images'"),
    (lambda j: j.pop("annotations"), "'annotations'"),
    (lambda j: j.pop("categories"), "'categories'"),
    (lambda j: j["annotations"][1].update(bbox=[1, 2, 3]), "id=2"),
    (lambda j: j["annotations"][1].update(bbox=[1, 2, -3, 4]), "id=2"),
    (lambda j: j["annotations"][0].update(bbox=["1", 2, 3, 4]), "id=1"),
    (lambda j: j["annotations"][0].update(bbox=[1, 2, float("nan"), 4]), "id=1"),
    (lambda j: j["annotations"][3].pop("bbox"), "id=4"),
    (lambda j: j["annotations"][4].update(image_id=999), "id=5"),
    (lambda j: j["annotations"][0].update(category_id=42), "id=1"),
    (lambda j: j["annotations"].append(dict(j["annotations"][0])), "id=1"),  # duplicate id
])
def test_malformed_annotations_raise_naming_file_and_id(tmp_path, mutate, expect):
    d = _mutated(tmp_path, mutate)
    with pytest.raises(DatasetError) as e:
        COCODetection(d["ann"], d["imgdir"])
    assert str(d["ann"]) in str(e.value)
    assert expect in str(e.value)


def test_not_json_and_missing_file(tmp_path):
    p = tmp_path / "x.json"
    p.write_text("{not json")
    with pytest.raises(DatasetError, match="x.json"):
        COCODetection(p, tmp_path)
    with pytest.raises(DatasetError, match="nope.json"):
        COCODetection(tmp_path / "nope.json", tmp_path)


def test_polygons_and_rle_to_polygons(tmp_path):
    from pycocotools import mask as mask_utils

    d = make_dataset(tmp_path)
    m = np.zeros((40, 60), np.uint8)
    m[10:20, 5:25] = 1  # pixels x 5..24, y 10..19
    rle = mask_utils.encode(np.asfortranarray(m))
    rle["counts"] = rle["counts"].decode("ascii")
    d["data"]["annotations"].append({"id": 9, "image_id": 102, "category_id": 3, "bbox": [5, 10, 20, 10],
                                     "iscrowd": 0, "segmentation": rle, "area": 200})
    d["ann"].write_text(json.dumps(d["data"]))
    ds = COCODetection(d["ann"], d["imgdir"], with_masks=True)
    item = ds[ds.image_ids.index(102)]
    (polys,) = item["polygons"]
    pts = np.concatenate([p.reshape(-1, 2) for p in polys])
    # boundary pixel centres: x 5.5..24.5, y 10.5..19.5
    np.testing.assert_allclose(pts.min(0), [5.5, 10.5])
    np.testing.assert_allclose(pts.max(0), [24.5, 19.5])
    first = ds[0]["polygons"]
    assert len(first) == len(ds[0]["boxes"]) == 2
    np.testing.assert_allclose(first[0][0], [10, 5, 30, 5, 30, 15, 10, 15])
    # uncompressed RLE (as COCO stores crowd regions) decodes too
    crowd = rle_to_polygons({"size": [40, 60], "counts": [0, 100, 2300]}, 40, 60)
    assert len(crowd) == 1 and crowd[0].dtype == np.float32


def test_with_masks_needs_segmentation(tmp_path):
    d = _mutated(tmp_path, lambda j: j["annotations"][1].pop("segmentation"))
    COCODetection(d["ann"], d["imgdir"])  # fine without masks
    with pytest.raises(DatasetError, match="id=2"):
        COCODetection(d["ann"], d["imgdir"], with_masks=True)


def test_registry(tmp_path):
    ann, img = get_dataset_paths("coco_minival2014", "/data/coco")
    assert ann == "/data/coco/annotations/instances_minival2014.json" and img == "/data/coco/val2014"
    assert get_dataset_paths("coco_valminusminival2014", "/d")[1] == "/d/val2014"
    assert get_dataset_paths("coco_train2017", "/d") == ("/d/annotations/instances_train2017.json", "/d/train2017")
    with pytest.raises(KeyError, match="coco_val2017"):  # the message lists what is known
        get_dataset_paths("no_such_set", "/d")
    d = make_dataset(tmp_path)
    register_coco("tiny_test_set", str(d["ann"]), str(d["imgdir"]))
    register_coco("tiny_test_set", str(d["ann"]), str(d["imgdir"]))  # same paths: fine
    with pytest.raises(ValueError, match="already registered"):
        register_coco("tiny_test_set", "other.json", "x")
    assert COCODetection.from_name("tiny_test_set", "/ignored/for/absolute").image_ids == [100]


def test_coco128_real_data():
    need_coco128()
    raw = json.loads(COCO128_ANN.read_text())
    ds = COCODetection(COCO128_ANN, COCO128 / "train2017", train=True)
    assert len(ds.classes) == 80 and ds.classes[0] == "person"
    assert ds.label_to_cat_id[1] == 1 and ds.cat_id_to_label[90] == 80
    with_boxes = {a["image_id"] for a in raw["annotations"] if not a["iscrowd"]}
    assert set(ds.image_ids) == with_boxes and len(ds) == 126
    assert len(COCODetection(COCO128_ANN, COCO128 / "train2017", train=False)) == 128
    n_boxes = sum(len(r["boxes"]) for r in ds._records)
    assert n_boxes == sum(1 for a in raw["annotations"] if not a["iscrowd"])
    sizes = {im["id"]: (im["height"], im["width"]) for im in raw["images"]}
    ar = ds.aspect_ratios()
    assert ar.shape == (len(ds),)
    np.testing.assert_allclose(ar, [sizes[i][1] / sizes[i][0] for i in ds.image_ids])
    item = ds[3]
    assert item["image"].shape == sizes[item["image_id"]] + (3,)
    assert (item["boxes"][:, 2:] > item["boxes"][:, :2]).all()


# --------------------------------------------------------------------------------------------
# transforms
# --------------------------------------------------------------------------------------------
QUAD = np.array([20, 10, 50, 18, 44, 40, 14, 30], np.float32)
TRI = np.array([60, 44, 74, 50, 62, 56], np.float32)


def rasterize(poly: np.ndarray, h: int, w: int, ss: int = 4) -> np.ndarray:
    """Coverage (0-1) of each pixel by a polygon, from ss x ss samples per pixel (even-odd rule).

    Written independently of OpenCV's drawing conventions: pixel (i, j) covers [j, j+1) x [i, i+1).
    """
    v = poly.reshape(-1, 2).astype(np.float64)
    ys, xs = np.mgrid[0:h * ss, 0:w * ss]
    px, py = (xs + 0.5) / ss, (ys + 0.5) / ss
    inside = np.zeros(px.shape, bool)
    for (xa, ya), (xb, yb) in zip(v, np.roll(v, -1, axis=0)):
        crosses = (ya > py) != (yb > py)
        with np.errstate(divide="ignore", invalid="ignore"):
            xc = xa + (py - ya) * (xb - xa) / (yb - ya)
        inside ^= crosses & (px < xc)
    return inside.reshape(h, ss, w, ss).mean(axis=(1, 3))


def synthetic_item(h=64, w=96):
    """An image with two white shapes drawn from their polygons; boxes = polygon bounds."""
    cover = np.zeros((h, w))
    polys = [[QUAD.copy()], [TRI.copy()]]
    boxes = []
    for inst in polys:
        cover = np.maximum(cover, rasterize(inst[0], h, w))
        q = np.concatenate([p.reshape(-1, 2) for p in inst])
        boxes.append([*q.min(0), *q.max(0)])
    img = np.repeat((cover * 255).round().astype(np.uint8)[..., None], 3, axis=2)
    return {"image": img, "image_id": 1, "boxes": np.array(boxes, np.float32),
            "labels": np.array([1, 2], np.int64), "polygons": polys}


def poly_bounds(item):
    out = []
    for inst in item["polygons"]:
        q = np.concatenate([p.reshape(-1, 2) for p in inst])
        out.append([*q.min(0), *q.max(0)])
    return np.array(out, np.float32)


def drawn_bounds(img, box, margin=3):
    """Bounds (x1, y1, x2, y2) of the white pixels near ``box`` in continuous pixel coordinates."""
    x1, y1, x2, y2 = [int(v) for v in (box[0] - margin, box[1] - margin, box[2] + margin, box[3] + margin)]
    x1, y1 = max(x1, 0), max(y1, 0)
    ys, xs = np.nonzero(img[y1:y2, x1:x2, 0] > 127)
    return np.array([xs.min() + x1, ys.min() + y1, xs.max() + x1 + 1, ys.max() + y1 + 1], np.float32)


def drawn_centroid(img, box, margin=3):
    """Intensity-weighted centre of the pixels near ``box`` (pixel i has its centre at i + 0.5)."""
    x1, y1 = max(int(box[0] - margin), 0), max(int(box[1] - margin), 0)
    x2, y2 = int(box[2] + margin), int(box[3] + margin)
    wgt = img[y1:y2, x1:x2, 0].astype(np.float64)
    ys, xs = np.mgrid[y1:y1 + wgt.shape[0], x1:x1 + wgt.shape[1]] + 0.5
    return np.array([(xs * wgt).sum() / wgt.sum(), (ys * wgt).sum() / wgt.sum()])


def polygon_centroid(inst):
    m = cv2.moments(inst[0].reshape(-1, 1, 2).astype(np.float32))
    return np.array([m["m10"] / m["m00"], m["m01"] / m["m00"]])


def check_consistent(item, tol=1.6, centroid_tol=0.2):
    """Boxes are the polygons' bounds, and the polygons sit where the image shows the shapes."""
    np.testing.assert_allclose(item["boxes"], poly_bounds(item), atol=1e-3)
    for box, inst in zip(item["boxes"], item["polygons"]):
        np.testing.assert_allclose(drawn_bounds(item["image"], box), box, atol=tol)
        np.testing.assert_allclose(drawn_centroid(item["image"], box), polygon_centroid(inst), atol=centroid_tol)


def test_synthetic_item_is_consistent_to_start_with():
    check_consistent(synthetic_item())


def test_resize_short_edge_scales_boxes_and_polygons():
    item = synthetic_item()
    out = resize_short_edge(item, 128, 1000)
    assert out["image"].shape == (128, 192, 3)
    assert out["scale"] == (2.0, 2.0)
    np.testing.assert_allclose(out["boxes"], item["boxes"] * 2)
    check_consistent(out, tol=2.5)
    # max_size caps the long edge; the input is untouched
    capped = resize_short_edge(item, 128, 150)
    assert capped["image"].shape == (100, 150, 3)
    assert item["image"].shape == (64, 96, 3)
    assert scaled_size(480, 640, 800, 1333) == (800, 1067, 800 / 480)


def test_hflip_mirrors_boxes_and_polygons():
    item = synthetic_item()
    out = hflip(item)
    np.testing.assert_allclose(out["boxes"][0], [96 - 50, 10, 96 - 14, 40])
    check_consistent(out)
    back = hflip(out)
    np.testing.assert_allclose(back["boxes"], item["boxes"])
    np.testing.assert_array_equal(back["image"], item["image"])


@pytest.mark.parametrize("angle", [30.0, -17.0, 90.0])
def test_rotate_keeps_boxes_consistent_with_polygons_and_pixels(angle):
    item = synthetic_item(h=96, w=96)
    out = rotate(item, angle)
    assert out["image"].shape == item["image"].shape
    assert len(out["boxes"]) == len(out["labels"]) == len(out["polygons"]) == 2
    check_consistent(out, tol=2.0)


def test_rotate_90_exact_and_without_polygons():
    item = synthetic_item(h=96, w=96)
    out = rotate(item, 90)  # counter-clockwise as displayed: (x, y) -> (y, W - x) on a square image
    x1, y1, x2, y2 = item["boxes"][0]
    np.testing.assert_allclose(out["boxes"][0], [y1, 96 - x2, y2, 96 - x1], atol=1e-4)
    no_poly = {k: v for k, v in item.items() if k != "polygons"}
    r = rotate(no_poly, 30)
    with_p = rotate(item, 30)
    # the rotated corners' box contains the rotated polygons' box
    assert (r["boxes"][:, :2] <= with_p["boxes"][:, :2] + 1e-4).all()
    assert (r["boxes"][:, 2:] >= with_p["boxes"][:, 2:] - 1e-4).all()


def test_rotate_drops_instances_leaving_the_image():
    item = synthetic_item(h=64, w=96)
    item["boxes"] = np.vstack([item["boxes"], [[0, 0, 4, 4]]]).astype(np.float32)
    item["labels"] = np.array([1, 2, 3], np.int64)
    item["polygons"].append([np.array([0, 0, 4, 0, 4, 4, 0, 4], np.float32)])
    out = rotate(item, 45)  # the corner square swings out of the frame
    assert out["labels"].tolist() == [1, 2]
    assert len(out["polygons"]) == 2


def test_polygons_to_edges_closes_and_pads():
    square = np.array([0, 0, 4, 0, 4, 4, 0, 4], np.float32)
    tri = np.array([10, 10, 12, 10, 11, 13], np.float32)
    e = polygons_to_edges([[square, tri], [tri]])
    assert e.shape == (2, 7, 4) and e.dtype == np.float32
    np.testing.assert_array_equal(e[0, 3], [0, 4, 0, 0])  # the square's closing edge
    np.testing.assert_array_equal(e[0, 6], [11, 13, 10, 10])  # the triangle's closing edge
    np.testing.assert_array_equal(e[1, :3], [[10, 10, 12, 10], [12, 10, 11, 13], [11, 13, 10, 10]])
    assert (e[1, 3:] == 0).all()
    assert polygons_to_edges([]).shape == (0, 1, 4)


def test_train_and_test_transforms():
    cfg = get_default_config()
    cfg.PREPROC.TRAIN_SHORT_EDGE_SIZE = [32, 48]
    cfg.PREPROC.MAX_SIZE = 100
    cfg.PREPROC.ROTATE_PROB = 1.0
    cfg.PREPROC.ROTATE_MAX = 20.0
    item = synthetic_item()
    tf = TrainTransform(cfg, rng=np.random.default_rng(0))
    shorts = set()
    for _ in range(6):
        img, target, orig = tf(item)
        assert orig == (64, 96)
        assert img.dtype == torch.uint8 and img.shape[0] == 3
        shorts.add(min(img.shape[1:]))
        assert 32 <= min(img.shape[1:]) <= 48 and max(img.shape[1:]) <= 100
        k = len(target["boxes"])
        assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
        assert target["polygons"].shape[0] == k and target["polygons"].shape[2] == 4
        # every box is the bounds of its instance's (non-padding) edge endpoints
        for b, edges in zip(target["boxes"], target["polygons"]):
            pts = edges[(edges != 0).any(1)][:, :2]
            bounds = torch.cat([pts.min(0).values, pts.max(0).values])
            lo = bounds.clone()
            lo[0::2] = lo[0::2].clamp(0, img.shape[2])
            lo[1::2] = lo[1::2].clamp(0, img.shape[1])
            torch.testing.assert_close(b, lo)
    assert len(shorts) > 1  # the short edge really is random
    img, target, orig = _TestTransform(cfg)(item)
    assert tuple(img.shape) == (3, 67, 100)  # short edge 800 capped by MAX_SIZE=100: scale 100/96
    torch.testing.assert_close(target["boxes"], torch.from_numpy(item["boxes"]) * torch.tensor([100 / 96, 67 / 64] * 2))
    no_poly = {k: v for k, v in item.items() if k != "polygons"}
    assert "polygons" not in _TestTransform(cfg)(no_poly)[1]


def test_resize_to_batch():
    mean, std = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
    a = torch.full((3, 20, 30), 0.5)
    b = torch.rand(3, 25, 15)
    batch = resize_to_batch([a, b], 40, 100, mean, std, 32)
    assert batch.normalized and batch.original_sizes == [(20, 30), (25, 15)]
    assert batch.image_sizes == [scaled_size(20, 30, 40, 100)[:2], scaled_size(25, 15, 40, 100)[:2]]
    assert batch.image_sizes == [(40, 60), (67, 40)]
    assert tuple(batch.tensor.shape) == (2, 3, 96, 64)
    expect = (127.5 - torch.tensor(mean)) / torch.tensor(std)
    torch.testing.assert_close(batch.tensor[0, :, 10, 10], expect)
    assert (batch.tensor[0, :, 40:] == 0).all() and (batch.tensor[1, :, :, 40:] == 0).all()
    # same result as cv2's bilinear resize used on dataset items (both are half-pixel-centre bilinear)
    img_u8 = (torch.rand(3, 24, 36) * 255).round().to(torch.uint8)
    t = resize_to_batch([img_u8.float() / 255], 48, 1000, [0, 0, 0], [1, 1, 1], 1).tensor[0]
    ref = cv2.resize(img_u8.permute(1, 2, 0).numpy().astype(np.float32), (72, 48), interpolation=cv2.INTER_LINEAR)
    torch.testing.assert_close(t.permute(1, 2, 0), torch.from_numpy(ref), atol=1e-2, rtol=0)
    with pytest.raises(ValueError, match="float"):
        resize_to_batch([img_u8], 48, 1000, mean, std, 32)
