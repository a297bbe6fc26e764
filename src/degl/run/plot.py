"""``degl plot``: per-stage learning curves of one or more run directories, in one figure.

Reads only ``metrics.jsonl`` (plus ``config.yaml`` / ``summary.json`` for labels and steps per
rank), so it works on runs still in progress (no summary yet, a last line cut short) and on runs
from earlier degl versions (lines lacking a field are skipped; ``--x time`` needs the ``time_s``
field, which older runs lack, and says so in one line rather than guess). Colour = stage, line style = run; the
ensemble of all heads is the black line (test accuracy only); runs whose summary has
``steps_per_stage`` (asynchronous and multi-process) get a bar panel of the steps each rank took.

matplotlib is imported when a figure is drawn, never by ``import degl``.
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from degl.errors import UserError
from degl.run.rundir import parse_metrics_line

METRICS = ("acc", "loss")
SPLITS = ("train", "test")
X_AXES = ("epoch", "time")
_STYLES = ("-", "--", ":", "-.")
_HATCHES = ("", "//", "..", "xx", "\\\\", "++")


@dataclass
class RunCurves:
    """What one run directory holds for plotting (any part may be missing)."""

    path: Path
    lines: list[dict[str, Any]]
    config: dict[str, Any] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    label: str = ""

    @property
    def steps_per_stage(self) -> list[int] | None:
        steps = self.summary.get("steps_per_stage")
        return steps if isinstance(steps, list) and steps else None


def _read_mapping(path: Path, parse: Any) -> dict[str, Any]:
    """A YAML/JSON object, or ``{}`` when absent or unreadable (labels only; nothing depends on it)."""
    try:
        value = parse(path.read_text())
    except (OSError, ValueError, yaml.YAMLError):
        return {}
    return value if isinstance(value, dict) else {}


def load_run(path: Path) -> RunCurves:
    """The lines, config and summary of a run directory; a folder that is no run is a :class:`UserError`."""
    metrics, config = path / "metrics.jsonl", path / "config.yaml"
    if not path.is_dir():
        raise UserError(f"{path} is not a directory; give the run directory of a 'degl train' run (its --out)")
    if not metrics.is_file() and not config.is_file():
        raise UserError(f"{path} is not a run directory (no metrics.jsonl or config.yaml); give a 'degl train' --out")
    try:
        text = metrics.read_text().splitlines() if metrics.is_file() else []
    except UnicodeDecodeError:
        raise UserError(f"{metrics} is not a text file; the file is corrupt") from None
    lines = []
    for number, raw in enumerate(text, 1):
        record = parse_metrics_line(raw)
        if record is None:
            if number == len(text):
                # a run in progress (or killed) may have cut its last line short
                print(f"degl: note: {metrics}: skipping its last line, cut short (a run in progress?)", file=sys.stderr)
                break
            raise UserError(f"{metrics}: line {number} is not a JSON object; the file is corrupt")
        lines.append(record)
    return RunCurves(
        path, lines, _read_mapping(config, yaml.safe_load), _read_mapping(path / "summary.json", json.loads)
    )


def _label(run: RunCurves) -> str:
    method = run.config.get("method") or run.summary.get("method")
    seed = run.config.get("seed", run.summary.get("seed"))
    if method is None:
        return run.path.name
    return f"{method} seed {seed}" if seed is not None else str(method)


def _label_runs(runs: list[RunCurves]) -> None:
    labels = [_label(r) for r in runs]
    for run, label in zip(runs, labels):
        # Two runs of one method and seed (a sweep): the directory names tell them apart.
        run.label = f"{label} ({run.path.name})" if labels.count(label) > 1 else label


def _series(run: RunCurves, split: str, key: str, x: str) -> dict[int, tuple[list[float], list[float]]]:
    """Per stage, the (x, y) points of the lines of ``split`` that carry ``key``."""
    x_key = "time_s" if x == "time" else "epoch"
    series: dict[int, tuple[list[float], list[float]]] = {}
    for line in run.lines:
        if line.get("split") != split or not isinstance(line.get("stage"), int) or line.get(key) is None:
            continue
        if line.get(x_key) is None:
            if x == "time":
                raise UserError(
                    f"{run.path}/metrics.jsonl has lines without time_s (written by an older degl); "
                    "plot it with --x epoch"
                )
            continue
        xs, ys = series.setdefault(line["stage"], ([], []))
        xs.append(float(line[x_key]))
        ys.append(float(line[key]))
    return dict(sorted(series.items()))


def _ensemble(run: RunCurves, x: str) -> tuple[list[float], list[float]]:
    """Per epoch, the ensemble accuracy of all heads evaluated (the highest stage's test line)."""
    last: dict[int, dict[str, Any]] = {}
    for line in run.lines:
        epoch = line.get("epoch")
        if line.get("split") != "test" or line.get("ensemble_acc") is None or not isinstance(epoch, int):
            continue
        if epoch not in last or line.get("stage", -1) >= last[epoch].get("stage", -1):
            last[epoch] = line
    points = [(line.get("time_s") if x == "time" else epoch, line["ensemble_acc"]) for epoch, line in last.items()]
    points = sorted(p for p in points if p[0] is not None)
    return [float(a) for a, _ in points], [float(b) for _, b in points]


def plot_runs(
    run_dirs: Sequence[str | Path],
    *,
    metric: str = "acc",
    split: str = "test",
    x: str = "epoch",
) -> Any:
    """One matplotlib ``Figure`` of the per-stage curves of ``run_dirs``; its first axes holds the curves."""
    for name, value, choices in (("metric", metric, METRICS), ("split", split, SPLITS), ("x", x, X_AXES)):
        if value not in choices:
            raise UserError(f"--{name} {value!r}: choose one of {', '.join(choices)}")
    if not run_dirs:
        raise UserError("give at least one run directory")
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise UserError("degl plot needs matplotlib: pip install 'degl[plot]'") from None
    runs = [load_run(Path(p)) for p in run_dirs]
    _label_runs(runs)
    with_steps = [r for r in runs if r.steps_per_stage]
    fig = Figure(figsize=(10 if with_steps else 7, 4.5), layout="constrained")
    if with_steps:
        ax, bars = fig.subplots(1, 2, width_ratios=(3, 1))
    else:
        ax, bars = fig.subplots(), None
    colours = [f"C{k}" for k in range(10)]
    plotted = 0
    for i, run in enumerate(runs):
        style = _STYLES[i % len(_STYLES)]
        prefix = f"{run.label}: " if len(runs) > 1 else ""
        series = _series(run, split, metric, x)
        for stage, (xs, ys) in series.items():
            marker = "o" if len(xs) <= 30 else None
            ax.plot(xs, ys, style, color=colours[stage % 10], marker=marker, ms=3, label=f"{prefix}stage {stage}")
            plotted += 1
        if metric == "acc" and split == "test" and len(series) > 1:  # one head: its ensemble is itself
            xs, ys = _ensemble(run, x)
            if xs:
                marker = "s" if len(xs) <= 30 else None
                ax.plot(xs, ys, style, color="black", lw=1, marker=marker, ms=3, label=f"{prefix}ensemble of heads")
    if plotted == 0:
        names = ", ".join(str(r.path) for r in runs)
        raise UserError(f"nothing to plot: no {split} lines with {metric} yet in {names}")
    what = {"acc": "accuracy (%)", "loss": "loss"}[metric]
    ax.set_xlabel("epoch" if x == "epoch" else "training time (s)")
    if x == "epoch":
        ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_ylabel(f"{split} {what}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    first = runs[0]
    if len(runs) == 1:
        cfg = first.config
        model = f", {cfg['model']} on {cfg.get('dataset', '?')}" if "model" in cfg else ""
        state = "" if first.summary.get("completed") else " (in progress or stopped)"
        ax.set_title(f"{first.label}{model}{state}", fontsize=9)
    if bars is not None:
        _steps_panel(bars, with_steps, colours, legend=len(runs) > 1)
    return fig


def _steps_panel(ax: Any, runs: list[RunCurves], colours: list[str], *, legend: bool) -> None:
    """Grouped bars: per stage (rank), the training steps each run took there."""
    width = 0.8 / len(runs)
    for i, run in enumerate(runs):
        steps = run.steps_per_stage or []
        xs = [k - 0.4 + width * (i + 0.5) for k in range(len(steps))]
        stage_colours = [colours[k % 10] for k in range(len(steps))]
        hatch = _HATCHES[i % len(_HATCHES)]
        ax.bar(xs, steps, width, color=stage_colours, edgecolor="black", lw=0.5, hatch=hatch, label=run.label)
    most = max(len(r.steps_per_stage or []) for r in runs)
    ax.set_xticks(range(most), [f"stage {k}" for k in range(most)], fontsize=7)
    ax.set_ylabel("training steps per rank")
    if legend:  # which run each group of bars is (a run without steps_per_stage has none)
        ax.legend(fontsize=6, loc="lower right")


def save_figure(fig: Any, path: Path) -> None:
    """Render ``fig`` in the format of ``path``'s suffix (PNG without one) and write it atomically."""
    from degl.run.checkpoint import atomic_write_bytes

    fmt = path.suffix.lstrip(".").lower() or "png"
    supported = fig.canvas.get_supported_filetypes()
    if fmt not in supported:
        raise UserError(f"--out {path}: cannot write .{fmt} figures; use one of .{', .'.join(sorted(supported))}")
    buffer = io.BytesIO()
    fig.savefig(buffer, format=fmt, dpi=120)
    atomic_write_bytes(path, buffer.getvalue())


def default_out(run_dirs: Sequence[str | Path]) -> Path:
    """``RUN/curves.png`` for one run; several runs have no natural home, so ``--out`` is required."""
    if len(run_dirs) != 1:
        raise UserError("several runs make one figure: say where it goes with --out FILE.png")
    return Path(run_dirs[0]) / "curves.png"
