"""Data sets and device-resident loaders."""

from __future__ import annotations

from degl.data.base import BatchLoader, Dataset, ImageData
from degl.data.fashion_mnist import load_fashion_mnist
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
) -> Dataset:
    """Load the data set ``name`` (``fashion-mnist`` or ``synthetic``)."""
    if name == "fashion-mnist":
        return load_fashion_mnist(data_dir)
    if name == "synthetic":
        return make_synthetic(input_shape, num_classes, synthetic_size)
    raise UserError(f"unknown dataset {name!r}; choose fashion-mnist or synthetic")


__all__ = ["BatchLoader", "Dataset", "DeviceLoader", "ImageData", "load_dataset"]
