"""``degl bench memory``: peak bytes saved for backward in one training step, DGL vs backprop."""

from __future__ import annotations

import argparse

import torch

from degl.bench import add_common_options, add_single_process_options, build_bench_models, describe, emit, headline
from degl.core.measure import SavedActivationMeter
from degl.core.methods import Method


def add_parser(kinds: argparse._SubParsersAction) -> None:
    parser = kinds.add_parser("memory", help="peak activation bytes saved for backward, dgl vs backprop")
    add_common_options(parser)
    add_single_process_options(parser)
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
    models = build_bench_models(args)
    x, y = models.x, models.y
    # One untimed step each first: optimizer state (momentum buffers) exists from then on.
    models.backprop.train_step(x, y)
    models.dgl.train_step(x, y)
    bp_bytes, bp_cuda = measure_step(models.backprop, x, y, models.device)
    dgl_bytes, dgl_cuda = measure_step(models.dgl, x, y, models.device)
    stage_bytes = per_stage_peaks(models.dgl, x, y)
    result = {
        **describe(args, models),
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
    emit(lines, result)
    return 0
