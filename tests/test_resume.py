"""Stopping and resuming gives exactly the numbers of an uninterrupted run (deterministic, CPU)."""

import json
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import SYNTH, read_metrics
from degl.cli import main
from degl.run import checkpoint


def final_state(run):
    path, meta = checkpoint.load_meta(run)
    return [checkpoint.load_stage(path, i) for i in range(meta["num_stages"])], meta


def metrics(run):
    return read_metrics(run)


@pytest.mark.parametrize("method", ["dgl", "sgl", "sgl --no-augment", "backprop"])  # the last sgl caches features
def test_stopped_and_resumed_run_equals_uninterrupted(tmp_path, capsys, method):
    common = [*SYNTH, "--method", *method.split(), "--stages", "2", "--epochs", "2", "--deterministic"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(["train", *common, "--out", str(whole)]) == 0
    assert main(["train", *common, "--out", str(parts), "--max-steps", "5"]) == 0
    # 8 steps per epoch: the second leg crosses an epoch (and for sgl a phase) boundary mid-way.
    assert main(["train", "--resume", str(parts), "--max-steps", "9"]) == 0
    stopped = json.loads((parts / "summary.json").read_text())
    assert stopped["steps_completed"] == 14 and not stopped["completed"]
    assert main(["train", "--resume", str(parts)]) == 0
    capsys.readouterr()

    a, b = (json.loads((run / "summary.json").read_text()) for run in (whole, parts))
    assert a["completed"] and b["completed"]
    for key in ("test_acc_per_stage", "test_acc_ensemble", "steps_completed", "epochs_completed"):
        assert a[key] == b[key]
    assert metrics(whole) == metrics(parts)
    (states_a, meta_a), (states_b, meta_b) = final_state(whole), final_state(parts)
    for sa, sb in zip(states_a, states_b):
        for key, tensor in sa["model"].items():
            assert torch.equal(tensor, sb["model"][key]), key
    assert meta_a["position"] == meta_b["position"]


def test_resuming_a_complete_run_does_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *SYNTH, "--epochs", "1", "--out", str(out)]) == 0
    before = (out / "metrics.jsonl").read_text()
    assert main(["train", "--resume", str(out)]) == 0
    assert "already complete" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() == before


def test_ctrl_c_writes_a_loadable_checkpoint_and_resume_finishes(tmp_path):
    out = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "degl",
        "train",
        "--dataset",
        "synthetic",
        "--input-shape",
        "1,16,16",
        "--synthetic-size",
        "4800",  # 300 steps an epoch: seconds of training left when the signal comes
        "--model",
        "cnn4",
        "--width",
        "0.25",
        "--batch-size",
        "16",
        "--epochs",
        "2",  # the stop comes in the second epoch: resume finishes less than one epoch
        "--stages",
        "2",
        "--threads",
        "1",  # torch's default threads fight the other test worker for the cores: 60x slower steps
        "--no-progress",
        "--out",
        str(out),
    ]
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    # Wait for something the run did (its first epoch's lines), never for a fixed time: on a busy
    # machine a second may not be enough for one step.
    while not (out / "metrics.jsonl").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "checkpoint saved" in stderr and "Traceback" not in stderr
    path, meta = checkpoint.load_meta(out)
    assert meta["global_step"] > 0
    checkpoint.load_stage(path, 0)
    done = subprocess.run(
        [sys.executable, "-m", "degl", "train", "--resume", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["completed"] and summary["steps_completed"] == 2 * (4800 // 16)
