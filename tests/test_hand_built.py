"""A model built by hand from the documented constructors, its rules from a profile, is the model
``get_model`` builds: same parameter names and shapes, and on the same weights the same
detections (bitwise) on real images and the same training losses.

The knobs (sizes, thresholds, widths) are written out as a user would from the entry's page; the
rules come only from ``get_profile(...).rules(...)``: no constructor falls back on a default of
another publisher."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gluon_rcnn.backbone.build import Backbone, res4_channels
from gluon_rcnn.backbone.fpn import FPN
from gluon_rcnn.backbone.resnet import ResNet, make_res5_stage
from gluon_rcnn.data.image_io import read_image
from gluon_rcnn.data.transforms import polygons_to_edges
from gluon_rcnn.detector import GeneralizedRCNN
from gluon_rcnn.model_zoo import get_model
from gluon_rcnn.preprocess import Preprocessor, capped_max_size
from gluon_rcnn.profiles import get_profile
from gluon_rcnn.roi_heads import BoxStage, Res5Head, Res5ROIHeads, StandardROIHeads
from gluon_rcnn.roi_heads.box_head import FastRCNN2FCHead, FastRCNNConvFCHead
from gluon_rcnn.roi_heads.mask_head import MaskRCNNUpConvHead
from gluon_rcnn.roi_heads.pooler import ROIPooler
from gluon_rcnn.rpn import RPN, AnchorGenerator, RPNHead
from gluon_rcnn.structures.boxes import BoxCoder
from gluon_rcnn.structures.categories import COCO_CLASSES

from conftest import COCO_IMAGES

R18 = [2, 2, 2, 2]
MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]
FPN_STRIDES = [4, 8, 16, 32, 64]


def _rpn(rules, in_channels, *, sizes, strides, hidden, per_level, pre, post, max_size):
    anchors = AnchorGenerator(sizes, [0.5, 1.0, 2.0], strides, cells=rules.anchor_cells, grid=rules.anchor_grid)
    head = RPNHead(in_channels, anchors.num_anchors_per_location(), hidden)
    coder = BoxCoder([1.0, 1.0, 1.0, 1.0], rules.decode_clamp.value(max_size))
    return RPN(anchors, head, coder, per_level=per_level, pre_nms_topk=pre, post_nms_topk=post, nms_thresh=0.7,
               min_size=0.0, score_thresh=0.0, fg_iou=0.7, bg_iou=0.3, batch_per_im=256, fg_ratio=0.5,
               smooth_l1_beta=1.0 / 9, border_anchors=rules.border_anchors, low_quality=rules.low_quality_matches,
               small_proposals=rules.proposal_min_size)


def _heads_args(rules, *, batch_per_im, mask_head, smooth_l1_beta=0.0, score_thresh=0.05):
    return dict(num_classes=81, batch_per_im=batch_per_im, fg_ratio=0.25, smooth_l1_beta=smooth_l1_beta,
                score_thresh=score_thresh,
                nms_thresh=0.5, detections_per_img=100, min_box_size=0.0, mask_head=mask_head,
                mask_targets=rules.mask_targets if mask_head is not None else None, detections=rules.detections,
                fp32_box_head=False)


def fpn_mask_rcnn_r18_gn_by_hand():
    """``mask_rcnn_fpn_resnet18_v1b_coco``: R18-GN FPN Mask R-CNN, 320 px, tensorpack's rules."""
    rules = get_profile("tensorpack").rules()
    max_size = capped_max_size(512, rules.max_size_round_up)
    body = ResNet(R18, variant="v1b", norm="GN", freeze_at=0, out_features=("res2", "res3", "res4", "res5"),
                  freeze_affine=rules.freeze_affine, zero_init_residual=rules.zero_init_residual,
                  floor_stride2=rules.floor_stride2, stride_1x1=rules.stride_1x1)
    fpn = FPN([body.feature_channels[k] for k in ("res2", "res3", "res4", "res5")], 256, norm="GN",
              top_block=rules.p6, gn_conv_bias=rules.gn_conv_bias)
    backbone = Backbone(body, fpn, 32)
    rpn = _rpn(rules, 256, sizes=[[32], [64], [128], [256], [512]], strides=FPN_STRIDES, hidden=256,
               per_level=True, pre=(1000, 500), post=(1000, 500), max_size=max_size)
    pool = 7 if rules.box_head_pool == "pool7" else 14
    box_pooler = ROIPooler(pool, FPN_STRIDES[:4], 2, aligned=rules.roi_aligned, level_mapper=rules.roi_levels)
    box_head = FastRCNN2FCHead(256, 7, 1024, fc_init=rules.fc_init, avg_pool=rules.box_head_pool != "pool7")
    stage = BoxStage(box_head, 81, False, [10.0, 10.0, 5.0, 5.0], clip=rules.decode_clamp.value(max_size))
    mask_pooler = ROIPooler(14, FPN_STRIDES[:4], 2, aligned=rules.roi_aligned, level_mapper=rules.roi_levels)
    mask_head = MaskRCNNUpConvHead(256, 80, 256, num_convs=4, norm="GN", gn_order=rules.gn_head_order)
    heads = StandardROIHeads(box_pooler, stage, fg_iou=0.5, mask_pooler=mask_pooler, mask_resolution=28,
                             **_heads_args(rules, batch_per_im=256, mask_head=mask_head))
    pre = Preprocessor(MEAN, STD, 320, max_size, 32, resize=rules.resize, resample=rules.resample, mask_paste=rules.mask_paste,
                       rescale_boxes=rules.rescale_boxes)
    return GeneralizedRCNN(backbone, rpn, heads, pre, COCO_CLASSES, train_short_edge=320)


