"""``degl bench step``: milliseconds per training step, DGL vs backprop, side by side in one process."""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from degl.bench import add_common_options, add_single_process_options, build_bench_models, describe, emit, headline
from degl.errors import UserError


def add_parser(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser("step", help="ms per training step of dgl and backprop on the same backbone")
    add_common_options(parser)
    add_single_process_options(parser)
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per method first (default: 3)")
    parser.add_argument("--repeats", type=int, default=15, help="timed steps per method (default: 15)")
    parser.set_defaults(bench_func=run)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    """Milliseconds of one call; CUDA events on a GPU, the monotonic clock on the CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end)
    tick = time.perf_counter()
    fn()
    return (time.perf_counter() - tick) * 1000


def run(args: argparse.Namespace) -> int:
    if args.warmup < 0 or args.repeats < 1:
        raise UserError("--warmup must be >= 0 and --repeats >= 1")
    models = build_bench_models(args)
    x, y = models.x, models.y
    steps = {"backprop": lambda: models.backprop.train_step(x, y), "dgl": lambda: models.dgl.train_step(x, y)}
    for _ in range(args.warmup):
        for fn in steps.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for repeat in range(args.repeats):
        # Alternate the order so that neither method always runs right after the other.
        order = list(steps) if repeat % 2 == 0 else list(reversed(steps))
        for name in order:
            times[name].append(timed(steps[name], models.device))
    bp, dgl = statistics.median(times["backprop"]), statistics.median(times["dgl"])
    result = {
        **describe(args, models),
        "warmup": args.warmup,
        "repeats": args.repeats,
        "backprop_ms": round(bp, 3),
        "dgl_ms": round(dgl, 3),
        "ratio": round(dgl / bp, 4),
        "backprop_ms_all": [round(t, 3) for t in times["backprop"]],
        "dgl_ms_all": [round(t, 3) for t in times["dgl"]],
    }
    emit(
        [
            headline(args, models),
            f"backprop: {bp:.2f} ms/step (median of {args.repeats})",
            f"dgl:      {dgl:.2f} ms/step (median of {args.repeats})",
            f"ratio dgl/backprop: {dgl / bp:.3f}",
        ],
        result,
    )
    return 0
