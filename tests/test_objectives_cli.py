"""``degl train --objective``: every runtime trains a local objective as it trains the aux heads."""

import pytest

from conftest import run_degl
from degl.cli import main
from test_pipeline import EXACT, assert_same_run, summary

PREDSIM = [*EXACT, "--objective", "predsim", "--predsim-beta", "0.9"]


@pytest.mark.distributed
def test_predsim_in_two_processes_equals_one_process_and_resumes_exactly(tmp_path):
    one, two, parts = tmp_path / "one", tmp_path / "two", tmp_path / "parts"
    assert run_degl("train", *PREDSIM, "--stages", "2", "--out", str(one)).returncode == 0
    done = run_degl("train", *PREDSIM, "--workers", "2", "--out", str(two))
    assert done.returncode == 0, done.stderr
    assert_same_run(one, two)
    # Stopped mid-run in two processes, finished in one: the same weights as the straight run.
    assert run_degl("train", *PREDSIM, "--workers", "2", "--max-steps", "5", "--out", str(parts)).returncode == 0
    done = run_degl("train", "--resume", str(parts), "--workers", "1")
    assert done.returncode == 0, done.stderr
    assert summary(parts)["completed"]
    assert_same_run(one, parts)


def test_async_with_one_batch_buffers_in_turn_equals_synchronous_dgl(tmp_path):
    sync, asynchronous = tmp_path / "sync", tmp_path / "async"
    options = [*EXACT, "--stages", "3", "--objective", "sim"]
    assert main(["train", *options, "--out", str(sync)]) == 0
    async_options = ["--method", "async-dgl", "--buffer", "1", "--async-order", "round-robin"]
    assert main(["train", *options, *async_options, "--out", str(asynchronous)]) == 0
    assert_same_run(sync, asynchronous)


def test_a_users_objective_from_a_file_trains_from_the_command_line(tmp_path):
    path = tmp_path / "objective.py"
    path.write_text(
        "import torch.nn.functional as F\nfrom torch import nn\n\n\n"
        "class Mean(nn.Module):\n"
        "    def __init__(self, shape, classes):\n"
        "        super().__init__()\n"
        "        self.linear = nn.Linear(shape[0], classes)\n\n"
        "    def forward(self, h):\n"
        "        return self.linear(h.mean(dim=(2, 3)))\n\n"
        "    def local_loss(self, h, logits, y):\n"
        "        return F.cross_entropy(logits, y)\n\n\n"
        "def build(shape, classes):\n"
        "    return Mean(shape, classes)\n"
    )
    out = tmp_path / "run"
    assert main(["train", *EXACT, "--stages", "2", "--objective", f"{path}:build", "--out", str(out)]) == 0
    assert len(summary(out)["test_acc_per_stage"]) == 2


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--objective", "infomax"], "unknown --objective 'infomax'; choose one of: aux, predsim, sim"),
        (["--predsim-beta", "0.5"], "--predsim-beta 0.5 applies to --objective predsim"),
        (["--objective", "sim", "--aux", "cnn"], "--aux cnn applies to --objective aux"),
        (["--objective", "predsim", "--method", "backprop"], "--objective predsim applies to methods whose stages"),
        (["--objective", "predsim", "--predsim-beta", "1"], "--predsim-beta must be strictly between 0 and 1"),
        (["--objective", "missing.py:build"], "objective file 'missing.py' does not exist"),
    ],
)
def test_bad_objective_options_are_one_line_errors(tmp_path, capsys, extra, message):
    assert main(["train", *EXACT, *extra, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert not (tmp_path / "run").exists()