def c4_faster_rcnn_r18_gluoncv_by_hand():
    """``faster_rcnn_resnet50_v1b_coco`` (GluonCV's C4 Faster R-CNN) at ResNet-18 and 320 px: the
    ``gluoncv`` profile with the entry's one deviation, the decode clamp."""
    rules = get_profile("gluoncv").rules(DECODE_CLAMP="log_max_size_over_16")
    max_size = capped_max_size(512, False)  # C4: the round-up is FPN's
    body = ResNet(R18, variant="v1b", norm="FreezeBN", freeze_at=2, out_features=("res4",),
                  freeze_affine=rules.freeze_affine, zero_init_residual=rules.zero_init_residual,
                  floor_stride2=rules.floor_stride2, stride_1x1=rules.stride_1x1)
    backbone = Backbone(body, None, 1)
    rpn = _rpn(rules, 256, sizes=[[32, 64, 128, 256, 512]], strides=[16], hidden=1024, per_level=False,
               pre=(12000, 6000), post=(2000, 1000), max_size=max_size)
    box_pooler = ROIPooler(14, [16], 2, aligned=rules.roi_aligned, level_mapper=None)
    res5 = make_res5_stage(R18, variant="v1b", norm="FreezeBN", stride=2, freeze_affine=rules.freeze_affine,
                           zero_init_residual=rules.zero_init_residual, stride_1x1=rules.stride_1x1)
    stage = BoxStage(Res5Head(res5, 2 * res4_channels(R18)), 81, False, [10.0, 10.0, 5.0, 5.0],
                     clip=rules.decode_clamp.value(max_size))
    heads = Res5ROIHeads(box_pooler, stage, fg_iou=0.5, mask_resolution=14,
                         **_heads_args(rules, batch_per_im=128, mask_head=None, smooth_l1_beta=1.0,
                                       score_thresh=0.01))
    pre = Preprocessor(MEAN, STD, 320, max_size, 1, resize=rules.resize, resample=rules.resample, mask_paste=rules.mask_paste,
                       rescale_boxes=rules.rescale_boxes)
    return GeneralizedRCNN(backbone, rpn, heads, pre, COCO_CLASSES, train_short_edge=320)


CASES = {
    "fpn_tensorpack": (fpn_mask_rcnn_r18_gn_by_hand, "mask_rcnn_fpn_resnet18_v1b_coco", []),
    "c4_gluoncv": (c4_faster_rcnn_r18_gluoncv_by_hand, "faster_rcnn_resnet50_v1b_coco",
                   ["BACKBONE.RESNET_NUM_BLOCKS=[2,2,2,2]", "PREPROC.TEST_SHORT_EDGE_SIZE=320",
                    "PREPROC.TRAIN_SHORT_EDGE_SIZE=[320,320]", "PREPROC.MAX_SIZE=512"]),
}


def _image(path):
    return torch.from_numpy(read_image(str(path))).permute(2, 0, 1).contiguous()


def _randomise_statistics(model, seed):
    """Draw every parameter and buffer (frozen BN statistics included) so that no layer is trivial."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in list(model.state_dict().items()):
            if t.is_floating_point():
                v = torch.randn(t.shape, generator=g) * 0.05
                if name.endswith("running_var") or name.endswith(".weight") and t.dim() == 1:
                    v = v.abs() + 0.5
                t.copy_(v)


@pytest.mark.parametrize("case", sorted(CASES))
def test_hand_built_model_is_get_models(case):
    by_hand, name, overrides = CASES[case]
    zoo = get_model(name, overrides=overrides).eval()
    ours = by_hand().eval()
    sd_zoo, sd_ours = zoo.state_dict(), ours.state_dict()
    assert [(k, tuple(v.shape)) for k, v in sd_ours.items()] == [(k, tuple(v.shape)) for k, v in sd_zoo.items()]
    _randomise_statistics(zoo, seed=3)
    ours.load_state_dict(zoo.state_dict(), strict=True)
    images = [_image(p) for p in sorted(COCO_IMAGES.glob("*.jpg"))[:3]]
    with torch.no_grad():
        for img in images:
            a, b = zoo([img])[0], ours([img])[0]
            assert set(a) == set(b)
            assert a["boxes"].shape[0] > 0, "random weights gave no detection: the comparison would be empty"
            for k in a:
                assert torch.equal(a[k], b[k]), (case, k)


@pytest.mark.parametrize("case", sorted(CASES))
def test_hand_built_model_trains_as_get_models(case):
    """Training mode: the same losses (sampling seeded alike), so the training-side rules (anchor
    labelling, mask targets, fc init aside) are the same objects too."""
    by_hand, name, overrides = CASES[case]
    zoo = get_model(name, overrides=overrides).train()
    ours = by_hand().train()
    _randomise_statistics(zoo, seed=4)
    ours.load_state_dict(zoo.state_dict(), strict=True)
    img = _image(sorted(COCO_IMAGES.glob("*.jpg"))[0])
    h, w = img.shape[-2:]
    target = {"boxes": torch.tensor([[10.0, 20.0, w * 0.6, h * 0.7], [w * 0.3, h * 0.2, w - 5.0, h - 8.0]]),
              "labels": torch.tensor([1, 3])}
    if zoo.roi_heads.mask_on:
        target["polygons"] = torch.from_numpy(polygons_to_edges([
            [np.array([10, 20, w * 0.6, 20, w * 0.6, h * 0.7], np.float32)],
            [np.array([w * 0.3, h * 0.2, w - 5, h * 0.2, w - 5, h - 8], np.float32)]]))
    losses = []
    for m in (zoo, ours):
        torch.manual_seed(0)
        losses.append(m([img], [target]))
    assert set(losses[0]) == set(losses[1]) and len(losses[0]) >= 4
    for k in losses[0]:
        assert torch.equal(losses[0][k], losses[1][k]), (case, k)
