"""One process of ``degl bench pipeline``: a timed run of one configuration.

Modes (``python -m degl.bench.pipeline_worker MODE``, the spec as JSON in DEGL_BENCH_SPEC):
    single   one process trains every DGL stage in turn (paper Alg. 1)
    dgl      rank k of the DGL pipeline (degl's runtime transport)
    gpipe    rank k of end-to-end backprop with torch.distributed.pipelining ScheduleGPipe
    1f1b     the same with Schedule1F1B
Each prints one JSON line: per-step completion times and, for ranks, busy time in the window.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from degl.core.methods import DGL
from degl.core.optim import OptimSettings
from degl.core.split import build_stages
from degl.models import build_model
from degl.runtime.dist import pin_cpus


def build(spec: dict[str, Any]) -> list:
    torch.manual_seed(spec["seed"])
    backbone = build_model(
        spec["model"], width=spec["width"], input_shape=tuple(spec["input_shape"]), num_classes=spec["num_classes"]
    )
    return build_stages(backbone, spec["stages"], aux=spec["aux"], cuts=spec["cuts"])


def batch(spec: dict[str, Any], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(spec["seed"])
    x = torch.randn(spec["batch_size"], *spec["input_shape"], generator=generator)
    y = torch.randint(0, spec["num_classes"], (spec["batch_size"],), generator=generator)
    return x.to(device), y.to(device)


def optimizer_settings() -> OptimSettings:
    return OptimSettings(lr=0.01, schedule="constant")


def window(marks: list[float], warmup: int) -> dict[str, Any]:
    """Step intervals after the warm-up steps."""
    intervals = [b - a for a, b in zip(marks[warmup - 1 :], marks[warmup:])] if warmup > 0 else []
    return {"intervals": intervals, "median_step_s": statistics.median(intervals) if intervals else None}


def run_single(spec: dict[str, Any]) -> dict[str, Any]:
    device = torch.device("cpu")
    method = DGL(build(spec), make_optimizer=optimizer_settings().make_optimizer)
    x, y = batch(spec, device)
    marks = []
    for _ in range(spec["warmup"] + spec["steps"]):
        method.train_step(x, y)
        marks.append(time.perf_counter())
    return window(marks, spec["warmup"])


def run_dgl_rank(spec: dict[str, Any], rank: int, world: int) -> dict[str, Any]:
    from degl.runtime.transport import Inbox, Outbox

    device = torch.device("cpu")
    stages = build(spec)
    stage = stages[rank]
    method = DGL([stage], make_optimizer=optimizer_settings().make_optimizer)
    x0, y0 = batch(spec, device)
    inbox = Inbox(rank - 1, device) if rank > 0 else None
    outbox = Outbox(rank + 1, spec["max_in_flight"]) if rank < world - 1 else None
    message = [((spec["batch_size"], *stage.in_shape), torch.float32), ((spec["batch_size"],), torch.int64)]
    total, warmup = spec["warmup"] + spec["steps"], spec["warmup"]
    marks, busy, start = [], 0.0, None
    recv0 = send0 = 0.0
    if inbox is not None:
        inbox.post(message)
    for step in range(total):
        if step == warmup:
            start, busy = time.perf_counter(), 0.0
            recv0 = inbox.wait_s if inbox else 0.0
            send0 = outbox.wait_s if outbox else 0.0
        if inbox is None:
            x, y = x0, y0
        else:
            x, y = inbox.wait()
            if step + 1 < total:
                inbox.post(message)
        tick = time.perf_counter()
        out, _ = method.local_step(0, x, y)
        busy += time.perf_counter() - tick
        if outbox is not None:
            outbox.send([out, y])
        marks.append(time.perf_counter())
    elapsed = marks[-1] - start
    result = window(marks, warmup)
    result.update(
        {
            "idle_fraction": 1 - busy / elapsed,
            "recv_wait_fraction": ((inbox.wait_s if inbox else 0.0) - recv0) / elapsed,
            "send_wait_fraction": ((outbox.wait_s if outbox else 0.0) - send0) / elapsed,
        }
    )
    if outbox is not None:
        outbox.flush()  # after the window: delivering the last messages is not the steady state
    return result


def run_pippy_rank(spec: dict[str, Any], rank: int, world: int, schedule_name: str) -> dict[str, Any]:
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    device = torch.device("cpu")
    stages = build(spec)
    module = nn.Sequential(stages[rank].block, stages[rank].head) if rank == world - 1 else stages[rank].block
    del stages
    microbatches = spec["microbatches"]
    pipe_stage = PipelineStage(module, rank, world, device)
    schedule_class = ScheduleGPipe if schedule_name == "gpipe" else Schedule1F1B
    schedule = schedule_class(pipe_stage, n_microbatches=microbatches, loss_fn=F.cross_entropy)
    optimizer = optimizer_settings().make_optimizer(module.parameters())
    x, y = batch(spec, device)
    # The busy time of this rank's share of a step, measured alone: forward + backward of its module.
    busy_alone = _alone(spec, module, rank, rank == world - 1)
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


def _alone(spec: dict[str, Any], module: nn.Module, rank: int, last: bool) -> float:
    """Median seconds of forward + backward of this rank's module on a full batch, alone."""
    import copy

    probe = copy.deepcopy(module)
    x, y = batch(spec, torch.device("cpu"))
    with torch.no_grad():
        for stage in build(spec)[:rank]:
            x = stage.block(x)
    x.requires_grad_(rank > 0)
    times = []
    for _ in range(3):
        tick = time.perf_counter()
        out = probe(x)
        (F.cross_entropy(out, y) if last else out.mean()).backward()
        times.append(time.perf_counter() - tick)
    return statistics.median(times)


def main() -> None:
    mode = sys.argv[1]
    spec = json.loads(os.environ["DEGL_BENCH_SPEC"])
    torch.set_num_threads(spec["threads"])
    if mode == "single":
        print(json.dumps(run_single(spec)), flush=True)
        return
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if spec["pin_cpus"]:
        pin_cpus(rank, spec["threads"], world)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = run_dgl_rank(spec, rank, world) if mode == "dgl" else run_pippy_rank(spec, rank, world, mode)
        results = [None] * world if rank == 0 else None
        dist.gather_object(result, results, dst=0)
        if rank == 0:
            print(json.dumps(results), flush=True)
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
