"""How the fc layers of the box heads are initialised (``FastRCNN2FCHead``, ``FastRCNNConvFCHead``).

- ``"fan_in_truncated_normal"`` (:class:`FanInTruncatedNormal`): ``tf.variance_scaling_initializer()``
  (scale 1, ``fan_in``, truncated normal): sigma = sqrt(1/fan_in) / 0.8796..., cut at +-2 sigma, so
  the weights' std is sqrt(1/fan_in); zero bias.
- ``"torch_default"`` (:class:`TorchDefault`): the layer as ``nn.Linear`` made it (kaiming-uniform
  weight, uniform bias): nothing is drawn.
"""
from __future__ import annotations

from torch import nn

__all__ = ["FanInTruncatedNormal", "TorchDefault", "CHOICES"]

# std of a standard normal truncated to [-2, 2] (scipy.stats.truncnorm.std(-2, 2)): TF's
# variance_scaling_initializer divides by it so that the truncated weights keep the target std
TRUNC_STD = 0.87962566103423978


class FanInTruncatedNormal:
    name = "fan_in_truncated_normal"

    def __call__(self, fc: nn.Linear) -> None:
        sigma = (1.0 / fc.in_features) ** 0.5 / TRUNC_STD
        nn.init.trunc_normal_(fc.weight, std=sigma, a=-2 * sigma, b=2 * sigma)
        nn.init.zeros_(fc.bias)

    def __repr__(self) -> str:
        return "FanInTruncatedNormal()"


class TorchDefault:
    name = "torch_default"

    def __call__(self, fc: nn.Linear) -> None:
        pass  # nn.Linear's own init stands

    def __repr__(self) -> str:
        return "TorchDefault()"


CHOICES = {"fan_in_truncated_normal": FanInTruncatedNormal(), "torch_default": TorchDefault()}
