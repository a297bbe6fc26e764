"""CIFAR-10 from its official files: python batches (pickles) or binary batches, validated before use.

The python batches are pickles written by Python 2 numpy. Unpickling runs code named by the file, so
they are read with :class:`BatchUnpickler`, which resolves only the numpy globals a genuine
batch references (and the latin-1 ``_codecs.encode`` that Python 3 writes for bytes at protocol 2)
and refuses everything else before it can run. When both formats are present the
binary one is preferred: it needs no unpickling at all.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from degl.data.base import ImageData
from degl.errors import UserError

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2023, 0.1994, 0.2010)
FOLDERS = {"bin": "cifar-10-batches-bin", "py": "cifar-10-batches-py"}
TRAIN_STEMS = [f"data_batch_{i}" for i in range(1, 6)]
TEST_STEM = "test_batch"
PIXELS = 3 * 32 * 32
HINT = (
    "pass --data-dir DIR holding cifar-10-batches-py/ or cifar-10-batches-bin/ "
    "(from https://www.cs.toronto.edu/~kriz/cifar.html), or add --download on a machine with internet"
)


def _files(fmt: str) -> list[str]:
    suffix = ".bin" if fmt == "bin" else ""
    return [stem + suffix for stem in [*TRAIN_STEMS, TEST_STEM]]


def candidate_dirs() -> list[Path]:
    """Where to look without --data-dir, in order."""
    dirs = []
    if os.environ.get("DEGL_DATA_DIR"):
        dirs.append(Path(os.environ["DEGL_DATA_DIR"]) / "cifar10")
    return [*dirs, Path("data/cifar10"), Path.home() / ".cache/degl/cifar10"]


def _batch_folders(directory: Path) -> list[tuple[Path, str]]:
    """(folder, format) pairs that ``directory`` may mean: itself or its official sub-folders."""
    found = []
    for fmt in ("bin", "py"):
        if any((directory / name).is_file() for name in _files(fmt)):
            found.append((directory, fmt))
    for fmt in ("bin", "py"):
        if (directory / FOLDERS[fmt]).is_dir():
            found.append((directory / FOLDERS[fmt], fmt))
    return found


def _missing(folder: Path, fmt: str) -> list[str]:
    return [name for name in _files(fmt) if not (folder / name).is_file()]


def find_batches(data_dir: str | Path | None) -> tuple[Path, str]:
    """The folder holding a complete set of batches and its format (``'bin'`` or ``'py'``)."""
    if data_dir is None:
        for directory in candidate_dirs():
            for folder, fmt in _batch_folders(directory):
                if not _missing(folder, fmt):
                    return folder, fmt
        raise UserError(f"CIFAR-10 not found in {', '.join(map(str, candidate_dirs()))}; {HINT}")
    directory = Path(data_dir)
    if not directory.is_dir():
        raise UserError(f"--data-dir {directory} does not exist or is not a directory; {HINT}")
    options = _batch_folders(directory)
    for folder, fmt in options:
        if not _missing(folder, fmt):
            return folder, fmt
    if options:
        folder, fmt = options[0]
        raise UserError(f"{folder} lacks CIFAR-10 file(s) {', '.join(_missing(folder, fmt))}; {HINT}")
    archive = next(directory.glob("cifar-10-*.tar.gz"), None)
    if archive is not None:
        raise UserError(f"{archive} is not extracted; run: tar xzf {archive} -C {directory}")
    raise UserError(f"--data-dir {directory} holds no CIFAR-10 batches; {HINT}")


# What a damaged pickle makes the unpickler raise (it cannot run code: see BatchUnpickler).
CORRUPT_PICKLE = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
    MemoryError,
)


class RefusedPickle(pickle.UnpicklingError):
    """The pickle names a global that no genuine CIFAR-10 batch needs."""


def _numpy_globals() -> dict[tuple[str, str], Any]:
    # Ask numpy for its array-rebuilding function rather than importing numpy.core, which moved to
    # numpy._core in numpy 2; files written by numpy 1 (or Python 2) name the old module.
    reconstruct = np.empty(0, np.uint8).__reduce__()[0]
    from_buffer = np.empty(1, np.uint8).__reduce_ex__(5)[0]  # how protocol 5 rebuilds an array
    return {
        ("numpy.core.numeric", "_frombuffer"): from_buffer,
        ("numpy._core.numeric", "_frombuffer"): from_buffer,
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """What Python 3's pickler calls to rebuild ``bytes`` at protocols < 3 (numpy arrays' raw data
    among them): ``_codecs.encode(text, "latin1")``. Only that text-to-bytes codec is honoured."""
    if not isinstance(text, str) or encoding.replace("-", "").replace("_", "").lower() != "latin1":
        raise RefusedPickle(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


class BatchUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds plain numpy arrays and built-in containers, and nothing else.

    Every global a pickle calls goes through :meth:`find_class`, so refusing there stops a malicious
    file before any of its code runs.
    """

    allowed = _numpy_globals()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise RefusedPickle(f"{module}.{name}") from None


