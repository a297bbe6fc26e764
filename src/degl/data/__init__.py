"""Data sets and device-resident loaders."""

from __future__ import annotations

from degl.data.base import BatchLoader, Dataset, ImageData
from degl.data.cifar10 import load_cifar10
from degl.data.fashion_mnist import load_fashion_mnist
from degl.data.imagenet import load_imagenet
from degl.data.loader import DeviceLoader
from degl.data.synthetic import make_synthetic
from degl.errors import UserError


def load_dataset(
    name: str,
    *,
    data_dir: str | None = None,
    input_shape: tuple[int, int, int] = (3, 32, 32),
    num_classes: int = 10,
    synthetic_size: int = 2048,
    image_size: int = 224,
    data_workers: int = 4,
    download: bool = False,
) -> Dataset:
    """Load the data set ``name``: ``fashion-mnist``, ``cifar10``, ``imagenet`` or ``synthetic``.

    ``input_shape``, ``num_classes`` and ``synthetic_size`` shape the synthetic set only;
    ``image_size`` and ``data_workers`` (crop side, decoding processes) ImageNet only; ``download``
    lets CIFAR-10 be fetched when it is not found.
    """
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir)
    if name == "cifar10":
        return load_cifar10(data_dir, download=download)
    if name == "imagenet":
        return load_imagenet(data_dir, image_size=image_size, workers=data_workers)
    if name == "synthetic":
        return make_synthetic(input_shape, num_classes, synthetic_size)
    raise UserError(f"unknown dataset {name!r}; choose fashion-mnist, cifar10, imagenet or synthetic")


__all__ = ["BatchLoader", "Dataset", "DeviceLoader", "ImageData", "load_dataset"]
