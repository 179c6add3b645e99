"""Fast R-CNN box heads (feature towers) and the class/box predictor.

Head in:  pooled RoI features (R, C, S, S).  Head out: (R, D) vectors.
Predictor out: class logits (R, C+1) and box deltas (R, 4*(C+1)) class-specific, or (R, 4)
class-agnostic (Cascade R-CNN).
"""
from __future__ import annotations

from torch import nn

from ..nn.norm import get_norm

__all__ = ["FastRCNN2FCHead", "FastRCNNConvFCHead", "FastRCNNPredictor"]


class FastRCNN2FCHead(nn.Module):
    """``fastrcnn_2fc_head``: flatten, fc6 + ReLU, fc7 + ReLU."""

    def __init__(self, in_channels: int, resolution: int, fc_dim: int = 1024):
        super().__init__()
        self.fc6 = nn.Linear(in_channels * resolution * resolution, fc_dim)
        self.fc7 = nn.Linear(fc_dim, fc_dim)
        self.out_dim = fc_dim
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.relu(self.fc7(self.relu(self.fc6(x.flatten(1)))))


class FastRCNNConvFCHead(nn.Module):
    """``fastrcnn_4conv1fc_head`` (norm 'None') and ``fastrcnn_4conv1fc_gn_head`` (norm 'GN'):
    4 x (conv3x3 [+ GN] + ReLU), flatten, fc + ReLU."""

    def __init__(self, in_channels: int, resolution: int, conv_dim: int = 256, fc_dim: int = 1024,
                 num_convs: int = 4, norm: str = "None"):
        super().__init__()
        layers = []
        for i in range(num_convs):
            layers += [nn.Conv2d(in_channels if i == 0 else conv_dim, conv_dim, 3, padding=1, bias=norm == "None"),
                       get_norm(norm, conv_dim), nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*layers)
        self.fc = nn.Linear(conv_dim * resolution * resolution, fc_dim)
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
        return self.cls_score(x), self.bbox_pred(x)
