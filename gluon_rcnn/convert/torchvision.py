"""Import torchvision's ``fasterrcnn_resnet50_fpn`` / ``maskrcnn_resnet50_fpn`` into gluon_rcnn.

``from_torchvision(model)`` reads the torchvision model's settings (anchor sizes, RPN top-k and
thresholds, RoIAlign flavour, box-coder weights, test thresholds, resize sizes, normalisation),
builds the gluon_rcnn configuration that behaves the same, and copies every weight over. Where
torchvision's defaults differ from tensorpack's (per-level top-k 2000/1000, RPN minimum box size
1e-3, RoIAlign without the half-pixel shift, a minimum detection size of 1e-2, smooth-L1 with
beta 1/9), the converted config takes torchvision's. A FrozenBatchNorm2d ``eps`` other than ours (1e-5;
torchvision's published COCO_V1 weights run with ``eps=0``) is folded into ``running_var``.
"""
from __future__ import annotations

import logging
import re

import torch
from torch import nn

from ..config import get_default_config
from ..builders import build_model
from ..detector import GeneralizedRCNN
from ..utils.io import load_checkpoint
from .source import WeightSource, check_name_digest, file_name, register

__all__ = ["from_torchvision", "torchvision_config", "torchvision_model"]

logger = logging.getLogger(__name__)


def _norm_name(model) -> str:
    from torchvision.ops import FrozenBatchNorm2d as TVFrozen
    bn = model.backbone.body.bn1
    if isinstance(bn, TVFrozen):
        return "FreezeBN"
    if isinstance(bn, nn.BatchNorm2d):
        return "BN"
    raise ValueError(f"unsupported norm layer {type(bn).__name__} in the torchvision backbone")


def _freeze_at(model) -> int:
    body = model.backbone.body
    if body.conv1.weight.requires_grad:
        return 0
    return 2 if not any(p.requires_grad for p in body.layer1.parameters()) else 1


def torchvision_config(model, classes=None):
    """The gluon_rcnn config equivalent to a torchvision Faster/Mask R-CNN ResNet-50-FPN.

    classes: names of labels 1..C in ``DATA.CLASS_NAMES`` (default: torchvision's COCO category names,
    'N/A' gaps included, when the class count is COCO's 90; else none)."""
    from torchvision.models.detection import FasterRCNN, MaskRCNN

    if not isinstance(model, FasterRCNN):
        raise TypeError(f"expected a torchvision FasterRCNN/MaskRCNN, got {type(model).__name__}")
    body = model.backbone.body
    blocks = [len(getattr(body, f"layer{i}")) for i in range(1, 5)]
    rpn, rh, tf = model.rpn, model.roi_heads, model.transform
    ag = rpn.anchor_generator
    cfg = get_default_config()
    cfg.RULES.PROFILE = "torchvision"  # torchvision's rules (gluon_rcnn.profiles), not tensorpack's defaults
    cfg.MODE_FPN = True
    cfg.MODE_MASK = isinstance(model, MaskRCNN)
    cfg.BACKBONE.RESNET_NUM_BLOCKS = blocks
    cfg.BACKBONE.VARIANT = "v1b"
    cfg.BACKBONE.NORM = _norm_name(model)
    cfg.BACKBONE.FREEZE_AT = _freeze_at(model)
    cfg.DATA.NUM_CATEGORY = rh.box_predictor.cls_score.out_features - 1
    cfg.RPN.ANCHOR_SIZES = [float(s[0]) for s in ag.sizes]
    cfg.RPN.ANCHOR_RATIOS = [float(r) for r in ag.aspect_ratios[0]]
    cfg.FPN.PROPOSAL_MODE = "Level"
    cfg.RPN.TRAIN_PER_LEVEL_NMS_TOPK = rpn._pre_nms_top_n["training"]
    cfg.RPN.TEST_PER_LEVEL_NMS_TOPK = rpn._pre_nms_top_n["testing"]
    cfg.RPN.TRAIN_POST_NMS_TOPK = rpn._post_nms_top_n["training"]
    cfg.RPN.TEST_POST_NMS_TOPK = rpn._post_nms_top_n["testing"]
    cfg.RPN.PROPOSAL_NMS_THRESH = float(rpn.nms_thresh)
    cfg.RPN.SCORE_THRESH = float(rpn.score_thresh)
    cfg.RPN.MIN_SIZE = float(rpn.min_size)
    cfg.RPN.POSITIVE_ANCHOR_THRESH = float(rpn.proposal_matcher.high_threshold)
    cfg.RPN.NEGATIVE_ANCHOR_THRESH = float(rpn.proposal_matcher.low_threshold)
    cfg.RPN.BATCH_PER_IM = rpn.fg_bg_sampler.batch_size_per_image
    cfg.RPN.FG_RATIO = float(rpn.fg_bg_sampler.positive_fraction)
    cfg.RPN.BBOX_REG_WEIGHTS = [float(w) for w in rpn.box_coder.weights]
    cfg.FRCNN.BBOX_REG_WEIGHTS = [float(w) for w in rh.box_coder.weights]
    cfg.FRCNN.FG_THRESH = float(rh.proposal_matcher.high_threshold)
    cfg.FRCNN.BATCH_PER_IM = rh.fg_bg_sampler.batch_size_per_image
    cfg.FRCNN.FG_RATIO = float(rh.fg_bg_sampler.positive_fraction)
    cfg.FRCNN.ROI_SAMPLING_RATIO = int(rh.box_roi_pool.sampling_ratio)
    cfg.FRCNN.SMOOTH_L1_BETA = 1.0 / 9
    cfg.FPN.NUM_CHANNEL = model.backbone.out_channels
    cfg.FPN.FRCNN_HEAD_FUNC = "fastrcnn_2fc_head"
    cfg.FPN.FRCNN_FC_HEAD_DIM = rh.box_head.fc7.out_features
    cfg.TEST.RESULT_SCORE_THRESH = float(rh.score_thresh)
    cfg.TEST.FRCNN_NMS_THRESH = float(rh.nms_thresh)
    cfg.TEST.RESULTS_PER_IM = int(rh.detections_per_img)
    cfg.TEST.MIN_BOX_SIZE = 1e-2  # torchvision's postprocess_detections drops boxes under 0.01 px
    sizes = [int(s) for s in tf.min_size]
    cfg.PREPROC.TRAIN_SHORT_EDGE_SIZE = [min(sizes), max(sizes)]
    cfg.PREPROC.TEST_SHORT_EDGE_SIZE = sizes[-1]
    cfg.PREPROC.MAX_SIZE = int(tf.max_size)
    cfg.PREPROC.PIXEL_MEAN = [float(m) * 255 for m in tf.image_mean]
    cfg.PREPROC.PIXEL_STD = [float(s) * 255 for s in tf.image_std]
    cfg.PREPROC.SIZE_DIVISIBILITY = int(tf.size_divisible)
    if cfg.MODE_MASK:
        cfg.MRCNN.HEAD_DIM = rh.mask_predictor.conv5_mask.out_channels
        cfg.MRCNN.RESOLUTION = 2 * rh.mask_roi_pool.output_size[0]
    names = classes or _coco_names(cfg.DATA.NUM_CATEGORY)
    if names:
        cfg.DATA.CLASS_NAMES = list(names)
    return cfg.finalize()