def _get(batch: dict, key: str) -> Any:
    for candidate in (key.encode(), key):
        if candidate in batch:
            return batch[candidate]
    return None


def read_python_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 3072]`` uint8 and labels ``[N]`` from one python batch, without running its code."""
    try:
        with path.open("rb") as file:
            batch = BatchUnpickler(file, encoding="bytes").load()
    except RefusedPickle as exc:
        raise UserError(
            f"refusing to load {path}: it calls {exc}, which a genuine CIFAR-10 batch never does "
            f"(the file may be malicious); {HINT}"
        ) from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}; {HINT}") from None
    except CORRUPT_PICKLE as exc:
        raise UserError(f"{path} is truncated or corrupt ({type(exc).__name__}: {exc}); {HINT}") from None
    data = _get(batch, "data") if isinstance(batch, dict) else None
    labels = _get(batch, "labels") if isinstance(batch, dict) else None
    if not isinstance(data, np.ndarray) or not isinstance(labels, (list, tuple, np.ndarray)):
        raise UserError(f"{path} is not a CIFAR-10 python batch (no 'data' array and 'labels' list); {HINT}")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        raise UserError(f"{path} holds {data.dtype} data of shape {data.shape}, expected uint8 [N, {PIXELS}]; {HINT}")
    try:
        label_array = np.asarray(labels, dtype=np.int64)
    except (ValueError, TypeError, OverflowError):
        raise UserError(f"{path} has labels that are not integers: corrupt file; {HINT}") from None
    if label_array.shape != (len(data),):
        raise UserError(f"{path} has {len(data)} images but {label_array.size} labels: corrupt file; {HINT}")
    return data, label_array


def read_binary_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Images ``[N, 3072]`` and labels ``[N]`` from one binary batch (records of 1 + 3072 bytes)."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}; {HINT}") from None
    record = 1 + PIXELS
    if not raw or len(raw) % record:
        raise UserError(
            f"{path} is truncated or not a CIFAR-10 binary batch: {len(raw)} bytes is not "
            f"a positive multiple of {record}; {HINT}"
        )
    table = np.frombuffer(raw, dtype=np.uint8).reshape(-1, record)
    return table[:, 1:], table[:, 0].astype(np.int64)


def download_cifar10(root: Path) -> None:
    """Fetch and extract the official python batches into ``root`` with torchvision's checked download.

    Only the archive is fetched (its MD5 is verified by torchvision); the files are then read by
    :func:`read_python_batch` like any others, never by an unrestricted unpickler.
    """
    from torchvision.datasets import CIFAR10
    from torchvision.datasets.utils import download_and_extract_archive

    try:
        root.mkdir(parents=True, exist_ok=True)
        download_and_extract_archive(CIFAR10.url, str(root), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)
    except (OSError, RuntimeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(
            f"could not download CIFAR-10 into {root}: {reason}; without internet, "
            "pass --data-dir DIR holding cifar-10-batches-py/ or cifar-10-batches-bin/"
        ) from None


def default_download_dir() -> Path:
    if os.environ.get("DEGL_DATA_DIR"):
        return Path(os.environ["DEGL_DATA_DIR"]) / "cifar10"
    return Path.home() / ".cache/degl/cifar10"


def load_cifar10(data_dir: str | Path | None = None, *, download: bool = False) -> ImageData:
    """CIFAR-10 as uint8 tensors ``[N, 3, 32, 32]``, served by the device-resident loader.

    With ``download``, a missing data set is fetched first (into ``data_dir`` or the default place).
    """
    try:
        folder, fmt = find_batches(data_dir)
    except UserError:
        if not download:
            raise
        root = Path(data_dir) if data_dir is not None else default_download_dir()
        download_cifar10(root)
        folder, fmt = find_batches(root)
    read = read_binary_batch if fmt == "bin" else read_python_batch
    splits = {}
    for split, names in (("train", _files(fmt)[:5]), ("test", _files(fmt)[5:])):
        parts = [read(folder / name) for name in names]
        images = np.concatenate([images for images, _ in parts])
        labels = np.concatenate([labels for _, labels in parts])
        if labels.size and (labels.min() < 0 or labels.max() > 9):
            raise UserError(f"CIFAR-10 {split} labels in {folder} are outside 0..9: corrupt file; {HINT}")
        splits[split] = (
            torch.from_numpy(images.reshape(-1, 3, 32, 32)),  # concatenate made a fresh array
            torch.from_numpy(labels),
        )
    return ImageData(
        "cifar10",
        *splits["train"],
        *splits["test"],
        num_classes=10,
        mean=MEAN,
        std=STD,
        flip=True,
        crop_padding=4,
    )
