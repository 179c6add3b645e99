"""COCO-format detection datasets and the registry of named datasets.

:class:`COCODetection` reads any COCO "instances" JSON plus its image folder. It validates the
JSON up front (a malformed file fails at construction with a :class:`DatasetError` naming the file
and the offending entry, not deep inside a training run), maps category ids to the contiguous
labels ``1..C`` the model uses, and yields one dict per image::

    {"image":    uint8 (H, W, 3) RGB numpy array, as decoded from disk,
     "image_id": int, the COCO image id,
     "boxes":    float32 (K, 4) x1,y1,x2,y2 in absolute pixels of the image, clipped to it,
     "labels":   int64 (K,) in 1..C,
     "polygons": list (K) of list of float32 (2n,) arrays [x0,y0,x1,y1,...] in pixels
                 (only when ``with_masks=True``)}

Crowd annotations (``iscrowd=1``) never reach the targets. Non-crowd RLE segmentations are turned
into polygons that cover exactly the mask's pixels (:func:`rle_to_polygons`) so that the model only
ever sees polygons.

Images are decoded by :func:`gluon_rcnn.data.image_io.read_image`: a missing, empty, truncated,
corrupt or unsupported image file raises :class:`DatasetError` naming the file and the image id.
With ``skip_bad_images=True`` the item of such an image is instead a *bad-image marker*, and a
warning naming the file and image id is logged (each time the item is read)::

    {"image":     None,
     "image_id":  int, the COCO image id,
     "bad_image": str, the DatasetError message (names the file, the image id, what is wrong)}

A marker has no ``boxes``/``labels``/``polygons``. Whoever consumes the items (item transforms,
the collate function / data loader, the trainer, the evaluator) must recognise it
(``item["image"] is None and "bad_image" in item``), pass it through untransformed, leave it out
of the batch and report how many were skipped. With the default ``skip_bad_images=False`` no
marker is ever produced: a bad image raises.

The registry maps names such as ``coco_train2017`` to ``(annotation_file, image_dir)`` relative to
a base directory laid out as tensorpack expects::

    BASEDIR/annotations/instances_train2017.json   BASEDIR/train2017/*.jpg
    BASEDIR/annotations/instances_minival2014.json BASEDIR/val2014/*.jpg   (minival lives in val2014)
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
from typing import Any, Sequence

import numpy as np

from ..structures.masks import polygons_problem, rle_problem
from .image_io import DatasetError
from .image_io import read_image as _decode_image

__all__ = ["DatasetError", "COCODetection", "register_coco", "get_dataset_paths", "registered_datasets",
           "rle_to_polygons"]

logger = logging.getLogger(__name__)


# DatasetError lives with the image decoder (image_io) and is re-exported here, its historical home


# --------------------------------------------------------------------------------------------
# registry
# --------------------------------------------------------------------------------------------
_REGISTRY: dict[str, tuple[str, str]] = {}


def register_coco(name: str, annotation_file: str, image_dir: str) -> None:
    """Register a COCO-format dataset under ``name``.

    Paths may be absolute, or relative to the ``basedir`` later given to :func:`get_dataset_paths`.
    Registering an existing name again with different paths is an error (a silent overwrite
    would make ``DATA.TRAIN=['name']`` mean different things in different processes).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"dataset name must be a non-empty string, got {name!r}")
    new = (str(annotation_file), str(image_dir))
    old = _REGISTRY.get(name)
    if old is not None and old != new:
        raise ValueError(f"dataset {name!r} is already registered as {old}; cannot re-register it as {new}")
    _REGISTRY[name] = new


def registered_datasets() -> list[str]:
    """Names accepted by :func:`get_dataset_paths`, sorted."""
    return sorted(_REGISTRY)


