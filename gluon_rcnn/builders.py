"""Builders: the one place where the config tree is read to assemble a detector.

Every component takes explicit constructor arguments (torchvision's style); these functions read
the config once, at build time, and pass plain values (detectron2's ``from_config``). No module keeps
the config: changing a value means building another model (``gluon_rcnn.get_model(..., overrides=
[...])``). ``model.config`` is a read-only record of what the model was built from.

    build_model(cfg, classes=None) -> GeneralizedRCNN
    build_backbone(cfg), build_res5_stage(cfg), build_rpn(cfg, ...), build_box_head(cfg, ...),
    build_mask_head(cfg, ...), build_roi_heads(cfg, ...), build_preprocessor(cfg)
    max_size(cfg), bbox_decode_clamp(cfg): values derived from the config (never stored in it)
"""
from __future__ import annotations


from torch import nn

from .backbone.build import Backbone, res4_channels
from .backbone.fpn import FPN
from .backbone.pretrained import load_pretrained
from .backbone.resnet import ResNet, make_res5_stage
from .detector import GeneralizedRCNN
from .preprocess import Preprocessor, capped_max_size
from .profiles import resolve_rules
from .roi_heads import BoxStage, CascadeROIHeads, Res5Head, Res5ROIHeads, ROIHeads, StandardROIHeads
from .roi_heads.box_head import FastRCNN2FCHead, FastRCNNConvFCHead
from .roi_heads.mask_head import MaskRCNNUpConvHead
from .roi_heads.pooler import ROIPooler
from .rpn import RPN, AnchorGenerator, RPNHead
from .structures.boxes import BoxCoder

__all__ = ["build_model", "build_backbone", "build_res5_stage", "build_rpn", "build_box_head", "build_mask_head",
           "build_roi_heads", "build_preprocessor", "max_size", "bbox_decode_clamp", "FPN_STRIDES", "C4_STRIDE"]

FPN_STRIDES = (4, 8, 16, 32, 64)  # P2..P6: fixed by the ResNet + FPN architecture
C4_STRIDE = 16                     # res4


def max_size(cfg) -> float:
    """The cap on the long edge that resizing uses: ``PREPROC.MAX_SIZE``, or, in FPN mode with
    ``RULES.MAX_SIZE_ROUND_UP``, rounded up to a multiple of P5's stride (``ceil(MAX_SIZE / 32) * 32``,
    1333 -> 1344). ``<= 0`` (no cap) stays."""
    return capped_max_size(cfg.PREPROC.MAX_SIZE, bool(cfg.MODE_FPN and resolve_rules(cfg).max_size_round_up))


def bbox_decode_clamp(cfg) -> float:
    """The cap on decoded dw, dh for every box coder (``RULES.DECODE_CLAMP``, rules/box_coding.py)."""
    return resolve_rules(cfg).decode_clamp.value(max_size(cfg))


def build_backbone(cfg) -> Backbone:
    """ResNet (``BACKBONE.*``) + FPN (``FPN.NUM_CHANNEL``, ``FPN.NORM``) when ``MODE_FPN``, else the
    trunk up to res4. A non-empty ``BACKBONE.WEIGHTS`` (a local torchvision-style ImageNet state
    dict) is loaded into the trunk; for C4 its ``layer4.*`` tensors go to :func:`build_res5_stage`."""
    b, rules = cfg.BACKBONE, resolve_rules(cfg)
    out_features = ("res2", "res3", "res4", "res5") if cfg.MODE_FPN else ("res4",)
    body = ResNet(list(b.RESNET_NUM_BLOCKS), variant=b.VARIANT, norm=b.NORM, freeze_at=b.FREEZE_AT,
                  stem_width=b.STEM_WIDTH, out_features=out_features, freeze_affine=rules.freeze_affine,
                  zero_init_residual=rules.zero_init_residual, floor_stride2=rules.floor_stride2,
                  stride_1x1=rules.stride_1x1)
    # order matters: init (ZERO_INIT_RESIDUAL) and freezing happen in the constructor, the ImageNet
    # weights are loaded after and overwrite the zeroed gammas
    if b.WEIGHTS:
        load_pretrained(body, b.WEIGHTS)
    fpn = None
    if cfg.MODE_FPN:
        fpn = FPN([body.feature_channels[k] for k in out_features], cfg.FPN.NUM_CHANNEL,
                  norm=cfg.FPN.NORM, top_block=rules.p6, gn_conv_bias=rules.gn_conv_bias)
    return Backbone(body, fpn, size_divisibility(cfg))


