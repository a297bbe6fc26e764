"""Tiny CIFAR-10 and ImageNet data sets in the official on-disk formats, for tests and CI recipe runs.

Nothing here downloads anything. The images are learnable (each class has its own mean colour plus
noise), so a short training run on them should beat chance.

CIFAR-10's python batches were pickled by Python 2 numpy (protocol 2; text as Python 2 byte
strings). Python 3's pickler cannot write Python 2 strings, so :class:`Py2Pickler` writes the
opcodes by hand: the globals, opcodes and value types are those of the official files (memo
entries are left out; no reader needs them).
"""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np

LABEL_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


class Py2Pickler:
    """Protocol-2 pickle of dicts, lists, ints, Python 2 strings (``bytes``) and uint8 arrays."""

    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")  # PROTO 2

    def dumps(self, value: object) -> bytes:
        self.write(value)
        return bytes(self.out + b".")  # STOP

    def write(self, value: object) -> None:
        out = self.out
        if isinstance(value, dict):
            out += b"}("  # EMPTY_DICT, MARK
            for key, item in value.items():
                self.write(key)
                self.write(item)
            out += b"u"  # SETITEMS
        elif isinstance(value, list):
            out += b"]("  # EMPTY_LIST, MARK
            for item in value:
                self.write(item)
            out += b"e"  # APPENDS
        elif isinstance(value, bool) or value is None:
            out += {True: b"\x88", False: b"\x89", None: b"N"}[value]
        elif isinstance(value, int):
            if 0 <= value < 256:
                out += b"K" + bytes([value])  # BININT1
            elif 0 <= value < 65536:
                out += b"M" + struct.pack("<H", value)  # BININT2
            else:
                out += b"J" + struct.pack("<i", value)  # BININT
        elif isinstance(value, bytes):
            if len(value) < 256:
                out += b"U" + bytes([len(value)]) + value  # SHORT_BINSTRING
            else:
                out += b"T" + struct.pack("<I", len(value)) + value  # BINSTRING
        elif isinstance(value, np.ndarray):
            self.write_array(value)
        else:
            raise TypeError(f"Py2Pickler cannot write {type(value).__name__}")

    def write_array(self, array: np.ndarray) -> None:
        """What numpy 1.x under Python 2 writes for a C-ordered uint8 array."""
        assert array.dtype == np.uint8
        out = self.out
        out += b"cnumpy.core.multiarray\n_reconstruct\n"
        out += b"cnumpy\nndarray\n" + b"K\x00\x85" + b"U\x01b" + b"\x87R"  # (ndarray, (0,), 'b')
        out += b"(K\x01"  # state: (version 1,
        self.write_tuple(array.shape)
        out += b"cnumpy\ndtype\n" + b"U\x02u1K\x00K\x01\x87R"  # dtype('u1', 0, 1)
        out += b"(K\x03U\x01|NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"  # dtype state, BUILD
        out += b"\x89"  # not Fortran-ordered
        self.write(np.ascontiguousarray(array).tobytes())
        out += b"tb"  # TUPLE, BUILD

    def write_tuple(self, items: tuple[int, ...]) -> None:
        self.out += b"("
        for item in items:
            self.write(item)
        self.out += b"t"


def make_cifar10_arrays(n_per_batch: int = 20, n_test: int | None = None, seed: int = 0) -> dict:
    """Images ``[N, 3072]`` uint8 (channel planes, rows in order) and labels, as in the real files."""
    rng = np.random.default_rng(seed)
    colours = rng.integers(30, 226, (10, 3))

    def split(n: int) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, 10, n)
        noise = rng.integers(-30, 31, (n, 3, 1024))
        images = np.clip(colours[labels][:, :, None] + noise, 0, 255).astype(np.uint8)
        return images.reshape(n, 3072), labels

    train_data, train_labels = split(5 * n_per_batch)
    test_data, test_labels = split(n_per_batch if n_test is None else n_test)
    return {
        "train_data": train_data,
        "train_labels": train_labels,
        "test_data": test_data,
        "test_labels": test_labels,
    }


