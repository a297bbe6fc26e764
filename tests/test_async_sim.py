"""Asynchronous DGL simulated in one process (paper protocol)."""

import json

import pytest
import torch

from conftest import SYNTH, read_metrics
from degl.cli import main
from degl.run import checkpoint
from degl.run.async_sim import AsyncScheduler

EXACT = [*SYNTH, "--epochs", "2", "--stages", "3", "--deterministic"]


def read(run, name):
    return (run / name).read_text()


@pytest.fixture(scope="module")
def sync_run(tmp_path_factory):
    """Synchronous DGL on EXACT, the reference both exactness tests compare with (they only read it)."""
    run = tmp_path_factory.mktemp("async-sim") / "sync"
    assert main(["train", *EXACT, "--out", str(run)]) == 0
    torch.use_deterministic_algorithms(False)  # as the hygiene fixture leaves every test
    return run


SHARES_SYNC_RUN = pytest.mark.xdist_group("async-sim-sync-run")  # one worker trains sync_run once


@SHARES_SYNC_RUN
def test_buffer_one_round_robin_equals_synchronous_dgl(sync_run, tmp_path, capsys):
    sync, async_ = sync_run, tmp_path / "async"
    assert (
        main(
            [
                "train",
                *EXACT,
                "--method",
                "async-dgl",
                "--buffer",
                "1",
                "--async-order",
                "round-robin",
                "--out",
                str(async_),
            ]
        )
        == 0
    )
    assert read_metrics(sync) == read_metrics(async_)
    pa, _ = checkpoint.load_meta(sync)
    pb, _ = checkpoint.load_meta(async_)
    for k in range(3):
        a, b = checkpoint.load_stage(pa, k)["model"], checkpoint.load_stage(pb, k)["model"]
        assert all(torch.equal(a[key], b[key]) for key in a)
    summary = json.loads(read(async_, "summary.json"))
    assert summary["reuse_per_stage"] == [1.0, 1.0, 1.0] and summary["staleness_per_stage"] == [0.0, 0.0, 0.0]


def assert_same_weights(a, b, num_stages=3):
    pa, _ = checkpoint.load_meta(a)
    pb, _ = checkpoint.load_meta(b)
    for k in range(num_stages):
        sa, sb = checkpoint.load_stage(pa, k), checkpoint.load_stage(pb, k)
        assert all(torch.equal(sa["model"][key], sb["model"][key]) for key in sa["model"]), k
        moments_a = [v["momentum_buffer"] for v in sa["optimizer"]["state"].values()]
        moments_b = [v["momentum_buffer"] for v in sb["optimizer"]["state"].values()]
        assert moments_a and all(torch.equal(x, y) for x, y in zip(moments_a, moments_b, strict=True)), k


@SHARES_SYNC_RUN
def test_buffer_zero_is_synchronous_dgl(sync_run, tmp_path):
    sync, zero = sync_run, tmp_path / "zero"
    assert main(["train", *EXACT, "--method", "async-dgl", "--buffer", "0", "--out", str(zero)]) == 0
    assert read_metrics(sync) == read_metrics(zero)
    assert_same_weights(sync, zero)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--buffer", "0", "--async-order", "random"], "--async-order random applies to the async-dgl simulation"),
        (["--buffer", "0", "--max-reuse", "2"], "--max-reuse 2 applies to replay buffers"),
        (["--buffer", "2", "--workers", "3", "--async-order", "round-robin"], "applies to the one-process simulation"),
    ],
)
def test_options_that_would_be_ignored_are_refused(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    assert main(["train", *EXACT, "--method", "async-dgl", *args, "--out", str(out)]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_slowdown_reduces_a_stages_share_of_updates():
    scheduler = AsyncScheduler(3, order="random", slowdowns={1: 2.0}, paper=False, seed=0)
    picks = [scheduler.next() for _ in range(6003)][3:]
    share = [picks.count(k) / len(picks) for k in range(3)]
    assert share[1] == pytest.approx(0.2, abs=0.02) and share[0] == pytest.approx(0.4, abs=0.02)


def test_paper_warmup_order_and_round_robin():
    paper = AsyncScheduler(3, order="round-robin", slowdowns={}, paper=True, seed=0)
    assert [paper.next() for _ in range(9)] == [0, 0, 1, 1, 2, 2, 0, 1, 2]
    correct = AsyncScheduler(3, order="round-robin", slowdowns={}, paper=False, seed=0)
    assert [correct.next() for _ in range(6)] == [0, 1, 2, 0, 1, 2]


def test_slow_stage_trains_longer_and_fast_stages_freeze(tmp_path, capsys):
    out = tmp_path / "run"
    assert (
        main(
            [
                "train",
                *SYNTH,
                "--epochs",
                "2",
                "--stages",
                "3",
                "--method",
                "async-dgl",
                "--buffer",
                "4",
                "--slowdown",
                "1:3",
                "--max-reuse",
                "2",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    summary = json.loads(read(out, "summary.json"))
    per_epoch = 256 // 32
    # Every stage did exactly its budget of updates; the fast ones then kept producing, frozen.
    assert summary["steps_per_stage"] == [2 * per_epoch] * 3 and summary["completed"]
    assert summary["buffer_bytes"] > 0
    assert all(r >= 1.0 for r in summary["reuse_per_stage"])
    assert max(summary["reuse_per_stage"]) <= 2.0
    test_lines = [json.loads(x) for x in read(out, "metrics.jsonl").splitlines() if '"test"' in x]
    assert {(r["epoch"], r["stage"]) for r in test_lines} == {(e, s) for e in (1, 2) for s in range(3)}


def test_async_sim_resumes_exactly(tmp_path, capsys):
    args = [
        *SYNTH,
        "--epochs",
        "2",
        "--stages",
        "3",
        "--method",
        "async-dgl",
        "--buffer",
        "3",
        "--slowdown",
        "2:1.5",
        "--deterministic",
    ]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(["train", *args, "--out", str(whole)]) == 0
    assert main(["train", *args, "--max-steps", "5", "--out", str(parts)]) == 0
    stopped = json.loads(read(parts, "summary.json"))
    assert not stopped["completed"] and stopped["steps_per_stage"][0] == 5  # --max-steps: stage 0's updates
    assert main(["train", "--resume", str(parts)]) == 0
    assert read_metrics(whole) == read_metrics(parts)
    a, b = (json.loads(read(r, "summary.json")) for r in (whole, parts))
    for key in ("steps_per_stage", "reuse_per_stage", "staleness_per_stage", "test_acc_per_stage"):
        assert a[key] == b[key]
    assert_same_weights(whole, parts)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--slowdown", "7:2"], "the stage must be in 0..2"),
        (["--slowdown", "1:0.5"], "factor >= 1"),
        (["--slowdown", "fast"], "STAGE:FACTOR"),
        (["--buffer", "-1"], "--buffer must be 0 or more"),
        (["--max-reuse", "0"], "--max-reuse must be a positive integer"),
    ],
)
def test_bad_async_options(tmp_path, capsys, args, message):
    code = main(["train", *SYNTH, "--stages", "3", "--method", "async-dgl", *args, "--out", str(tmp_path / "r")])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
