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
from gluon_rcnn.data.transforms import TrainTransform, hflip, polygons_to_edges, rotate, scale_geometry
from gluon_rcnn.preprocess import Preprocessor, scaled_size
from gluon_rcnn.rules.paste import MASK_PASTE
from gluon_rcnn.rules.rescale import RESCALE_BOXES
from gluon_rcnn.rules.resize import RESAMPLE, RESIZE

from conftest import COCO_ANN, COCO_IMAGES, COCO_SUBSET_IMAGES, need


def _preprocessor(*args) -> Preprocessor:
    """A Preprocessor with round-to-nearest sizes (what these tests check); the paste and box rules
    play no part here."""
    return Preprocessor(*args, resize=RESIZE["round"], resample=RESAMPLE["float_bilinear"],
                        mask_paste=MASK_PASTE["integer_box"],
                        rescale_boxes=RESCALE_BOXES["per_axis"])


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
    # exactly the pixels' extent: pixels x 5..24 cover [5, 25), rows 10..19 cover [10, 20); one rectangle
    assert len(polys) == 1
    np.testing.assert_array_equal(polys[0], [5, 10, 25, 10, 25, 20, 5, 20])
    assert polys[0].dtype == np.float32
    first = ds[0]["polygons"]
    assert len(first) == len(ds[0]["boxes"]) == 2
    np.testing.assert_allclose(first[0][0], [10, 5, 30, 5, 30, 15, 10, 15])
    # uncompressed RLE (as COCO stores crowd regions) decodes too: column-major, 100 px = columns 0-1
    # (40 rows each) + the top 20 rows of column 2
    crowd = rle_to_polygons({"size": [40, 60], "counts": [0, 100, 2300]}, 40, 60)
    assert len(crowd) == 2 and all(p.dtype == np.float32 for p in crowd)
    np.testing.assert_array_equal(crowd, [[0, 0, 3, 0, 3, 20, 0, 20], [0, 20, 2, 20, 2, 40, 0, 40]])
    assert rle_to_polygons({"size": [4, 5], "counts": [20]}, 4, 5) == []  # empty mask


def test_rle_to_polygons_4x4_square_is_not_eroded():
    from pycocotools import mask as mask_utils

    m = np.zeros((10, 10), np.uint8)
    m[3:7, 2:6] = 1
    (poly,) = rle_to_polygons(mask_utils.encode(np.asfortranarray(m)), 10, 10)
    assert abs(polygon_area(poly)) == 16.0  # not the 3x3 = 9 of contours through pixel centres
    np.testing.assert_array_equal(poly, [2, 3, 6, 3, 6, 7, 2, 7])


