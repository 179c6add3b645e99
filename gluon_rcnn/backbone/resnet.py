"""ResNet trunks for detection: v1b (torchvision layout) and v1d (GluonCV's deep-stem variant).

``ResNet(x)`` takes a normalised ``(N, 3, H, W)`` float tensor and returns a dict of feature
maps ``{'res2': (N, C2, H/4, W/4), 'res3': .../8, 'res4': .../16, 'res5': .../32}`` (only the
names in ``out_features``; sizes round up for odd inputs), with ``C2..C5 = 256, 512, 1024, 2048``
for the bottleneck nets (ResNet-50/101) and ``64, 128, 256, 512`` for ResNet-18.

Parameter names
---------------
v1b is torchvision's ResNet, names included: ``conv1`` (7x7), ``bn1``, ``layer1..layer4``;
each block has ``conv1/bn1/conv2/bn2[/conv3/bn3]`` and ``downsample.0`` (1x1 conv) /
``downsample.1`` (norm). A torchvision ImageNet state dict loads as is (its ``fc.*`` is skipped
by :func:`gluon_rcnn.backbone.pretrained.load_pretrained`), and so does the ``backbone.body.*``
part of torchvision's detection checkpoints.

v1d follows GluonCV's ``ResNetV1b(deep_stem=True, avg_down=True)`` and timm's ``resnet*d``,
whose layouts agree: ``conv1`` is a Sequential ``conv1.0`` (3x3, s2) ``conv1.1`` (norm)
``conv1.3`` (3x3) ``conv1.4`` (norm) ``conv1.6`` (3x3), then ``bn1``; the shortcut is
``downsample.0`` (AvgPool2d, or Identity when the stride is 1), ``downsample.1`` (1x1 conv,
stride 1), ``downsample.2`` (norm). Those weights therefore load without renaming.

``layerK`` is the stage the detection literature calls ``res{K+1}`` (layer1 = res2, stride 4).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from ..nn.hybrid import HybridBlock
from ..nn.norm import FrozenBatchNorm2d, get_norm

__all__ = ["ResNet", "BasicBlock", "Bottleneck", "make_res5_stage", "make_stage", "check_norm_kinds", "STAGE_NAMES"]

STAGE_NAMES = ("res2", "res3", "res4", "res5")


def _conv(cin: int, cout: int, k: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, bias=bias)


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34). ``(N, inplanes, H, W) -> (N, planes, H/stride, W/stride)``.
    ``freeze_affine``: ``RULES.FREEZE_AFFINE`` (as :class:`ResNet`'s; no default)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 norm: str = "FreezeBN", *, freeze_affine: bool):
        super().__init__()
        bias = norm == "None"  # a conv followed by a norm needs no bias: the norm's shift is one
        self.conv1 = _conv(inplanes, planes, 3, stride, bias)
        self.bn1 = get_norm(norm, planes, freeze_affine=freeze_affine)
        self.conv2 = _conv(planes, planes, 3, 1, bias)
        self.bn2 = get_norm(norm, planes, freeze_affine=freeze_affine)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def last_norm(self) -> nn.Module:
        return self.bn2

    def last_conv(self) -> nn.Conv2d:
        return self.conv2

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 → 3x3 (carries the stride, "v1b") → 1x1 expanding 4x (ResNet-50/101/152).

    ``(N, inplanes, H, W) -> (N, 4*planes, H/stride, W/stride)``.
    ``stride_1x1=True`` puts the stride in the first 1x1 conv instead (the original MSRA ResNets:
    detectron2's ``RESNETS.STRIDE_IN_1X1=True``, tensorpack's ``BACKBONE.STRIDE_1X1``; ours ``RULES.STRIDE_1X1``); same parameters.
    ``freeze_affine``: ``RULES.FREEZE_AFFINE``. Both as :class:`ResNet`'s, with no default.
    """

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 norm: str = "FreezeBN", *, freeze_affine: bool, stride_1x1: bool):
        super().__init__()
        bias = norm == "None"
        stride_1, stride_3 = (stride, 1) if stride_1x1 else (1, stride)
        self.conv1 = _conv(inplanes, planes, 1, stride_1, bias)
        self.bn1 = get_norm(norm, planes, freeze_affine=freeze_affine)
        self.conv2 = _conv(planes, planes, 3, stride_3, bias)
        self.bn2 = get_norm(norm, planes, freeze_affine=freeze_affine)
        self.conv3 = _conv(planes, planes * 4, 1, 1, bias)
        self.bn3 = get_norm(norm, planes * 4, freeze_affine=freeze_affine)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def last_norm(self) -> nn.Module:
        return self.bn3

    def last_conv(self) -> nn.Conv2d:
        return self.conv3

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _downsample(inplanes: int, outplanes: int, stride: int, variant: str, norm: str, *,
                freeze_affine: bool) -> nn.Sequential:
    bias = norm == "None"
    out_norm = get_norm(norm, outplanes, freeze_affine=freeze_affine)
    if variant == "v1d":
        # average-pool then a stride-1 1x1 conv: the shortcut sees every input pixel instead of
        # one in four (GluonCV's avg_down); ceil_mode keeps its size equal to the 3x3 path's
        pool = (nn.AvgPool2d(stride, stride, ceil_mode=True, count_include_pad=False) if stride > 1
                else nn.Identity())
        return nn.Sequential(pool, _conv(inplanes, outplanes, 1, 1, bias), out_norm)
    return nn.Sequential(_conv(inplanes, outplanes, 1, stride, bias), out_norm)


