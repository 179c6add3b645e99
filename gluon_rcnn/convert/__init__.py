"""Importers of other implementations' models and weights."""
from .torchvision import from_torchvision, torchvision_config

__all__ = ["from_torchvision", "torchvision_config"]
