"""Real asynchronous DGL across processes (gloo on CPU)."""

import json

import pytest

from conftest import SYNTH, run_degl
from degl.run import checkpoint

pytestmark = pytest.mark.distributed

TINY = [*SYNTH, "--method", "async-dgl", "--workers", "3", "--threads", "1"]
PER_EPOCH = 256 // 32


def summary(run):
    return json.loads((run / "summary.json").read_text())


def test_async_pipeline_with_a_slowed_rank_completes_and_reports(tmp_path):
    out = tmp_path / "run"
    done = run_degl(
        "train", *TINY, "--epochs", "2", "--buffer", "4", "--max-reuse", "2", "--slowdown", "1:1.5", "--out", str(out)
    )
    assert done.returncode == 0, done.stderr
    s = summary(out)
    assert s["completed"] and s["workers"] == 3 and s["epochs_completed"] == 2
    # Paper Alg. 2 with a budget: every rank does exactly epochs x batches updates, whatever its pace,
    # so each one's schedule ends where it should; ranks done early kept serving forward, frozen.
    assert s["steps_per_stage"] == [2 * PER_EPOCH] * 3
    assert s["served_per_stage"][2] == 0 and len(s["budget_s_per_stage"]) == 3
    assert all(1.0 <= r <= 2.0 for r in s["reuse_per_stage"])
    assert len(s["steps_per_s_per_stage"]) == 3 and len(s["staleness_per_stage"]) == 3
    path, meta = checkpoint.load_meta(out)  # one complete checkpoint, every stage in it
    assert [checkpoint.load_stage(path, k)["model"] for k in range(3)]
    assert meta["global_step"] == s["steps_per_stage"][0]
    evaluated = run_degl("eval", "--run", str(out))
    assert evaluated.returncode == 0, evaluated.stderr
    assert json.loads(evaluated.stdout.strip().splitlines()[-1])["test_acc_per_stage"] == s["test_acc_per_stage"]
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert {line["stage"] for line in lines if line["split"] == "test"} == {0, 1, 2}
    last_lrs = {line["stage"]: line["lr"] for line in lines if line["split"] == "train" and line["epoch"] == 2}
    assert sorted(last_lrs) == [0, 1, 2] and len(set(last_lrs.values())) == 1  # same point of the same schedule


def test_with_room_for_everything_and_no_reuse_every_rank_sees_every_batch_once(tmp_path):
    out = tmp_path / "run"
    done = run_degl("train", *TINY, "--epochs", "2", "--buffer", "64", "--max-reuse", "1", "--out", str(out))
    assert done.returncode == 0, done.stderr
    s = summary(out)
    assert s["steps_per_stage"] == [2 * PER_EPOCH] * 3
    assert s["reuse_per_stage"] == [1.0, 1.0, 1.0]


def test_a_stopped_async_pipeline_cannot_be_resumed(tmp_path):
    out = tmp_path / "run"
    done = run_degl("train", *TINY, "--epochs", "2", "--buffer", "4", "--max-steps", "5", "--out", str(out))
    assert done.returncode == 0, done.stderr
    assert not summary(out)["completed"] and summary(out)["steps_per_stage"][0] == 5
    again = run_degl("train", "--resume", str(out))
    assert again.returncode == 2 and "cannot be resumed" in again.stderr
