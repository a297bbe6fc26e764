"""In-memory image data sets: uint8 tensors plus what is needed to normalise and augment them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch

from degl.data.loader import BatchLoader, DeviceLoader


class Dataset(Protocol):
    """A data set: its name, sample shape, classes and loaders for both splits."""

    name: str
    num_classes: int

    @property
    def input_shape(self) -> tuple[int, int, int]: ...

    @property
    def num_train(self) -> int: ...

    def subset(self, train_size: int | None) -> Dataset: ...

    def loaders(
        self, *, batch_size: int, eval_batch_size: int, device: torch.device, augment: bool, seed: int
    ) -> tuple[BatchLoader, BatchLoader]: ...


@dataclass
class ImageData:
    """A small data set held as tensors.

    Attributes:
        train_images, test_images: uint8 tensors ``[N, C, H, W]``.
        train_labels, test_labels: int64 tensors ``[N]``.
        mean, std: per-channel normalisation constants (on the 0-1 scale).
        flip: whether random horizontal flips are a sensible augmentation.
        crop_padding: padding of the random-crop augmentation, in pixels.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool = True
    crop_padding: int = 4

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])  # type: ignore[return-value]

    @property
    def num_train(self) -> int:
        return len(self.train_labels)

    def loaders(
        self, *, batch_size: int, eval_batch_size: int, device: torch.device, augment: bool, seed: int
    ) -> tuple[BatchLoader, BatchLoader]:
        """Device-resident loaders: shuffled, augmented training batches and in-order test batches."""
        train = DeviceLoader(self, train=True, batch_size=batch_size, device=device, augment=augment, seed=seed)
        test = DeviceLoader(self, train=False, batch_size=eval_batch_size, device=device)
        return train, test

    def subset(self, train_size: int | None) -> ImageData:
        if train_size is None or train_size >= len(self.train_labels):
            return self
        return ImageData(
            self.name,
            self.train_images[:train_size],
            self.train_labels[:train_size],
            self.test_images,
            self.test_labels,
            self.num_classes,
            self.mean,
            self.std,
            self.flip,
            self.crop_padding,
        )
