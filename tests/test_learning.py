"""Training really learns, on real data, and the speed options really take effect."""

import json

import torch

from conftest import SYNTH
from degl.cli import main
from degl.run.config import make_config
from degl.run.setup import build_setup


def test_dgl_learns_fashion_mnist_on_the_cpu(tmp_path, capsys, fmnist_dir):
    out = tmp_path / "run"
    args = [
        "train", "--dataset", "fashion-mnist", "--data-dir", str(fmnist_dir), "--train-size", "2048",
        "--model", "cnn4", "--width", "0.125", "--stages", "2", "--aux", "mlp", "--epochs", "3",
        "--batch-size", "64", "--no-augment", "--threads", "1", "--no-progress", "--out", str(out),
    ]  # fmt: skip
    assert main(args) == 0
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    for stage in (0, 1):
        losses = [r["loss"] for r in lines if r["split"] == "train" and r["stage"] == stage]
        assert len(losses) == 3 and losses[2] < losses[0] * 0.8, losses  # the loss falls
    summary = json.loads((out / "summary.json").read_text())
    # 10 classes: chance is 10 %; 2048 images for 3 epochs reach well above 60 %.
    assert min(summary["test_acc_per_stage"]) > 60, summary["test_acc_per_stage"]


def test_channels_last_applies_to_stages_and_batches():
    cfg = make_config(
        {"dataset": "synthetic", "input_shape": (3, 12, 12), "synthetic_size": 64, "num_classes": 4,
         "model": "cnn4", "width": 0.125, "stages": 2, "batch_size": 16, "channels_last": True}
    )  # fmt: skip
    setup = build_setup(cfg)
    fmt = torch.channels_last
    convs = [m for stage in setup.stages for m in stage.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(conv.weight.is_contiguous(memory_format=fmt) for conv in convs)
    for loader in (setup.train_loader, setup.test_loader):
        x, _ = next(iter(loader))
        assert x.dim() == 4 and x.shape[1] > 1 and x.is_contiguous(memory_format=fmt)
        assert not x.is_contiguous()  # really channels-last, not a shape where both formats coincide
    plain = build_setup(make_config({**cfg.to_dict(), "channels_last": False}))
    x, _ = next(iter(plain.train_loader))
    assert x.is_contiguous() and not x.is_contiguous(memory_format=fmt)


def test_synthetic_run_beats_chance(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SYNTH, "--stages", "2", "--epochs", "3", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["test_acc"] > 25 + 15  # 4 learnable classes: chance is 25 %
