"""``degl`` command line: parse, build, run. Errors a user can cause exit 2 with one line."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from degl.errors import UserError
from degl.run.config import (
    add_train_options,
    config_fields,
    load_config_file,
    make_config,
    settle_inapplicable,
)


class ArgumentParser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2, like every other user error
        self.exit(2, f"degl: error: {message}; see '{self.prog} --help'\n")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="degl", description="Decoupled Greedy Learning of deep networks.")
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=ArgumentParser)

    train = sub.add_parser(
        "train",
        help="train a network (dgl, async-dgl, sgl, backprop, dni, cdni, ddg or fr)",
        description="Train a network with DGL (synchronous or asynchronous), sequential greedy learning, "
        "backprop or one of the paper's alternatives (DNI, cDNI, DDG, FR), in one process or one process "
        "per stage (--workers K, or under torchrun; dgl, async-dgl, dni, cdni, ddg and fr).",
    )
    train.add_argument("--config", metavar="FILE", help="YAML file of options (command-line flags win)")
    train.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    add_train_options(train)

    compare = sub.add_parser(
        "compare",
        help="train several methods on the same backbone and budget, tabulate",
        description="Train --methods (and --seeds) with the same options; print a table. "
        "Completed runs under --out are reused, stopped ones resumed.",
    )
    compare.add_argument("--config", metavar="FILE", help="YAML file of options (command-line flags win)")
    compare.add_argument("--methods", default="dgl,backprop,sgl", help="comma-separated (default: dgl,backprop,sgl)")
    compare.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    compare.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="runs at a time, each in its own process with cores/N threads (default: 1)",
    )
    add_train_options(compare, exclude=("method", "seed"))

    evaluate = sub.add_parser("eval", help="evaluate a run's last checkpoint on the test set")
    evaluate.add_argument(
        "--run",
        metavar="DIR",
        required=True,
        help="run directory written by 'degl train', or a file written by 'degl export'",
    )
    evaluate.add_argument("--device", default=None, help="override the run's device")
    evaluate.add_argument("--data-dir", default=None, help="override the run's data directory")
    from degl.run.eval_extras import add_eval_extra_arguments

    add_eval_extra_arguments(evaluate)

    from degl.run.export import add_export_arguments

    add_export_arguments(sub.add_parser("export", help="write a run's network as one ONNX, pt2 or state-dict file"))

    models = sub.add_parser(
        "models",
        help="list the registered models, or show one model's per-stage cost (--stats)",
        description="List the registered models. With --stats MODEL --stages K: split MODEL as "
        "'degl train' would and print, per stage, the output shape, parameters and MACs of its block "
        "and of its head (MACs = FLOPs/2 from torch.utils.flop_counter, one sample, eval mode). MODEL may "
        "also be torchvision:NAME, path/to/file.py:FUNCTION or package.module:FUNCTION (a function "
        "returning an nn.Module): such models are traced with torch.fx and cut between their blocks.",
    )
    models.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    stats = models.add_argument_group("per-stage cost (--stats)")
    stats.add_argument(
        "--stats",
        metavar="MODEL",
        help="model to measure (needs --stages or --split-at): a registered name, torchvision:NAME, "
        "path/to/file.py:FUNCTION or package.module:FUNCTION",
    )
    stats.add_argument("--stages", type=int, metavar="K", help="number of stages K")
    stats.add_argument(
        "--split-at",
        metavar="NAME,NAME",
        help="submodule names where stages 2..K begin (e.g. layer2,layer4); K = names + 1",
    )
    stats.add_argument(
        "--aux",
        default="mlp-sr",
        help="aux head of every stage but the last: mlp, mlp-sr, cnn, linear, or a model's own kind "
        "such as dni for dni-cnn (default: mlp-sr)",
    )
    stats.add_argument(
        "--split",
        default="auto",
        choices=("auto", "flops", "memory", "blocks"),
        help="how to cut blocks into stages, as for 'degl train' (default: auto)",
    )
    stats.add_argument("--cuts", metavar="I,J,...", help="explicit cut points (block indices)")
    stats.add_argument(
        "--input-shape",
        metavar="C,H,W",
        help="input shape (default: the model's; 3,224,224 for torchvision:NAME; required for FILE.py:FUNCTION)",
    )
    stats.add_argument("--width", type=float, default=1.0, help="channel-width multiplier (default: 1)")
    stats.add_argument(
        "--num-classes",
        type=int,
        metavar="N",
        help="classes (default: 1000 for models whose default input is 224x224, else 10; a model from a "
        "file or module keeps its own unless its function takes num_classes)",
    )
    models.epilog = (
        "Stages are numbered from 0. The aux/main ratio is the MACs of the aux heads of stages "
        "0..K-2 only (the heads DGL adds; the last stage's head is the network's classifier, "
        "reported on its own) divided by the MACs of the main network's blocks (classifier excluded)."
    )

    plot = sub.add_parser(
        "plot",
        help="draw the per-stage learning curves of one or more runs",
        description="One figure of the per-stage curves in each RUN's metrics.jsonl (colour = stage, line "
        "style = run; black: the ensemble of all heads). Works on runs in progress. Runs with steps_per_stage "
        "in their summary (asynchronous, multi-process) also get a bar panel of the steps each rank took.",
    )
    plot.add_argument("runs", nargs="+", metavar="RUN", help="run directory written by 'degl train'")
    plot.add_argument(
        "--out", metavar="FILE", help="figure file: .png, .svg, .pdf (default: RUN/curves.png; needed for several runs)"
    )
    plot.add_argument("--metric", choices=("acc", "loss"), default="acc", help="y axis (default: acc)")
    plot.add_argument("--split", choices=("train", "test"), default="test", help="which lines (default: test)")
    plot.add_argument(
        "--x",
        choices=("epoch", "time"),
        default="epoch",
        help="x axis: epochs, or training seconds (the lines' time_s, which older runs lack) (default: epoch)",
    )

    trace = sub.add_parser(
        "trace",
        help="read a pipeline timeline written by 'degl train --workers K --trace'",
        description="Tools for RUN/trace.json (a Chrome trace: open it in ui.perfetto.dev or chrome://tracing).",
    )
    trace.set_defaults(trace_help=trace.print_help)
    trace_sub = trace.add_subparsers(dest="trace_command", metavar="ACTION", parser_class=ArgumentParser)
    trace_summary = trace_sub.add_parser(
        "summary",
        help="per-rank busy, idle and wait fractions of the training windows",
        description="Per rank: the fraction of its training time (every epoch's training, evaluation excluded) "
        "spent busy (compute, data), idle, waiting to receive and waiting to send, measured from the trace's "
        "spans; the same quantities as summary.json's *_fraction_per_stage. The last stdout line is one JSON object.",
    )
    trace_summary.add_argument("file", metavar="FILE", help="trace.json of a run")

    bench = sub.add_parser("bench", help="benchmarks (last stdout line is one JSON object)")
    from degl.bench import add_bench_parsers

    add_bench_parsers(bench)
    return parser


def _version() -> str:
    import degl

    return f"degl {degl.__version__}"


def run_train(args: argparse.Namespace, given: dict[str, Any]) -> int:
    from degl.run.train import resume_config, resume_from, train
    from degl.runtime.dist import dist_env

    env = dist_env()
    resume_dir: Path | None = None
    if args.resume:
        if args.config:
            raise UserError("--resume uses the run's saved configuration; drop --config")
        resume_dir = Path(args.resume)
        path, meta, cfg = resume_config(resume_dir, given)
    else:
        values: dict[str, Any] = load_config_file(args.config) if args.config else {}
        values.update(given)
        processes = env.world_size if env is not None else values.get("workers")
        if processes and processes > 1 and "stages" not in values:
            values["stages"] = processes  # one stage per process
        cfg = settle_inapplicable(make_config(values, check_applicable=False), set(given), processes=processes)
        if cfg.method == "backprop" and "stages" in values and cfg.stages != 1:
            print("degl: note: backprop trains the network end to end; --stages is ignored", file=sys.stderr)
    if env is not None:  # one rank of a torchrun launch
        from degl.run.pipeline_run import run_rank

        return run_rank(cfg, resume_dir, print_summary=True)
    if cfg.workers is not None and cfg.workers > 1:
        from degl.run.pipeline_run import launch_local

        return launch_local(cfg, resume_dir=resume_dir)
    if resume_dir is not None:
        summary, run_dir = resume_from(resume_dir, path, meta, cfg)
    else:
        summary, run_dir = train(cfg)
    print_summary(summary, run_dir)
    return 0


def print_summary(summary: dict[str, Any], run_dir: Path) -> None:
    from degl.run.runstate import format_summary

    for line in format_summary(summary, run_dir):
        print(line)


def run_compare(args: argparse.Namespace, given: dict[str, Any]) -> int:
    from degl.run.compare import compare, format_table, parse_list

    values: dict[str, Any] = load_config_file(args.config) if args.config else {}
    values.update(given)
    values.pop("method", None)
    out = Path(values.pop("out", None) or "runs/compare")
    cfg = make_config(values, check_applicable=False)  # compare checks each option against --methods
    methods = parse_list(args.methods, what="--methods")
    seeds = parse_list(args.seeds, what="--seeds", cast=int)
    result = compare(cfg, methods, seeds, out, parallel=args.parallel)
    print()
    for line in format_table(result):
        print(line)
    print(json.dumps(result))
    return 0


def run_trace_summary(args: argparse.Namespace) -> int:
    from degl.run.trace_summary import format_rows, trace_summary

    result = trace_summary(Path(args.file))
    for line in format_rows(result["ranks"]):
        print(line)
    print(json.dumps(result))
    return 0


def run_eval(args: argparse.Namespace) -> int:
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


def run_plot(args: argparse.Namespace) -> int:
    from degl.run.plot import default_out, plot_runs, save_figure

    out = Path(args.out) if args.out else default_out(args.runs)
    figure = plot_runs(args.runs, metric=args.metric, split=args.split, x=args.x)
    save_figure(figure, out)
    print(f"wrote {out}")
    return 0


def run_models(args: argparse.Namespace) -> int:
    from degl.models import list_models, model_entry

    if args.stats is not None:
        return run_model_stats(args)
    given = [
        flag
        for flag, value in (
            ("--stages", args.stages),
            ("--split-at", args.split_at),
            ("--cuts", args.cuts),
            ("--input-shape", args.input_shape),
            ("--num-classes", args.num_classes),
        )
        if value is not None
    ]
    if given:
        raise UserError(f"{', '.join(given)}: only meaningful with --stats MODEL")
    entries = [model_entry(name) for name in list_models()]
    if args.json:
        print(
            json.dumps(
                {e.name: {"description": e.description, "input_shape": list(e.default_input_shape)} for e in entries}
            )
        )
        return 0
    width = max(len(e.name) for e in entries)
    for e in entries:
        print(f"{e.name:<{width}}  {e.description}")
    print(
        "Any other model too, cut by tracing: torchvision:NAME, path/to/file.py:FUNCTION, package.module:FUNCTION "
        "(see 'degl models --stats MODEL --stages K' for its cut names)"
    )
    return 0


def run_model_stats(args: argparse.Namespace) -> int:
    from degl.core.stats import model_stats
    from degl.models import model_entry
    from degl.run.config import parse_cuts, parse_names, parse_shape

    entry = model_entry(args.stats)
    split_at = parse_names(args.split_at)
    if args.stages is None and split_at is None:
        raise UserError("--stats needs --stages K (the number of stages to split the model into) or --split-at")
    shape = parse_shape(args.input_shape) if args.input_shape else entry.default_input_shape
    if shape is None:
        raise UserError(f"model {args.stats!r} has no default input shape; pass --input-shape C,H,W")
    classes = args.num_classes
    if classes is None and not (entry.external and entry.default_input_shape is None):
        classes = 1000 if entry.default_input_shape[1:] == (224, 224) else 10
    result = model_stats(
        args.stats,
        args.stages,
        aux=args.aux,
        split=args.split,
        cuts=parse_cuts(args.cuts),
        input_shape=shape,
        width=args.width,
        num_classes=classes,
        split_at=split_at,
    )
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        for line in result.format_table():
            print(line)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and argparse's own errors (already printed)
        return int(exc.code or 0)
    try:
        if args.command == "train":
            names = {f.name for f in config_fields()}
            given = {k: v for k, v in vars(args).items() if k in names}
            return run_train(args, given)
        if args.command == "compare":
            names = {f.name for f in config_fields()}
            return run_compare(args, {k: v for k, v in vars(args).items() if k in names})
        if args.command == "eval":
            return run_eval(args)
        if args.command == "models":
            return run_models(args)
        if args.command == "export":
            from degl.run.export import export_command

            return export_command(args)
        if args.command == "plot":
            return run_plot(args)
        if args.command == "bench":
            return args.bench_func(args)
        if args.command == "trace":
            if args.trace_command == "summary":
                return run_trace_summary(args)
            args.trace_help()
            return 2
        parser.print_help()
        return 2
    except UserError as exc:
        print(f"degl: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("degl: aborted", file=sys.stderr)
        return 130
    except Exception as exc:
        from degl.run.control import Interrupted

        if isinstance(exc, Interrupted):
            print(f"degl: {exc}", file=sys.stderr)
            return 130
        raise


if __name__ == "__main__":
    raise SystemExit(main())
