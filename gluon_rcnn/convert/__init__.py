"""Importers of other implementations' models and weights."""
from .torchvision import from_torchvision, torchvision_config
from .tensorpack import from_tensorpack, tensorpack_config  # noqa: F401
from .gluoncv import from_gluoncv, read_params as read_gluoncv_params  # noqa: F401
from .detectron2 import detectron2_config, from_detectron2  # noqa: F401

__all__ = ["from_torchvision", "torchvision_config"]
