"""Synthetic images: a fixed random prototype per class plus noise, so that it is learnable."""

from __future__ import annotations

import torch

from degl.data.base import ImageData


def make_synthetic(
    input_shape: tuple[int, int, int], num_classes: int, train_size: int, *, seed: int = 1234
) -> ImageData:
    """Deterministic data set of ``train_size`` training and ``train_size // 4`` test images."""
    generator = torch.Generator().manual_seed(seed)
    prototypes = torch.rand(num_classes, *input_shape, generator=generator)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.arange(n) % num_classes
        labels = labels[torch.randperm(n, generator=generator)]
        noise = torch.rand(n, *input_shape, generator=generator)
        images = (0.5 * prototypes[labels] + 0.5 * noise) * 255
        return images.round().to(torch.uint8), labels

    train_x, train_y = sample(train_size)
    test_x, test_y = sample(max(num_classes, train_size // 4))
    channels = input_shape[0]
    return ImageData(
        "synthetic",
        train_x,
        train_y,
        test_x,
        test_y,
        num_classes,
        (0.5,) * channels,
        (0.25,) * channels,
        flip=False,
        crop_padding=0,
    )
