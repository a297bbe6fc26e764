"""ImageNet from generated class folders: listing, loaders, determinism, bad files, the real CLI."""

import json
import os
from unittest import mock

import pytest
import torch

from datagen import write_imagenet_folders
from degl.cli import main
from degl.data import load_dataset
from degl.data.imagenet import FolderImages, load_imagenet
from degl.errors import UserError
from degl.run.config import DATASETS, TrainConfig, make_config


@pytest.fixture
def root(tmp_path):
    return write_imagenet_folders(tmp_path / "imagenet", classes=3, per_class=4, size=(40, 48))


def test_lists_the_folders(root):
    data = load_dataset("imagenet", data_dir=str(root), image_size=32, data_workers=0)
    assert (data.name, data.num_classes, data.num_train) == ("imagenet", 3, 12)
    assert data.input_shape == (3, 32, 32)
    assert data.classes == ["n00000000", "n00000001", "n00000002"]
    assert "imagenet" in DATASETS and "cifar10" in DATASETS and TrainConfig().dataset == "fashion-mnist"


def test_loaders_give_normalised_batches_on_the_device(root):
    data = load_imagenet(root, image_size=32, workers=0)
    train, val = data.loaders(batch_size=5, eval_batch_size=5, device=torch.device("cpu"), augment=True, seed=0)
    assert (len(train), len(val), train.batch_size) == (2, 3, 5)  # training drops the partial batch
    batches = list(train.epoch(0))
    x, y = batches[0]
    assert x.shape == (5, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert x.min() >= -2.2 and x.max() <= 2.7 and x.std() > 0.05  # ImageNet mean/std normalisation
    seen = torch.cat([y for _, y in batches])
    assert len(seen) == 10
    labels = torch.cat([y for _, y in val])
    assert labels.tolist() == [0] * 4 + [1] * 4 + [2] * 4  # every validation image, in order
    xv = next(iter(val))[0]
    assert xv.shape == (5, 3, 32, 32)
    assert torch.equal(xv, next(iter(val))[0])  # evaluation is not random


def test_training_batches_depend_only_on_seed_epoch_and_step(root):
    def loaders(workers, seed=0):
        other = load_imagenet(root, image_size=24, workers=workers)
        return other.loaders(batch_size=4, eval_batch_size=4, device=torch.device("cpu"), augment=True, seed=seed)[0]

    full = list(loaders(0).epoch(3))
    again = list(loaders(2).epoch(3))  # two worker processes: same images, same augmentation
    tail = list(loaders(0).epoch(3, start_step=1))
    assert len(full) == 3 and len(tail) == 2
    for (a, b), (c, d) in zip(full, again):
        assert torch.equal(a, c) and torch.equal(b, d)
    for (a, b), (c, d) in zip(full[1:], tail):
        assert torch.equal(a, c) and torch.equal(b, d)
    other_epoch = list(loaders(0).epoch(4))
    assert not all(torch.equal(a, c) for (a, _), (c, _) in zip(full, other_epoch))
    other_seed = list(loaders(0, seed=1).epoch(3))
    assert not all(torch.equal(a, c) for (a, _), (c, _) in zip(full, other_seed))


def test_start_step_reads_only_the_remaining_batches(root):
    data = load_imagenet(root, image_size=16, workers=0)
    train, _ = data.loaders(batch_size=3, eval_batch_size=3, device=torch.device("cpu"), augment=True, seed=0)
    reads = []
    real = FolderImages.__getitem__

    def counting(self, item):
        reads.append(item[0])
        return real(self, item)

    with mock.patch.object(FolderImages, "__getitem__", counting):
        assert len(list(train.epoch(0, start_step=3))) == 1
    assert len(reads) == 3
    order = [index for batch in train.batches(0) for index, _ in batch]
    assert sorted(order) == list(range(12)) and reads == order[9:]


def test_subset_spans_the_classes(root):
    data = load_imagenet(root, image_size=16, workers=0)
    part = data.subset(6)
    assert part.num_train == 6 and data.num_train == 12 and part.num_classes == 3
    labels = {data.train_samples[i][1] for i in part.train_indices}
    assert len(labels) > 1  # not just the first class folder
    assert part.train_indices == data.subset(6).train_indices


@pytest.mark.parametrize("workers", [0, 2])
@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_corrupt_image_is_a_user_error_naming_the_file(root, workers, damage):
    path = sorted((root / "train" / "n00000001").iterdir())[2]
    raw = path.read_bytes()
    path.write_bytes(b"\x00not a jpeg" * 10 if damage == "garbage" else raw[: len(raw) // 3])
    data = load_imagenet(root, image_size=16, workers=workers)
    train, _ = data.loaders(batch_size=4, eval_batch_size=4, device=torch.device("cpu"), augment=True, seed=0)
    with pytest.raises(UserError, match=f"cannot decode image {path}") as info:
        list(train.epoch(0))
    assert "\n" not in str(info.value)


def test_bad_folders(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_imagenet(tmp_path / "nowhere")
    root = write_imagenet_folders(tmp_path / "a", classes=2, per_class=1)
    os.rename(root / "val", root / "validation")
    with pytest.raises(UserError, match="has no val/ folder"):
        load_imagenet(root)
    (root / "validation").rename(root / "train2")
    (root / "train").rename(root / "val")
    with pytest.raises(UserError, match="has no train/ folder"):
        load_imagenet(root)
    root = write_imagenet_folders(tmp_path / "b", classes=3, per_class=1)
    (root / "val" / "n00000002").rename(root / "val" / "n09999999")
    with pytest.raises(UserError, match=r"differ .only in train: n00000002; only in val: n09999999"):
        load_imagenet(root)
    root = write_imagenet_folders(tmp_path / "c", classes=2, per_class=1)
    for image in (root / "val" / "n00000001").iterdir():
        image.unlink()
    with pytest.raises(UserError, match="val: Found no valid file for the classes n00000001"):
        load_imagenet(root)
    root = write_imagenet_folders(tmp_path / "d", classes=2, per_class=1)
    for folder in (root / "val").iterdir():
        for image in folder.iterdir():
            image.rename(root / "val" / image.name)
        folder.rmdir()
    with pytest.raises(UserError, match=r"holds images directly .* sort them into one folder per class"):
        load_imagenet(root)
    with mock.patch.dict(os.environ, {"HOME": str(tmp_path / "home")}):
        os.environ.pop("DEGL_DATA_DIR", None)
        with pytest.raises(UserError, match="ImageNet not found in"):
            load_imagenet(None)


def test_config_fields_are_checked():
    assert (TrainConfig().image_size, TrainConfig().data_workers, TrainConfig().download) == (224, 4, False)
    with pytest.raises(UserError, match="--image-size must be a positive integer"):
        make_config({"image_size": 0})
    with pytest.raises(UserError, match="--data-workers must be 0 or more"):
        make_config({"data_workers": -1})


def test_config_options_reach_the_data_set(root):
    from degl.run.setup import load_data

    cfg = make_config(
        {"dataset": "imagenet", "data_dir": str(root), "image_size": 32, "data_workers": 0, "batch_size": 4}
    )
    data = load_data(cfg)
    assert data.input_shape == (3, 32, 32) and data.workers == 0


def cli_train(root, out, *extra):
    args = ["train", "--dataset", "imagenet", "--data-dir", str(root), "--image-size", "32", "--max-steps", "1"]
    args += ["--model", "cnn6", "--width", "0.125", "--batch-size", "8", "--no-progress", "--out", str(out)]
    return main([*args, *extra])


def test_one_training_step_through_the_cli(root, tmp_path):
    out = tmp_path / "run"
    assert cli_train(root, out, "--data-workers", "1", "--stages", "2", "--eval-batch-size", "5") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps_completed"] == 1 and summary["epochs_completed"] == 1  # 12 images: 1 step/epoch
    assert len(summary["test_acc_per_stage"]) == 2  # the 12 validation images were evaluated
    assert "image_size: 32" in (out / "config.yaml").read_text()


@pytest.mark.parametrize("problem", ["no-val", "classes-differ"])
def test_bad_folders_exit_2_with_one_line_and_no_run_directory(root, tmp_path, capsys, problem):
    if problem == "no-val":
        (root / "val").rename(root / "valid")
    else:
        (root / "val" / "n00000000").rename(root / "val" / "n00000009")
    capsys.readouterr()
    assert cli_train(root, tmp_path / "run", "--data-workers", "0") == 2
    err = capsys.readouterr().err
    assert err.startswith("degl: error: ") and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()


def test_corrupt_image_during_training_exits_2(root, tmp_path, capsys):
    for image in (root / "train" / "n00000002").iterdir():
        image.write_bytes(b"garbage")
    capsys.readouterr()
    assert cli_train(root, tmp_path / "run", "--data-workers", "1") == 2
    err = capsys.readouterr().err
    assert err.startswith("degl: error: cannot decode image ") and err.count("\n") == 1, err