def make_stage(block: type, inplanes: int, planes: int, num_blocks: int, stride: int, *,
               variant: str = "v1b", norm: str = "FreezeBN", freeze_affine: bool,
               stride_1x1: bool) -> nn.Sequential:
    """One ResNet stage: ``num_blocks`` blocks, the first carrying ``stride`` and the shortcut
    projection. Input ``(N, inplanes, H, W)``, output ``(N, planes*expansion, H/stride, W/stride)``.
    Sub-module names are ``0..num_blocks-1`` as in torchvision's ``layerK``. The rules, as
    :class:`ResNet`'s (no default): ``freeze_affine`` (``RULES.FREEZE_AFFINE``, FreezeBN only, as
    :func:`~gluon_rcnn.nn.norm.get_norm`); ``stride_1x1`` (``RULES.STRIDE_1X1``): the first block's
    stride in its 1x1 conv (``True`` needs :class:`Bottleneck` blocks)."""
    outplanes = planes * block.expansion
    down = (_downsample(inplanes, outplanes, stride, variant, norm, freeze_affine=freeze_affine)
            if (stride != 1 or inplanes != outplanes) else None)
    if stride_1x1 and block is not Bottleneck:
        raise ValueError(f"stride_1x1=True needs bottleneck blocks, not {block.__name__}")
    rules = dict(freeze_affine=freeze_affine, **({"stride_1x1": stride_1x1} if block is Bottleneck else {}))
    blocks = [block(inplanes, planes, stride, down, norm, **rules)]
    blocks += [block(outplanes, planes, 1, None, norm, **rules) for _ in range(1, num_blocks)]
    return nn.Sequential(*blocks)


def _init_weights(module: nn.Module, zero_init_residual: bool) -> None:
    """torchvision's init: kaiming-normal (fan_out, relu) convs, norms weight 1 / bias 0.

    ``zero_init_residual`` (tensorpack's ``resnet_bottleneck``: ``get_norm(zero_init=True)`` on
    conv3): each block's last norm starts with weight 0 (without a norm, ``NORM='None'``, the
    block's last conv weight is 0 instead, as tensorpack's ``constant_initializer()`` on conv3),
    so every residual branch starts as zero and every block as ``relu(shortcut(x))``. ImageNet
    weights loaded afterwards (``load_pretrained``) overwrite it.
    """
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, FrozenBatchNorm2d):
            with torch.no_grad():
                m.weight.fill_(1.0)
                m.bias.zero_()
    if zero_init_residual:
        # each residual branch starts as zero, so every block starts as an identity
        for m in module.modules():
            if isinstance(m, (BasicBlock, Bottleneck)):
                norm = m.last_norm()
                with torch.no_grad():
                    if getattr(norm, "weight", None) is not None:
                        norm.weight.zero_()
                    elif isinstance(norm, nn.Identity):
                        m.last_conv().weight.zero_()  # its bias is already 0


def _is_bottleneck(depth_blocks: Sequence[int], bottleneck: bool | None) -> bool:
    return bottleneck if bottleneck is not None else list(depth_blocks) != [2, 2, 2, 2]


