"""The multi-process pipeline over gloo on CPU: exactness, resume, faults, launchers."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import REPO, SYNTH, read_metrics, run_degl
from degl.run import checkpoint
from degl.runtime.dist import free_port
from degl.runtime.launch import local_rank_pids

pytestmark = pytest.mark.distributed

TINY = SYNTH
EXACT = [*TINY, "--epochs", "2", "--threads", "1", "--deterministic"]


def weights(run):
    path, meta = checkpoint.load_meta(run)
    return [checkpoint.load_stage(path, i) for i in range(meta["num_stages"])], meta


def metrics(run):
    return read_metrics(run)


def assert_same_run(a, b):
    assert metrics(a) == metrics(b)
    (states_a, meta_a), (states_b, meta_b) = weights(a), weights(b)
    assert len(states_a) == len(states_b)
    assert meta_a["position"] == meta_b["position"] and meta_a["global_step"] == meta_b["global_step"]
    for sa, sb in zip(states_a, states_b):
        for key, tensor in sa["model"].items():
            assert torch.equal(tensor, sb["model"][key]), key
        for (ka, va), (kb, vb) in zip(sa["optimizer"]["state"].items(), sb["optimizer"]["state"].items()):
            assert ka == kb and torch.equal(va["momentum_buffer"], vb["momentum_buffer"])


def summary(run):
    return json.loads((run / "summary.json").read_text())


def test_three_processes_equal_one_bit_for_bit(tmp_path):
    one, three = tmp_path / "one", tmp_path / "three"
    done = run_degl("train", *EXACT, "--stages", "3", "--out", str(one))
    assert done.returncode == 0, done.stderr
    done = run_degl("train", *EXACT, "--workers", "3", "--out", str(three))
    assert done.returncode == 0, done.stderr
    assert "test accuracy per stage" in done.stdout
    assert_same_run(one, three)
    s = summary(three)
    assert s["workers"] == 3 and len(s["idle_fraction_per_stage"]) == 3
    assert s["test_acc_per_stage"] == summary(one)["test_acc_per_stage"]


@pytest.mark.parametrize(
    "variant",
    [["--method", "async-dgl", "--buffer", "0"], ["--slowdown", "1:2"]],
    ids=["async-buffer-0-is-the-sync-pipeline", "slowed-rank-changes-nothing-but-time"],
)
def test_pipeline_variants_equal_plain_dgl_bit_for_bit(tmp_path, variant):
    plain, other = tmp_path / "plain", tmp_path / "other"
    for out, extra in ((plain, []), (other, variant)):
        done = run_degl("train", *EXACT, "--workers", "2", *extra, "--out", str(out))
        assert done.returncode == 0, done.stderr
    assert_same_run(plain, other)


def test_augmented_fashion_mnist_in_two_processes_equals_one_bit_for_bit(tmp_path, fmnist_dir):
    # Real data with random crops: the pipeline draws the same augmentation as the one-process loop.
    common = [
        "--dataset", "fashion-mnist", "--data-dir", str(fmnist_dir), "--train-size", "512", "--augment",
        "--model", "cnn4", "--width", "0.125", "--stages", "2", "--epochs", "1", "--batch-size", "64",
        "--threads", "1", "--deterministic", "--no-progress",
    ]  # fmt: skip
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_degl("train", *common, "--out", str(one)).returncode == 0
    done = run_degl("train", *common, "--workers", "2", "--out", str(two))
    assert done.returncode == 0, done.stderr
    assert_same_run(one, two)


ANY_MODEL = [
    "--dataset", "synthetic", "--input-shape", "3,32,32", "--synthetic-size", "640", "--num-classes", "4",
    "--batch-size", "16", "--epochs", "1", "--max-steps", "20", "--threads", "1", "--deterministic",
    "--no-progress",
]  # fmt: skip


@pytest.mark.parametrize(
    "model",
    [
        ["--model", "torchvision:resnet18", "--stages", "2"],
        ["--model", str(REPO / "examples" / "my_resnet.py") + ":build", "--split-at", "layer2"],
    ],
    ids=["torchvision-resnet18", "own-residual-net-split-at"],
)
def test_any_model_in_two_processes_equals_one_process_bit_for_bit(tmp_path, model):
    one, two = tmp_path / "one", tmp_path / "two"
    done = run_degl("train", *ANY_MODEL, *model, "--out", str(one))
    assert done.returncode == 0, done.stderr
    done = run_degl("train", *ANY_MODEL, *model, "--workers", "2", "--out", str(two))
    assert done.returncode == 0, done.stderr
    assert summary(two)["steps_completed"] == 20 and summary(two)["workers"] == 2
    assert_same_run(one, two)
    if "--split-at" in model:  # the named submodule begins stage 1
        assert summary(two)["stage_blocks"][1][0] == summary(one)["stage_blocks"][1][0]


def test_stopped_pipeline_resumes_to_the_same_result(tmp_path):
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert run_degl("train", *EXACT, "--stages", "2", "--out", str(whole)).returncode == 0
    done = run_degl("train", *EXACT, "--workers", "2", "--max-steps", "5", "--out", str(parts))
    assert done.returncode == 0, done.stderr
    assert summary(parts)["steps_completed"] == 5 and not summary(parts)["completed"]
    # The checkpoint format is the same for every runtime: 6 more steps in one process, then the
    # rest in two processes again; the result equals the uninterrupted one-process run.
    done = run_degl("train", "--resume", str(parts), "--workers", "1", "--max-steps", "6")
    assert done.returncode == 0, done.stderr
    assert summary(parts)["steps_completed"] == 11 and "workers" not in summary(parts)  # written by one process
    done = run_degl("train", "--resume", str(parts), "--workers", "2")  # back to two processes
    assert done.returncode == 0, done.stderr
    assert summary(parts)["workers"] == 2
    assert summary(parts)["completed"]
    assert_same_run(whole, parts)


def wait_for(predicate, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


LONG = [
    "--dataset",
    "synthetic",
    "--input-shape",
    "1,16,16",
    "--synthetic-size",
    "4096",
    "--num-classes",
    "4",
    "--model",
    "cnn4",
    "--width",
    "0.25",
    "--batch-size",
    "16",
    "--epochs",
    "6",
    "--no-progress",
    "--threads",
    "1",
]


def start(tmp_path, *extra, env=None, base=LONG):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "degl", "train", *base, "--workers", "3", *extra, "--out", str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    return proc, out


def test_a_killed_rank_stops_every_rank_and_checkpoints_stay_loadable(tmp_path):
    proc, out = start(tmp_path)
    wait_for(lambda: (out / "checkpoints" / "latest").exists())  # one epoch done and saved
    pids = local_rank_pids(proc.pid)
    assert sorted(pids) == [0, 1, 2]
    os.kill(pids[1], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=120)  # no hang; the time it takes: benchmarks/fault_stop.py
    assert proc.returncode == 1
    assert "rank 1 (stage 1) was killed by SIGKILL" in stderr
    assert "rank 0 (stage 0): error: sending to rank 1 (stage 1) failed" in stderr
    for pid in pids.values():
        stat = Path(f"/proc/{pid}/stat")
        assert not stat.exists() or stat.read_text().split()[2] == "Z"  # gone, or a zombie awaiting its parent
    path, meta = checkpoint.load_meta(out)
    for i in range(3):
        checkpoint.load_stage(path, i)
    assert meta["position"]["epoch"] >= 1


FAULTY_MODEL = """
from torch import nn


