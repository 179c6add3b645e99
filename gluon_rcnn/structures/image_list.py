"""Images on their way into the detector.

:class:`ImageList` is what the data loader yields: decoded (and, in training, augmented) images at
their own resolution, with the size each must be resized to. :class:`ImageBatch` is what the
network consumes: the same images resized, normalised and padded into one tensor by
:class:`gluon_rcnn.preprocess.Preprocessor` (the one program that touches pixels).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["ImageBatch", "ImageList"]


@dataclass
class ImageList:
    """A batch of decoded images before preprocessing.

    images: N uint8 (3, H_i, W_i) RGB tensors (or float in 0-1), as decoded and augmented.
    sizes: the (h, w) each image is resized to, chosen by the data side (training: a random short
        edge; the training targets are already in these pixels), or None for the model's test size.
    original_sizes: (H, W) of each image as read from disk; detections are mapped back to these.
    image_ids: dataset ids (or None), carried through for evaluation.
    skipped: messages of bad images the loader dropped from this batch (``DATA.SKIP_BAD_IMAGES``).
    """

    images: list[torch.Tensor]
    sizes: list[tuple[int, int] | None]
    original_sizes: list[tuple[int, int]]
    image_ids: list = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self):
        n = len(self.images)
        if len(self.sizes) != n or len(self.original_sizes) != n:
            raise ValueError(f"ImageList: {n} images, {len(self.sizes)} sizes, {len(self.original_sizes)} "
                             "original sizes")
        if not self.image_ids:
            self.image_ids = [None] * n

    def __len__(self) -> int:
        return len(self.images)

    def _map(self, fn) -> "ImageList":
        return ImageList([fn(im) for im in self.images], list(self.sizes), list(self.original_sizes),
                         list(self.image_ids), list(self.skipped))

    def to(self, device, non_blocking: bool = False) -> "ImageList":
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "ImageList":
        return self._map(lambda t: t.pin_memory())


@dataclass
class ImageBatch:
    """A preprocessed batch, as the network consumes it.

    tensor: (N, 3, Hp, Wp) float, normalised with PIXEL_MEAN/PIXEL_STD, zero padding at the
        bottom/right; Hp, Wp are multiples of SIZE_DIVISIBILITY.
    image_sizes: (h, w) of each image after resizing, before padding.
    original_sizes: (h, w) of each image as read from disk; detections are mapped back to these.
    image_ids: dataset ids (or None).
    """

    tensor: torch.Tensor
    image_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]
    image_ids: list = field(default_factory=list)

    def __len__(self) -> int:
        return self.tensor.shape[0]

    def to(self, device, non_blocking: bool = False) -> "ImageBatch":
        return ImageBatch(self.tensor.to(device, non_blocking=non_blocking), self.image_sizes,
                          self.original_sizes, self.image_ids)

    def pin_memory(self) -> "ImageBatch":
        return ImageBatch(self.tensor.pin_memory(), self.image_sizes, self.original_sizes, self.image_ids)
