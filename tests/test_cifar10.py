"""CIFAR-10 from both official formats, generated here: reading, finding, refusing, the real CLI."""

import json
import os
import pickle
import shlex
import urllib.error
from unittest import mock

import numpy as np
import pytest
import torch

from datagen import Py2Pickler, make_cifar10_arrays, write_cifar10_binary, write_cifar10_python
from degl.cli import main
from degl.data import load_dataset
from degl.data.cifar10 import MEAN, STD, load_cifar10
from degl.errors import UserError
from degl.run.config import make_config
from degl.run.setup import load_data

WRITERS = {"py": write_cifar10_python, "bin": write_cifar10_binary}


def test_both_formats_read_to_identical_tensors(tmp_path):
    write_cifar10_python(tmp_path / "a", n_per_batch=6, n_test=5)
    write_cifar10_binary(tmp_path / "b", n_per_batch=6, n_test=5)
    py, binary = load_cifar10(tmp_path / "a"), load_cifar10(tmp_path / "b")
    for key in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(py, key), getattr(binary, key)), key
    arrays = make_cifar10_arrays(6, 5)
    assert py.train_images.shape == (30, 3, 32, 32) and py.train_images.dtype == torch.uint8
    assert py.test_images.shape == (5, 3, 32, 32)
    assert torch.equal(py.train_images.reshape(30, -1), torch.from_numpy(arrays["train_data"]))
    assert py.train_labels.tolist() == arrays["train_labels"].tolist()
    assert (py.name, py.num_classes, py.mean, py.std) == ("cifar10", 10, MEAN, STD)
    assert (py.crop_padding, py.flip) == (4, True)


def test_generated_python_batches_read_by_torchvision_too(tmp_path, monkeypatch):
    """The generated pickles are what torchvision's reader (plain pickle, latin1) expects."""
    import torchvision.datasets.cifar as tv_cifar

    monkeypatch.setattr(tv_cifar, "check_integrity", lambda *args, **kwargs: True)
    monkeypatch.setattr(tv_cifar.CIFAR10, "_check_integrity", lambda self: True)
    write_cifar10_python(tmp_path, n_per_batch=4)
    theirs = tv_cifar.CIFAR10(str(tmp_path), train=True)
    ours = load_cifar10(tmp_path)
    assert np.array_equal(ours.train_images.permute(0, 2, 3, 1).numpy(), theirs.data)
    assert ours.train_labels.tolist() == theirs.targets
    assert theirs.classes[0] == "airplane"


@pytest.mark.parametrize("fmt", ["py", "bin"])
def test_data_dir_is_the_batches_folder_or_its_parent(tmp_path, fmt):
    folder = WRITERS[fmt](tmp_path, n_per_batch=2)
    a, b = load_cifar10(folder), load_cifar10(tmp_path)
    assert torch.equal(a.train_images, b.train_images) and a.num_train == 10


def test_default_places(tmp_path):
    write_cifar10_binary(tmp_path / "data" / "cifar10", n_per_batch=2)  # the cwd is tmp_path
    with mock.patch.dict(os.environ):
        os.environ.pop("DEGL_DATA_DIR", None)
        assert load_dataset("cifar10").num_train == 10
        os.environ["DEGL_DATA_DIR"] = str(tmp_path / "elsewhere")
        write_cifar10_python(tmp_path / "elsewhere" / "cifar10", n_per_batch=3)
        assert load_dataset("cifar10").num_train == 15  # $DEGL_DATA_DIR comes first


class Payload:
    """Pickles as a call of ``func(arg)``: what a malicious file would contain."""

    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize("protocol", [0, 2, 3, 4, 5])
def test_batches_pickled_by_python3_load_like_the_official_ones(tmp_path, protocol):
    # At protocols 0-2 Python 3 writes bytes (numpy's raw data among them) as _codecs.encode calls.
    official = load_cifar10(write_cifar10_python(tmp_path / "py2", n_per_batch=3).parent)
    resaved = load_cifar10(write_cifar10_python(tmp_path / "py3", n_per_batch=3, protocol=protocol).parent)
    for key in ("train_images", "train_labels", "test_images", "test_labels"):
        assert torch.equal(getattr(official, key), getattr(resaved, key)), key
    assert official.train_images.float().std() > 0  # real pixels, not an all-zero default


def test_codecs_other_than_latin1_are_refused(tmp_path):
    folder = write_cifar10_python(tmp_path, n_per_batch=2)
    raw = b"\x80\x02c_codecs\nencode\nq\x00X\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R."
    (folder / "data_batch_1").write_bytes(raw)
    with pytest.raises(
        UserError, match=r"refusing to load .*data_batch_1: it calls _codecs.encode with encoding 'rot13'"
    ):
        load_cifar10(tmp_path)


@pytest.mark.parametrize("protocol", [0, 2, 4])
@pytest.mark.parametrize("kind", ["os.system", "exec", "nested"])
def test_malicious_pickle_is_refused_without_running_it(tmp_path, protocol, kind):
    marker = tmp_path / "pwned"
    if kind == "exec":
        payload = Payload(exec, f"open({str(marker)!r}, 'w').close()")
    else:
        payload = Payload(os.system, f"touch {shlex.quote(str(marker))}")
    # str keys: Python 3 writes bytes at protocols < 3 as calls of _codecs.encode, refused on its own.
    batch = {"data": payload, "labels": [1]}
    if kind == "nested":  # hidden deep inside an otherwise plausible batch
        batch = {"batch_label": "training batch 3 of 5", "labels": [1, {"x": [payload]}], "data": None}
    raw = pickle.dumps(batch, protocol=protocol)
    pickle.loads(raw)  # control: the payload really works when unpickled naively ...
    assert marker.exists()
    marker.unlink()
    folder = write_cifar10_python(tmp_path, n_per_batch=2)
    (folder / "data_batch_3").write_bytes(raw)
    with pytest.raises(UserError, match=r"refusing to load .*data_batch_3: it calls (posix|builtins|__builtin__)\."):
        load_cifar10(tmp_path)
    assert not marker.exists()  # ... and was not run by the reader