def make_res5_stage(depth_blocks: Sequence[int] | int = (3, 4, 6, 3), *, variant: str = "v1b",
                    norm: str = "FreezeBN", in_channels: int | None = None, stride: int = 2,
                    bottleneck: bool | None = None, zero_init_residual: bool, freeze_affine: bool,
                    stride_1x1: bool) -> nn.Sequential:
    """The res5 stage on its own, for the C4 box head (applied to pooled RoI features).

    Args:
        depth_blocks: the backbone's ``RESNET_NUM_BLOCKS`` (its last entry is the block count
            and ``[2,2,2,2]`` means basic blocks), or just the number of res5 blocks.
        variant, norm: as the backbone's (``'v1d'`` gives the avg-pool shortcut).
        in_channels: channels of the res4 features; default 1024 (bottleneck) / 256 (basic).
        stride: of the first block (2 in the C4 head: 14x14 RoI features → 7x7).
        zero_init_residual, freeze_affine, stride_1x1: the rules ``RULES.ZERO_INIT_RESIDUAL``,
            ``RULES.FREEZE_AFFINE``, ``RULES.STRIDE_1X1``, as :class:`ResNet`'s, keyword-only with no
            default (:meth:`ResNet.make_res5_stage` passes its trunk's). The head is never frozen, as
            tensorpack's ``resnet_conv5``: ``freeze_affine=False`` trains FreezeBN's gamma/beta;
            detectron2's ``Res5ROIHeads`` follows ``STRIDE_IN_1X1``.

    Input ``(R, in_channels, S, S)``, output ``(R, 2048, S/2, S/2)`` (512 for basic blocks).
    Module names ``0..n-1`` are those of torchvision's ``layer4``, so ImageNet weights load
    with ``gluon_rcnn.backbone.pretrained.load_pretrained(stage, path, prefix='layer4.')``.
    """
    if isinstance(depth_blocks, int):
        num_blocks, is_bottleneck = depth_blocks, (True if bottleneck is None else bottleneck)
    else:
        num_blocks, is_bottleneck = list(depth_blocks)[3], _is_bottleneck(depth_blocks, bottleneck)
    block = Bottleneck if is_bottleneck else BasicBlock
    if in_channels is None:
        in_channels = 256 * block.expansion
    stage = make_stage(block, in_channels, 512, num_blocks, stride, variant=variant, norm=norm,
                       freeze_affine=freeze_affine, stride_1x1=stride_1x1)
    _init_weights(stage, zero_init_residual)
    return stage