def _batches(arrays: dict) -> list[tuple[str, np.ndarray, np.ndarray]]:
    n = len(arrays["train_labels"]) // 5
    parts = [
        (f"data_batch_{i + 1}", arrays["train_data"][i * n : (i + 1) * n], arrays["train_labels"][i * n : (i + 1) * n])
        for i in range(5)
    ]
    return [*parts, ("test_batch", arrays["test_data"], arrays["test_labels"])]


def write_cifar10_python(
    directory: str | Path, n_per_batch: int = 20, n_test: int | None = None, seed: int = 0, protocol: int | None = None
) -> Path:
    """Write ``directory/cifar-10-batches-py`` (5 train batches, test_batch, batches.meta); return it.

    ``protocol``: None writes the official files' Python 2 pickles; a number, Python 3's own
    ``pickle.dumps`` at that protocol (how a re-saved copy looks)."""
    folder = Path(directory) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    arrays = make_cifar10_arrays(n_per_batch, n_test, seed)
    for index, (name, data, labels) in enumerate(_batches(arrays)):
        title = f"training batch {index + 1} of 5" if name != "test_batch" else "testing batch 1 of 1"
        batch = {
            b"data": data,
            b"labels": [int(label) for label in labels],
            b"batch_label": title.encode(),
            b"filenames": [f"{LABEL_NAMES[label]}_s_{i:06d}.png".encode() for i, label in enumerate(labels)],
        }
        (folder / name).write_bytes(_dumps(batch, protocol))
    meta = {
        b"num_cases_per_batch": len(arrays["train_labels"]) // 5,
        b"label_names": [name.encode() for name in LABEL_NAMES],
        b"num_vis": 3072,
    }
    (folder / "batches.meta").write_bytes(_dumps(meta, protocol))
    return folder


def _dumps(value: object, protocol: int | None) -> bytes:
    return Py2Pickler().dumps(value) if protocol is None else pickle.dumps(value, protocol=protocol)


def write_cifar10_binary(
    directory: str | Path, n_per_batch: int = 20, n_test: int | None = None, seed: int = 0
) -> Path:
    """Write ``directory/cifar-10-batches-bin`` (records of 1 label byte + 3072 pixels); return it.

    With the same arguments it holds the same images as :func:`write_cifar10_python`.
    """
    folder = Path(directory) / "cifar-10-batches-bin"
    folder.mkdir(parents=True, exist_ok=True)
    for name, data, labels in _batches(make_cifar10_arrays(n_per_batch, n_test, seed)):
        table = np.concatenate([labels.astype(np.uint8)[:, None], data], axis=1)
        (folder / f"{name}.bin").write_bytes(table.tobytes())
    (folder / "batches.meta.txt").write_text("\n".join(LABEL_NAMES) + "\n")
    return folder


def write_imagenet_folders(
    directory: str | Path,
    classes: int = 3,
    per_class: int = 4,
    size: tuple[int, int] = (40, 48),
    val_per_class: int | None = None,
    seed: int = 0,
) -> Path:
    """Write ``directory/train/<wnid>/*.JPEG`` and ``directory/val/<wnid>/*.JPEG``; return ``directory``.

    ``size`` is (width, height), as PIL has it. Class folders are named like WordNet ids
    (``n00000000``), files like the official ones (``<wnid>_<n>.JPEG``, ``ILSVRC2012_val_<n>.JPEG``).
    """
    from PIL import Image

    root = Path(directory)
    rng = np.random.default_rng(seed)
    colours = rng.integers(30, 226, (classes, 3))
    width, height = size
    counter = 0
    for split, count in (("train", per_class), ("val", per_class if val_per_class is None else val_per_class)):
        for label in range(classes):
            wnid = f"n{label:08d}"
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                noise = rng.integers(-30, 31, (height, width, 3))
                pixels = np.clip(colours[label] + noise, 0, 255).astype(np.uint8)
                counter += 1
                name = f"{wnid}_{i + 1}.JPEG" if split == "train" else f"ILSVRC2012_val_{counter:08d}.JPEG"
                Image.fromarray(pixels, "RGB").save(folder / name, format="JPEG", quality=90)
    return root