def _state_map(cfg) -> dict[str, str]:
    """gluon_rcnn state-dict key → torchvision key, for the parts whose names differ."""
    m = {"rpn.head.conv.weight": "rpn.head.conv.0.0.weight", "rpn.head.conv.bias": "rpn.head.conv.0.0.bias"}
    for p in ("weight", "bias"):
        m[f"roi_heads.stages.0.head.fc6.{p}"] = f"roi_heads.box_head.fc6.{p}"
        m[f"roi_heads.stages.0.head.fc7.{p}"] = f"roi_heads.box_head.fc7.{p}"
        m[f"roi_heads.stages.0.predictor.cls_score.{p}"] = f"roi_heads.box_predictor.cls_score.{p}"
        m[f"roi_heads.stages.0.predictor.bbox_pred.{p}"] = f"roi_heads.box_predictor.bbox_pred.{p}"
        if cfg.MODE_MASK:
            for i in range(4):
                m[f"roi_heads.mask_head.convs.{3 * i}.{p}"] = f"roi_heads.mask_head.{i}.0.{p}"
            m[f"roi_heads.mask_head.deconv.{p}"] = f"roi_heads.mask_predictor.conv5_mask.{p}"
            m[f"roi_heads.mask_head.predictor.{p}"] = f"roi_heads.mask_predictor.mask_fcn_logits.{p}"
    return m


def _coco_names(num_category: int):
    try:
        from torchvision.models.detection import MaskRCNN_ResNet50_FPN_Weights
        cats = MaskRCNN_ResNet50_FPN_Weights.COCO_V1.meta["categories"][1:]
        if len(cats) == num_category:
            return cats
    except Exception:  # noqa: BLE001 - names are a nicety; fall back to generic ones
        pass
    return None


def _fold_norm_eps(model, ours, mapping, new_state) -> None:
    """torchvision's COCO_V1 detectors run their FrozenBatchNorm2d with ``eps=0`` (``overwrite_eps(model,
    0.0)`` after loading the published weights); ours use 1e-5. Both compute ``weight / sqrt(running_var
    + eps)``, so ``running_var + eps_theirs - eps_ours`` gives ours the same scale and shift."""
    def eps_of(net):
        return {n: float(m.eps) for n, m in net.named_modules() if hasattr(m, "eps") and hasattr(m, "running_var")}
    theirs, own = eps_of(model), eps_of(ours)
    for name, eps in own.items():
        key = f"{name}.running_var"
        src = mapping.get(key, key)[: -len(".running_var")]
        if key in new_state and src in theirs and theirs[src] != eps:
            new_state[key] = new_state[key] + (theirs[src] - eps)