class ResNet(HybridBlock):
    """A ResNet trunk returning a dict of multi-scale features (see the module docstring).

    Args:
        depth_blocks: blocks per stage: ``[2,2,2,2]`` (R18), ``[3,4,6,3]`` (R50), ``[3,4,23,3]`` (R101).
        variant: ``'v1b'`` (torchvision layout) or ``'v1d'`` (deep stem + avg-pool shortcut).
        norm: ``'FreezeBN'``, ``'BN'``, ``'SyncBN'``, ``'GN'`` or ``'None'``.
        freeze_at: 0 nothing frozen; 1 the stem; 2 the stem and res2 (tensorpack's FREEZE_AT).
            Frozen parts get ``requires_grad=False`` and their BatchNorms become fully frozen
            ``FrozenBatchNorm2d`` (as detectron2 does), so their outputs really stay fixed,
            whatever ``freeze_affine`` says (tensorpack's ``backbone_scope(freeze=True)``).
        stem_width: width of the v1d deep stem's first two convs (its third has 2x).
        out_features: names of the returned stages, from ``res2..res5``.
        stages: number of residual stages to build (3: up to res4 for C4 models, 4: up to res5);
            default: up to the deepest name in ``out_features``.
        bottleneck: block type; default bottleneck unless ``depth_blocks == [2,2,2,2]``.

    The four rules are keyword-only with no default (a profile's: ``get_profile(name).rules()``,
    as :func:`gluon_rcnn.builders.build_backbone` passes them):

        zero_init_residual: ``RULES.ZERO_INIT_RESIDUAL``: zero the last norm's weight in each block
            (tensorpack: ``True``; torchvision: ``False``). See ``_init_weights``.
        freeze_affine: ``RULES.FREEZE_AFFINE``, FreezeBN only. ``True``: gamma/beta fixed too
            (torchvision); ``False``: gamma/beta of the stages outside ``freeze_at`` are trainable
            parameters over the frozen statistics (tensorpack).
        floor_stride2: ``RULES.FLOOR_STRIDE2``: ``True``: a stride-2 layer on ``n`` pixels gives
            ``floor(n/2)`` outputs (tensorpack's AlignPadding); ``False``: ``ceil(n/2)`` (PyTorch's
            symmetric padding: torchvision, detectron2, GluonCV). Only odd sizes differ.
        stride_1x1: ``RULES.STRIDE_1X1``: ``False`` (torchvision, tensorpack, GluonCV): a stage's
            stride is in the first block's 3x3 conv. ``True``: in its first 1x1 conv, as the original
            MSRA ResNets that detectron2's zoo starts from (``RESNETS.STRIDE_IN_1X1=True``).
            Same parameters either way; bottleneck blocks only.

    Attributes:
        feature_channels / feature_strides: ``{name: channels}`` / ``{name: stride in pixels}``
            of the returned features.
    """

    def __init__(self, depth_blocks: Sequence[int] = (3, 4, 6, 3), variant: str = "v1b", norm: str = "FreezeBN",
                 freeze_at: int = 2, stem_width: int = 32, out_features: Sequence[str] = STAGE_NAMES,
                 stages: int | None = None, bottleneck: bool | None = None, *, zero_init_residual: bool,
                 freeze_affine: bool, floor_stride2: bool, stride_1x1: bool):
        super().__init__()
        if variant not in ("v1b", "v1d"):
            raise ValueError(f"ResNet variant must be 'v1b' or 'v1d', got {variant!r}")
        if len(depth_blocks) != 4:
            raise ValueError(f"depth_blocks needs 4 stage sizes, got {list(depth_blocks)}")
        out_features = tuple(out_features)
        unknown = [f for f in out_features if f not in STAGE_NAMES]
        if not out_features or unknown:
            raise ValueError(f"out_features must be a non-empty subset of {STAGE_NAMES}, got {out_features}")
        deepest = max(STAGE_NAMES.index(f) for f in out_features) + 1
        stages = deepest if stages is None else stages
        if not deepest <= stages <= 4:
            raise ValueError(f"stages={stages} cannot produce {out_features}")
        if freeze_at not in (0, 1, 2):
            raise ValueError(f"freeze_at must be 0, 1 or 2, got {freeze_at}")

        self.depth_blocks = list(depth_blocks)
        self.variant = variant
        self.norm = norm
        self.freeze_at = freeze_at
        self.freeze_affine = freeze_affine
        self.zero_init_residual = zero_init_residual
        self.stride_1x1 = bool(stride_1x1)
        # tensorpack's AlignPadding (TF_PAD_MODE=False) pads stride-2 layers only at the top/left and
        # crops the shortcut's input: a stride-2 layer on n pixels gives floor(n/2) outputs; PyTorch's
        # symmetric padding gives ceil(n/2), one more row/column on odd sizes. The first floor(n/2)
        # agree either way (same sampling positions), so True crops the extra one. Only odd sizes
        # differ: never an FPN input (multiples of 32), but an unpadded C4 image.
        self.floor_stride2 = bool(floor_stride2)
        # set by a Backbone whose inputs are multiples of the trunk's stride: no stride-2 layer sees an
        # odd size, so floor(n/2) = ceil(n/2) and the crop is skipped
        self.even_input_sizes = False
        self.out_features = out_features
        self.num_stages = stages
        block = Bottleneck if _is_bottleneck(depth_blocks, bottleneck) else BasicBlock
        self.block = block
        bias = norm == "None"

        if variant == "v1d":
            self.conv1 = nn.Sequential(
                _conv(3, stem_width, 3, 2, bias), get_norm(norm, stem_width, freeze_affine=freeze_affine),
                nn.ReLU(inplace=True),
                _conv(stem_width, stem_width, 3, 1, bias), get_norm(norm, stem_width, freeze_affine=freeze_affine),
                nn.ReLU(inplace=True),
                _conv(stem_width, 2 * stem_width, 3, 1, bias))
            inplanes = 2 * stem_width
        else:
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=bias)
            inplanes = 64
        self.bn1 = get_norm(norm, inplanes, freeze_affine=freeze_affine)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

        channels, strides = {}, {}
        for i in range(stages):
            planes = 64 * 2 ** i
            layer = make_stage(block, inplanes, planes, self.depth_blocks[i], 1 if i == 0 else 2,
                               variant=variant, norm=norm, freeze_affine=freeze_affine, stride_1x1=self.stride_1x1)
            self.add_module(f"layer{i + 1}", layer)
            inplanes = planes * block.expansion
            channels[STAGE_NAMES[i]] = inplanes
            strides[STAGE_NAMES[i]] = 4 * 2 ** i
        self.feature_channels = {k: channels[k] for k in out_features}
        self.feature_strides = {k: strides[k] for k in out_features}

        _init_weights(self, zero_init_residual)
        self._freeze(freeze_at)

    def _freeze(self, freeze_at: int) -> None:
        parts: list[str] = []
        if freeze_at >= 1:
            parts += ["conv1", "bn1"]
        if freeze_at >= 2:
            parts += ["layer1"]
        for name in parts:
            module = FrozenBatchNorm2d.convert_frozen_batchnorm(getattr(self, name))
            setattr(self, name, module)
            for p in module.parameters():
                p.requires_grad_(False)

    def make_res5_stage(self, stride: int = 2) -> nn.Sequential:
        """A res5 stage with this trunk's block type, norm, variant, ``freeze_affine``,
        ``zero_init_residual`` and ``stride_1x1`` (for the C4 box head)."""
        in_channels = 256 * self.block.expansion
        return make_res5_stage(self.depth_blocks, variant=self.variant, norm=self.norm,
                               in_channels=in_channels, stride=stride,
                               bottleneck=self.block is Bottleneck, zero_init_residual=self.zero_init_residual,
                               freeze_affine=self.freeze_affine, stride_1x1=self.stride_1x1)

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """``x``: normalised ``(N, 3, H, W)`` float. Returns ``{name: (N, C, H/s, W/s)}``; with
        ``floor_stride2`` every stride-2 layer's output is cropped to floor(n/2) of its input's n."""
        floor = self.floor_stride2 and not self.even_input_sizes
        h, w = x.shape[-2:]
        if floor and isinstance(self.conv1, nn.Sequential):  # v1d: the stem's first conv has the stride
            x = self.conv1[1:](self._floor(self.conv1[0](x), h, w))
        else:
            x = self.conv1(x)
            x = self._floor(x, h, w) if floor else x
        x = self.relu(self.bn1(x))
        h, w = x.shape[-2:]
        x = self.maxpool(x)
        x = self._floor(x, h, w) if floor else x
        out: dict[str, Tensor] = {}
        for i, name in enumerate(STAGE_NAMES[: self.num_stages]):
            layer = getattr(self, f"layer{i + 1}")
            if floor and i > 0:  # stages 2-4 start with a stride-2 block
                h, w = x.shape[-2:]
                x = layer[1:](self._floor(layer[0](x), h, w))
            else:
                x = layer(x)
            if name in self.out_features:
                out[name] = x
        return out

    @staticmethod
    def _floor(x: Tensor, h: int, w: int) -> Tensor:
        return x[..., : h // 2, : w // 2]


def check_norm_kinds(model: nn.Module, state: dict, path: str) -> None:
    """Refuse a state dict whose norm layers are of another kind than ``model``'s.

    A BatchNorm checkpoint has ``<norm>.running_mean``/``running_var`` beside ``weight``/``bias``;
    a GroupNorm one has only ``weight``/``bias`` under the same names. Loading either into the
    other kind "works" key by key and gives a wrong network: a GN layer would take BN's gamma/beta
    (learnt for other statistics) and drop the statistics; a BN/FreezeBN layer would keep the
    statistics of its init (mean 0, var 1).
    """
    gn_with_stats, bn_without_stats = [], []
    for name, m in model.named_modules():
        key = f"{name}." if name else ""
        if isinstance(m, nn.GroupNorm):
            if key + "running_mean" in state or key + "running_var" in state:
                gn_with_stats.append(name)
        elif isinstance(m, (nn.BatchNorm2d, FrozenBatchNorm2d)):
            if (key + "weight" in state or key + "bias" in state) and key + "running_mean" not in state:
                bn_without_stats.append(name)
    model_name = type(model).__name__
    if gn_with_stats:
        raise ValueError(
            f"{path} holds BatchNorm weights (with running_mean/running_var statistics, e.g. for "
            f"{gn_with_stats[0]!r}) but {model_name} uses GroupNorm (BACKBONE.NORM='GN') at "
            f"{len(gn_with_stats)} of those layers: BN weights cannot initialise GN layers (their gamma/beta were "
            "learnt for BN's statistics, which GN does not use). A GN backbone needs GroupNorm-pretrained "
            "ImageNet weights: a state dict with the same names and GroupNorm weight/bias only (e.g. tensorpack's "
            "ImageNet-R50-GroupNorm32-AlignPadding.npz, as is or converted), or leave BACKBONE.WEIGHTS "
            "empty to train from scratch (with BACKBONE.FREEZE_AT=0)")
    if bn_without_stats:
        raise ValueError(
            f"{path} has norm weight/bias but no BatchNorm statistics (running_mean/running_var) for "
            f"{len(bn_without_stats)} BatchNorm layers of {model_name} (e.g. {bn_without_stats[0]!r}): these look "
            "like GroupNorm weights. A BatchNorm/FreezeBN backbone needs BatchNorm ImageNet weights with their "
            "statistics (a torchvision-style state dict, e.g. resnet50-0676ba61.pth, or tensorpack's "
            "ImageNet-R50-AlignPadding.npz); to use GroupNorm weights "
            "set BACKBONE.NORM='GN'")
