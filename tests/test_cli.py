"""The real command line: smoke runs, the run-directory contract, and every kind of bad input."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import SYNTH, run_degl
from degl.cli import main
from degl.run import checkpoint

SUMMARY_KEYS = {
    "method",
    "model",
    "stages",
    "epochs_completed",
    "test_acc",
    "test_acc_per_stage",
    "train_time_s",
}


def train(*args):
    return main(["train", *SYNTH, *args])


@pytest.mark.parametrize("method, stages", [("dgl", 3), ("sgl", 2), ("backprop", 1)])
def test_train_writes_the_run_directory_contract(tmp_path, capsys, method, stages):
    out = tmp_path / "run"
    assert train("--method", method, "--stages", str(stages), "--epochs", "1", "--out", str(out)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) >= SUMMARY_KEYS
    assert summary["stages"] == stages and summary["completed"]
    assert summary["epochs_completed"] == (stages if method == "sgl" else 1)
    assert len(summary["test_acc_per_stage"]) == stages
    assert summary["test_acc"] == summary["test_acc_per_stage"][-1]
    # Test accuracy is a count over the 64 synthetic test images, as a percentage.
    assert all(round(acc * 64 / 100, 6).is_integer() for acc in summary["test_acc_per_stage"])
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert all({"epoch", "stage", "split", "loss", "acc"} <= set(r) for r in records)
    for stage in range(stages):
        assert any(r["stage"] == stage and r["split"] == "test" for r in records)
        assert any(r["stage"] == stage and r["split"] == "train" for r in records)
    assert (out / "config.yaml").is_file() and (out / "checkpoints" / "latest").is_file()
    printed = capsys.readouterr().out
    assert "test accuracy per stage" in printed


def test_config_file_with_cli_override(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("epochs: 3\nstages: 2\nmax-steps: 2\n")
    out = tmp_path / "run"
    assert train("--config", str(config), "--stages", "3", "--out", str(out)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stages"] == 3 and summary["steps_completed"] == 2 and not summary["completed"]
    assert "epochs: 3" in (out / "config.yaml").read_text()


def test_eval_reproduces_the_runs_final_accuracy(tmp_path, capsys):
    out = tmp_path / "run"
    assert train("--stages", "2", "--epochs", "1", "--out", str(out)) == 0
    capsys.readouterr()
    assert main(["eval", "--run", str(out)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    summary = json.loads((out / "summary.json").read_text())
    assert result["test_acc_per_stage"] == pytest.approx(summary["test_acc_per_stage"])


def test_models_lists_the_registry(capsys):
    assert main(["models", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert {"cnn4", "cnn6"} <= set(listed)


@pytest.mark.parametrize(
    "kind, keys",
    [("step", {"backprop_ms", "dgl_ms", "ratio"}), ("memory", {"backprop_bytes", "dgl_bytes", "ratio"})],
)
def test_bench_last_line_is_json(capsys, kind, keys):
    args = [
        "bench",
        kind,
        "--model",
        "cnn4",
        "--width",
        "0.125",
        "--stages",
        "2",
        "--batch-size",
        "4",
        "--input-shape",
        "1,16,16",
    ]
    if kind == "step":
        args += ["--warmup", "1", "--repeats", "3"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert keys <= set(result) and result["ratio"] > 0


def test_bench_channels_last_trains_in_that_format(capsys):
    import argparse

    import torch

    from degl.bench import add_common_options, add_single_process_options, build_bench_models

    parser = argparse.ArgumentParser()
    add_common_options(parser)
    add_single_process_options(parser)
    small = ["--model", "cnn4", "--width", "0.125", "--stages", "2", "--batch-size", "4", "--input-shape", "1,16,16"]
    models = build_bench_models(parser.parse_args([*small, "--channels-last"]))
    fmt = torch.channels_last
    assert models.x.is_contiguous(memory_format=fmt)
    for method in (models.dgl, models.backprop):
        convs = [m for s in method.stages for m in s.modules() if isinstance(m, torch.nn.Conv2d)]
        assert convs and all(c.weight.is_contiguous(memory_format=fmt) for c in convs)
    assert main(["bench", "step", *small, "--warmup", "0", "--repeats", "1", "--channels-last"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["channels_last"] is True


def test_memory_bench_dgl_saves_less_than_backprop(capsys):
    assert main(["bench", "memory", "--model", "cnn6", "--width", "0.125", "--stages", "6", "--batch-size", "4"]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["dgl_bytes"] == max(result["dgl_stage_bytes"])
    assert result["ratio"] < 0.6


BAD_PIPELINE_BENCH = [
    (["--device", "cuda"], "run it with --device cpu"),
    (["--precision", "bf16"], "run it without --precision"),
    (["--workers", "3"], "--workers must equal --stages"),
    (["--microbatches", "3"], "--microbatches must divide --batch-size 4"),
]


@pytest.mark.parametrize("args, message", BAD_PIPELINE_BENCH, ids=[" ".join(a) for a, _ in BAD_PIPELINE_BENCH])
def test_pipeline_bench_bad_input(capsys, args, message):
    assert main(["bench", "pipeline", "--model", "cnn4", "--stages", "2", "--batch-size", "4", *args]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("degl: error: ") and message in lines[0], lines


def test_python_dash_m_entry_point(tmp_path):
    done = run_degl("train", *SYNTH, "--max-steps", "2", "--out", str(tmp_path / "r"))
    assert done.returncode == 0, done.stderr
    assert "stopped after 2 steps" in done.stdout


BAD_INPUTS = [
    (["--model", "resnet9000"], "unknown model 'resnet9000'"),
    (["--method", "magic"], "invalid choice"),
    (["--dataset", "mnist3"], "invalid choice"),
    (["--aux", "rnn"], "unknown aux head 'rnn'"),
    (["--stages", "0"], "--stages must be a positive integer"),
    (["--stages", "9"], "more than the network's 4 blocks"),
    (["--epochs", "0"], "--epochs must be a positive integer"),
    (["--epochs", "-2"], "--epochs must be a positive integer"),
    (["--batch-size", "0"], "--batch-size must be a positive integer"),
    (["--batch-size", "100000"], "larger than the 256 training samples"),
    (["--lr", "0"], "--lr must be a positive finite number"),
    (["--lr", "-0.1"], "--lr must be a positive finite number"),
    (["--width", "0"], "--width must be a positive finite number"),
    (["--cuts", "2,1,3"], "--cuts must be strictly increasing"),
    (["--input-shape", "1,2,2"], "cannot take inputs of shape"),
    (["--device", "cuda:7"], "CUDA"),
    (["--epochs", "two"], "invalid int value"),
    (["--dropout", "0.5"], "model 'cnn4' has no dropout option"),
    (["--feature-cache-gb", "-1"], "--feature-cache-gb must be 0 or more"),
    (["--loss-scale-init", "0"], "--loss-scale-init must be positive"),
    (["--loss-scale-growth-interval", "0"], "--loss-scale-growth-interval at least 1"),
]


@pytest.mark.parametrize("args, message", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(tmp_path, capsys, args, message):
    out = tmp_path / "run"
    code = main(["train", *SYNTH, "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("degl: error: ") and message in lines[0], err
    assert not out.exists()


def test_bad_input_through_a_real_process_has_no_traceback(tmp_path):
    done = run_degl(
        "train",
        "--dataset",
        "fashion-mnist",
        "--data-dir",
        str(tmp_path / "missing"),
        "--out",
        str(tmp_path / "run"),
    )
    assert done.returncode == 2
    assert done.stderr.strip().startswith("degl: error: --data-dir") and "Traceback" not in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_corrupt_data_files(tmp_path, capsys):
    from test_data import write_fake_fashion_mnist

    write_fake_fashion_mnist(tmp_path / "fm", corrupt="train_labels")
    code = main(["train", "--data-dir", str(tmp_path / "fm"), "--out", str(tmp_path / "run"), "--no-progress"])
    assert code == 2
    assert "header says" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    "content, message",
    [
        ("epochs: [\n", "not valid YAML"),
        ("nonsense: 1\n", "unknown option"),
        ("epochs: 1.5\n", "must be of type int"),
    ],
)
def test_bad_config_file_from_cli(tmp_path, capsys, content, message):
    config = tmp_path / "c.yaml"
    config.write_text(content)
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_unusable_out(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert train("--out", str(blocker)) == 2
    assert "not a directory" in capsys.readouterr().err
    assert train("--out", str(blocker / "sub")) == 2
    assert "cannot create it" in capsys.readouterr().err
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert train("--out", str(busy)) == 2
    assert "not empty" in capsys.readouterr().err
    assert sorted(p.name for p in busy.iterdir()) == ["notes.txt"]


def test_out_that_holds_a_run_suggests_resume(tmp_path, capsys):
    out = tmp_path / "run"
    assert train("--max-steps", "1", "--out", str(out)) == 0
    capsys.readouterr()
    assert train("--out", str(out)) == 2
    assert f"--resume {out}" in capsys.readouterr().err


def test_resume_errors(tmp_path, capsys):
    assert main(["train", "--resume", str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["train", "--resume", str(empty)]) == 2
    assert "no checkpoint" in capsys.readouterr().err
    out = tmp_path / "run"
    assert train("--max-steps", "1", "--out", str(out)) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(out), "--lr", "0.5"]) == 2
    assert "--lr cannot change when resuming" in capsys.readouterr().err
    latest = (out / "checkpoints" / "latest").read_text().strip()
    (out / "checkpoints" / latest / "stage-0.pt").write_bytes(b"\x00" * 50)
    assert main(["train", "--resume", str(out)]) == 2
    assert "corrupt" in capsys.readouterr().err
    Path(out / "checkpoints" / latest / "meta.pt").write_bytes(b"not a checkpoint")
    assert main(["train", "--resume", str(out)]) == 2
    assert "corrupt" in capsys.readouterr().err


def test_compare_in_parallel_processes_gives_the_sequential_numbers(tmp_path, capsys):
    args = [
        "compare",
        *SYNTH,
        "--methods",
        "dgl,backprop,sgl",
        "--stages",
        "2",
        "--epochs",
        "1",
        "--threads",
        "1",
        "--deterministic",
    ]
    assert main([*args, "--out", str(tmp_path / "seq")]) == 0
    sequential = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main([*args, "--parallel", "2", "--out", str(tmp_path / "par")]) == 0
    parallel = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for method in ("dgl", "backprop", "sgl"):
        assert sequential["methods"][method]["test_acc"] == parallel["methods"][method]["test_acc"]
    assert main([*args, "--parallel", "2", "--out", str(tmp_path / "par")]) == 0  # all reused
    assert "reusing the completed run" in capsys.readouterr().err


def test_sigterm_to_a_parallel_compare_stops_its_children_with_checkpoints(tmp_path):
    out = tmp_path / "cmp"
    long_runs = ["--synthetic-size", "2000", "--batch-size", "16", "--epochs", "3", "--input-shape", "1,16,16"]
    args = ["compare", "--dataset", "synthetic", "--model", "cnn4", "--width", "0.25", "--stages", "2", *long_runs]
    args += ["--methods", "dgl,backprop,sgl", "--parallel", "2", "--threads", "1", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "-m", "degl", *args], stderr=subprocess.PIPE, text=True)
    started = [out / f"{m}-seed0" / "config.yaml" for m in ("sgl", "dgl")]  # the two longest start first
    deadline = time.monotonic() + 120
    # Each has trained (its first epoch's lines are written): observable, unlike a fixed sleep.
    started = [run.parent / "metrics.jsonl" for run in started]
    while not all(p.exists() for p in started) and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)  # returns only once every child has exited
    assert proc.returncode == 130, stderr
    assert "the same degl compare command" in stderr and "Traceback" not in stderr
    for method in ("sgl", "dgl"):
        run = out / f"{method}-seed0"
        assert checkpoint.load_meta(run)[1]["global_step"] > 0
        assert not json.loads((run / "summary.json").read_text())["completed"]
    assert not (out / "backprop-seed0").exists()  # queued behind the others: never started


def test_runs_saved_before_an_option_existed_are_still_reused():
    from degl.run.compare import _same_run
    from degl.run.config import TrainConfig

    current = TrainConfig().to_dict()
    older = {k: v for k, v in current.items() if k not in ("dropout", "loss_scale_init")}
    assert _same_run(older, current)
    assert not _same_run(older, {**current, "dropout": 0.5})  # a new option set to a non-default value
    assert not _same_run(current, {**current, "lr": current["lr"] / 2})


def test_models_refuses_stats_options_without_stats(capsys):
    assert main(["models", "--width", "2", "--split", "time"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["degl: error: --split, --width: only meaningful with --stats MODEL"]
