"""``degl plot``: a figure of per-stage curves from real run directories (finished, in progress, old)."""

import json
import shutil

import pytest

from conftest import SYNTH
from degl.cli import main
from degl.run.plot import plot_runs

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished runs: synchronous DGL (2 stages, 2 epochs) and asynchronous DGL (buffered)."""
    base = tmp_path_factory.mktemp("runs")
    dgl, asyn = base / "dgl", base / "async"
    assert main(["train", *SYNTH, "--stages", "2", "--epochs", "2", "--out", str(dgl)]) == 0
    common = ["--method", "async-dgl", "--buffer", "2", "--slowdown", "1:1.5"]
    assert main(["train", *SYNTH, *common, "--stages", "2", "--epochs", "2", "--out", str(asyn)]) == 0
    return dgl, asyn


def lines_of(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def copy_run(run, tmp_path, name="copy"):
    return shutil.copytree(run, tmp_path / name)


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > len(PNG_SIGNATURE)
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]  # written atomically


def stage_lines(figure):
    return {line.get_label(): line for line in figure.axes[0].get_lines()}


def test_one_run_writes_curves_png_in_the_run_directory(runs, tmp_path, capsys):
    run = copy_run(runs[0], tmp_path)
    assert main(["plot", str(run)]) == 0
    assert_png(run / "curves.png")
    assert str(run / "curves.png") in capsys.readouterr().out

    figure = plot_runs([run])
    curves = stage_lines(figure)
    assert set(curves) == {"stage 0", "stage 1", "ensemble of heads"}
    tests = [r for r in lines_of(run) if r["split"] == "test"]
    assert list(curves["stage 1"].get_ydata()) == [r["acc"] for r in tests if r["stage"] == 1]
    assert list(curves["stage 1"].get_xdata()) == [1.0, 2.0]
    assert list(curves["ensemble of heads"].get_ydata()) == [r["ensemble_acc"] for r in tests if r["stage"] == 1]


def test_time_axis_uses_the_training_seconds_of_each_line(runs, tmp_path):
    out = tmp_path / "loss.png"
    assert main(["plot", str(runs[0]), "--x", "time", "--metric", "loss", "--split", "train", "--out", str(out)]) == 0
    assert_png(out)
    figure = plot_runs([runs[0]], x="time", metric="loss", split="train")
    train = [r for r in lines_of(runs[0]) if r["split"] == "train" and r["stage"] == 0]
    assert all(r["time_s"] > 0 for r in train)
    assert list(stage_lines(figure)["stage 0"].get_xdata()) == [r["time_s"] for r in train]
    assert list(stage_lines(figure)["stage 0"].get_ydata()) == [r["loss"] for r in train]


def test_run_from_an_older_degl_plots_by_epoch_and_refuses_time_in_one_line(runs, tmp_path, capsys):
    old = copy_run(runs[0], tmp_path)
    # What degl wrote before time_s and top-5 existed.
    stripped = [{k: v for k, v in r.items() if k not in ("time_s", "acc5", "phase")} for r in lines_of(old)]
    (old / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in stripped))
    assert main(["plot", str(old)]) == 0
    assert_png(old / "curves.png")
    capsys.readouterr()
    assert main(["plot", str(old), "--x", "time", "--out", str(tmp_path / "t.png")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("degl: error:") and err.count("\n") == 1
    assert "time_s" in err and "--x epoch" in err
    assert not (tmp_path / "t.png").exists()


def test_several_runs_are_overlaid_and_async_steps_per_rank_get_a_panel(runs, tmp_path, capsys):
    dgl, asyn = runs
    out = tmp_path / "both.png"
    assert main(["plot", str(dgl), str(asyn), "--out", str(out)]) == 0
    assert_png(out)
    figure = plot_runs([dgl, asyn])
    labels = set(stage_lines(figure))
    assert {"dgl seed 0: stage 0", "dgl seed 0: stage 1", "async-dgl seed 0: stage 1"} <= labels
    bars = figure.axes[1]
    summary = json.loads((asyn / "summary.json").read_text())
    assert [patch.get_height() for patch in bars.patches] == summary["steps_per_stage"]
    # several runs have no natural place for the figure
    assert main(["plot", str(dgl), str(asyn)]) == 2
    assert "--out" in capsys.readouterr().err


def test_runs_that_share_method_and_seed_are_told_apart_by_directory(runs, tmp_path):
    twin = copy_run(runs[0], tmp_path, "twin")
    labels = set(stage_lines(plot_runs([runs[0], twin])))
    assert f"dgl seed 0 ({twin.name}): stage 0" in labels and "dgl seed 0 (dgl): stage 0" in labels


def test_run_in_progress_without_summary_and_with_a_cut_last_line(runs, tmp_path):
    run = copy_run(runs[0], tmp_path)
    (run / "summary.json").unlink()
    text = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text(text[: len(text) - 25])  # the writer was killed mid-line
    assert main(["plot", str(run)]) == 0
    assert_png(run / "curves.png")
    curves = stage_lines(plot_runs([run]))
    assert list(curves["stage 0"].get_xdata()) == [1.0, 2.0]
    assert list(curves["stage 1"].get_xdata()) == [1.0]  # its epoch-2 test line was cut


def test_a_run_that_has_not_finished_an_epoch_yet_has_nothing_to_plot(runs, tmp_path, capsys):
    run = copy_run(runs[0], tmp_path)
    (run / "metrics.jsonl").unlink()
    assert main(["plot", str(run)]) == 2
    assert "nothing to plot" in capsys.readouterr().err
    assert not (run / "curves.png").exists()


@pytest.mark.parametrize("kind", ["empty", "missing", "file", "corrupt"])
def test_a_folder_that_is_not_a_run_is_one_line_exit_2(runs, tmp_path, capsys, kind):
    target = tmp_path / "target"
    if kind == "empty":
        target.mkdir()
    elif kind == "file":
        target.write_text("not a run\n")
    elif kind == "corrupt":
        copy_run(runs[0], tmp_path, "target")
        lines = (target / "metrics.jsonl").read_text().splitlines()
        lines[1] = "{garbage"
        (target / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    assert main(["plot", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("degl: error:") and err.count("\n") == 1
    assert str(target) in err


def test_unknown_figure_format_is_refused(runs, tmp_path, capsys):
    assert main(["plot", str(runs[0]), "--out", str(tmp_path / "curves.xyz")]) == 2
    assert "cannot write .xyz" in capsys.readouterr().err
