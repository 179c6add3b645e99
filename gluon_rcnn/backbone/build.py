"""``build_backbone(cfg)``: the feature extractor of a detector, chosen by the config.

FPN models (``cfg.MODE_FPN``): ResNet res2..res5 → FPN → ``{'p2'..'p6'}``, ``out_channels =
FPN.NUM_CHANNEL``, strides ``{'p2': 4, 'p3': 8, 'p4': 16, 'p5': 32, 'p6': 64}``.
C4 models: ResNet up to res4 → ``{'res4'}``, stride 16, ``out_channels`` 1024 (256 for
ResNet-18); the res5 stage then belongs to the box head (:func:`build_res5_stage`).

Parameter names are ``body.*`` (the ResNet, torchvision's names) and ``fpn.*``, the same as
the ``backbone.body.*``/``backbone.fpn.*`` part of torchvision's detection checkpoints when the
detector stores this module as ``backbone``.
"""
from __future__ import annotations

from torch import Tensor, nn

from ..nn.hybrid import HybridBlock
from .fpn import FPN
from .resnet import Bottleneck, ResNet, load_pretrained, make_res5_stage

__all__ = ["Backbone", "build_backbone", "build_res5_stage", "res4_channels"]


class Backbone(HybridBlock):
    """ResNet trunk (``body``) plus an optional FPN (``fpn``).

    Input: normalised ``(N, 3, H, W)`` float tensor, ``H`` and ``W`` multiples of
    ``size_divisibility`` (32). Output: ``{name: (N, out_channels, H/stride, W/stride)}`` with
    names and strides in ``self.strides`` (insertion order = finest first).

    Attributes: ``out_channels`` (int), ``strides`` (``{name: stride}``), ``size_divisibility``.
    """

    size_divisibility = 32

    def __init__(self, body: ResNet, fpn: FPN | None = None):
        super().__init__()
        self.body = body
        self.fpn = fpn
        if fpn is not None:
            first = min(body.feature_strides.values())
            self.strides = {name: first * 2 ** i for i, name in enumerate(fpn.out_names)}
            self.out_channels = fpn.out_channels
        else:
            self.strides = dict(body.feature_strides)
            channels = set(body.feature_channels.values())
            if len(channels) != 1:
                raise ValueError("a backbone without FPN must return features of one width, got "
                                 f"{body.feature_channels}")
            self.out_channels = channels.pop()

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if x.shape[-2] % self.size_divisibility or x.shape[-1] % self.size_divisibility:
            raise ValueError(f"backbone input size {tuple(x.shape[-2:])} is not a multiple of "
                             f"{self.size_divisibility}; pad the batch (PREPROC.SIZE_DIVISIBILITY)")
        features = self.body(x)
        return self.fpn(features) if self.fpn is not None else features


def build_backbone(cfg) -> Backbone:
    """The backbone for ``cfg`` (a finalised or default config).

    Reads ``MODE_FPN``, ``BACKBONE.{RESNET_NUM_BLOCKS, VARIANT, NORM, FREEZE_AT, STEM_WIDTH,
    WEIGHTS}`` and ``FPN.{NUM_CHANNEL, NORM}``. A non-empty ``BACKBONE.WEIGHTS`` (a local
    torchvision-style ImageNet state dict) is loaded into the trunk; for C4 its ``layer4.*``
    tensors are left for :func:`build_res5_stage`.
    """
    b = cfg.BACKBONE
    out_features = ("res2", "res3", "res4", "res5") if cfg.MODE_FPN else ("res4",)
    body = ResNet(list(b.RESNET_NUM_BLOCKS), variant=b.VARIANT, norm=b.NORM, freeze_at=b.FREEZE_AT,
                  stem_width=b.STEM_WIDTH, out_features=out_features)
    if b.WEIGHTS:
        load_pretrained(body, b.WEIGHTS)
    fpn = None
    if cfg.MODE_FPN:
        fpn = FPN([body.feature_channels[k] for k in out_features], cfg.FPN.NUM_CHANNEL,
                  norm=cfg.FPN.NORM, top_block="maxpool")
    return Backbone(body, fpn)


def build_res5_stage(cfg, stride: int = 2) -> nn.Sequential:
    """The C4 box head's res5 stage for ``cfg``: same block type, norm and variant as the
    trunk, ImageNet ``layer4.*`` weights loaded from ``BACKBONE.WEIGHTS`` when given.

    Input ``(R, 1024, 14, 14)`` pooled RoI features (256 channels for ResNet-18), output
    ``(R, 2048, 7, 7)`` (512 for ResNet-18).
    """
    b = cfg.BACKBONE
    stage = make_res5_stage(list(b.RESNET_NUM_BLOCKS), variant=b.VARIANT, norm=b.NORM, stride=stride)
    if b.WEIGHTS:
        load_pretrained(stage, b.WEIGHTS, prefix="layer4.")
    return stage


def res4_channels(cfg) -> int:
    """Channels of res4 for ``cfg`` (1024 for ResNet-50/101, 256 for ResNet-18)."""
    return 256 * (Bottleneck.expansion if list(cfg.BACKBONE.RESNET_NUM_BLOCKS) != [2, 2, 2, 2] else 1)
