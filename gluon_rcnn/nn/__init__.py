"""Building blocks shared by every model: ``HybridBlock`` (compile/export) and norm layers.

Knows nothing of detectors or datasets.
"""
from .hybrid import HybridBlock
from .norm import NORM_NAMES, FrozenBatchNorm2d, SyncBatchNorm2d, get_norm

__all__ = ["HybridBlock", "FrozenBatchNorm2d", "SyncBatchNorm2d", "get_norm", "NORM_NAMES"]
