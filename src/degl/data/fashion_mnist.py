"""Fashion-MNIST from its four IDX files (``.gz`` or uncompressed), validated before use.

Debian's ``dataset-fashion-mnist`` installs them in ``/usr/share/datasets/fashion-mnist``;
torchvision's download puts them in ``<root>/FashionMNIST/raw``. Both layouts are found.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from degl.data.base import ImageData
from degl.errors import UserError

FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
SIZES = {"train": 60000, "test": 10000}
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
HINT = "run 'make install' (installs Debian's dataset-fashion-mnist) or pass --data-dir DIR with the four IDX files"


def candidate_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("DEGL_DATA_DIR"):
        dirs.append(Path(os.environ["DEGL_DATA_DIR"]) / "fashion-mnist")
    dirs += [Path("data/fashion-mnist"), DEBIAN_DIR, Path.home() / ".cache/degl/fashion-mnist"]
    return dirs


def _find_file(directory: Path, stem: str) -> Path | None:
    for folder in (directory, directory / "FashionMNIST" / "raw"):
        for name in (stem + ".gz", stem):
            if (folder / name).is_file():
                return folder / name
    return None


def find_data_dir(data_dir: str | Path | None) -> Path:
    """The directory holding the four files: ``data_dir`` if given, else the first known place."""
    if data_dir is not None:
        path = Path(data_dir)
        if not path.is_dir():
            raise UserError(f"--data-dir {path} does not exist or is not a directory; {HINT}")
        missing = [stem for stem in FILES.values() if _find_file(path, stem) is None]
        if missing:
            raise UserError(f"--data-dir {path} lacks Fashion-MNIST file(s) {', '.join(missing)}(.gz); {HINT}")
        return path
    for path in candidate_dirs():
        if all(_find_file(path, stem) is not None for stem in FILES.values()):
            return path
    raise UserError(f"Fashion-MNIST not found in {', '.join(map(str, candidate_dirs()))}; {HINT}")


def read_idx(path: Path, *, expected_dims: int) -> np.ndarray:
    """Parse an IDX file of unsigned bytes; raise :class:`UserError` if it is truncated or malformed."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise UserError(f"cannot read {path}: {exc}; the file is corrupt, {HINT}") from None
    if len(raw) < 4 + 4 * expected_dims:
        raise UserError(f"{path} is truncated ({len(raw)} bytes); {HINT}")
    zero, dtype_code, dims = raw[0] | raw[1], raw[2], raw[3]
    if zero != 0 or dtype_code != 0x08 or dims != expected_dims:
        raise UserError(f"{path} is not an IDX file of {expected_dims}-d unsigned bytes (bad header); {HINT}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims))
    body = raw[4 + 4 * dims :]
    if len(body) != int(np.prod(shape)):
        raise UserError(f"{path} holds {len(body)} bytes of data but its header says {shape}; {HINT}")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def load_fashion_mnist(data_dir: str | Path | None = None) -> ImageData:
    directory = find_data_dir(data_dir)
    arrays = {}
    for key, stem in FILES.items():
        path = _find_file(directory, stem)
        assert path is not None
        arrays[key] = read_idx(path, expected_dims=3 if key.endswith("images") else 1)
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) != len(labels) or images.shape[1:] != (28, 28):
            raise UserError(
                f"Fashion-MNIST {split} files in {directory} disagree: "
                f"{images.shape} images, {labels.shape} labels; {HINT}"
            )
        if labels.max() > 9:
            raise UserError(f"Fashion-MNIST {split} labels in {directory} exceed 9: corrupt file; {HINT}")

    def images(key: str) -> torch.Tensor:
        return torch.from_numpy(arrays[key].copy()).unsqueeze(1)

    def labels(key: str) -> torch.Tensor:
        return torch.from_numpy(arrays[key].astype(np.int64))

    return ImageData(
        "fashion-mnist",
        images("train_images"),
        labels("train_labels"),
        images("test_images"),
        labels("test_labels"),
        num_classes=10,
        mean=(0.2860,),
        std=(0.3530,),
        flip=True,
        crop_padding=2,
    )
