"""What each process of ``degl bench pipeline`` runs (started by :func:`degl.launch`).

    single   one process trains every DGL stage in turn (paper Alg. 1, :class:`degl.DGL`)
    dgl      rank k of the DGL pipeline: the same :class:`~degl.runtime.sync_rank.SyncRank` loop,
             stage step and transport that ``degl train --workers`` runs, fed one fixed batch
    gpipe    rank k of end-to-end backprop with torch.distributed.pipelining ScheduleGPipe
    1f1b     the same with Schedule1F1B
Each returns per-step completion times and, for ranks, where the time went in the timed window.
"""

from __future__ import annotations

import copy
import statistics
import time
from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from degl.core.methods import DGL
from degl.core.optim import OptimSettings
from degl.core.split import build_stages
from degl.core.stage import Stage
from degl.models import build_model
from degl.runtime.build import make_link, make_rank, make_step
from degl.runtime.dist import DistEnv
from degl.runtime.hooks import RankHooks
from degl.runtime.plan import Plan
from degl.runtime.sync_rank import SyncRank


def build(spec: dict[str, Any]) -> list[Stage]:
    torch.manual_seed(spec["seed"])
    backbone = build_model(
        spec["model"], width=spec["width"], input_shape=tuple(spec["input_shape"]), num_classes=spec["num_classes"]
    )
    return build_stages(backbone, spec["stages"], aux=spec["aux"], cuts=spec["cuts"])


