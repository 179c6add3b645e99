"""Float images outside 0-1 are refused, saying what to pass: 0-255 floats (``img.float()``) and
GluonCV-style mean/std-normalised images (values about -2.1 to 2.6) used to run and return other
detections with no word. uint8 images, 0-1 floats and already preprocessed batches are unaffected."""
from __future__ import annotations

import cv2
import pytest
import torch

from conftest import COCO_IMAGES, need
from gluon_rcnn import get_model
from gluon_rcnn.preprocess import PIXEL_RANGE_TOLERANCE, check_pixel_range

MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)  # GluonCV's (ImageNet's), 0-1 scale
STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


@pytest.fixture(scope="module")
def net_and_image():
    img = cv2.cvtColor(cv2.imread(str(sorted(need(COCO_IMAGES).glob("*.jpg"))[0])), cv2.COLOR_BGR2RGB)
    torch.manual_seed(0)
    net = get_model("faster_rcnn_fpn_resnet18_v1b_coco", overrides=[
        "BACKBONE.RESNET_NUM_BLOCKS=[2,2,2,2]", "FPN.NUM_CHANNEL=32", "FPN.FRCNN_FC_HEAD_DIM=64",
        "PREPROC.TEST_SHORT_EDGE_SIZE=96", "PREPROC.MAX_SIZE=160", "TEST.RESULT_SCORE_THRESH=0.0"])
    return net, torch.from_numpy(img).permute(2, 0, 1).contiguous()


def _detect(net, images):
    with torch.no_grad():
        return net(images)


def test_0_255_floats_are_refused(net_and_image):
    net, img = net_and_image
    with pytest.raises(ValueError, match=r"image 0 is a float image with values in \[0, 255\].*uint8 RGB 0-255 or "
                                         r"float RGB in 0-1.*0-255 values: pass the uint8 image itself, or divide"):
        _detect(net, [img.float()])


def test_mean_std_normalised_images_are_refused(net_and_image):
    net, img = net_and_image
    x = (img.float() / 255 - MEAN) / STD
    assert -2.2 < x.min() < -2.0 and 2.5 < x.max() < 2.7  # what a GluonCV user holds
    with pytest.raises(ValueError, match=r"image 1 is a float image .*mean/std-normalised.*x \* std \+ mean"):
        _detect(net, [img, x])
    # the advice in the message gives back the 0-1 image (up to float rounding), which runs
    back = x * STD + MEAN
    torch.testing.assert_close(back, img.float() / 255, rtol=0, atol=1e-6)
    assert len(_detect(net, [img, back])) == 2


def test_0_1_floats_uint8_and_preprocessed_batches_run(net_and_image):
    net, img = net_and_image
    a, b = _detect(net, [img])[0], _detect(net, [img.float() / 255])[0]
    assert torch.equal(a["boxes"], b["boxes"]) and torch.equal(a["scores"], b["scores"])
    batch = net.preprocess([img])  # normalised values (-2.1..2.6): an ImageBatch is not checked again
    assert batch.tensor.min() < -2
    assert torch.equal(_detect(net, batch)[0]["boxes"], a["boxes"])


def test_tolerance_nan_and_which_image():
    ok = torch.rand(3, 8, 8)
    check_pixel_range([ok, ok * (1 + PIXEL_RANGE_TOLERANCE) - PIXEL_RANGE_TOLERANCE / 2])  # rounding: accepted
    check_pixel_range([torch.full((3, 4, 4), 255, dtype=torch.uint8)])  # uint8 is never looked at
    with pytest.raises(ValueError, match=r"image 2 .*\[-0\.1, 1\.1\].*clamp\(0, 1\)"):
        check_pixel_range([ok, ok, torch.tensor([-0.1, 0.5, 1.1]).view(3, 1, 1).expand(3, 4, 4)])  # ringing
    with pytest.raises(ValueError, match="image 0 .*NaN"):
        check_pixel_range([torch.full((3, 4, 4), float("nan"))])
