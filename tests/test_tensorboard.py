"""TensorBoard event files mirror metrics.jsonl, and a resumed run shows every step once."""

import json
from collections import Counter

import pytest

from conftest import SYNTH
from degl.cli import main
from degl.run.tensorboard import line_scalars, summary_scalars

# an optional extra (pip install degl[tensorboard]); the event files are read back with its own reader
reader = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")


def events(run):
    """Tag -> [(step, value)] as TensorBoard shows them (purged events already dropped)."""
    acc = reader.EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def expected(run):
    """Tag -> [(step, value)] from metrics.jsonl: every numeric field of every line, at its epoch."""
    found: dict[str, list] = {}
    for text in (run / "metrics.jsonl").read_text().splitlines():
        record = json.loads(text)
        for tag, value in line_scalars(record).items():
            found.setdefault(tag, []).append((record["epoch"], value))
    return found


def assert_mirrors_metrics(run):
    logged, wanted = events(run), expected(run)
    assert set(wanted) <= set(logged)
    for tag, points in wanted.items():
        got = logged[tag]
        assert [step for step, _ in got] == [step for step, _ in points], tag
        # event files store float32
        assert [value for _, value in got] == pytest.approx([value for _, value in points], rel=1e-6), tag
    for tag, points in logged.items():
        steps = Counter(step for step, _ in points)
        assert max(steps.values()) == 1, f"{tag}: duplicated steps {steps}"
    return logged


def test_event_files_hold_the_values_of_metrics_jsonl(tmp_path):
    run = tmp_path / "run"
    assert main(["train", *SYNTH, "--stages", "2", "--epochs", "2", "--out", str(run)]) == 0
    logged = assert_mirrors_metrics(run)
    assert {"train_loss/stage0", "train_acc/stage1", "train_lr/stage0", "test_acc/stage1"} <= set(logged)
    assert {"test_ensemble_acc/stage1", "train_time_s/stage0"} <= set(logged)
    summary = json.loads((run / "summary.json").read_text())
    # the summary after each epoch; the last is summary.json
    assert [step for step, _ in logged["summary/samples_per_s"]] == [1, 2]
    assert logged["summary/samples_per_s"][-1][1] == pytest.approx(summary["samples_per_s"], rel=1e-6)


def test_async_run_logs_steps_reuse_and_staleness_per_rank(tmp_path):
    run = tmp_path / "run"
    args = ["--method", "async-dgl", "--buffer", "2", "--slowdown", "1:1.5", "--stages", "2", "--epochs", "2"]
    assert main(["train", *SYNTH, *args, "--out", str(run)]) == 0
    logged = assert_mirrors_metrics(run)
    summary = json.loads((run / "summary.json").read_text())
    for key in ("steps_per_stage", "reuse_per_stage", "staleness_per_stage"):
        for stage, value in enumerate(summary[key]):
            points = logged[f"summary/{key}/stage{stage}"]
            assert [step for step, _ in points] == [1, 2]
            assert points[-1][1] == pytest.approx(value, rel=1e-6)


def test_summary_bytes_per_sample_are_logged_per_stage_boundary():
    # wire_bytes_per_sample arrives with the codecs; its tags are fixed here, on a summary of that shape.
    scalars = summary_scalars({"wire_bytes_per_sample": [3072, 1024], "samples_per_s": 10.0, "test_acc_per_stage": [1]})
    assert scalars == {
        "summary/samples_per_s": 10.0,
        "summary/wire_bytes_per_sample/boundary0": 3072.0,
        "summary/wire_bytes_per_sample/boundary1": 1024.0,
    }


@pytest.mark.parametrize(
    "method, stop",
    [
        ("dgl", ["--max-steps", "13"]),  # 8 steps per epoch: stops mid-epoch 2, after epoch 1's lines
        # stage 2 runs behind; the other stages' lines of later epochs precede the checkpoint
        ("async-dgl --stages 3 --buffer 3 --slowdown 2:1.5", ["--max-steps", "17"]),
    ],
)
def test_stopped_then_resumed_run_has_no_duplicated_steps(tmp_path, capsys, method, stop):
    common = [*SYNTH, "--method", *method.split(), "--epochs", "3", "--deterministic"]
    if "--stages" not in method:
        common += ["--stages", "2"]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    assert main(["train", *common, "--out", str(whole)]) == 0
    assert main(["train", *common, *stop, "--out", str(parts)]) == 0
    assert main(["train", "--resume", str(parts), *stop]) == 0
    assert main(["train", "--resume", str(parts)]) == 0
    capsys.readouterr()
    assert len(list((parts / "tensorboard").iterdir())) >= 2  # appended, not rewritten
    logged = assert_mirrors_metrics(parts)
    reference = events(whole)
    assert set(logged) == set(reference)
    for tag, points in reference.items():
        assert [step for step, _ in logged[tag]] == [step for step, _ in points], tag


def test_tensorboard_switched_on_at_resume_gets_the_whole_history(tmp_path, capsys):
    run = tmp_path / "run"
    common = [*SYNTH, "--stages", "2", "--epochs", "2"]
    assert main(["train", *common, "--no-tensorboard", "--max-steps", "10", "--out", str(run)]) == 0
    assert not (run / "tensorboard").exists()
    assert main(["train", "--resume", str(run), "--tensorboard"]) == 0
    capsys.readouterr()
    logged = assert_mirrors_metrics(run)
    assert [step for step, _ in logged["test_acc/stage0"]] == [1, 2]
