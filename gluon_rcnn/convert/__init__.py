"""Importers of other implementations' models and weights."""
from .torchvision import from_torchvision, torchvision_config
from .tensorpack import from_tensorpack, tensorpack_config  # noqa: F401

__all__ = ["from_torchvision", "torchvision_config"]