def polygon_area(poly: np.ndarray) -> float:
    x, y = poly.reshape(-1, 2).astype(np.float64).T
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def random_masks(seed: int = 0):
    """Masks that stress an outline: blobs, blobs with holes, diagonals, one-pixel lines, masks
    touching the borders, checkerboards, single pixels, random noise; square and not."""
    rng = np.random.default_rng(seed)
    out = []
    for k in range(60):
        h, w = (int(rng.integers(5, 40)), int(rng.integers(5, 40))) if k % 3 else (int(rng.integers(5, 40)),) * 2
        yy, xx = np.mgrid[0:h, 0:w]
        kind = k % 6
        if kind == 0:  # blob
            cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(1, max(h, w) / 2)
            m = (yy - cy) ** 2 + (xx - cx) ** 2 * rng.uniform(0.3, 3) < r * r
        elif kind == 1:  # ring: a blob with a hole
            cy, cx, r = h / 2, w / 2, min(h, w) / 2
            d = (yy - cy) ** 2 + (xx - cx) ** 2
            m = (d < r * r) & (d > (r * rng.uniform(0.2, 0.7)) ** 2)
        elif kind == 2:  # one-pixel diagonals and lines, touching the borders
            m = (xx == yy) | (xx + yy == min(h, w) - 1) | (yy == h - 1) | (xx == 0)
        elif kind == 3:  # checkerboard patches (only corners touch)
            m = ((xx + yy) % 2 == 0) & (xx < w // 2 + 1)
        elif kind == 4:  # noise
            m = rng.random((h, w)) < rng.uniform(0.1, 0.9)
        else:  # everything, or a single pixel
            m = np.ones((h, w), bool) if k % 12 == 5 else (yy == h // 3) & (xx == w - 1)
        out.append(m.astype(np.uint8))
    return out


def even_odd_at_pixel_centres(polys, h, w) -> np.ndarray:
    """Even-odd rasterisation of all the polygons' edges together at every pixel centre."""
    inside = np.zeros((h, w), bool)
    for p in polys:
        inside ^= rasterize(p, h, w, ss=1) > 0.5
    return inside


def test_rle_to_polygons_exact_on_random_masks():
    from pycocotools import mask as mask_utils

    from gluon_rcnn.data.transforms import polygons_to_edges
    from gluon_rcnn.structures.masks import rasterize_polygons_in_boxes

    n_square = 0
    for m in random_masks():
        h, w = m.shape
        rle = mask_utils.encode(np.asfortranarray(m))
        if m.sum() % 2:
            rle["counts"] = rle["counts"].decode("ascii")  # str counts, as in a JSON file
        polys = rle_to_polygons(rle, h, w)
        decoded = mask_utils.decode(rle).astype(bool)
        assert all(p.dtype == np.float32 and p.ndim == 1 and p.size >= 6 and p.size % 2 == 0 for p in polys)
        assert sum(abs(polygon_area(p)) for p in polys) == decoded.sum()
        np.testing.assert_array_equal(even_odd_at_pixel_centres(polys, h, w), decoded)
        if h == w and polys:  # the model's own rasteriser: an h x h grid over the whole image
            n_square += 1
            edges = torch.from_numpy(polygons_to_edges([polys]))
            got = rasterize_polygons_in_boxes(edges, torch.tensor([[0.0, 0.0, w, h]]), h)[0]
            np.testing.assert_array_equal(got.numpy().astype(bool), decoded)
    assert n_square >= 10


def _coco128_halves(tmp_path: Path):
    """Two annotation files over disjoint halves of the COCO subset (train sets; empty images filtered)."""
    raw = json.loads(COCO_ANN.read_text())
    paths = []
    for k in range(2):
        images = raw["images"][k::2]
        ids = {im["id"] for im in images}
        part = {"images": images, "annotations": [a for a in raw["annotations"] if a["image_id"] in ids],
                "categories": raw["categories"]}
        p = tmp_path / f"part{k}.json"
        p.write_text(json.dumps(part))
        paths.append(p)
    return paths


def test_concat_of_datasets_groups_by_aspect_without_decoding(tmp_path, monkeypatch):
    """--dataset a b: the trainer's TransformedDataset(_Concat) must not decode every image to group them."""
    need(COCO_ANN)
    from gluon_rcnn.data.loader import TransformedDataset, aspect_groups
    from gluon_rcnn.cli.train import _Concat

    from gluon_rcnn.cli.train import build_arg_parser, build_config, build_datasets

    halves, imgdir = _coco128_halves(tmp_path), need(COCO_IMAGES).resolve()
    a, b = (COCODetection(p, imgdir) for p in halves)
    for k, p in enumerate(halves):  # built as train_*.py --dataset NAME NAME builds it
        register_coco(f"coco128_half{k}_{tmp_path.name}", str(p), str(imgdir))
    args = build_arg_parser(mask=False).parse_args(
        ["--dataset", f"coco128_half0_{tmp_path.name}", f"coco128_half1_{tmp_path.name}", "--no-eval"])
    cat, val = build_datasets(args, build_config(args, mask=False))
    assert isinstance(cat, _Concat) and val is None
    expect = np.concatenate([a.aspect_ratios(), b.aspect_ratios()]) < 1
    infos = [a.image_info(i) for i in range(len(a))] + [b.image_info(i) for i in range(len(b))]
    assert expect.any() and not expect.all() and len(cat) == len(a) + len(b)

    def no_decoding(*args, **kwargs):
        raise AssertionError("an image was decoded")

    monkeypatch.setattr(COCODetection, "__getitem__", no_decoding)
    monkeypatch.setattr(COCODetection, "read_image", no_decoding)
    wrapped = TransformedDataset(cat, _TestTransform())
    np.testing.assert_array_equal(aspect_groups(wrapped), expect.astype(np.int64))
    np.testing.assert_array_equal(aspect_groups(cat), expect.astype(np.int64))
    assert [cat.image_info(i) for i in range(len(cat))] == infos
    assert cat.image_info(-1) == infos[-1] and cat.image_ids == a.image_ids + b.image_ids
    with pytest.raises(IndexError):
        cat.image_info(len(cat))
    assert wrapped.classes == a.classes


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
    need(COCO_ANN)
    raw = json.loads(COCO_ANN.read_text())
    ds = COCODetection(COCO_ANN, COCO_IMAGES, train=True)
    assert len(ds.classes) == 80 and ds.classes[0] == "person"
    assert ds.label_to_cat_id[1] == 1 and ds.cat_id_to_label[90] == 80
    with_boxes = {a["image_id"] for a in raw["annotations"] if not a["iscrowd"]}
    assert set(ds.image_ids) == with_boxes and len(ds) == COCO_SUBSET_IMAGES - 1  # image 508 has no annotation
    assert len(COCODetection(COCO_ANN, COCO_IMAGES, train=False)) == COCO_SUBSET_IMAGES
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


def _resized_item(item, size, mean=(0, 0, 0), std=(255, 255, 255)):
    """The item as the model sees it: pixels through the Preprocessor (the one resize), geometry
    through scale_geometry (the data side's half)."""
    img = torch.from_numpy(item["image"].transpose(2, 0, 1).copy())
    out = scale_geometry(item, size)
    x = _preprocessor(mean, std, 800, 1333, 1)([img], [size]).tensor[0]
    out["image"] = (x.permute(1, 2, 0) * 255).round().clamp(0, 255).to(torch.uint8).numpy()
    return out


def test_scale_geometry_and_preprocessor_agree():
    item = synthetic_item()
    out = _resized_item(item, scaled_size(64, 96, 128, 1000))
    assert out["image"].shape == (128, 192, 3) and out["size"] == (128, 192)
    np.testing.assert_allclose(out["boxes"], item["boxes"] * 2)
    check_consistent(out, tol=2.5)
    # max_size caps the long edge; the input is untouched
    capped = _resized_item(item, scaled_size(64, 96, 128, 150))
    assert capped["image"].shape == (100, 150, 3)
    assert item["image"].shape == (64, 96, 3)
    assert scaled_size(480, 640, 800, 1333) == (800, 1067)


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
        img, target, orig, size = tf(item)
        assert orig == (64, 96)
        # pixels stay at the decoded resolution (flipped/rotated only); the size is chosen here
        assert img.dtype == torch.uint8 and tuple(img.shape) == (3, 64, 96)
        shorts.add(min(size))
        assert 32 <= min(size) <= 48 and max(size) <= 100
        k = len(target["boxes"])
        assert target["boxes"].dtype == torch.float32 and target["labels"].dtype == torch.int64
        assert target["polygons"].shape[0] == k and target["polygons"].shape[2] == 4
        # every box is the bounds of its instance's (non-padding) edge endpoints, in resized pixels
        for b, edges in zip(target["boxes"], target["polygons"]):
            pts = edges[(edges != 0).any(1)][:, :2]
            bounds = torch.cat([pts.min(0).values, pts.max(0).values])
            lo = bounds.clone()
            lo[0::2] = lo[0::2].clamp(0, size[1])
            lo[1::2] = lo[1::2].clamp(0, size[0])
            torch.testing.assert_close(b, lo)
    assert len(shorts) > 1  # the short edge really is random
    img, target, orig, size = _TestTransform()(item)
    assert tuple(img.shape) == (3, 64, 96) and size is None and orig == (64, 96)  # the model sizes test images
    torch.testing.assert_close(target["boxes"], torch.from_numpy(item["boxes"]))
    no_poly = {k: v for k, v in item.items() if k != "polygons"}
    assert "polygons" not in _TestTransform()(no_poly)[1]


def test_preprocessor_resizes_normalises_and_pads():
    mean, std = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
    pre = _preprocessor(mean, std, 40, 100, 32)
    a = torch.full((3, 20, 30), 0.5)
    b = torch.rand(3, 25, 15)
    batch = pre([a, b])
    assert batch.original_sizes == [(20, 30), (25, 15)]
    assert batch.image_sizes == [scaled_size(20, 30, 40, 100), scaled_size(25, 15, 40, 100)]
    assert batch.image_sizes == [(40, 60), (67, 40)]
    assert tuple(batch.tensor.shape) == (2, 3, 96, 64)
    expect = (0.5 - torch.tensor(mean) / 255) / (torch.tensor(std) / 255)
    torch.testing.assert_close(batch.tensor[0, :, 10, 10], expect)
    assert (batch.tensor[0, :, 40:] == 0).all() and (batch.tensor[1, :, :, 40:] == 0).all()
    # uint8 input is the same image as float/255 (the loader's and the list path give equal pixels)
    img_u8 = (torch.rand(3, 24, 36) * 255).round().to(torch.uint8)
    assert torch.equal(pre([img_u8]).tensor, pre([img_u8.float() / 255]).tensor)
    # explicit sizes (the loader's random training sizes) are honoured
    assert pre([img_u8], [(30, 45)]).image_sizes == [(30, 45)]
    # bilinear with half-pixel centres, like cv2's resize (up to cv2's fixed-point uint8 rounding)
    t = _preprocessor([0, 0, 0], [255, 255, 255], 48, 1000, 1)([img_u8]).tensor[0] * 255
    ref = cv2.resize(img_u8.permute(1, 2, 0).numpy().astype(np.float32), (72, 48), interpolation=cv2.INTER_LINEAR)
    torch.testing.assert_close(t.permute(1, 2, 0), torch.from_numpy(ref), atol=1e-2, rtol=0)
    with pytest.raises(ValueError, match="uint8 0-255 or float"):
        pre([img_u8.long()])
    with pytest.raises(ValueError, match=r"RULES.RESIZE='ceil' is not one of \['floor', 'round'\]"):
        scaled_size(10, 10, 5, 10, "ceil")