def batch(spec: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(spec["seed"])
    x = torch.randn(spec["batch_size"], *spec["input_shape"], generator=generator)
    y = torch.randint(0, spec["num_classes"], (spec["batch_size"],), generator=generator)
    return x, y


def settings() -> OptimSettings:
    return OptimSettings(lr=0.01, schedule="constant")


def window(marks: list[float], warmup: int) -> dict[str, Any]:
    """Step intervals after the warm-up steps."""
    intervals = [b - a for a, b in zip(marks[warmup - 1 :], marks[warmup:])] if warmup > 0 else []
    return {"intervals": intervals, "median_step_s": statistics.median(intervals) if intervals else None}


def run_single(env: DistEnv, spec: dict[str, Any]) -> dict[str, Any]:
    method = DGL(build(spec), make_optimizer=settings().make_optimizer, codec=spec.get("codec", "none"))
    x, y = batch(spec)
    marks = []
    for _ in range(spec["warmup"] + spec["steps"]):
        method.train_step(x, y)
        marks.append(time.perf_counter())
    return window(marks, spec["warmup"])


class RepeatedBatch:
    """Rank 0's data in the benchmark: one fixed batch every step (no loader time to measure)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def epoch(self, epoch: int = 0, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.x, self.y


class CodecMarks(RankHooks):
    """Encode + decode seconds so far, after every step: the timed window's share excludes the
    codec's one-time start (a vq codebook's k-means++ seeding on the first batch)."""

    def __init__(self) -> None:
        self.marks: list[float] = []

    def on_step(self, rank: Any, start: float, end: float, *, trained: bool) -> None:
        self.marks.append(rank.codec_s)


def run_rank(env: DistEnv, spec: dict[str, Any], method: str = "dgl") -> dict[str, Any]:
    """Rank k of ``method``'s pipeline (dgl, or the gradient methods dni, cdni, ddg, fr), built as
    ``degl train --workers K`` builds it and fed one fixed batch for ``warmup + steps`` steps."""
    step = make_step(
        method,
        build(spec)[env.rank],
        num_stages=env.world_size,
        num_classes=spec["num_classes"],
        make_optimizer=settings().make_optimizer,
        seed=spec["seed"],  # the synthesizers start as in the one-process run
        device=env.device,
    )
    total, warmup = spec["warmup"] + spec["steps"], spec["warmup"]
    codec = spec.get("codec", "none")
    plan = Plan((spec["batch_size"],) * total, (), spec["num_classes"], epochs=1, codec=codec)
    link = make_link(
        method,
        env.rank,
        env.world_size,
        env.device,
        max_in_flight=spec["max_in_flight"],
        link_mbps=spec.get("link_mbps"),
    )
    marks = CodecMarks()
    rank = make_rank(
        method,
        step,
        link,
        plan,
        rank=env.rank,
        world=env.world_size,
        train_batches=RepeatedBatch(*batch(spec)),
        hooks=[marks] if codec != "none" else [],
    )
    rank.fit()
    return rank_figures(rank, warmup, total, marks.marks or None)


def rank_figures(rank: SyncRank, warmup: int, total: int, codec_marks: list[float] | None = None) -> dict[str, Any]:
    """A finished rank's step times and where its time went over the timed window (the steps after
    the warm-up), from the loop's own per-step accounting; ``codec_marks``: encode + decode seconds
    so far after every step (None: no codec)."""
    result = window(rank.timing.step_ends, warmup)
    fractions = rank.timing.idle_fraction_between(warmup, total)
    codec_s = (codec_marks[total - 1] - codec_marks[warmup - 1]) / (total - warmup) if codec_marks else 0.0
    result.update(
        {
            "idle_fraction": fractions["idle"],
            "recv_wait_fraction": fractions["recv_wait"],
            "send_wait_fraction": fractions["send_wait"],
            # Encode + decode seconds per step and busy seconds per step (compute, data and codec).
            "codec_s_per_step": codec_s,
            "busy_s_per_step": (1 - fractions["idle"]) * result["median_step_s"],
        }
    )
    return result


def run_pippy_rank(env: DistEnv, spec: dict[str, Any], schedule_name: str) -> dict[str, Any]:
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    rank, world = env.rank, env.world_size
    stages = build(spec)
    module = nn.Sequential(stages[rank].block, stages[rank].head) if rank == world - 1 else stages[rank].block
    microbatches = spec["microbatches"]
    pipe_stage = PipelineStage(module, rank, world, env.device)
    schedule_class = ScheduleGPipe if schedule_name == "gpipe" else Schedule1F1B
    schedule = schedule_class(pipe_stage, n_microbatches=microbatches, loss_fn=F.cross_entropy)
    optimizer = settings().make_optimizer(module.parameters())
    x, y = batch(spec)
    # The busy time of this rank's share of a step, measured alone: forward + backward of its module.
    busy_alone = _alone(spec, stages, module, rank, rank == world - 1)
    marks = []
    for _ in range(spec["warmup"] + spec["steps"]):
        optimizer.zero_grad(set_to_none=True)
        if rank == 0:
            schedule.step(x)
        elif rank == world - 1:
            schedule.step(target=y, losses=[])
        else:
            schedule.step()
        optimizer.step()
        marks.append(time.perf_counter())
    result = window(marks, spec["warmup"])
    result["idle_fraction_estimated"] = 1 - busy_alone / result["median_step_s"]
    return result


def _alone(spec: dict[str, Any], stages: list[Stage], module: nn.Module, rank: int, last: bool) -> float:
    """Median seconds of forward + backward of this rank's module on a full batch, alone."""
    probe = copy.deepcopy(module)
    x, y = batch(spec)
    with torch.no_grad():
        for stage in copy.deepcopy(stages[:rank]):
            x = stage.block(x)
    x.requires_grad_(rank > 0)
    times = []
    for _ in range(3):
        tick = time.perf_counter()
        out = probe(x)
        (F.cross_entropy(out, y) if last else out.mean()).backward()
        times.append(time.perf_counter() - tick)
    return statistics.median(times)


def run_mode(env: DistEnv, mode: str, spec: dict[str, Any]) -> dict[str, Any]:
    if mode == "single":
        return run_single(env, spec)
    if mode == "dgl":
        return run_rank(env, spec)
    return run_pippy_rank(env, spec, mode)
