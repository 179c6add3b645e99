"""Mask heads. In: pooled RoI features (R, C, S, S). Out: mask logits (R, num_category, 2S, 2S)
(one channel per foreground class; channel ``label - 1`` belongs to label ``label``)."""
from __future__ import annotations

import torch
from torch import nn

from ..nn.precision import fp32_outputs
from .box_head import conv_norm_relu

__all__ = ["MaskRCNNUpConvHead"]


class MaskRCNNUpConvHead(nn.Module):
    """``maskrcnn_up4conv_head`` (norm 'None'), ``maskrcnn_up4conv_gn_head`` (norm 'GN'), and with
    ``num_convs=0`` the C4 head (deconv + predictor on res5 features): ``num_convs`` x conv3x3 unit
    (:func:`~gluon_rcnn.roi_heads.box_head.conv_norm_relu`, the GN placed by ``gn_order``),
    ConvTranspose 2x2 stride 2 + ReLU, conv1x1 to ``num_category``.

    Parameters: ``convs.{3i}.weight`` (conv ``i``), ``convs.{3i}.bias`` (norm 'None', or GN with
    ``gn_order='conv_relu_gn'``), the GroupNorm's ``weight``/``bias`` at ``convs.{3i+1}``
    (``'conv_gn_relu'``) or ``convs.{3i+2}`` (``'conv_relu_gn'``); ``deconv.weight``/``.bias``,
    ``predictor.weight``/``.bias``.

    ``gn_order``: ``RULES.GN_HEAD_ORDER``, keyword-only with no default (no effect with norm 'None'
    or ``num_convs=0``).

    ``selected_logits`` (False; ``optimize_for_inference`` sets it): at inference the ROI heads call
    ``forward(x, labels)``, which computes only the detected class's logit channel of each RoI
    (1/``num_category`` of the predictor's work and of its float32 cast) instead of all of them; the
    same numbers up to summation order."""

    selected_logits = False

    def __init__(self, in_channels: int, num_category: int, dim: int = 256, num_convs: int = 4, norm: str = "None",
                 *, gn_order: str):
        super().__init__()
        layers = []
        c = in_channels
        for _ in range(num_convs):
            layers += conv_norm_relu(c, dim, norm, gn_order=gn_order)
            c = dim
        self.convs = nn.Sequential(*layers)
        self.deconv = nn.ConvTranspose2d(c, dim, 2, stride=2)
        self.relu = nn.ReLU(inplace=True)
        self.predictor = nn.Conv2d(dim, num_category, 1)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.predictor.weight, std=0.001)

    def forward(self, x, labels=None):
        """(R, num_category, 2S, 2S) logits; with ``labels`` (R,), only channel ``labels - 1`` of each
        RoI, as (R, 2S, 2S) float32, the other channels not computed (a per-RoI dot product over
        ``dim`` in float32, like :func:`~gluon_rcnn.nn.precision.fp32_outputs`): what the ROI heads
        call at inference when ``selected_logits`` is set."""
        f = self.relu(self.deconv(self.convs(x)))
        if labels is None:
            return fp32_outputs(self.predictor, f)
        R, C, H, W = f.shape
        ch = labels.to(torch.int64) - 1
        w = self.predictor.weight.reshape(self.predictor.out_channels, C)[ch].float()  # (R, C)
        b = self.predictor.bias[ch].float()
        rows = f.float().permute(0, 2, 3, 1).reshape(R, H * W, C)  # a view for channels-last f
        with torch.autocast(f.device.type, enabled=False):  # float32 even inside a bf16 region
            return torch.bmm(rows, w.unsqueeze(-1)).reshape(R, H, W) + b.view(-1, 1, 1)