@torch.no_grad()
def from_torchvision(model, classes=None) -> GeneralizedRCNN:
    """The gluon_rcnn model equivalent to torchvision's ``model`` (weights copied), in eval mode.

    classes: names of labels 1..C (default: torchvision's COCO category names, 'N/A' gaps
    included, when the class count is COCO's 90).
    """
    cfg = torchvision_config(model, classes)
    ours = build_model(cfg)
    theirs = model.state_dict()
    mapping = _state_map(cfg)
    new_state = {}
    for key, ref in ours.state_dict().items():
        src = mapping.get(key, key)
        if src not in theirs:
            raise KeyError(f"no torchvision weight for {key} (looked for {src})")
        t = theirs[src]
        if key == "roi_heads.mask_head.predictor.weight" or key == "roi_heads.mask_head.predictor.bias":
            t = t[1:]  # torchvision predicts a mask for the background class too; ours does not
        if t.shape != ref.shape:
            raise ValueError(f"shape mismatch for {key}: ours {tuple(ref.shape)}, torchvision {tuple(t.shape)}")
        new_state[key] = t.clone()
    _fold_norm_eps(model, ours, mapping, new_state)
    ours.load_state_dict(new_state, strict=True)
    return ours.eval()


# ------------------------------------------------------------------------------------------------
# torchvision's model as published, and the zoo's published weights (weights.format "torchvision-pth")
# ------------------------------------------------------------------------------------------------

def torchvision_model(arch: str):
    """torchvision's ``arch`` (``fasterrcnn_resnet50_fpn`` / ``maskrcnn_resnet50_fpn``) as built for its
    published COCO weights, without weights: FrozenBatchNorm2d trunk (``eps=0``, as its builder sets for the
    COCO_V1 weights), 3 trainable layers, 91 labels.
    (``arch(weights=None, weights_backbone=None)`` would build a BatchNorm2d trunk with every layer
    trainable: another architecture, and a state dict with ``num_batches_tracked`` keys the file lacks.)"""
    from torchvision.models import resnet50
    from torchvision.models.detection import FasterRCNN, MaskRCNN
    from torchvision.models.detection._utils import overwrite_eps
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops import FrozenBatchNorm2d

    cls = {"fasterrcnn_resnet50_fpn": FasterRCNN, "maskrcnn_resnet50_fpn": MaskRCNN}.get(arch)
    if cls is None:
        raise ValueError(f"unknown torchvision detector {arch!r} (known: fasterrcnn_resnet50_fpn, maskrcnn_resnet50_fpn)")
    backbone = _resnet_fpn_extractor(resnet50(weights=None, norm_layer=FrozenBatchNorm2d), 3)
    model = cls(backbone, num_classes=91).eval()
    overwrite_eps(model, 0.0)  # as torchvision's builder does for its COCO_V1 weights
    return model


_HASH_IN_NAME = re.compile(r"-([a-f0-9]+)\.")  # torch.hub's HASH_REGEX


@register
class TorchvisionSource(WeightSource):
    """``{"url": "https://download.pytorch.org/models/<name>-<sha256[:8]>.pth", "sha256_prefix": "...", "format":
    "torchvision-pth", "arch": "fasterrcnn_resnet50_fpn"}`` (torchvision's weights enums): the file's sha256
    must start with the prefix in its name (torch.hub's ``check_hash``; the full sha256 is recorded at the
    first download and checked afterwards); it is loaded ``weights_only`` into :func:`torchvision_model` and
    converted by :func:`from_torchvision`. ``$GLUON_RCNN_TORCHVISION_URL`` replaces
    ``https://download.pytorch.org/models/``."""

    format, label, field, what = "torchvision-pth", "torchvision pth", "arch", "torchvision's {} weights"
    url_env, base = "GLUON_RCNN_TORCHVISION_URL", "https://download.pytorch.org/models/"

    def checksums(self, weights, sha256=None):
        """The sha256 prefix in the file name is what torchvision publishes: the download checks it (on
        the download and on a file put in the cache by hand) before it records the full sha256."""
        sums = super().checksums(weights, sha256)
        m = _HASH_IN_NAME.search(file_name(weights.get("url") or ""))
        if m and not sums["sha256"]:
            sums["sha256_prefix"] = m.group(1)
        return sums

    def convert(self, path, weights, url, digest, dest):
        from .checkpoint import save_checkpoint

        arch = weights["arch"]
        check_name_digest(digest, file_name(url), "sha256", _HASH_IN_NAME, "torchvision")  # digest: its sha256
        state = load_checkpoint(path)
        if not isinstance(state, dict):
            raise ValueError(f"{path} holds no state dict")
        model = torchvision_model(arch)
        model.load_state_dict(state, strict=True)
        logger.info("converting torchvision's %s (%s) into %s", path, arch, dest)
        return save_checkpoint(from_torchvision(model), dest, {"url": url, "arch": arch, "pth_sha256": digest})
