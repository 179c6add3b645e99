"""fuse(): folding frozen/eval norms into convolutions keeps the detections."""
import torch

from gluon_rcnn import get_model
from gluon_rcnn.nn.fuse import fuse_conv_norm
from gluon_rcnn.nn.norm import FrozenBatchNorm2d


def _randomize_norms(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, (FrozenBatchNorm2d, torch.nn.BatchNorm2d)):
            m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)


@torch.no_grad()
def test_fuse_keeps_detections():
    torch.manual_seed(0)
    for name, norm in [("faster_rcnn_fpn_resnet18_v1b_coco", "FreezeBN"), ("faster_rcnn_fpn_resnet18_v1b_coco", "BN")]:
        net = get_model(name, overrides=[f"BACKBONE.NORM={norm}", "FPN.NORM=None", "BACKBONE.FREEZE_AT=0",
                                         "PREPROC.TEST_SHORT_EDGE_SIZE=128", "TEST.RESULT_SCORE_THRESH=0.0"])
        _randomize_norms(net)
        img = torch.rand(3, 120, 160)
        x = net.preprocess([img]).tensor
        before = net.features(x)
        ref = net([img])[0]
        n_norms = sum(isinstance(m, (FrozenBatchNorm2d, torch.nn.BatchNorm2d)) for m in net.backbone.modules())
        net.fuse()
        left = sum(isinstance(m, (FrozenBatchNorm2d, torch.nn.BatchNorm2d)) for m in net.backbone.modules())
        assert n_norms == 20 and left == 0  # ResNet-18: stem + 16 block norms + 3 shortcut norms
        for a, b in zip(before, net.features(x)):
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
        out = net([img])[0]
        assert out["boxes"].shape[0] > 0
        # same detections (near-ties may swap order, so compare as sorted sets)
        torch.testing.assert_close(out["scores"].sort().values, ref["scores"].sort().values, rtol=0, atol=1e-4)


def test_fuse_leaves_group_norm_and_training_bn():
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.GroupNorm(2, 4), torch.nn.Conv2d(4, 4, 1),
                            torch.nn.BatchNorm2d(4))
    assert fuse_conv_norm(m) == 0  # GN never folds; BN in training mode does not either
    m.eval()
    assert fuse_conv_norm(m) == 1 and isinstance(m[3], torch.nn.Identity)
