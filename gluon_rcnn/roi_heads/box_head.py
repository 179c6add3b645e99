"""Fast R-CNN box heads (feature towers) and the class/box predictor.

Head in:  pooled RoI features (R, C, S, S).  Head out: (R, D) vectors.
Predictor out: class logits (R, C+1) and box deltas (R, 4*(C+1)) class-specific, or (R, 4)
class-agnostic (Cascade R-CNN).
"""
from __future__ import annotations

from torch import nn

from ..nn.norm import get_norm
from ..nn.precision import fp32_outputs

__all__ = ["FastRCNN2FCHead", "FastRCNNConvFCHead", "FastRCNNPredictor", "conv_norm_relu", "GN_HEAD_ORDERS"]


def _init_fc(fc: nn.Linear, fc_init) -> None:
    if not callable(fc_init):
        raise TypeError(f"fc_init must be a rule of gluon_rcnn.rules.init (callable on an nn.Linear), got {fc_init!r}")
    fc_init(fc)


class FastRCNN2FCHead(nn.Module):
    """``fastrcnn_2fc_head``: flatten, fc6 + ReLU, fc7 + ReLU. The rules, keyword-only with no default:

    fc_init: ``RULES.FC_INIT``, how fc6 and fc7 are initialised (a rule of :mod:`gluon_rcnn.rules.init`).
    avg_pool: ``RULES.BOX_HEAD_POOL == 'pool14_avg3x3s2'`` (``False``: ``'pool7'``). ``True``: first a
    3x3 average pool of stride 2, padding 1 (padding counted, as MXNet's and PyTorch's default), so
    that the input is ``2 * resolution`` square and fc6 still sees ``resolution`` x ``resolution``:
    GluonCV's FPN Mask R-CNN (``box_features = [AvgPool2D(3, 2, 1), Dense, Dense]`` on 14x14 RoIs).
    fc6 has the same shape either way."""

    def __init__(self, in_channels: int, resolution: int, fc_dim: int = 1024, *, fc_init, avg_pool: bool):
        super().__init__()
        self.avg_pool = nn.AvgPool2d(3, 2, 1) if avg_pool else None
        self.fc6 = nn.Linear(in_channels * resolution * resolution, fc_dim)
        self.fc7 = nn.Linear(fc_dim, fc_dim)
        _init_fc(self.fc6, fc_init)
        _init_fc(self.fc7, fc_init)
        self.out_dim = fc_dim
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        if self.avg_pool is not None:
            x = self.avg_pool(x)
        return self.relu(self.fc7(self.relu(self.fc6(x.flatten(1)))))


GN_HEAD_ORDERS = ("conv_gn_relu", "conv_relu_gn")


def conv_norm_relu(cin: int, cout: int, norm: str, *, gn_order: str) -> list:
    """One 3x3 conv unit of a conv head, as three modules (so that a Sequential of ``k`` units
    has the conv of unit ``i`` at index ``3i``).

    ``norm='None'``: conv(+bias), Identity, ReLU. ``norm='GN'`` with ``gn_order`` (``RULES.GN_HEAD_ORDER``,
    no default; no effect without GN):
    ``'conv_gn_relu'``: conv (no bias), GroupNorm(32), ReLU (detectron2, torchvision);
    ``'conv_relu_gn'``: conv (+bias), ReLU, GroupNorm(32), tensorpack's order (its ``Conv2D(...,
    activation=tf.nn.relu)`` keeps the default ``use_bias=True``, then ``GroupNorm``).
    """
    if gn_order not in GN_HEAD_ORDERS:
        raise ValueError(f"gn_order must be one of {list(GN_HEAD_ORDERS)}, got {gn_order!r}")
    if norm in (None, "", "None") or gn_order == "conv_gn_relu":
        return [nn.Conv2d(cin, cout, 3, padding=1, bias=norm in (None, "", "None")), get_norm(norm, cout),
                nn.ReLU(inplace=True)]
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=True), nn.ReLU(inplace=True), get_norm(norm, cout)]


class FastRCNNConvFCHead(nn.Module):
    """``fastrcnn_4conv1fc_head`` (norm 'None') and ``fastrcnn_4conv1fc_gn_head`` (norm 'GN'):
    4 x conv3x3 unit (:func:`conv_norm_relu`, the GN placed by ``gn_order``), flatten, fc + ReLU.

    Parameters: ``convs.{3i}.weight`` (conv ``i``), ``convs.{3i}.bias`` (norm 'None', or GN with
    ``gn_order='conv_relu_gn'``), the GroupNorm's ``weight``/``bias`` at ``convs.{3i+1}``
    (``'conv_gn_relu'``) or ``convs.{3i+2}`` (``'conv_relu_gn'``); ``fc.weight``, ``fc.bias``.
    The convs are initialised as tensorpack's (normal, std sqrt(2/fan_out), zero bias).

    The rules, keyword-only with no default: ``gn_order``: ``RULES.GN_HEAD_ORDER`` (no effect with
    norm 'None'); ``fc_init``: ``RULES.FC_INIT``, how fc is initialised (a rule of
    :mod:`gluon_rcnn.rules.init`).
    """

    def __init__(self, in_channels: int, resolution: int, conv_dim: int = 256, fc_dim: int = 1024,
                 num_convs: int = 4, norm: str = "None", *, gn_order: str, fc_init):
        super().__init__()
        layers = []
        for i in range(num_convs):
            layers += conv_norm_relu(in_channels if i == 0 else conv_dim, conv_dim, norm, gn_order=gn_order)
        self.convs = nn.Sequential(*layers)
        self.fc = nn.Linear(conv_dim * resolution * resolution, fc_dim)
        _init_fc(self.fc, fc_init)
        self.out_dim = fc_dim
        for m in self.convs.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x):
        return nn.functional.relu(self.fc(self.convs(x).flatten(1)))


class FastRCNNPredictor(nn.Module):
    def __init__(self, in_dim: int, num_classes: int, class_agnostic: bool = False):
        """num_classes includes the background."""
        super().__init__()
        self.cls_score = nn.Linear(in_dim, num_classes)
        self.bbox_pred = nn.Linear(in_dim, 4 if class_agnostic else 4 * num_classes)
        nn.init.normal_(self.cls_score.weight, std=0.01)
        nn.init.normal_(self.bbox_pred.weight, std=0.001)
        nn.init.zeros_(self.cls_score.bias)
        nn.init.zeros_(self.bbox_pred.bias)

    def forward(self, x):
        # float32 under inference autocast: the logits rank detections, the deltas become pixels
        return fp32_outputs(self.cls_score, x), fp32_outputs(self.bbox_pred, x)