def get_dataset_paths(name: str, basedir: str = "") -> tuple[str, str]:
    """``(annotation_file, image_dir)`` of a registered dataset, relative paths joined to ``basedir``."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown dataset {name!r}; registered: {registered_datasets()} "
                       "(add yours with gluon_rcnn.data.coco.register_coco)")
    ann, img = _REGISTRY[name]
    base = os.path.expanduser(str(basedir)) if basedir else ""
    return os.path.join(base, ann), os.path.join(base, img)


for _split, _imgdir in [("train2014", "train2014"), ("val2014", "val2014"), ("minival2014", "val2014"),
                        ("valminusminival2014", "val2014"), ("train2017", "train2017"), ("val2017", "val2017")]:
    register_coco(f"coco_{_split}", os.path.join("annotations", f"instances_{_split}.json"), _imgdir)


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------
def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _valid_polygon_list(seg: Any) -> bool:
    return isinstance(seg, list) and all(
        isinstance(p, list) and len(p) % 2 == 0 and all(_is_number(v) for v in p) for p in seg)


def _valid_rle(seg: Any) -> bool:
    return (isinstance(seg, dict) and "counts" in seg and "size" in seg and isinstance(seg["size"], list)
            and len(seg["size"]) == 2 and isinstance(seg["counts"], (str, bytes, list)))


def rle_to_polygons(rle: dict, height: int, width: int) -> list[np.ndarray]:
    """An RLE mask as polygons that cover exactly its pixels.

    rle: a COCO RLE dict (compressed string ``counts`` or uncompressed list ``counts``) of an
        ``height x width`` mask.
    Returns a list of float32 (8,) arrays ``[x0, y0, x1, y0, x1, y1, x0, y1]``: disjoint axis-aligned
    rectangles in continuous pixel coordinates (pixel ``(i, j)`` covers ``[j, j+1) x [i, i+1)``), whose
    union is the mask. Each is a maximal horizontal run of mask pixels, stacked over the consecutive
    rows that have exactly that run. Holes and diagonal or one-pixel-thin parts are therefore exact:
    rasterising the polygons at pixel centres (even-odd or non-zero rule alike, as
    ``structures.masks.rasterize_polygons_in_boxes`` does) gives back the mask, and their total
    area is the pixel count. Sorted by top edge, then left edge; an empty mask gives ``[]``.
    """
    from pycocotools import mask as mask_utils

    if isinstance(rle.get("counts"), list):  # uncompressed RLE
        rle = mask_utils.frPyObjects(rle, height, width)
    mask = mask_utils.decode(rle)
    if mask.ndim == 3:
        mask = mask[..., 0]
    return _mask_to_rectangles(mask)


def _mask_to_rectangles(mask: np.ndarray) -> list[np.ndarray]:
    """Exact rectangle decomposition of a 2-D mask (see :func:`rle_to_polygons`)."""
    mask = np.asarray(mask) != 0
    rows_any = mask.any(axis=1)
    if not rows_any.any():
        return []
    r0 = int(np.argmax(rows_any))
    r1 = len(rows_any) - int(np.argmax(rows_any[::-1]))
    cols_any = mask[r0:r1].any(axis=0)
    c0 = int(np.argmax(cols_any))
    c1 = len(cols_any) - int(np.argmax(cols_any[::-1]))
    sub = np.zeros((r1 - r0, c1 - c0 + 2), np.int8)
    sub[:, 1:-1] = mask[r0:r1, c0:c1]
    d = np.diff(sub, axis=1)
    run_row, run_x0 = np.nonzero(d == 1)  # row-major order: the k-th start pairs with the k-th end
    _, run_x1 = np.nonzero(d == -1)
    # merge each run with the identical run of the row above: sort by (x0, x1, row)
    order = np.lexsort((run_row, run_x1, run_x0))
    row, x0, x1 = run_row[order], run_x0[order], run_x1[order]
    new = np.ones(len(row), bool)
    new[1:] = (x0[1:] != x0[:-1]) | (x1[1:] != x1[:-1]) | (row[1:] != row[:-1] + 1)
    first = np.flatnonzero(new)
    last = np.append(first[1:], len(row)) - 1
    X0 = (x0[first] + c0).astype(np.float32)
    X1 = (x1[first] + c0).astype(np.float32)
    Y0 = (row[first] + r0).astype(np.float32)
    Y1 = (row[last] + r0 + 1).astype(np.float32)
    rects = np.stack([X0, Y0, X1, Y0, X1, Y1, X0, Y1], axis=1)
    rects = rects[np.lexsort((X0, Y0))]
    return [r.copy() for r in rects]


def _of_image(where: str, im: dict) -> str:
    """``annotation id=.. (annotations[i])`` + `` of image id=.. (file_name)``: where a mask error is."""
    return f"{where} of image id={im['id']!r} ({im['file_name']})"


# --------------------------------------------------------------------------------------------
# the dataset
# --------------------------------------------------------------------------------------------
class COCODetection:
    """A COCO-format instances dataset (see the module docstring for the item layout).

    Args:
        annotation_file: path of a COCO instances JSON (``images``, ``annotations``, ``categories``).
        image_dir: folder holding the ``file_name`` of every image.
        train: training mode; with ``filter_empty`` images without any usable box are left out.
        filter_empty: see ``train``. Ignored when ``train=False`` (evaluation sees every image).
        with_masks: also return ``polygons`` per instance (needed by Mask R-CNN).
        class_names: optional category names that define the labels: label ``i+1`` is
            ``class_names[i]``; annotations of other categories are ignored. Use it to line a
            dataset up with a model's ``classes``. Default: every category, labels ``1..C`` in
            increasing category id order.
        skip_bad_images: when an image cannot be decoded (missing, empty, truncated, corrupt,
            unsupported format, size unlike the annotated one), ``dataset[i]`` logs a warning naming
            the file and image id and returns a bad-image marker (see the module docstring)
            instead of raising :class:`DatasetError`. Default False: raise.

    Attributes:
        coco: the ``pycocotools.coco.COCO`` object of the whole file (for evaluation).
        classes: tuple of the C class names, ``classes[i]`` names label ``i+1``.
        cat_id_to_label: dict COCO category id -> label in 1..C.
        label_to_cat_id: dict label in 1..C -> COCO category id.
        image_ids: list of the image ids of this dataset's items, in item order.
    """

    def __init__(self, annotation_file: str, image_dir: str, *, train: bool = True, filter_empty: bool = True,
                 with_masks: bool = False, class_names: Sequence[str] | None = None,
                 skip_bad_images: bool = False):
        self.annotation_file = str(annotation_file)
        self.image_dir = str(image_dir)
        self.train = bool(train)
        self.filter_empty = bool(filter_empty)
        self.with_masks = bool(with_masks)
        self.skip_bad_images = bool(skip_bad_images)

        data = self._load_json(self.annotation_file)
        images, cats = self._validate(data)
        self._setup_categories(cats, class_names)
        self._build_records(data, images)
        self.coco = self._make_coco(data)

    # -- construction ----------------------------------------------------------------------
    def _err(self, msg: str) -> DatasetError:
        return DatasetError(f"{self.annotation_file}: {msg}")

    def _load_json(self, path: str) -> dict:
        if not os.path.isfile(path):
            raise DatasetError(f"{path}: annotation file not found")
        try:
            with open(path) as f:
                data = json.load(f)
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise DatasetError(f"{path}: not a readable JSON file: {e}") from None
        if not isinstance(data, dict):
            raise DatasetError(f"{path}: the top level must be a JSON object with 'images', 'annotations' "
                               f"and 'categories', got {type(data).__name__}")
        return data

    def _validate(self, data: dict) -> tuple[dict, dict]:
        """Check the structure of the JSON; return ``{image_id: image}``, ``{cat_id: category}``."""
        for key in ("images", "annotations", "categories"):
            if key not in data:
                raise self._err(f"missing the top-level key {key!r} (a COCO instances file needs "
                                "'images', 'annotations' and 'categories')")
            if not isinstance(data[key], list):
                raise self._err(f"{key!r} must be a list, got {type(data[key]).__name__}")

        images: dict[int, dict] = {}
        for i, im in enumerate(data["images"]):
            where = f"images[{i}]" + (f" (id={im.get('id')!r})" if isinstance(im, dict) else "")
            if not isinstance(im, dict):
                raise self._err(f"{where} is not an object")
            for k in ("id", "file_name", "width", "height"):
                if k not in im:
                    raise self._err(f"{where} has no {k!r}")
            if not _is_int(im["id"]):
                raise self._err(f"{where}: id must be an integer")
            if not isinstance(im["file_name"], str) or not im["file_name"]:
                raise self._err(f"{where}: file_name must be a non-empty string")
            if not (_is_int(im["width"]) and _is_int(im["height"]) and im["width"] > 0 and im["height"] > 0):
                raise self._err(f"{where}: width/height must be positive integers, got "
                                f"{im['width']!r}x{im['height']!r}")
            if im["id"] in images:
                raise self._err(f"{where}: duplicate image id {im['id']}")
            images[im["id"]] = im

        cats: dict[int, dict] = {}
        for i, c in enumerate(data["categories"]):
            if not isinstance(c, dict) or not _is_int(c.get("id")) or not isinstance(c.get("name"), str):
                raise self._err(f"categories[{i}] must be an object with an integer 'id' and a string 'name', "
                                f"got {c!r}")
            if c["id"] in cats:
                raise self._err(f"categories[{i}]: duplicate category id {c['id']}")
            cats[c["id"]] = c
        if not cats:
            raise self._err("'categories' is empty")

        ann_ids = set()
        for i, a in enumerate(data["annotations"]):
            if not isinstance(a, dict):
                raise self._err(f"annotations[{i}] is not an object")
            if "id" not in a:
                raise self._err(f"annotations[{i}] has no 'id'")
            where = f"annotation id={a['id']!r} (annotations[{i}])"
            if a["id"] in ann_ids:
                raise self._err(f"{where}: duplicate annotation id")
            ann_ids.add(a["id"])
            for k in ("image_id", "category_id", "bbox"):
                if k not in a:
                    raise self._err(f"{where} has no {k!r}")
            if a["image_id"] not in images:
                raise self._err(f"{where}: unknown image_id {a['image_id']!r} (not in 'images')")
            if a["category_id"] not in cats:
                raise self._err(f"{where}: unknown category_id {a['category_id']!r} (not in 'categories')")
            bbox = a["bbox"]
            if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
                raise self._err(f"{where}: bbox must be 4 finite numbers [x, y, w, h], got {bbox!r}")
            if bbox[2] < 0 or bbox[3] < 0:
                raise self._err(f"{where}: bbox {bbox!r} has a negative width or height")
            crowd = a.get("iscrowd", 0)
            if crowd not in (0, 1):
                raise self._err(f"{where}: iscrowd must be 0 or 1, got {crowd!r}")
            if "segmentation" in a:
                seg = a["segmentation"]
                if not (_valid_polygon_list(seg) or _valid_rle(seg)):
                    raise self._err(f"{where}: segmentation must be a list of polygons (lists of an even "
                                    "number of numbers) or an RLE dict with 'counts' and 'size'")
                if isinstance(seg, dict):  # every RLE, crowds too (COCOeval reads them): the image's size
                    im = images[a["image_id"]]
                    problem = rle_problem(seg, im["height"], im["width"])
                    if problem:
                        raise self._err(f"{_of_image(where, im)}: {problem}")
            elif self.with_masks and not crowd:
                raise self._err(f"{where} has no 'segmentation' but with_masks=True")
            # pycocotools' COCOeval needs these; fill them in the (private) copy we hold
            a.setdefault("iscrowd", 0)
            if not _is_number(a.get("area")):
                a["area"] = float(bbox[2] * bbox[3])
        return images, cats

    def _setup_categories(self, cats: dict, class_names: Sequence[str] | None) -> None:
        if class_names is None:
            cat_ids = sorted(cats)
        else:
            if isinstance(class_names, str) or not all(isinstance(n, str) for n in class_names):
                raise ValueError(f"class_names must be a sequence of strings, got {class_names!r}")
            by_name: dict[str, int] = {}
            for cid in sorted(cats):
                by_name.setdefault(cats[cid]["name"], cid)
            missing = [n for n in class_names if n not in by_name]
            if missing:
                raise self._err(f"class_names {missing} are not categories of this file "
                                f"(it has {sorted(by_name)})")
            if len(set(class_names)) != len(class_names):
                raise ValueError(f"class_names has duplicates: {list(class_names)}")
            cat_ids = [by_name[n] for n in class_names]
        self.cat_id_to_label = {cid: i + 1 for i, cid in enumerate(cat_ids)}
        self.label_to_cat_id = {i + 1: cid for i, cid in enumerate(cat_ids)}
        self.classes = tuple(cats[cid]["name"] for cid in cat_ids)

    def _build_records(self, data: dict, images: dict) -> None:
        per_image: dict[int, list[dict]] = {iid: [] for iid in images}
        for a in data["annotations"]:
            per_image[a["image_id"]].append(a)

        index = {id(a): i for i, a in enumerate(data["annotations"])}
        self._records: list[dict] = []
        for im in data["images"]:
            h, w = im["height"], im["width"]
            boxes, labels, segs = [], [], []
            for a in per_image[im["id"]]:
                if a["iscrowd"] or a["category_id"] not in self.cat_id_to_label:
                    continue
                x, y, bw, bh = (float(v) for v in a["bbox"])
                box = np.array([x, y, x + bw, y + bh], dtype=np.float32)
                box[0::2] = np.clip(box[0::2], 0, w)
                box[1::2] = np.clip(box[1::2], 0, h)
                if not (box[2] > box[0] and box[3] > box[1]):
                    continue  # zero area after clipping: nothing to learn from
                seg = None
                if self.with_masks:  # an instance's mask target must be a mask: say which one is not
                    seg = a["segmentation"]
                    problem = (rle_problem(seg, h, w, allow_empty=False) if isinstance(seg, dict)
                               else polygons_problem(seg, allow_empty=False))
                    if problem:
                        where = f"annotation id={a['id']!r} (annotations[{index[id(a)]}])"
                        raise self._err(f"{_of_image(where, im)}: {problem}; fix or remove the annotation")
                    if isinstance(seg, list):
                        seg = [np.asarray(p, dtype=np.float32) for p in seg]
                boxes.append(box)
                labels.append(self.cat_id_to_label[a["category_id"]])
                segs.append(seg)
            if self.train and self.filter_empty and not boxes:
                continue
            self._records.append({
                "image_id": im["id"], "file_name": os.path.join(self.image_dir, im["file_name"]),
                "height": h, "width": w,
                "boxes": np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
                "labels": np.asarray(labels, dtype=np.int64),
                "segmentations": segs,
            })
        self.image_ids = [r["image_id"] for r in self._records]

    def _make_coco(self, data: dict):
        from pycocotools.coco import COCO

        coco = COCO()
        coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):  # 'creating index...' chatter
            coco.createIndex()
        return coco

    # -- access ----------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, idx: int) -> dict:
        if not -len(self) <= idx < len(self):
            raise IndexError(f"index {idx} out of range for a dataset of {len(self)} images")
        rec = self._records[idx]
        try:
            image = self.read_image(idx)
        except DatasetError as e:
            if not self.skip_bad_images:
                raise
            logger.warning("skipping a bad image: %s", e)
            return {"image": None, "image_id": rec["image_id"], "bad_image": str(e)}
        item = {"image": image, "image_id": rec["image_id"], "boxes": rec["boxes"].copy(),
                "labels": rec["labels"].copy()}
        if self.with_masks:
            polys = []
            for seg in rec["segmentations"]:
                if isinstance(seg, dict):  # checked at construction: the image's size, not empty
                    p = rle_to_polygons(seg, rec["height"], rec["width"])
                else:
                    p = [q.copy() for q in seg]
                polys.append(p)
            item["polygons"] = polys
        return item

    def read_image(self, idx: int) -> np.ndarray:
        """Decode item ``idx``'s image: uint8 (H, W, 3) RGB. Raises DatasetError naming the file.

        Decoding is :func:`gluon_rcnn.data.image_io.read_image`: a missing, empty, truncated,
        corrupt or unsupported file raises (whatever ``skip_bad_images`` says; that option acts
        in ``__getitem__``). The EXIF orientation is applied (as every viewer does) unless only
        the stored, unrotated pixels have the size the annotation file gives; any other size
        mismatch is an error.
        """
        rec = self._records[idx]
        return _decode_image(rec["file_name"], rec["image_id"], expected_size=(rec["height"], rec["width"]),
                             source=self.annotation_file)

    def image_info(self, idx: int) -> dict:
        """``{'image_id', 'file_name' (full path), 'height', 'width'}`` of item ``idx``, no decoding."""
        rec = self._records[idx]
        return {k: rec[k] for k in ("image_id", "file_name", "height", "width")}

    def aspect_ratios(self) -> np.ndarray:
        """float64 (N,): width / height of every item, from the JSON (no image is decoded)."""
        return np.array([r["width"] / r["height"] for r in self._records], dtype=np.float64)

    @classmethod
    def from_name(cls, name: str, basedir: str = "", **kwargs) -> "COCODetection":
        """Build a registered dataset: ``COCODetection.from_name('coco_val2017', '/data/coco', train=False)``."""
        ann, img = get_dataset_paths(name, basedir)
        return cls(ann, img, **kwargs)

    def __repr__(self) -> str:
        return (f"COCODetection({self.annotation_file!r}, {len(self)} images, {len(self.classes)} classes, "
                f"train={self.train}, with_masks={self.with_masks})")
