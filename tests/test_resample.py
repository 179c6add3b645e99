"""RULES.RESAMPLE (gluon_rcnn/rules/resize.py): the ``uint8_fixed_point`` rule is OpenCV's
``cv2.resize(INTER_LINEAR)`` on uint8 pixels, bit for bit, in its torch transcription (what GPUs and
``torch.export`` run) and through the Preprocessor; ``float_bilinear`` is unchanged."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from gluon_rcnn.data.image_io import read_image
from gluon_rcnn.preprocess import Preprocessor
from gluon_rcnn.profiles import get_profile
from gluon_rcnn.rules.resize import RESAMPLE, cv2_linear_uint8

IMAGES = sorted((Path(__file__).parent / "data" / "coco_subset" / "train2017").glob("*.jpg"))
MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]


def _cv2(img_chw: np.ndarray, nh: int, nw: int) -> np.ndarray:
    return cv2.resize(np.ascontiguousarray(img_chw.transpose(1, 2, 0)), (nw, nh),
                      interpolation=cv2.INTER_LINEAR).reshape(nh, nw, -1).transpose(2, 0, 1)


def _sizes(rng):
    fixed = [(480, 640, 800, 1067), (132, 132, 600, 600), (100, 50, 200, 100), (64, 64, 32, 32), (1, 9, 4, 5),
             (7, 1, 3, 2), (300, 200, 300, 200), (333, 500, 1000, 1500), (800, 1067, 399, 533)]
    return fixed + [tuple(int(v) for v in rng.integers(1, 700, 4)) for _ in range(30)]


def test_torch_transcription_equals_opencv_on_random_images_and_sizes():
    rng = np.random.default_rng(0)
    for h, w, nh, nw in _sizes(rng):
        img = rng.integers(0, 256, size=(3, h, w), dtype=np.uint8)
        ours = cv2_linear_uint8(torch.from_numpy(img), (nh, nw)).numpy()
        np.testing.assert_array_equal(ours, _cv2(img, nh, nw), err_msg=f"{h}x{w} -> {nh}x{nw}")


def test_torch_transcription_equals_opencv_on_every_shipped_image():
    assert len(IMAGES) >= 17
    for path in IMAGES:
        img = read_image(str(path)).transpose(2, 0, 1)
        h, w = img.shape[1:]
        for short in (320, 800):
            s = short / min(h, w)
            nh, nw = int(h * s + 0.5), int(w * s + 0.5)
            ours = cv2_linear_uint8(torch.from_numpy(np.ascontiguousarray(img)), (nh, nw)).numpy()
            np.testing.assert_array_equal(ours, _cv2(img, nh, nw), err_msg=path.name)


def _pre(resample):
    rules = get_profile("tensorpack").rules()
    return Preprocessor(MEAN, STD, 800, 1333, 1, resize=rules.resize, resample=RESAMPLE[resample],
                        mask_paste=rules.mask_paste, rescale_boxes=rules.rescale_boxes)


def test_preprocessor_feeds_what_opencv_then_normalisation_gives():
    """tensorpack's CustomResize: cv2.resize on the uint8 image, then (x - mean) / std in the graph."""
    pre = _pre("uint8_fixed_point")
    mean01, std01 = pre.mean01, pre.std01
    for path in IMAGES[:6]:
        img = np.ascontiguousarray(read_image(str(path)).transpose(2, 0, 1))
        t = torch.from_numpy(img)
        batch = pre([t])
        (nh, nw), = batch.image_sizes
        ref = (torch.from_numpy(_cv2(img, nh, nw).copy()).float().div_(255.0) - mean01) / std01
        torch.testing.assert_close(batch.tensor[0], ref, rtol=0, atol=0)
        # the torch transcription (GPU, torch.export) gives the same normalised pixels
        via_torch = (cv2_linear_uint8(t, (nh, nw)).float().div_(255.0) - mean01) / std01
        torch.testing.assert_close(via_torch, ref, rtol=0, atol=0)


