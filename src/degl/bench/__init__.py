"""``degl bench``: measurements that print readable lines and, last, one JSON object."""

from __future__ import annotations

import argparse
import copy
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from degl.core.alternatives import GRADIENT_METHODS
from degl.core.methods import DGL, Backprop
from degl.core.optim import OptimSettings
from degl.core.split import build_stages
from degl.errors import UserError
from degl.models import build_model
from degl.run.config import Rule, TrainConfig, add_config_options, parse_cuts, parse_shape, refuse_ignored
from degl.run.setup import resolve_device

COMMON_OPTIONS = (
    "model",
    "width",
    "stages",
    "aux",
    "split",
    "cuts",
    "batch_size",
    "input_shape",
    "num_classes",
    "device",
    "precision",
    "threads",
    "seed",
)
"""The ``degl train`` options every benchmark takes (same names, help and choices)."""


def add_common_options(parser: argparse.ArgumentParser, *, split: str = "auto") -> None:
    # A benchmark measures the CPU unless told otherwise; ``split``: the kind's own default cut.
    add_config_options(parser, COMMON_OPTIONS, defaults={"device": "cpu", "split": split})


def add_single_process_options(parser: argparse.ArgumentParser) -> None:
    """Options of the benchmarks that train both methods in this process (step, memory)."""
    add_config_options(parser, ("channels_last",))


BENCH_METHODS = ("dgl", *GRADIENT_METHODS)
"""The methods ``degl bench pipeline`` and ``degl bench memory`` compare with ``--method``."""


def add_method_option(parser: argparse.ArgumentParser, note: str) -> None:
    parser.add_argument(
        "--method",
        default="dgl",
        help=f"comma-separated methods, side by side: {', '.join(BENCH_METHODS)}; {note} (default: dgl)",
    )


def parse_methods(value: str) -> list[str]:
    """``"dgl,dni"`` -> ``["dgl", "dni"]``; an unknown or repeated name is a user error."""
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise UserError(f"--method must name at least one of {', '.join(BENCH_METHODS)}")
    for name in names:
        if name not in BENCH_METHODS:
            raise UserError(f"--method: unknown method {name!r}; choose from {', '.join(BENCH_METHODS)}")
        if names.count(name) > 1:
            raise UserError(f"--method names {name} twice")
    return names


@dataclass(frozen=True)
class BenchSituation:
    """What decides which options of a benchmark apply: the methods it compares."""

    methods: list[str]


AUX_RULE: Rule[BenchSituation] = Rule(
    ("aux",),
    lambda s: "dgl" in s.methods,
    "applies to --method dgl (dni, cdni, ddg and fr train only the last stage's head)",
)
"""dgl alone of the benchmarked methods trains aux heads."""


def refuse_ignored_options(
    args: argparse.Namespace,
    methods: list[str],
    rules: Sequence[Rule[BenchSituation]],
    own_defaults: Mapping[str, Any] | None = None,
) -> None:
    """Refuse, in one line as ``degl train`` does, the first option of ``rules`` that comparing
    ``methods`` would ignore. An option at its default is never refused: ``degl train``'s default,
    or for the benchmark's own options (not in the config) the one in ``own_defaults``."""
    own_defaults = own_defaults or {}
    names = {name for rule in rules for name in rule.options}
    defaults = {name: own_defaults[name] if name in own_defaults else getattr(TrainConfig, name) for name in names}
    refuse_ignored(rules, BenchSituation(methods), vars(args), defaults)


def add_bench_parsers(bench: argparse.ArgumentParser) -> None:
    from degl.bench import memory, pipeline, step

    kinds = bench.add_subparsers(dest="bench_kind", metavar="KIND", required=True, parser_class=type(bench))
    step.add_parser(kinds)
    memory.add_parser(kinds)
    pipeline.add_parser(kinds)


@dataclass
class BenchModels:
    """The same backbone, initialised identically, trained by backprop and by DGL."""

    backprop: Backprop
    dgl: DGL
    x: torch.Tensor
    y: torch.Tensor
    device: torch.device


def build_bench_models(args: argparse.Namespace) -> BenchModels:
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be a positive integer, got {args.batch_size}")
    if args.threads is not None:
        if args.threads < 1:
            raise UserError(f"--threads must be a positive integer, got {args.threads}")
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    shape = parse_shape(args.input_shape)
    torch.manual_seed(args.seed)
    backbone = build_model(args.model, width=args.width, input_shape=shape, num_classes=args.num_classes)
    reference = copy.deepcopy(backbone)
    dgl_stages = [
        s.to(device)
        for s in build_stages(
            backbone,
            args.stages,
            aux=args.aux,
            cuts=parse_cuts(args.cuts),
            split=args.split,
            time_batch=args.batch_size,
        )
    ]
    bp_stages = [s.to(device) for s in build_stages(reference, 1, aux=args.aux)]
    generator = torch.Generator().manual_seed(args.seed)
    x = torch.randn(args.batch_size, *shape, generator=generator).to(device)
    y = torch.randint(0, args.num_classes, (args.batch_size,), generator=generator).to(device)
    if args.channels_last:
        dgl_stages = [s.to(memory_format=torch.channels_last) for s in dgl_stages]
        bp_stages = [s.to(memory_format=torch.channels_last) for s in bp_stages]
        x = x.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else x
    settings = OptimSettings(lr=0.01, schedule="constant")
    kwargs = {"make_optimizer": settings.make_optimizer, "precision": args.precision, "device": device}
    return BenchModels(Backprop(bp_stages, **kwargs), DGL(dgl_stages, **kwargs), x, y, device)


def describe(args: argparse.Namespace, models: BenchModels) -> dict[str, Any]:
    return {
        "model": args.model,
        "width": args.width,
        "stages": len(models.dgl.stages),
        "stage_blocks": [list(s.block_indices) for s in models.dgl.stages],
        "aux": args.aux,
        "batch_size": args.batch_size,
        "input_shape": list(parse_shape(args.input_shape)),
        "device": str(models.device),
        "precision": args.precision,
        "channels_last": args.channels_last,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def headline(args: argparse.Namespace, models: BenchModels) -> str:
    return (
        f"{args.model} width {args.width}, K={len(models.dgl.stages)} ({args.aux} aux), "
        f"batch {args.batch_size}, {args.input_shape}, {models.device}"
        f"{', channels-last' if args.channels_last else ''}, {torch.get_num_threads()} thread(s)"
    )


def emit(lines: list[str], result: dict[str, Any]) -> None:
    for line in lines:
        print(line)
    print(json.dumps(result))
