"""``degl train`` and ``degl compare``: their arguments and what they do with them.

The options are :class:`~degl.run.config.TrainConfig`'s fields (:func:`add_train_options`); these
commands add ``--config`` / ``--resume`` (train) and ``--methods`` / ``--seeds`` (compare), merge
file and flags (flags win), refuse what the run would ignore and start the run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from degl.errors import UserError
from degl.run.config import add_train_options, given_options, load_config_file, make_config, settle_inapplicable

TRAIN_DESCRIPTION = (
    "Train a network with DGL (synchronous or asynchronous), sequential greedy learning, "
    "backprop or one of the paper's alternatives (DNI, cDNI, DDG, FR), in one process or one process "
    "per stage (--workers K, or under torchrun; dgl, async-dgl, dni, cdni, ddg and fr). "
    "Stages are numbered from 0: stage 0 reads the input, stage K-1 ends in the network's classifier."
)


def add_train_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "train",
        help="train a network (dgl, async-dgl, sgl, backprop, dni, cdni, ddg or fr)",
        description=TRAIN_DESCRIPTION,
    )
    parser.add_argument("--config", metavar="FILE", help="YAML file of options (command-line flags win)")
    parser.add_argument("--resume", metavar="DIR", help="continue the run in DIR from its last checkpoint")
    add_train_options(parser)
    parser.set_defaults(command_func=train_command)


def add_compare_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "compare",
        help="train several methods on the same backbone and budget, tabulate",
        description="Train --methods (and --seeds) with the same options; print a table. "
        "Completed runs under --out are reused, stopped ones resumed.",
    )
    parser.add_argument("--config", metavar="FILE", help="YAML file of options (command-line flags win)")
    parser.add_argument("--methods", default="dgl,backprop,sgl", help="comma-separated (default: dgl,backprop,sgl)")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    parser.add_argument(
        "--parallel",
        type=int,
        default=1,
        help="runs at a time, each in its own process with cores/N threads (default: 1)",
    )
    add_train_options(parser, exclude=("method", "seed"))
    parser.set_defaults(command_func=compare_command)


def train_command(args: argparse.Namespace) -> int:
    from degl.run.train import resume_config, resume_from, train
    from degl.runtime.dist import dist_env

    given = given_options(args)
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


def compare_command(args: argparse.Namespace) -> int:
    from degl.run.compare import compare, format_table, parse_list

    values: dict[str, Any] = load_config_file(args.config) if args.config else {}
    values.update(given_options(args))
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