def test_the_two_rules_differ_by_the_uint8_rounding_only():
    img = torch.from_numpy(np.ascontiguousarray(read_image(str(IMAGES[0])).transpose(2, 0, 1)))
    a, b = _pre("uint8_fixed_point")([img]).tensor, _pre("float_bilinear")([img]).tensor
    grey = float((a - b).abs().amax() * 58.395)  # in grey levels (the smallest std)
    assert 0.3 < grey < 1.5, grey  # rounding to uint8 and 11-bit weights: under ~1 level, not zero


def test_float_images_and_scale_one_are_not_rounded():
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.random((3, 50, 70), dtype=np.float32))
    a, b = _pre("uint8_fixed_point"), _pre("float_bilinear")
    torch.testing.assert_close(a.normalize_resize(x, (90, 126)), b.normalize_resize(x, (90, 126)), rtol=0, atol=0)
    u = torch.from_numpy(rng.integers(0, 256, (3, 50, 70), dtype=np.uint8))
    torch.testing.assert_close(cv2_linear_uint8(u, (50, 70)), u, rtol=0, atol=0)  # identity at scale 1


@pytest.mark.parametrize("profile,choice", [("tensorpack", "uint8_fixed_point"), ("tensorpack-2019", "uint8_fixed_point"),
                                            ("torchvision", "float_bilinear")])
def test_profiles_choose_their_publishers_resampling(profile, choice):
    assert get_profile(profile).choices["RESAMPLE"] == choice


def test_a_checkpoint_config_saved_before_the_rule_keeps_float_resampling():
    """A whole config saved before RULES.RESAMPLE existed (its model saw float-resized images) reads to
    ``float_bilinear``; a config that names the rule, or a partial one (a zoo entry), keeps its choice."""
    from gluon_rcnn.config import get_default_config
    saved = json.loads(json.dumps(get_default_config().finalize()))
    assert saved["RULES"]["PROFILE"] == "tensorpack"
    before = json.loads(json.dumps(saved))
    del before["RULES"]["RESAMPLE"]
    cfg = get_default_config()
    cfg.update_dict(before, unknown="report")
    assert cfg.RULES.RESAMPLE == "float_bilinear"
    cfg = get_default_config()
    cfg.update_dict(saved, unknown="report")
    assert cfg.RULES.RESAMPLE is None  # the profile's: uint8_fixed_point
    cfg = get_default_config()
    cfg.update_dict({"RULES": {"PROFILE": "tensorpack"}}, unknown="report")
    assert cfg.RULES.RESAMPLE is None


D2 = Path(__file__).parent / "data" / "detectron2_reference"


@pytest.mark.parametrize("name", ["000000000089", "000000000436", "000000000491"])
def test_detectron2_profile_feeds_detectron2s_own_resized_pixels(name):
    """detectron2 (built from source, bench/detectron2_reference.py) resized these shipped images with its
    ResizeShortestEdge (Pillow BILINEAR on uint8) to 320/512 and saved its pixels losslessly: the detectron2
    profile's preprocessing gives them exactly; float bilinear (no antialias) is tens of grey levels off
    where the image shrinks."""
    from PIL import Image
    png = np.asarray(Image.open(D2 / f"{name}_s320.png").convert("RGB")).astype(np.float32)
    img = torch.from_numpy(np.ascontiguousarray(read_image(str(IMAGES[0].parent / f"{name}.jpg")).transpose(2, 0, 1)))
    out = {}
    for resample in ("uint8_pil_bilinear", "float_bilinear"):
        rules = get_profile("detectron2").rules(RESAMPLE=resample)
        pre = Preprocessor([0, 0, 0], [1, 1, 1], 320, 512, 1, resize=rules.resize, resample=rules.resample,
                           mask_paste=rules.mask_paste, rescale_boxes=rules.rescale_boxes)
        batch = pre([img])
        assert batch.image_sizes[0] == png.shape[:2]  # detectron2's int(x + 0.5) sizes: RULES.RESIZE='round'
        out[resample] = batch.tensor[0].permute(1, 2, 0).numpy()
    assert get_profile("detectron2").choices["RESAMPLE"] == "uint8_pil_bilinear"
    # grey levels via (x / 255 - 0) / (1 / 255) in float32: a few ulps of 255
    np.testing.assert_allclose(out["uint8_pil_bilinear"], png, rtol=0, atol=1e-4)
    shrunk = img.shape[1] > png.shape[0]
    assert np.abs(out["float_bilinear"] - png).max() > (20 if shrunk else 0.5)


