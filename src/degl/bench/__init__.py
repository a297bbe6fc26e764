"""``degl bench``: measurements that print readable lines and, last, one JSON object."""

from __future__ import annotations

import argparse
import copy
import json
from dataclasses import dataclass
from typing import Any

import torch

from degl.core.alternatives import GRADIENT_METHODS
from degl.core.methods import DGL, Backprop
from degl.core.optim import OptimSettings
from degl.core.split import build_stages
from degl.errors import UserError
from degl.models import build_model
from degl.run.config import parse_cuts, parse_shape
from degl.run.setup import resolve_device


def add_common_options(parser: argparse.ArgumentParser, *, split: str = "auto") -> None:
    parser.add_argument("--model", default="cnn6", help="backbone (default: cnn6)")
    parser.add_argument("--width", type=float, default=1.0, help="channel-width multiplier (default: 1.0)")
    parser.add_argument("--stages", type=int, default=4, help="number of DGL stages K (default: 4)")
    parser.add_argument("--aux", default="mlp-sr", help="aux head of stages 1..K-1 (default: mlp-sr)")
    parser.add_argument(
        "--split",
        default=split,
        choices=("auto", "flops", "memory", "blocks", *(("time",) if split == "time" else ())),
        help=f"how to cut blocks into stages (default: {split})",
    )
    parser.add_argument("--cuts", default=None, help="explicit cut points, e.g. 1,3,5")
    parser.add_argument("--batch-size", type=int, default=128, help="batch size (default: 128)")
    parser.add_argument("--input-shape", default="3,32,32", help="C,H,W of one input (default: 3,32,32)")
    parser.add_argument("--num-classes", type=int, default=10, help="classes (default: 10)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"), help="(default: fp32)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--seed", type=int, default=0, help="initialisation seed (default: 0)")


def add_single_process_options(parser: argparse.ArgumentParser) -> None:
    """Options of the benchmarks that train both methods in this process (step, memory)."""
    parser.add_argument(
        "--channels-last", action="store_true", help="channels-last memory format for the stages and the batch"
    )


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


def refuse_unless(given: bool, flag: str, what: str) -> None:
    """The one-line refusal of an option the run would ignore (as ``degl train`` words it)."""
    if given:
        raise UserError(f"{flag} {what}; drop it (this run would ignore it)")


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
        for s in build_stages(backbone, args.stages, aux=args.aux, cuts=parse_cuts(args.cuts), split=args.split)
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
