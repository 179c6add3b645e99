"""The feature extractor of a detector (built from a config by ``gluon_rcnn.builders.build_backbone``).

FPN models (``cfg.MODE_FPN``): ResNet res2..res5 → FPN → ``{'p2'..'p6'}``, ``out_channels =
FPN.NUM_CHANNEL``, strides ``{'p2': 4, 'p3': 8, 'p4': 16, 'p5': 32, 'p6': 64}``.
C4 models: ResNet up to res4 → ``{'res4'}``, stride 16, ``out_channels`` 1024 (256 for
ResNet-18); the res5 stage then belongs to the box head (``gluon_rcnn.builders.build_res5_stage``).

Parameter names are ``body.*`` (the ResNet, torchvision's names) and ``fpn.*``, the same as
the ``backbone.body.*``/``backbone.fpn.*`` part of torchvision's detection checkpoints when the
detector stores this module as ``backbone``.
"""
from __future__ import annotations

from torch import Tensor, nn

from ..nn.hybrid import HybridBlock
from .fpn import FPN
from .resnet import Bottleneck, ResNet

__all__ = ["Backbone", "res4_channels"]


class Backbone(HybridBlock):
    """ResNet trunk (``body``) plus an optional FPN (``fpn``).

    Input: normalised ``(N, 3, H, W)`` float tensor, ``H`` and ``W`` multiples of
    ``size_divisibility`` (default 32 with FPN, 1 without). Output: ``{name: (N, out_channels, H/stride, W/stride)}`` with
    names and strides in ``self.strides`` (insertion order = finest first).

    Attributes: ``out_channels`` (int), ``strides`` (``{name: stride}``), ``size_divisibility``.
    """

    def __init__(self, body: ResNet, fpn: FPN | None = None, size_divisibility: int | None = None):
        super().__init__()
        self.body = body
        self.fpn = fpn
        # FPN's top-down sums want every level exactly half the previous: multiples of 32 (P5's
        # stride; tensorpack's FPN.RESOLUTION_REQUIREMENT). A C4 trunk takes any size; so does an FPN
        # built for unpadded input (size_divisibility=1, GluonCV: the upsampled map is cropped).
        self.size_divisibility = int(size_divisibility or (32 if fpn is not None else 1))
        # every stride-2 layer of the trunk then sees an even size, where RULES.FLOOR_STRIDE2's crop
        # to floor(n/2) keeps everything: the trunk skips it (same values; a compiled training graph
        # with symbolic sizes cannot order the strides of that no-op view, and inductor failed)
        if hasattr(body, "even_input_sizes") and self.size_divisibility % (2 ** (body.num_stages + 1)) == 0:
            body.even_input_sizes = True  # num_stages stages: stride 4 after the stem, x2 per later stage
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


def res4_channels(resnet_num_blocks) -> int:
    """Channels of res4 (1024 for ResNet-50/101, 256 for ResNet-18)."""
    return 256 * (Bottleneck.expansion if list(resnet_num_blocks) != [2, 2, 2, 2] else 1)