@pytest.mark.parametrize("rule", ["uint8_pil_bilinear", "opencv_bicubic"])
def test_resampling_outside_torch_cannot_be_traced(monkeypatch, rule):
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    img = torch.zeros((3, 20, 30), dtype=torch.uint8)
    with pytest.raises(NotImplementedError, match="RULES.RESAMPLE='float_bilinear'"):
        RESAMPLE[rule](img, (10, 15), lambda x: x)


@pytest.mark.parametrize("name", ["mask_fpn_s320", "faster_c4_s320"])
def test_gluoncv_profile_feeds_gluoncvs_resized_pixels(name):
    """GluonCV (mxnet 1.9.1, bench/gluoncv_reference.py) resized shipped image 89 with resize_short_within(interp=2):
    OpenCV's INTER_CUBIC inside MXNet. The gluoncv profile's pixels are within 1 grey level of them on under 2 % of
    the values (MXNet's bundled OpenCV against the installed one: measured 5769 of 409,920, 1.4 %, all +-1), the
    float bilinear rule tens of levels off."""
    z = np.load(Path(__file__).parent / "data" / "gluoncv_reference" / f"{name}.npz")
    ref = z["resized_uint8"].astype(np.float32)
    meta = json.loads(str(z["meta_json"]))
    img = torch.from_numpy(np.ascontiguousarray(
        read_image(str(IMAGES[0].parent / Path(meta["image"]).name)).transpose(2, 0, 1)))
    out = {}
    for resample in ("opencv_bicubic", "float_bilinear"):
        rules = get_profile("gluoncv").rules(RESAMPLE=resample)
        pre = Preprocessor([0, 0, 0], [1, 1, 1], 320, 512, 1, resize=rules.resize, resample=rules.resample,
                           mask_paste=rules.mask_paste, rescale_boxes=rules.rescale_boxes)
        out[resample] = pre([img], sizes=[ref.shape[:2]]).tensor[0].permute(1, 2, 0).numpy()
    assert get_profile("gluoncv").choices["RESAMPLE"] == "opencv_bicubic"
    d = np.abs(out["opencv_bicubic"] - ref)
    assert d.max() <= 1 + 1e-4 and (d > 1e-4).mean() < 0.02, (d.max(), (d > 1e-4).mean())
    assert np.abs(out["float_bilinear"] - ref).max() > 20


@pytest.mark.parametrize("name", ["small_fpn", "small_c4", "small2019_fpn", "small2019_c4"])
def test_tensorpack_profile_feeds_tensorpacks_own_resized_pixels(name):
    """tensorpack's graph (2023 and February-2019 code, ../shared/tools/tensorpack-reference) resized the shipped
    JPEG itself (CustomResize: cv2 on uint8) and its references keep those pixels: the tensorpack profiles'
    preprocessing of the same JPEG gives them exactly (BGR there, RGB here)."""
    z = np.load(Path(__file__).parent / "data" / "tensorpack_reference" / f"{name}.npz")
    ref = z["input_image_bgr_resized"][:, :, ::-1].astype(np.float32)
    meta = json.loads(str(z["meta_json"]))
    img = read_image(str(IMAGES[0].parent / Path(meta["image"]).name))
    rules = get_profile("tensorpack").rules()
    pre = Preprocessor([0, 0, 0], [1, 1, 1], 320, 512, 1, resize=rules.resize, resample=rules.resample,
                       mask_paste=rules.mask_paste, rescale_boxes=rules.rescale_boxes)
    x = pre([torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))], sizes=[ref.shape[:2]])
    np.testing.assert_allclose(x.tensor[0].permute(1, 2, 0).numpy(), ref, rtol=0, atol=1e-4)
