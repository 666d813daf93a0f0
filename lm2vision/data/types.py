"""The in-memory image set every reader returns and every stage consumes."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class ImageSet:
    """Decoded images held as one uint8 tensor, so they move to the GPU once.

    images: (N, 3, H, W) uint8, all the same size.
    labels: (N,) int64 class indices into ``classes``.
    classes: class names, index = label.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be (N, 3, H, W) uint8, got {tuple(self.images.shape)} {self.images.dtype}")
        if self.labels.shape != (self.images.shape[0],):
            raise ValueError(f"labels must be ({self.images.shape[0]},), got {tuple(self.labels.shape)}")
        self.labels = self.labels.long()

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    @property
    def nbytes(self) -> int:
        """Bytes of the uint8 images."""
        return self.images.numel()

    def subset(self, index: torch.Tensor) -> "ImageSet":
        """A new set with the rows at ``index`` (a view-free copy)."""
        return ImageSet(self.images[index], self.labels[index], list(self.classes))

    def with_labels(self, labels: torch.Tensor) -> "ImageSet":
        """The same images with other labels (random labels for stage 1)."""
        return ImageSet(self.images, labels, list(self.classes))