@pytest.mark.parametrize(
    "damage, message",
    [
        (lambda raw: raw[: len(raw) // 2], "truncated or corrupt"),
        (lambda raw: raw[:40], "truncated or corrupt"),
        (lambda raw: b"not a pickle at all", "truncated or corrupt"),
        (lambda raw: b"", "truncated or corrupt"),
        (lambda raw: Py2Pickler().dumps([1, 2]), "not a CIFAR-10 python batch"),
        (
            lambda raw: Py2Pickler().dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [1, 2]}),
            r"expected uint8 \[N, 3072\]",
        ),
        (
            lambda raw: Py2Pickler().dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}),
            "2 images but 1 labels",
        ),
        (
            lambda raw: Py2Pickler().dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [b"x"]}),
            "not integers",
        ),
        (
            lambda raw: Py2Pickler().dumps({b"data": np.zeros((1, 3072), np.uint8), b"labels": [12]}),
            "outside 0..9",
        ),
    ],
)
def test_damaged_python_batch(tmp_path, damage, message):
    folder = write_cifar10_python(tmp_path, n_per_batch=2)
    path = folder / "test_batch"
    path.write_bytes(damage(path.read_bytes()))
    with pytest.raises(UserError, match=message) as info:
        load_cifar10(folder)
    assert "\n" not in str(info.value) and "--data-dir" in str(info.value)


def test_damaged_binary_batch(tmp_path):
    folder = write_cifar10_binary(tmp_path, n_per_batch=2)
    path = folder / "data_batch_2.bin"
    raw = path.read_bytes()
    path.write_bytes(raw[:-10])
    with pytest.raises(UserError, match=r"data_batch_2.bin is truncated .* not a positive multiple of 3073"):
        load_cifar10(folder)
    path.write_bytes(bytes([10]) + raw[1:])
    with pytest.raises(UserError, match=r"outside 0..9"):
        load_cifar10(folder)


def test_missing_files_and_folders(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_cifar10(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no CIFAR-10 batches"):
        load_cifar10(tmp_path / "empty")
    (tmp_path / "empty" / "cifar-10-python.tar.gz").write_bytes(b"")
    with pytest.raises(UserError, match="is not extracted; run: tar xzf"):
        load_cifar10(tmp_path / "empty")
    folder = write_cifar10_python(tmp_path / "some", n_per_batch=2)
    (folder / "data_batch_4").unlink()
    with pytest.raises(UserError, match=r"lacks CIFAR-10 file.s. data_batch_4;"):
        load_cifar10(tmp_path / "some")
    with mock.patch.dict(os.environ, {"HOME": str(tmp_path / "home")}):
        os.environ.pop("DEGL_DATA_DIR", None)
        with pytest.raises(UserError, match=r"CIFAR-10 not found in .*data/cifar10"):
            load_cifar10()


def test_download_fetches_once_then_reads_with_the_safe_reader(tmp_path, monkeypatch):
    import torchvision.datasets.utils as tv_utils

    calls = []

    def fake_download(url, root, filename=None, md5=None):
        calls.append((url, filename, md5))
        write_cifar10_python(root, n_per_batch=2)

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", fake_download)
    data = load_dataset("cifar10", data_dir=str(tmp_path / "new"), download=True)
    assert data.num_train == 10 and len(calls) == 1
    assert calls[0][0].startswith("https://") and calls[0][2]  # torchvision's URL and checksum
    load_dataset("cifar10", data_dir=str(tmp_path / "new"), download=True)
    assert len(calls) == 1  # already there: no second download
    cfg = make_config({"dataset": "cifar10", "data_dir": str(tmp_path / "cfg"), "download": True, "batch_size": 4})
    assert load_data(cfg).num_train == 10 and len(calls) == 2  # --download reaches the reader

    def offline(url, root, filename=None, md5=None):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(tv_utils, "download_and_extract_archive", offline)
    with pytest.raises(UserError, match=r"could not download CIFAR-10 into .*no route to host"):
        load_dataset("cifar10", data_dir=str(tmp_path / "other"), download=True)


def cli_train(data_dir, out, *extra):
    args = ["train", "--dataset", "cifar10", "--data-dir", str(data_dir), "--max-steps", "1"]
    args += ["--model", "cnn6", "--width", "0.125", "--batch-size", "8", "--no-progress", "--out", str(out)]
    return main([*args, *extra])


@pytest.mark.parametrize("fmt", ["py", "bin"])
def test_one_training_step_through_the_cli(tmp_path, fmt):
    WRITERS[fmt](tmp_path / "cifar", n_per_batch=8)
    assert cli_train(tmp_path / "cifar", tmp_path / "run", "--stages", "2") == 0
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["steps_completed"] == 1 and not summary["completed"]


@pytest.mark.parametrize("problem", ["missing", "malicious", "truncated"])
def test_bad_data_exits_2_with_one_line_and_no_run_directory(tmp_path, capsys, problem):
    folder = write_cifar10_python(tmp_path / "cifar", n_per_batch=8)
    if problem == "missing":
        (folder / "test_batch").unlink()
    elif problem == "malicious":
        (folder / "test_batch").write_bytes(pickle.dumps(Payload(os.system, "true"), protocol=2))
    else:
        (folder / "data_batch_5").write_bytes((folder / "data_batch_5").read_bytes()[:1000])
    capsys.readouterr()
    assert cli_train(tmp_path / "cifar", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert err.startswith("degl: error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()
