"""gluon_rcnn.data.image_io.read_image: bad files raise DatasetError naming the file and image id;
COCODetection(skip_bad_images=True) turns them into logged bad-image markers; good files decode
to OpenCV's pixels (EXIF orientation, grayscale/CMYK/RGBA/palette converted to RGB)."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image, ImageFile

from gluon_rcnn.config import get_default_config
from gluon_rcnn.data.coco import COCODetection, DatasetError
from gluon_rcnn.data.image_io import read_image

from conftest import COCO_ANN, COCO_IMAGES, need


def coco128_jpegs():
    return sorted(need(COCO_IMAGES).glob("*.jpg"))


def _rgb_image(h=48, w=64):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    img[: h // 2, : w // 2] = (200, 30, 10)
    return img


# --------------------------------------------------------------------------------------------
# bad files: one per kind of fault
# --------------------------------------------------------------------------------------------
def _truncated_jpeg(tmp_path: Path) -> Path:
    src = coco128_jpegs()[0]
    data = src.read_bytes()
    p = tmp_path / "cut.jpg"
    p.write_bytes(data[: len(data) // 7])
    return p


def _empty(tmp_path: Path) -> Path:
    p = tmp_path / "zero.jpg"
    p.write_bytes(b"")
    return p


def _text(tmp_path: Path) -> Path:
    p = tmp_path / "text.jpg"
    p.write_text("this is a text file, not a JPEG\n" * 20)
    return p


def _truncated_png(tmp_path: Path) -> Path:
    full = tmp_path / "full.png"
    Image.fromarray(_rgb_image(120, 160)).save(full)
    data = full.read_bytes()
    p = tmp_path / "cut.png"
    p.write_bytes(data[: len(data) // 2])
    return p


def _corrupt_png(tmp_path: Path) -> Path:
    """A PNG whose compressed pixel data is overwritten with garbage (zlib fails)."""
    full = tmp_path / "full2.png"
    Image.fromarray(_rgb_image(120, 160)).save(full)
    data = bytearray(full.read_bytes())
    i = data.index(b"IDAT") + 4
    data[i + 2: i + 200] = bytes(range(198))
    p = tmp_path / "garbled.png"
    p.write_bytes(bytes(data))
    return p


def _gif(tmp_path: Path) -> Path:
    p = tmp_path / "pic.gif"
    Image.fromarray(_rgb_image()).save(p)
    return p


def _missing(tmp_path: Path) -> Path:
    return tmp_path / "does_not_exist.jpg"


BAD = {
    "truncated_jpeg": (_truncated_jpeg, "truncated"),
    "empty": (_empty, "empty"),
    "text_named_jpg": (_text, "not an image"),
    "truncated_png": (_truncated_png, "truncated"),
    "corrupt_png": (_corrupt_png, "corrupt"),
    "gif": (_gif, "unsupported image format GIF"),
    "missing": (_missing, "not found"),
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_bad_file_raises_naming_file_and_id(tmp_path, kind):
    make, what = BAD[kind]
    path = make(tmp_path)
    with pytest.raises(DatasetError) as e:
        read_image(path, image_id=4242)
    msg = str(e.value)
    assert str(path) in msg and "image id 4242" in msg and what in msg, msg


def test_truncated_jpeg_that_opencv_decodes_silently(tmp_path):
    """The motivating fault: OpenCV returns a half-grey image for it, read_image raises."""
    path = _truncated_jpeg(tmp_path)
    assert cv2.imread(str(path), cv2.IMREAD_COLOR) is not None  # what the old decoder accepted
    with pytest.raises(DatasetError, match="truncated"):
        read_image(path, 9)


@pytest.mark.parametrize("make", [_truncated_jpeg, _truncated_png])
def test_truncation_raises_even_when_pillow_is_told_to_accept_it(tmp_path, monkeypatch, make):
    path = make(tmp_path)
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(DatasetError, match="truncated"):
        read_image(path, 1)
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the global is left as it was


def test_size_check_and_exif_orientation(tmp_path):
    img = _rgb_image(40, 60)
    exif = Image.Exif()
    exif[0x0112] = 6  # stored pixels must be rotated 90 degrees clockwise to be displayed
    p = tmp_path / "rotated.png"
    Image.fromarray(img).save(p, exif=exif)
    upright = np.rot90(img, k=-1)
    np.testing.assert_array_equal(read_image(p), upright)  # no size known: orientation applied
    np.testing.assert_array_equal(read_image(p, expected_size=(60, 40)), upright)
    # only the stored pixels have the annotated size: they are what was annotated
    np.testing.assert_array_equal(read_image(p, expected_size=(40, 60)), img)
    with pytest.raises(DatasetError, match=r"decoded size 40x60 differs from the annotated 60x41.*image id 5"):
        read_image(p, 5, expected_size=(41, 60))


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "1", "I;16"])
def test_modes_convert_to_rgb(tmp_path, mode):
    rgb = _rgb_image()
    im = Image.fromarray(rgb)
    if mode == "I;16":
        gray = np.asarray(im.convert("L")).astype(np.uint16) * 257
        im = Image.fromarray(gray)
        assert im.mode == "I;16"
    else:
        im = im.convert(mode)
    fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode == "I;16" else "PNG")
    p = tmp_path / f"x.{fmt.lower()}"
    im.save(p, format=fmt)
    out = read_image(p)
    assert out.dtype == np.uint8 and out.shape == rgb.shape and out.flags.writeable
    if mode in ("L", "LA", "1", "I;16"):
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    if mode in ("L", "LA", "I;16"):
        np.testing.assert_array_equal(out[..., 0], np.asarray(Image.fromarray(rgb).convert("L")))
    if mode == "RGBA":
        np.testing.assert_array_equal(out, rgb)  # alpha dropped, colours kept
    if mode in ("P", "CMYK"):
        assert np.abs(out.astype(int) - rgb).mean() < 40  # lossy, but the same picture


@pytest.mark.parametrize("fmt, kw", [("PNG", {}), ("BMP", {}), ("TIFF", {}), ("WEBP", {"lossless": True})])
def test_lossless_formats_round_trip(tmp_path, fmt, kw):
    rgb = _rgb_image()
    p = tmp_path / f"x.{fmt.lower()}"
    Image.fromarray(rgb).save(p, format=fmt, **kw)
    np.testing.assert_array_equal(read_image(p, 3, expected_size=rgb.shape[:2]), rgb)


def test_coco128_pixels_equal_opencv():
    """Pillow's decode of every COCO JPEG in tests/data equals cv2.imread's (both libjpeg-turbo here)."""
    max_diff = 0
    for p in coco128_jpegs():
        ours = read_image(p)
        ref = cv2.cvtColor(cv2.imread(str(p), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        assert ours.shape == ref.shape, p
        max_diff = max(max_diff, int(np.abs(ours.astype(np.int16) - ref).max()))
    assert max_diff <= 1, f"Pillow and OpenCV decodes of the COCO subset differ by up to {max_diff}"


# --------------------------------------------------------------------------------------------
# COCODetection: raise by default, marker + warning with skip_bad_images=True
# --------------------------------------------------------------------------------------------
def _coco_with_bad_files(tmp_path: Path) -> tuple[Path, Path, dict[int, Path]]:
    """A COCO JSON over copies of 3 real COCO images + one bad file of each kind (ids 1001...)."""
    raw = json.loads(need(COCO_ANN).read_text())
    imgdir = tmp_path / "images"
    imgdir.mkdir()
    good = raw["images"][:3]
    for im in good:
        shutil.copy(COCO_IMAGES / im["file_name"], imgdir / im["file_name"])
    images, bad = list(good), {}
    w0, h0 = good[0]["width"], good[0]["height"]
    for k, kind in enumerate(sorted(BAD)):
        path = BAD[kind][0](imgdir)
        iid = 1001 + k
        images.append({"id": iid, "file_name": path.name, "width": w0, "height": h0})
        bad[iid] = path
    ids = {im["id"] for im in images}
    anns = [a for a in raw["annotations"] if a["image_id"] in ids]
    for k, iid in enumerate(bad):
        anns.append({"id": 10_000_000 + k, "image_id": iid, "category_id": 1, "bbox": [1, 2, 30, 40],
                     "iscrowd": 0, "area": 1200.0, "segmentation": [[1, 2, 31, 2, 31, 42]]})
    ann = tmp_path / "ann.json"
    ann.write_text(json.dumps({"images": images, "annotations": anns, "categories": raw["categories"]}))
    return ann, imgdir, bad


def test_coco_dataset_raises_on_bad_images_by_default(tmp_path):
    ann, imgdir, bad = _coco_with_bad_files(tmp_path)
    ds = COCODetection(ann, imgdir, train=False)
    assert ds.skip_bad_images is False
    for iid, path in bad.items():
        with pytest.raises(DatasetError) as e:
            ds[ds.image_ids.index(iid)]
        assert str(path) in str(e.value) and f"image id {iid}" in str(e.value) and str(ann) in str(e.value)
    assert ds[0]["image"].dtype == np.uint8


def test_coco_dataset_skip_bad_images_returns_marker_and_warns(tmp_path, caplog):
    ann, imgdir, bad = _coco_with_bad_files(tmp_path)
    ds = COCODetection(ann, imgdir, train=True, with_masks=True, skip_bad_images=True)
    for iid, path in bad.items():
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="gluon_rcnn.data.coco"):
            item = ds[ds.image_ids.index(iid)]
        assert set(item) == {"image", "image_id", "bad_image"}
        assert item["image"] is None and item["image_id"] == iid
        assert str(path) in item["bad_image"] and f"image id {iid}" in item["bad_image"]
        warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and str(path) in warnings[0] and f"image id {iid}" in warnings[0]
    good = ds[0]  # good images are untouched
    assert good["image"].ndim == 3 and "bad_image" not in good and len(good["polygons"]) == len(good["boxes"])
    # read_image itself still raises: the option only changes what dataset[i] does
    with pytest.raises(DatasetError):
        ds.read_image(ds.image_ids.index(next(iter(bad))))


def test_skip_bad_images_config_key():
    cfg = get_default_config()
    assert cfg.DATA.SKIP_BAD_IMAGES is False
    cfg.update_args(["DATA.SKIP_BAD_IMAGES=True"])
    assert cfg.DATA.SKIP_BAD_IMAGES is True


def test_launch_passes_skip_bad_images(tmp_path):
    from gluon_rcnn.cli.train import build_arg_parser, build_config, build_datasets

    ann, imgdir, bad = _coco_with_bad_files(tmp_path)
    argv = ["--annotations", str(ann), "--images", str(imgdir), "--val-annotations", str(ann),
            "--val-images", str(imgdir), "--config", "DATA.SKIP_BAD_IMAGES=True"]
    args = build_arg_parser(mask=False).parse_args(argv)
    train, val = build_datasets(args, build_config(args, mask=False))
    assert train.skip_bad_images and val.skip_bad_images
    iid = next(iter(bad))
    assert val[val.image_ids.index(iid)]["image"] is None
    args = build_arg_parser(mask=False).parse_args(argv[:-2])
    train, val = build_datasets(args, build_config(args, mask=False))
    assert not train.skip_bad_images and not val.skip_bad_images


# --------------------------------------------------------------------------------------------
# predict's loader uses the same decoder
# --------------------------------------------------------------------------------------------
def test_predict_load_uses_read_image(tmp_path):
    from gluon_rcnn.engine.predict import _load

    p = tmp_path / "x.png"
    img = _rgb_image()
    Image.fromarray(img).save(p)
    rgb, wcs = _load(p, "D1", None)
    np.testing.assert_array_equal(rgb, img)
    assert wcs is None
    bad = _truncated_jpeg(tmp_path)
    with pytest.raises(DatasetError, match="truncated"):
        _load(bad, "D1", None)
    with pytest.raises(ValueError):  # predict's CLI reports ValueErrors as "error: ..."
        _load(_empty(tmp_path), "D1", None)
