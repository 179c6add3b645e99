"""Feature extractors: ResNet trunks (v1b/v1d), the FPN and the Backbone that joins them (built from a config by ``gluon_rcnn.builders``)."""
from .build import Backbone, res4_channels
from .fpn import FPN
from .pretrained import load_pretrained
from .resnet import BasicBlock, Bottleneck, ResNet, make_res5_stage, make_stage

__all__ = ["ResNet", "BasicBlock", "Bottleneck", "make_stage", "make_res5_stage", "load_pretrained", "FPN",
           "Backbone", "res4_channels"]
