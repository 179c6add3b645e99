"""ImageBatch: several images padded into one tensor, with the sizes needed to map back."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["ImageBatch"]


@dataclass
class ImageBatch:
    """A padded batch of images, as the data loader produces and the detector consumes.

    tensor: (N, 3, Hp, Wp) RGB. Either uint8 in 0-255 (``normalized=False``, what the loader
        yields: 4x less to copy to the device) or float already normalised with the config's
        PIXEL_MEAN/PIXEL_STD (``normalized=True``). Hp, Wp are multiples of SIZE_DIVISIBILITY;
        the padding is zero (after normalisation).
    image_sizes: (h, w) of each image after resizing, before padding.
    original_sizes: (h, w) of each image as read from disk; detections are mapped back to these.
    image_ids: dataset ids (or None), carried through for evaluation.
    """

    tensor: torch.Tensor
    image_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]
    normalized: bool = False
    image_ids: list = field(default_factory=list)

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def to(self, device, non_blocking: bool = False) -> "ImageBatch":
        return ImageBatch(self.tensor.to(device, non_blocking=non_blocking), self.image_sizes,
                          self.original_sizes, self.normalized, self.image_ids)

    def pin_memory(self) -> "ImageBatch":
        return ImageBatch(self.tensor.pin_memory(), self.image_sizes, self.original_sizes, self.normalized,
                          self.image_ids)
