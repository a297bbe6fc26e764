"""``degl bench memory``: peak bytes saved for backward in one training step, DGL vs backprop, and,
per stage (one pipeline rank) and per ``--method``, what each method keeps between steps
(:mod:`degl.bench.memory_methods`)."""

from __future__ import annotations

import argparse
from typing import Any

import torch

from degl.bench import (
    AUX_RULE,
    BenchModels,
    add_common_options,
    add_method_option,
    add_single_process_options,
    build_bench_models,
    describe,
    emit,
    headline,
    parse_methods,
    refuse_ignored_options,
)
from degl.bench.memory_methods import as_json, bench_stages, measure_method, table
from degl.core.measure import SavedActivationMeter
from degl.core.methods import Method


def add_parser(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser(
        "memory", help="activation bytes saved for backward, dgl vs backprop; per stage, what each method keeps"
    )
    add_common_options(parser)
    add_single_process_options(parser)
    add_method_option(parser, "what each keeps per stage (per pipeline rank)")
    parser.set_defaults(bench_func=run)


def measure_step(method: Method, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> tuple[int, int | None]:
    """(peak saved-activation bytes, peak CUDA bytes allocated or None) of one training step."""
    params = [p for stage in method.stages for p in stage.parameters()]
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    with SavedActivationMeter(exclude=params) as meter:
        method.train_step(x, y)
    cuda_peak = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        cuda_peak = torch.cuda.max_memory_allocated(device)
    return meter.peak_bytes, cuda_peak


def per_stage_peaks(method: Method, x: torch.Tensor, y: torch.Tensor) -> list[int]:
    peaks = []
    params = [p for stage in method.stages for p in stage.parameters()]
    for index in range(len(method.stages)):
        with SavedActivationMeter(exclude=params) as meter:
            x, _ = method.local_step(index, x, y)  # type: ignore[attr-defined]
        peaks.append(meter.peak_bytes)
    return peaks


def run(args: argparse.Namespace) -> int:
    methods = parse_methods(args.method)
    refuse_ignored_options(args, methods, (AUX_RULE,))
    models = build_bench_models(args)
    x, y = models.x, models.y
    # One untimed step each first: optimizer state (momentum buffers) exists from then on.
    models.backprop.train_step(x, y)
    bp_bytes, bp_cuda = measure_step(models.backprop, x, y, models.device)
    per_method = {}
    cuda_peaks = {}
    for name in methods:
        per_method[name], cuda_peaks[name] = measure_method(name, bench_stages(args, models.device), x, y, args)
    lines = table(per_method)
    result = {
        **describe(args, models),
        "methods": methods,
        "backprop_bytes": bp_bytes,
        "per_method": {name: as_json(figures) for name, figures in per_method.items()},
    }
    if bp_cuda is not None:
        result["backprop_cuda_max_allocated"] = bp_cuda
        result["cuda_max_allocated_per_method"] = cuda_peaks
        lines.append(
            "torch.cuda.max_memory_allocated over a step, per process (all K stages): "
            + ", ".join(f"{n} {v / 2**20:.1f} MiB" for n, v in {"backprop": bp_cuda, **cuda_peaks}.items())
        )
    if methods != ["dgl"]:
        head = [headline(args, models), f"backprop: {bp_bytes / 2**20:.1f} MiB saved for backward (peak, one process)"]
        emit(head + lines, result)
        return 0
    return run_dgl(args, models, bp_bytes, bp_cuda, lines, result)


def run_dgl(
    args: argparse.Namespace,
    models: BenchModels,
    bp_bytes: int,
    bp_cuda: int | None,
    per_stage: list[str],
    per_stage_result: dict[str, Any],
) -> int:
    """``--method dgl`` alone: the comparison with backprop as it always was, then the per-stage table."""
    x, y = models.x, models.y
    models.dgl.train_step(x, y)
    dgl_bytes, dgl_cuda = measure_step(models.dgl, x, y, models.device)
    stage_bytes = per_stage_peaks(models.dgl, x, y)
    result = {
        **per_stage_result,
        "backprop_bytes": bp_bytes,
        "dgl_bytes": dgl_bytes,
        "ratio": round(dgl_bytes / bp_bytes, 4),
        "dgl_stage_bytes": stage_bytes,
    }
    lines = [
        headline(args, models),
        f"backprop: {bp_bytes / 2**20:.1f} MiB of activations saved for backward (peak)",
        f"dgl:      {dgl_bytes / 2**20:.1f} MiB (peak; per stage "
        + ", ".join(f"{b / 2**20:.1f}" for b in stage_bytes)
        + " MiB)",
        f"ratio dgl/backprop: {dgl_bytes / bp_bytes:.3f}",
    ]
    if bp_cuda is not None and dgl_cuda is not None:
        result.update(
            {
                "backprop_cuda_max_allocated": bp_cuda,
                "dgl_cuda_max_allocated": dgl_cuda,
                "cuda_ratio": round(dgl_cuda / bp_cuda, 4),
            }
        )
        lines.append(
            f"torch.cuda.max_memory_allocated: backprop {bp_cuda / 2**20:.1f} MiB, dgl {dgl_cuda / 2**20:.1f} MiB"
        )
    emit(lines + per_stage, result)
    return 0
