"""Nothing lost, nothing silent: one run per directory, diverged runs stopped, resume-safe files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import SYNTH
from degl.cli import main
from degl.run import checkpoint

TINY = [*SYNTH, "--stages", "2", "--threads", "1"]


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory) -> Path:
    """A 2-epoch run stopped after 12 steps (one epoch is 8): one metrics epoch, one checkpoint."""
    run = tmp_path_factory.mktemp("stopped") / "run"
    assert main(["train", *TINY, "--epochs", "2", "--out", str(run), "--max-steps", "12"]) == 0
    return run


def copy_run(run: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(run, target)
    return target


def start_train(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "degl", "train", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_two_runs_started_together_on_one_out_never_share_it(tmp_path):
    procs = [start_train(*TINY, "--epochs", "2", "--seed", str(s), "--out", "R", cwd=tmp_path) for s in (1, 2)]
    results = [(p.wait(timeout=300), *p.communicate()) for p in procs]
    codes = sorted(code for code, _, _ in results)
    assert codes == [0, 2], results
    (winner,) = [i for i, (code, _, _) in enumerate(results) if code == 0]
    loser_err = results[1 - winner][2]
    assert loser_err.startswith("degl: error:") and "R" in loser_err, loser_err
    lines = [json.loads(line) for line in (tmp_path / "R/metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 2 * 2 * 2  # 2 epochs x 2 stages x (train, test): one run's lines only
    assert json.loads((tmp_path / "R/summary.json").read_text())["seed"] == winner + 1


def test_two_runs_on_the_default_path_in_the_same_second_get_two_directories(tmp_path):
    procs = [start_train(*TINY, "--epochs", "1", "--seed", str(s), cwd=tmp_path) for s in (1, 2)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0]
    dirs = sorted((tmp_path / "runs").iterdir())
    assert len(dirs) == 2
    printed = sorted(line.split()[1] for out in outs for line in out.splitlines() if line.startswith("run: "))
    assert printed == sorted(str(d.relative_to(tmp_path)) for d in dirs)
    assert sorted(json.loads((d / "summary.json").read_text())["seed"] for d in dirs) == [1, 2]


@pytest.mark.parametrize(
    "runtime", [[], ["--workers", "2"], ["--method", "ddg"]], ids=["one-process", "2-workers", "ddg"]
)
def test_a_diverged_run_stops_at_the_first_non_finite_step_and_checkpoints_nothing(tmp_path, runtime):
    from conftest import run_degl

    run = tmp_path / "run"
    done = run_degl("train", *TINY, "--epochs", "2", "--lr", "1e4", *runtime, "--out", str(run))
    assert done.returncode == 2, done.stderr
    lines = [line.split("error: ", 1)[1] for line in done.stderr.splitlines() if "error: training diverged" in line]
    assert 1 <= len(lines) <= 2  # with --workers 2 each rank names its own stage
    for line in lines:
        assert "stage " in line and "loss is nan" in line and "--lr" in line
        # 8 steps of 32 per epoch: it stops within the first epoch, before the first checkpoint
        assert int(line.split(" at step ")[1].split()[0]) < 8
    assert not (run / "summary.json").exists() and checkpoint.latest_checkpoint(run) is None
    for line in (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").exists() else []:
        json.loads(line)  # strict JSON: no bare NaN


def test_resume_after_a_cut_metrics_line_leaves_a_readable_file(stopped_run, tmp_path, capsys):
    run = copy_run(stopped_run, tmp_path)
    metrics = run / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes()[:-60])  # a crash in the middle of writing the last line
    assert main(["train", "--resume", str(run)]) == 0
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]  # every line is whole
    assert max(line["epoch"] for line in lines) == 2
    assert main(["plot", str(run), "--out", str(tmp_path / "curves.png")]) == 0


def test_a_binary_metrics_file_is_one_error_line(stopped_run, tmp_path, capsys):
    run = copy_run(stopped_run, tmp_path)
    (run / "metrics.jsonl").write_bytes(b"\xff\xfe\x00binary")
    assert main(["plot", str(run), "--out", str(tmp_path / "c.png")]) == 2
    assert capsys.readouterr().err.strip().startswith("degl: error:")
    assert not (tmp_path / "c.png").exists()


def test_a_file_models_default_run_dir_is_one_folder_named_after_the_file(tmp_path, monkeypatch):
    model_file = tmp_path / "nets" / "ok.py"
    model_file.parent.mkdir()
    model_file.write_text(
        "import torch.nn as nn\n\n"
        "def build(num_classes=10, in_channels=1, **_):\n"
        "    return nn.Sequential(nn.Conv2d(in_channels, 4, 3, padding=1), nn.ReLU(),\n"
        "                         nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten(),\n"
        "                         nn.Linear(4 * 12 * 12, num_classes))\n"
    )
    args = [a for a in TINY if a not in ("cnn4",)]
    args[args.index("--model") + 1 : args.index("--model") + 1] = [f"{model_file}:build"]
    args.remove("--width")
    args.remove("0.125")
    assert main(["train", *args, "--epochs", "1", "--max-steps", "2"]) == 0
    (made,) = (tmp_path / "runs").iterdir()
    assert made.name.startswith("dgl-ok-build-") and (made / "config.yaml").is_file()


def test_latest_pointing_outside_the_run_is_not_followed(stopped_run, tmp_path, capsys):
    run = copy_run(stopped_run, tmp_path)
    other = tmp_path / "other"
    shutil.copytree(run, other)
    own = checkpoint.latest_checkpoint(run)
    (run / "checkpoints/latest").write_text(f"../../other/checkpoints/{own.name}\n")
    assert checkpoint.latest_checkpoint(run) == own
    path, _ = checkpoint.load_meta(run)
    assert path == own and "does not name a complete checkpoint" in capsys.readouterr().err


@pytest.mark.parametrize("damage", ["deleted", "missing-step", "not-utf8"])
def test_a_damaged_latest_pointer_resumes_from_the_newest_complete_checkpoint(stopped_run, tmp_path, damage, capsys):
    run = copy_run(stopped_run, tmp_path)
    pointer = run / "checkpoints/latest"
    own = checkpoint.latest_checkpoint(run)
    if damage == "deleted":
        pointer.unlink()
    elif damage == "missing-step":
        pointer.write_text("step-99999999\n")
    else:
        pointer.write_bytes(b"\xff\xfe step")
    assert checkpoint.latest_checkpoint(run) == own
    assert main(["eval", "--run", str(run)]) == 0
    assert main(["train", "--resume", str(run)]) == 0
    assert json.loads((run / "summary.json").read_text())["completed"] is True


def test_a_save_killed_before_its_rename_leaves_no_temporary_file_after_the_next_commit(tmp_path):
    name = checkpoint.checkpoint_name(5)
    stray = checkpoint.checkpoint_root(tmp_path) / name / ".stage-0.pt.x1y2.tmp"
    stray.parent.mkdir(parents=True)
    stray.write_bytes(b"half a file")
    checkpoint.save_stage(tmp_path, name, 0, {"model": {}})
    checkpoint.commit(tmp_path, name, {"format": 1, "config": {}}, 1)
    assert not stray.exists() and checkpoint.latest_checkpoint(tmp_path) == stray.parent


@pytest.mark.parametrize("rank", ["0", "1"])
def test_torchrun_variables_left_in_the_environment_give_one_error_line(tmp_path, rank):
    from conftest import run_degl
    from degl.runtime.dist import free_port

    env = {"RANK": rank, "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port())}
    done = run_degl("train", *TINY, "--fault-timeout", "3", "--out", str(tmp_path / "R"), env=env, timeout=120)
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("degl: error: RANK=") and "unset RANK" in last
    assert not (tmp_path / "R").exists()


def test_a_full_disk_during_a_checkpoint_is_one_error_line_and_leaves_no_temporary_file(tmp_path):
    # A file-size limit makes every write past 20 kB fail as a full disk does (EFBIG instead of ENOSPC).
    script = tmp_path / "limited.py"
    script.write_text(
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
        "resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))\n"
        "from degl.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    run = tmp_path / "R"
    done = subprocess.run(
        [sys.executable, str(script), "train", *TINY, "--epochs", "1", "--out", str(run)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("degl: error: cannot write") and "stage-0.pt" in last
    assert checkpoint.latest_checkpoint(run) is None
    assert not list(run.rglob("*.tmp"))


def test_resume_refuses_a_config_yaml_edited_since_the_checkpoint(stopped_run, tmp_path, capsys):
    import yaml

    run = copy_run(stopped_run, tmp_path)
    config = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**config, "lr": 0.5}))
    assert main(["train", "--resume", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("degl: error:") and "lr: 0.1 -> 0.5" in err
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["train", "--resume", str(run)]) == 0


def test_a_rank_that_raises_is_named_alone_and_a_busy_peer_is_stopped_for_it():
    import degl
    from launch_fns import fail_on_rank_1_while_rank_0_computes

    with pytest.raises(RuntimeError) as failure:
        degl.launch(fail_on_rank_1_while_rank_0_computes, 2)
    message = str(failure.value)
    assert "rank 1 (stage 1) exited with status 1" in message
    assert "rank 0 (stage 0) exited" not in message and "rank(s) 0 stopped because of it" in message


def test_a_width_too_large_for_memory_says_so(capsys):
    assert main(["train", *TINY, "--width", "1000", "--out", "never"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "does not fit in memory" in err and "downsampling" not in err
    assert not Path("never").exists()


def test_the_lock_of_a_killed_run_is_recognised_as_stale(tmp_path, capsys):
    import signal
    import time

    run = tmp_path / "R"
    proc = start_train(*TINY, "--epochs", "30", "--out", str(run), cwd=tmp_path)
    deadline = time.monotonic() + 120
    while checkpoint.latest_checkpoint(run) is None:
        assert time.monotonic() < deadline and proc.poll() is None, "no checkpoint written"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run / ".degl.lock").read_text().strip() == str(proc.pid)  # the lock file outlives its holder
    assert main(["train", "--resume", str(run), "--max-steps", "1"]) == 0  # ... but not its lock


@pytest.mark.parametrize(
    "args, message",
    [
        (["--method", "backprop", "--split", "memory"], "--split memory applies to methods that cut"),
        (["--schedule", "cosine", "--lr-milestones", "2,4"], "--lr-milestones 2,4 applies to --schedule milestones"),
        (["--schedule", "step", "--lr-milestones", "2,4"], "--lr-milestones 2,4 applies to --schedule milestones"),
        (["--data-dir", "somewhere"], "--data-dir somewhere applies to data sets read from disk"),
        (["--data-workers", "2"], "--data-workers 2 applies to --dataset imagenet"),
        (["--max-in-flight", "4"], "--max-in-flight 4 applies to multi-process runs"),
        (["--cuts", "2", "--split", "blocks"], "--cuts and --split both choose the cut"),
        (["--momentum", "5"], "--momentum must be in [0, 1)"),
        (["--width", "inf"], "--width must be a positive finite number"),
        (["--lr", "inf"], "--lr must be a positive finite number"),
    ],
)
def test_options_a_run_would_ignore_or_cannot_use_are_refused_in_one_line(tmp_path, capsys, args, message):
    run = tmp_path / "R"
    assert main(["train", *TINY, "--stages", "2", *args, "--out", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("degl: error:") and message in err[0], err
    assert not run.exists()


def test_pinned_buffers_on_the_cpu_are_refused_not_warned(tmp_path, capsys):
    args = ["--method", "async-dgl", "--buffer", "2", "--buffer-storage", "pinned", "--device", "cpu"]
    assert main(["train", *TINY, *args, "--out", str(tmp_path / "R")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("degl: error: --buffer-storage pinned applies to a GPU device, not") and "Warning" not in err


def test_more_threads_than_cores_is_said(tmp_path, capsys):
    threads = (os.cpu_count() or 1) + 1
    assert main(["train", *TINY, "--threads", str(threads), "--max-steps", "1", "--out", str(tmp_path / "R")]) == 0
    assert f"--threads {threads} is more than this machine's" in capsys.readouterr().err


def test_a_yaml_syntax_error_names_line_and_column(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("model: cnn4\nwidth: [0.5\nepochs: 2\n")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "R")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("degl: error: config file") and "at line 3, column" in err


def test_on_nonfinite_warn_goes_on_with_one_warning(tmp_path, capsys):
    run = tmp_path / "R"
    args = ["--epochs", "2", "--lr", "1e4", "--on-nonfinite", "warn", "--out", str(run)]
    assert main(["train", *TINY, "--stages", "2", *args]) == 0
    err = capsys.readouterr().err
    assert err.count("degl: warning: training diverged") == 1
    for line in (run / "metrics.jsonl").read_text().splitlines():
        json.loads(line)  # null where the loss is NaN, never a bare NaN
    assert json.loads((run / "summary.json").read_text())["completed"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", *SYNTH, "--width", "1", "--model", "/etc/passwd:foo"], "'/etc/passwd' is not a Python file"),
        (["train", "--resume", "FILE"], "is a file, not a run directory"),
    ],
)
def test_a_wrong_kind_of_file_is_one_error_line(tmp_path, capsys, argv, message):
    (tmp_path / "FILE").write_text("not a run\n")
    argv = [str(tmp_path / "FILE") if arg == "FILE" else arg for arg in argv]
    assert main([*argv, "--out", str(tmp_path / "R")] if "--resume" not in argv else argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("degl: error:") and message in err[0], err
    assert not (tmp_path / "R").exists()
