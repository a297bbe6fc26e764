"""Device-resident batch loader with augmentation applied to whole batches.

Shuffling and augmentation are functions of ``(seed, epoch, step)`` only, so an epoch can be
restarted at any step and reproduce exactly the same batches (bit-exact resume).
"""

from __future__ import annotations

from collections.abc import Iterator
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


class ImageTensors(Protocol):
    """The uint8 splits and constants a :class:`DeviceLoader` reads (see :class:`degl.data.base.ImageData`)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    mean: tuple[float, ...]
    std: tuple[float, ...]
    flip: bool
    crop_padding: int


_MASK = (1 << 63) - 1


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from several integers (splitmix-style, stable across runs and platforms)."""
    value = 0x9E3779B97F4A7C15
    for part in parts:
        value = (value ^ (part + 0x632BE59BD9B4E019 + (value << 6) + (value >> 2))) & _MASK
        value = (value * 0xBF58476D1CE4E5B9) & _MASK
    return value


def random_crop(images: torch.Tensor, padding: int, generator: torch.Generator) -> torch.Tensor:
    """Random crop of each image after zero padding, for a whole batch at once."""
    if padding == 0:
        return images
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (padding,) * 4)
    dy = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(images.device)
    dx = torch.randint(0, 2 * padding + 1, (n,), generator=generator).to(images.device)
    rows = (dy[:, None] + torch.arange(h, device=images.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=images.device))[:, None, None, :]
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    chans = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    flip = (torch.rand(images.shape[0], generator=generator) < 0.5).to(images.device)
    return torch.where(flip[:, None, None, None], images.flip(3), images)


class DeviceLoader:
    """Batches of ``(normalised float images, labels)`` from uint8 tensors kept on ``device``.

    Args:
        train: take the training split (shuffled, augmented, last partial batch dropped) or the
            test split (in order, not augmented, every sample).
    """

    def __init__(
        self,
        data: ImageTensors,
        *,
        train: bool,
        batch_size: int,
        device: torch.device | str = "cpu",
        augment: bool = True,
        seed: int = 0,
    ) -> None:
        self.device = torch.device(device)
        source = (data.train_images, data.train_labels) if train else (data.test_images, data.test_labels)
        self.images = source[0].to(self.device)
        self.labels = source[1].to(self.device)
        self.train = train
        self.batch_size = batch_size
        self.augment = augment and train
        self.flip = data.flip
        self.crop_padding = data.crop_padding
        self.seed = seed
        shape = (1, -1, 1, 1)
        self.mean = torch.tensor(data.mean, device=self.device).view(shape)
        self.std = torch.tensor(data.std, device=self.device).view(shape)

    def __len__(self) -> int:
        n = len(self.labels)
        return n // self.batch_size if self.train else -(-n // self.batch_size)

    def batch_sizes(self) -> list[int]:
        n = len(self.labels)
        return [min(self.batch_size, n - i * self.batch_size) for i in range(len(self))]

    @property
    def num_samples(self) -> int:
        return len(self) * self.batch_size if self.train else len(self.labels)

    def _order(self, epoch: int) -> torch.Tensor:
        if not self.train:
            return torch.arange(len(self.labels), device=self.device)
        generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch))
        return torch.randperm(len(self.labels), generator=generator).to(self.device)

    def batch_indices(self, epoch: int = 0, start_step: int = 0) -> Iterator[torch.Tensor]:
        """The sample indices of each batch of ``epoch``, from batch ``start_step`` on."""
        order = self._order(epoch)
        for step in range(start_step, len(self)):
            yield order[step * self.batch_size : (step + 1) * self.batch_size]

    def samples_in_order(self, chunk: int) -> Iterator[torch.Tensor]:
        """Every sample of the split, normalised and never augmented, in storage order, ``chunk`` at a time."""
        for start in range(0, len(self.labels), chunk):
            yield (self.images[start : start + chunk].float().div_(255) - self.mean) / self.std

    def epoch(self, epoch: int = 0, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterate over the batches of ``epoch``, starting at batch ``start_step``."""
        for step, index in enumerate(self.batch_indices(epoch, start_step), start_step):
            images = self.images[index].float().div_(255)
            if self.augment:
                generator = torch.Generator().manual_seed(mix_seed(self.seed, epoch, step, 1))
                images = random_crop(images, self.crop_padding, generator)
                if self.flip:
                    images = random_flip(images, generator)
            yield (images - self.mean) / self.std, self.labels[index]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch(0)


class ChannelsLast:
    """Wraps a loader so that its 4-d batches come in the channels-last memory format."""

    def __init__(self, loader: BatchLoader) -> None:
        self.loader = loader
        self.batch_size = loader.batch_size

    def __len__(self) -> int:
        return len(self.loader)

    def batch_sizes(self) -> list[int]:
        return self.loader.batch_sizes()

    def epoch(self, epoch: int = 0, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.loader.epoch(epoch, start_step):
            yield (x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x), y

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch(0)
