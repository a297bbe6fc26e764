"""CUDA paths: device-resident data, AMP (bf16/fp16 with a GradScaler per stage), channels-last,
torch.compile, and the NCCL pipeline. Skipped with a reason on machines without a GPU."""

import json

import pytest
import torch

from conftest import SYNTH, run_degl
from degl.cli import main

pytestmark = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none found)")


@needs_cuda
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("method", ["dgl", "backprop", "sgl"])
def test_training_on_cuda(tmp_path, capsys, precision, method):
    out = tmp_path / "run"
    args = [
        "train",
        *SYNTH,
        "--device",
        "cuda",
        "--precision",
        precision,
        "--method",
        method,
        "--stages",
        "2",
        "--epochs",
        "3",
        "--channels-last",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"].startswith("cuda") and summary["completed"]
    assert summary["test_acc"] == summary["test_acc_per_stage"][-1] and summary["test_acc"] > 25  # chance: 25 %


@needs_cuda
def test_fp16_grad_scalers_are_checkpointed_per_stage(tmp_path, capsys):
    from degl.run import checkpoint

    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                *SYNTH,
                "--device",
                "cuda",
                "--precision",
                "fp16",
                "--stages",
                "2",
                "--max-steps",
                "3",
                "--loss-scale-init",
                "1024",
                "--loss-scale-growth-interval",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    path, _ = checkpoint.load_meta(out)
    for k in range(2):
        scaler = checkpoint.load_stage(path, k)["scaler"]
        assert scaler["growth_interval"] == 2
        assert 0 < scaler["scale"] <= 2048  # started at 1024: at most one doubling in 3 steps


@needs_cuda
def test_compiled_stages_on_cuda(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(["train", *SYNTH, "--device", "cuda", "--compile", "--stages", "2", "--max-steps", "3", "--out", str(out)])
        == 0
    )


@needs_cuda
def test_gpu_pipeline(tmp_path):
    # NCCL when each rank has a GPU of its own; with one GPU both ranks share it and gloo stages the
    # activations through host memory.
    out = tmp_path / "run"
    done = run_degl("train", *SYNTH, "--device", "cuda", "--workers", "2", "--epochs", "1", "--out", str(out))
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["workers"] == 2 and summary["completed"]