def build_res5_stage(cfg, stride: int = 2) -> nn.Sequential:
    """The C4 box head's res5 stage: same block type, norm and variant as the trunk; ImageNet
    ``layer4.*`` weights from ``BACKBONE.WEIGHTS`` when given. (R, 1024, 14, 14) → (R, 2048, 7, 7)
    (256 → 512 for ResNet-18)."""
    b, rules = cfg.BACKBONE, resolve_rules(cfg)
    stage = make_res5_stage(list(b.RESNET_NUM_BLOCKS), variant=b.VARIANT, norm=b.NORM, stride=stride,
                            freeze_affine=rules.freeze_affine, zero_init_residual=rules.zero_init_residual,
                            stride_1x1=rules.stride_1x1)
    if b.WEIGHTS:
        load_pretrained(stage, b.WEIGHTS, prefix="layer4.")
    return stage


def build_rpn(cfg, in_channels: int) -> RPN:
    r, rules = cfg.RPN, resolve_rules(cfg)
    if cfg.MODE_FPN:
        sizes, strides, hidden = [[s] for s in r.ANCHOR_SIZES], list(FPN_STRIDES), cfg.FPN.RPN_HEAD_DIM or in_channels
    else:
        sizes, strides, hidden = [list(r.ANCHOR_SIZES)], [C4_STRIDE], r.HEAD_DIM
    anchors = AnchorGenerator(sizes, r.ANCHOR_RATIOS, strides, cells=rules.anchor_cells, grid=rules.anchor_grid)
    head = RPNHead(in_channels, anchors.num_anchors_per_location(), hidden)
    per_level = bool(cfg.MODE_FPN and cfg.FPN.PROPOSAL_MODE == "Level")
    pre = ((r.TRAIN_PER_LEVEL_NMS_TOPK, r.TEST_PER_LEVEL_NMS_TOPK) if per_level
           else (r.TRAIN_PRE_NMS_TOPK, r.TEST_PRE_NMS_TOPK))
    coder = BoxCoder(r.BBOX_REG_WEIGHTS, bbox_decode_clamp(cfg))
    return RPN(anchors, head, coder, per_level=per_level, pre_nms_topk=pre,
               post_nms_topk=(r.TRAIN_POST_NMS_TOPK, r.TEST_POST_NMS_TOPK), nms_thresh=r.PROPOSAL_NMS_THRESH,
               min_size=r.MIN_SIZE, score_thresh=r.SCORE_THRESH, fg_iou=r.POSITIVE_ANCHOR_THRESH,
               bg_iou=r.NEGATIVE_ANCHOR_THRESH, batch_per_im=r.BATCH_PER_IM, fg_ratio=r.FG_RATIO,
               smooth_l1_beta=r.SMOOTH_L1_BETA, border_anchors=rules.border_anchors,
               low_quality=rules.low_quality_matches, small_proposals=rules.proposal_min_size)


def build_box_head(cfg, in_channels: int, resolution: int) -> nn.Module:
    name, rules = cfg.FPN.FRCNN_HEAD_FUNC, resolve_rules(cfg)
    if name == "fastrcnn_2fc_head":
        return FastRCNN2FCHead(in_channels, resolution, cfg.FPN.FRCNN_FC_HEAD_DIM, fc_init=rules.fc_init,
                               avg_pool=rules.box_head_pool == "pool14_avg3x3s2")
    norm = "GN" if name == "fastrcnn_4conv1fc_gn_head" else "None"
    return FastRCNNConvFCHead(in_channels, resolution, cfg.FPN.FRCNN_CONV_HEAD_DIM, cfg.FPN.FRCNN_FC_HEAD_DIM,
                              norm=norm, gn_order=rules.gn_head_order, fc_init=rules.fc_init)


def build_mask_head(cfg, in_channels: int) -> nn.Module:
    if not cfg.MODE_FPN:
        return MaskRCNNUpConvHead(in_channels, cfg.DATA.NUM_CATEGORY, cfg.MRCNN.HEAD_DIM, num_convs=0,
                                  gn_order=resolve_rules(cfg).gn_head_order)
    norm = "GN" if cfg.FPN.MRCNN_HEAD_FUNC == "maskrcnn_up4conv_gn_head" else "None"
    return MaskRCNNUpConvHead(in_channels, cfg.DATA.NUM_CATEGORY, cfg.MRCNN.HEAD_DIM, num_convs=4, norm=norm,
                              gn_order=resolve_rules(cfg).gn_head_order)


