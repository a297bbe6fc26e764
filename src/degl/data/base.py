"""In-memory image data sets: uint8 tensors plus what is needed to normalise and augment them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Protocol

import torch


class BatchLoader(Protocol):
    """What training and evaluation need from a loader.

    ``epoch(e, start_step)`` yields ``(images, labels)`` on the training device; for training
    loaders the batches are a function of ``(seed, e, step)`` only, so a run can restart mid-epoch.
    """

    batch_size: int

    def __len__(self) -> int: ...

    def batch_sizes(self) -> list[int]:
        """The size of every batch of an epoch, in order (the same for every epoch)."""
        ...

    def epoch(self, epoch: int = 0, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


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
        from degl.data.loader import DeviceLoader

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
