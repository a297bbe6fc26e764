"""The commands that read runs already written: ``degl eval``, ``degl plot``, ``degl trace summary``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_eval_parser(commands: argparse._SubParsersAction) -> None:
    from degl.run.eval_extras import add_eval_extra_arguments

    parser = commands.add_parser("eval", help="evaluate a run's last checkpoint on the test set")
    parser.add_argument(
        "--run",
        metavar="DIR",
        required=True,
        help="run directory written by 'degl train', or a file written by 'degl export'",
    )
    parser.add_argument("--device", default=None, help="override the run's device")
    parser.add_argument("--data-dir", default=None, help="override the run's data directory")
    add_eval_extra_arguments(parser)
    parser.set_defaults(command_func=eval_command)


def eval_command(args: argparse.Namespace) -> int:
    from degl.run.eval_extras import eval_extras_command
    from degl.run.evaluation import evaluate_run

    extra = eval_extras_command(args)
    if extra is not None:
        return extra
    result = evaluate_run(Path(args.run), device=args.device, data_dir=args.data_dir)
    keys = ("stages", "test_acc_per_stage", "test_acc5_per_stage", "test_ensemble_acc_per_stage")
    rows = zip(*(result[key] for key in keys))
    scored: list[int] = []
    for stage, acc, acc5, ens in rows:
        scored.append(stage)  # the ensemble covers the scored heads up to this one (backprop, dni, ...: one)
        heads = f"0..{stage}" if scored == list(range(stage + 1)) else ", ".join(map(str, scored))
        print(f"stage {stage}: test acc {acc:.2f}% (top-5 {acc5:.2f}%)  (ensemble of heads {heads}: {ens:.2f}%)")
    print(json.dumps(result))
    return 0


def add_plot_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "plot",
        help="draw the per-stage learning curves of one or more runs",
        description="One figure of the per-stage curves in each RUN's metrics.jsonl (colour = stage, line "
        "style = run; black: the ensemble of all heads). Works on runs in progress. Runs with steps_per_stage "
        "in their summary (asynchronous, multi-process) also get a bar panel of the steps each rank took.",
    )
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run directory written by 'degl train'")
    parser.add_argument(
        "--out", metavar="FILE", help="figure file: .png, .svg, .pdf (default: RUN/curves.png; needed for several runs)"
    )
    parser.add_argument("--metric", choices=("acc", "loss"), default="acc", help="y axis (default: acc)")
    parser.add_argument("--split", choices=("train", "test"), default="test", help="which lines (default: test)")
    parser.add_argument(
        "--x",
        choices=("epoch", "time"),
        default="epoch",
        help="x axis: epochs, or training seconds (the lines' time_s, which older runs lack) (default: epoch)",
    )
    parser.set_defaults(command_func=plot_command)


def plot_command(args: argparse.Namespace) -> int:
    from degl.run.plot import default_out, plot_runs, save_figure

    out = Path(args.out) if args.out else default_out(args.runs)
    figure = plot_runs(args.runs, metric=args.metric, split=args.split, x=args.x)
    save_figure(figure, out)
    print(f"wrote {out}")
    return 0


def add_trace_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "trace",
        help="read a pipeline timeline written by 'degl train --workers K --trace'",
        description="Tools for RUN/trace.json (a Chrome trace: open it in ui.perfetto.dev or chrome://tracing).",
    )
    # 'degl trace' without an action prints this help and exits 2.
    parser.set_defaults(command_func=lambda args: _print_help(parser))
    actions = parser.add_subparsers(dest="trace_command", metavar="ACTION", parser_class=type(parser))
    summary = actions.add_parser(
        "summary",
        help="per-rank busy, idle and wait fractions of the training windows",
        description="Per rank: the fraction of its training time (every epoch's training, evaluation excluded) "
        "spent busy (compute, data), idle, waiting to receive and waiting to send, measured from the trace's "
        "spans; the same quantities as summary.json's *_fraction_per_stage. The last stdout line is one JSON object.",
    )
    summary.add_argument("file", metavar="FILE", help="trace.json of a run")
    summary.set_defaults(command_func=trace_summary_command)


def _print_help(parser: argparse.ArgumentParser) -> int:
    parser.print_help()
    return 2


def trace_summary_command(args: argparse.Namespace) -> int:
    from degl.run.trace_summary import format_rows, trace_summary

    result = trace_summary(Path(args.file))
    for line in format_rows(result["ranks"]):
        print(line)
    print(json.dumps(result))
    return 0