class FailAt(nn.Module):
    \"\"\"Raises on its N-th training forward: a stage that crashes in the middle of a run.\"\"\"

    def __init__(self, step):
        super().__init__()
        self.step, self.calls = step, 0

    def forward(self, x):
        if self.training:
            self.calls += 1
            if self.calls == self.step:
                raise RuntimeError(f"injected failure at step {self.step}")
        return x


def build(num_classes=4):
    def conv(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU())

    # FailAt is the last block, so it always lands in the last stage (rank 2 of 3).
    body = [conv(1, 4), conv(4, 8), conv(8, 8), FailAt(40)]
    return nn.Sequential(*body, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, num_classes))
"""


@pytest.mark.parametrize("method", ["dgl", "ddg"])  # ddg: ranks also wait for gradients from above
def test_a_rank_that_raises_stops_the_others(tmp_path, method):
    model = tmp_path / "faulty.py"
    model.write_text(FAULTY_MODEL)
    without_model = [a for a in LONG if a not in ("--model", "cnn4", "--width", "0.25")]
    proc, _ = start(tmp_path, "--model", f"{model}:build", "--method", method, base=without_model)
    _, stderr = proc.communicate(timeout=150)
    assert proc.returncode == 1
    assert "rank 2 (stage 2): internal error" in stderr and "injected failure at step 40" in stderr
    assert "rank 2 (stage 2) exited with status 1" in stderr
    assert "stopped because of it" in stderr


def test_ctrl_c_stops_the_pipeline_with_a_checkpoint(tmp_path):
    proc, out = start(tmp_path)
    # A finished step is observable from outside once the first epoch's lines are written.
    wait_for(lambda: (out / "metrics.jsonl").exists() and len(local_rank_pids(proc.pid)) == 3)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "checkpoint saved" in stderr
    s = summary(out)
    assert not s["completed"] and s["steps_completed"] > 0
    _, meta = checkpoint.load_meta(out)
    assert meta["global_step"] == s["steps_completed"]


def test_pipeline_refuses_bad_setups_before_writing(tmp_path):
    out = tmp_path / "run"
    for args, message in [
        ([*TINY, "--workers", "2", "--method", "sgl"], "runs --method dgl"),
        ([*TINY, "--workers", "2", "--stages", "3"], "one stage per process"),
        ([*TINY, "--workers", "2", "--method", "async-dgl", "--async-order", "random"], "--async-order random"),
        (["--workers", "2", "--dataset", "fashion-mnist", "--data-dir", str(tmp_path / "nope")], "--data-dir"),
    ]:
        done = run_degl("train", *args, "--out", str(out))
        assert done.returncode == 2, done.stderr
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("degl: error:") and message in lines[0], done.stderr
        assert not out.exists()


def torchrun(*args, env=None):
    return [sys.executable, "-m", "torch.distributed.run", *args]


def test_torchrun_single_node_equals_one_process(tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert run_degl("train", *EXACT, "--stages", "2", "--out", str(one)).returncode == 0
    done = subprocess.run(
        torchrun(
            "--nproc-per-node", "2", "--master-port", str(free_port()), "-m", "degl", "train", *EXACT, "--out", str(two)
        ),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert_same_run(one, two)


def test_torchrun_two_nodes_on_loopback(tmp_path):
    out = tmp_path / "run"
    port = free_port()
    agents = [
        subprocess.Popen(
            torchrun(
                "--nnodes",
                "2",
                "--nproc-per-node",
                "1",
                "--rdzv-backend",
                "c10d",
                "--rdzv-endpoint",
                f"127.0.0.1:{port}",
                "--rdzv-id",
                "degl-test",
                "-m",
                "degl",
                "train",
                *TINY,
                "--epochs",
                "1",
                "--out",
                str(out),
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [agent.communicate(timeout=300) for agent in agents]
    for agent, (_, stderr) in zip(agents, results):
        assert agent.returncode == 0, stderr
    s = summary(out)
    assert s["completed"] and s["workers"] == 2 and len(s["test_acc_per_stage"]) == 2


def test_cpu_pinning_gives_each_local_rank_its_own_cores():
    import os

    from degl.runtime.dist import pin_cpus

    before = os.sched_getaffinity(0)
    try:
        cores = sorted(before)
        assert pin_cpus(0, 1, len(cores)) == {cores[0]}
        os.sched_setaffinity(0, before)
        assert pin_cpus(len(cores) - 1, 1, len(cores)) == {cores[-1]}
        os.sched_setaffinity(0, before)
        assert pin_cpus(0, 1, len(cores) + 1) is None  # does not fit: left alone
        assert os.sched_getaffinity(0) == before
    finally:
        os.sched_setaffinity(0, before)