def build_roi_heads(cfg, in_channels: int) -> ROIHeads:
    f, t, rules = cfg.FRCNN, cfg.TEST, resolve_rules(cfg)
    num_classes = cfg.DATA.NUM_CATEGORY + 1
    mask_head = mask_pooler = None

    def common(mask_head):
        """The arguments every kind of heads takes (mask_targets only with a mask head)."""
        return dict(num_classes=num_classes, batch_per_im=f.BATCH_PER_IM, fg_ratio=f.FG_RATIO,
                    smooth_l1_beta=f.SMOOTH_L1_BETA, score_thresh=t.RESULT_SCORE_THRESH, nms_thresh=t.FRCNN_NMS_THRESH,
                    detections_per_img=t.RESULTS_PER_IM, min_box_size=t.MIN_BOX_SIZE, mask_head=mask_head,
                    mask_targets=rules.mask_targets if mask_head is not None else None,
                    detections=rules.detections, fp32_box_head=False)  # optimize_for_inference's choice

    if cfg.MODE_FPN:
        roi_strides = list(FPN_STRIDES[:4])  # P2-P5 (P6 is for the RPN only)
        # RULES.BOX_HEAD_POOL='pool14_avg3x3s2': pooled 14x14, the head average-pools to 7x7 before fc6
        box_pooler = ROIPooler(7 if rules.box_head_pool == "pool7" else 14, roi_strides, f.ROI_SAMPLING_RATIO,
                               aligned=rules.roi_aligned, level_mapper=rules.roi_levels)
        if cfg.FPN.CASCADE:
            ious, weights = list(cfg.CASCADE.IOUS), [list(w) for w in cfg.CASCADE.BBOX_REG_WEIGHTS]
        else:
            ious, weights = [f.FG_THRESH], [list(f.BBOX_REG_WEIGHTS)]
        stages = [BoxStage(build_box_head(cfg, in_channels, 7), num_classes, cfg.FPN.CASCADE, w,
                           clip=bbox_decode_clamp(cfg)) for w in weights]
        if cfg.MODE_MASK:
            # the head upsamples 2x: pooled at RESOLUTION/2, predicted at RESOLUTION (28 by default)
            mask_pooler = ROIPooler(cfg.MRCNN.RESOLUTION // 2, roi_strides, f.ROI_SAMPLING_RATIO,
                                    aligned=rules.roi_aligned, level_mapper=rules.roi_levels)
            mask_head = build_mask_head(cfg, in_channels)
        if cfg.FPN.CASCADE:
            return CascadeROIHeads(box_pooler, stages, ious, mask_pooler=mask_pooler,
                                   mask_resolution=cfg.MRCNN.RESOLUTION, **common(mask_head))
        return StandardROIHeads(box_pooler, stages[0], fg_iou=ious[0], mask_pooler=mask_pooler,
                                mask_resolution=cfg.MRCNN.RESOLUTION, **common(mask_head))
    box_pooler = ROIPooler(14, [C4_STRIDE], f.ROI_SAMPLING_RATIO, aligned=rules.roi_aligned, level_mapper=None)
    # C4: the box head owns res5, which doubles res4's width
    head = Res5Head(build_res5_stage(cfg), 2 * res4_channels(cfg.BACKBONE.RESNET_NUM_BLOCKS))
    stage = BoxStage(head, num_classes, False, list(f.BBOX_REG_WEIGHTS), clip=bbox_decode_clamp(cfg))
    if cfg.MODE_MASK:
        mask_head = build_mask_head(cfg, head.out_dim)  # reads the box head's res5 features
    return Res5ROIHeads(box_pooler, stage, fg_iou=f.FG_THRESH, mask_resolution=14, **common(mask_head))


def size_divisibility(cfg) -> int:
    """What the padded batch is a multiple of: ``PREPROC.SIZE_DIVISIBILITY``, or where that is 0 what
    the architecture needs, as tensorpack: 32 with FPN (``FPN.RESOLUTION_REQUIREMENT``), 1 for C4
    (tensorpack pads a C4 image not at all)."""
    return int(cfg.PREPROC.SIZE_DIVISIBILITY) or (32 if cfg.MODE_FPN else 1)


def build_preprocessor(cfg) -> Preprocessor:
    p, rules = cfg.PREPROC, resolve_rules(cfg)
    return Preprocessor(p.PIXEL_MEAN, p.PIXEL_STD, p.TEST_SHORT_EDGE_SIZE, max_size(cfg), size_divisibility(cfg),
                        resize=rules.resize, resample=rules.resample, mask_paste=rules.mask_paste,
                        rescale_boxes=rules.rescale_boxes)


def build_model(cfg, classes=None) -> GeneralizedRCNN:
    """The detector for ``cfg`` (finalised here if it was not): every component built from it once.

    classes: names of labels 1..C (default ``DATA.CLASS_NAMES``, else ``class_1..class_C``).
    """
    cfg = cfg.clone().finalize()
    n = cfg.DATA.NUM_CATEGORY
    names = list(classes or cfg.DATA.CLASS_NAMES or [f"class_{i}" for i in range(1, n + 1)])
    if len(names) != n:
        raise ValueError(f"{len(names)} class names for DATA.NUM_CATEGORY={n}")
    backbone = build_backbone(cfg)
    model = GeneralizedRCNN(backbone, build_rpn(cfg, backbone.out_channels),
                            build_roi_heads(cfg, backbone.out_channels), build_preprocessor(cfg), names,
                            train_short_edge=cfg.PREPROC.TRAIN_SHORT_EDGE_SIZE[1])
    model.config = cfg.readonly()
    return model
