import gzip
import struct

import numpy as np
import pytest
import torch

from degl.data import DeviceLoader, load_dataset
from degl.data.fashion_mnist import FILES, load_fashion_mnist, read_idx
from degl.data.loader import random_crop, random_flip
from degl.data.synthetic import make_synthetic
from degl.errors import UserError


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">I", d) for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_fake_fashion_mnist(folder, n_train=64, n_test=16, gz=True, corrupt=None):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28)),
        "train_labels": rng.integers(0, 10, (n_train,)),
        "test_images": rng.integers(0, 256, (n_test, 28, 28)),
        "test_labels": rng.integers(0, 10, (n_test,)),
    }
    for key, stem in FILES.items():
        data = idx_bytes(arrays[key])
        if key == corrupt:
            data = data[: len(data) // 2]
        (folder / (stem + (".gz" if gz else ""))).write_bytes(gzip.compress(data) if gz else data)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_reads_idx_files_in_both_layouts(tmp_path, gz):
    arrays = write_fake_fashion_mnist(tmp_path / "fm" / "FashionMNIST" / "raw", gz=gz)
    data = load_fashion_mnist(tmp_path / "fm")
    assert data.train_images.shape == (64, 1, 28, 28) and data.train_images.dtype == torch.uint8
    assert torch.equal(data.test_labels, torch.from_numpy(arrays["test_labels"]))
    assert torch.equal(data.train_images[:, 0], torch.from_numpy(arrays["train_images"].astype(np.uint8)))


@pytest.mark.parametrize("corrupt", ["train_images", "test_labels"])
def test_truncated_file_is_a_clear_error(tmp_path, corrupt):
    write_fake_fashion_mnist(tmp_path, corrupt=corrupt)
    with pytest.raises(UserError, match="header says"):
        load_fashion_mnist(tmp_path)


def test_garbage_file(tmp_path):
    path = tmp_path / "x-idx3-ubyte.gz"
    path.write_bytes(b"this is not gzip")
    with pytest.raises(UserError, match="corrupt"):
        read_idx(path, expected_dims=3)
    path = tmp_path / "y-idx1-ubyte"
    path.write_bytes(bytes([1, 2, 3, 4, 5, 6, 7, 8]))
    with pytest.raises(UserError, match="bad header"):
        read_idx(path, expected_dims=1)


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_fashion_mnist(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="lacks Fashion-MNIST"):
        load_fashion_mnist(tmp_path / "empty")


def test_loader_epochs_restart_exactly_at_any_step():
    data = make_synthetic((3, 8, 8), 4, 200)
    data.crop_padding, data.flip = 2, True
    loader = DeviceLoader(data, train=True, batch_size=16, augment=True, seed=3)
    full = list(loader.epoch(5))
    tail = list(loader.epoch(5, start_step=7))
    assert len(full) == 200 // 16 and len(tail) == len(full) - 7
    for (a, b), (c, d) in zip(full[7:], tail):
        assert torch.equal(a, c) and torch.equal(b, d)
    other_epoch = next(iter(loader.epoch(6)))
    assert not torch.equal(other_epoch[1], full[0][1])


def test_test_loader_covers_every_sample_in_order():
    data = make_synthetic((1, 4, 4), 3, 100)
    loader = DeviceLoader(data, train=False, batch_size=7)
    labels = torch.cat([y for _, y in loader])
    assert torch.equal(labels, data.test_labels)


def test_normalisation_and_augmentation():
    data = make_synthetic((1, 8, 8), 2, 64)
    plain = DeviceLoader(data, train=True, batch_size=64, augment=False)
    x, _ = next(iter(plain))
    expected = (data.train_images.float() / 255 - 0.5) / 0.25
    assert torch.allclose(x.mean(), expected.mean(), atol=1e-5)
    images = torch.arange(2 * 1 * 4 * 4, dtype=torch.float).view(2, 1, 4, 4)
    g = torch.Generator().manual_seed(0)
    cropped = random_crop(images, 1, g)
    assert cropped.shape == images.shape
    for i in range(2):  # every crop is a shifted window of the zero-padded image
        padded = torch.nn.functional.pad(images[i], (1, 1, 1, 1))
        windows = [padded[:, dy : dy + 4, dx : dx + 4] for dy in range(3) for dx in range(3)]
        assert any(torch.equal(cropped[i], w) for w in windows)
    flipped = random_flip(images, torch.Generator().manual_seed(1))
    for i in range(2):
        assert torch.equal(flipped[i], images[i]) or torch.equal(flipped[i], images[i].flip(2))


def test_unknown_dataset():
    with pytest.raises(UserError, match="unknown dataset"):
        load_dataset("imagenet-21k")


def test_real_fashion_mnist(fmnist_dir):
    data = load_fashion_mnist(fmnist_dir)
    assert data.train_images.shape == (60000, 1, 28, 28)
    assert data.test_images.shape == (10000, 1, 28, 28)
    assert torch.bincount(data.train_labels).tolist() == [6000] * 10
    assert abs(data.train_images.float().mean().item() / 255 - data.mean[0]) < 1e-3


def test_fashion_mnist_is_installed_when_required():
    """`make test` sets DEGL_REQUIRE_DATA=1: there the data set must be installed and readable, not skipped."""
    import os

    from conftest import fashion_mnist_dir

    if os.environ.get("DEGL_REQUIRE_DATA") != "1":
        pytest.skip("DEGL_REQUIRE_DATA=1 is not set: a missing Fashion-MNIST only skips the tests that read it")
    path = fashion_mnist_dir()
    assert path is not None, "Fashion-MNIST missing: 'make install' should have installed it"
    data = load_fashion_mnist(path)  # every file present, complete and of the right kind
    assert data.train_images.shape == (60000, 1, 28, 28) and data.test_images.shape == (10000, 1, 28, 28)
    assert data.train_labels.shape == (60000,) and data.test_labels.shape == (10000,)
    assert torch.bincount(data.test_labels, minlength=10).tolist() == [1000] * 10
