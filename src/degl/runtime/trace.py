"""A pipeline's timeline (``degl train --trace``): what every rank did when, as a Chrome trace.

Each rank records spans (name, start, end in ``time.perf_counter()`` seconds) of its training
steps (``compute``, on the CPU split into ``forward``, ``backward`` and ``step``), of an
asynchronous rank's forward-only ``serve`` steps once its budget is done, of rank 0's ``data``, of
``recv wait`` and ``send wait`` on the links, of ``eval``, of the ``epoch end`` (checkpoint and
reports), and one ``train`` span per epoch's training window (the interval the run's
``idle_fraction`` is measured over). At the end
rank 0 gathers the spans and writes ``trace.json``: plain Chrome trace events (``ph: "X"``,
``pid`` = rank), readable by Perfetto (ui.perfetto.dev) and ``chrome://tracing``.

A rank records them through :class:`TraceHooks`, one of the rank loop's explicit hooks
(:mod:`degl.runtime.hooks`): nothing is added to a rank loop when tracing is off.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist

from degl.runtime.hooks import RankHooks

TRACE_FILE = "trace.json"
FORMAT = "degl-trace-1"
# Chrome trace categories; `degl trace summary` counts "busy" spans as the rank working.
CATEGORIES = {
    "compute": "busy",
    "data": "busy",
    "eval": "busy",
    "serve": "busy",
    "forward": "phase",
    "backward": "phase",
    "step": "phase",
    "slowdown": "phase",
    "recv wait": "wait",
    "send wait": "wait",
    "train": "window",
    "epoch end": "other",
}

Span = tuple[str, float, float, int]
"""(name, start, end, step): times in this process's ``time.perf_counter()`` seconds."""


class Tracer:
    """One rank's spans. ``start()`` (a barrier) fixes the origin every rank's times are measured from."""

    def __init__(self, rank: int) -> None:
        self.rank = rank
        self.spans: list[Span] = []
        self.origin = time.perf_counter()
        self.origin_wall_ns = time.time_ns()

    def start(self) -> None:
        """Align the ranks' clocks; every rank calls it once, before training.

        All ranks leave a barrier within about one message latency of each other (microseconds on
        one host, well under a millisecond across a LAN), so "seconds since leaving the barrier" is
        a clock the ranks share to that precision. The machines' wall clocks need not agree (they
        often differ by milliseconds across hosts); ``perf_counter`` is also monotonic.
        """
        dist.barrier()
        self.origin = time.perf_counter()
        self.origin_wall_ns = time.time_ns()

    def add(self, name: str, start: float, end: float, step: int = -1) -> None:
        self.spans.append((name, start, end, step))

    def events(self) -> list[dict[str, Any]]:
        """This rank's spans as Chrome trace events (microseconds since the common origin)."""
        pid = self.rank
        out: list[dict[str, Any]] = [
            {"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": f"rank {pid} (stage {pid})"}},
            {"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0, "args": {"sort_index": pid}},
        ]
        for name, start, end, step in self.spans:
            event = {
                "name": name,
                "cat": CATEGORIES[name],
                "ph": "X",
                "ts": round((start - self.origin) * 1e6, 3),
                "dur": round(max(end - start, 0.0) * 1e6, 3),
                "pid": pid,
                "tid": 0,
            }
            if step >= 0:
                event["args"] = {"step": step}
            out.append(event)
        return out

    def gather(self, world: int) -> dict[str, Any] | None:
        """Collective: rank 0 gets the whole pipeline's trace (Chrome trace JSON), the others None."""
        gathered: list[Any] | None = [None] * world if self.rank == 0 else None
        dist.gather_object(self.events(), gathered, dst=0)
        if gathered is None:
            return None
        return {
            "traceEvents": [event for events in gathered for event in events],
            "displayTimeUnit": "ms",
            "otherData": {
                "format": FORMAT,
                "ranks": world,
                "clock": "microseconds since all ranks left a barrier before training",
                "origin_unix_ns": self.origin_wall_ns,
            },
        }


class _PhaseClock:
    """Forward/backward/step boundaries inside one training step (CPU only: on a GPU the host would
    only see kernel launches), from a forward hook on the stage and optimizer step hooks, which
    change nothing in the computation. The first forward and step of a training step count; what
    follows the optimizer step on a ``--slowdown`` rank is the emulated extra work."""

    def __init__(self, stage: torch.nn.Module, optimizer: torch.optim.Optimizer, slowed: bool) -> None:
        self.marks: list[float] = []  # forward end, step start, step end
        self.slowed = slowed
        stage.register_forward_hook(lambda *args: self._mark(0))
        optimizer.register_step_pre_hook(lambda *args: self._mark(1))
        optimizer.register_step_post_hook(lambda *args: self._mark(2))

    def _mark(self, index: int) -> None:
        if len(self.marks) == index:
            self.marks.append(time.perf_counter())

    def spans(self, start: float, end: float) -> list[tuple[str, float, float]]:
        marks, self.marks = self.marks, []
        if len(marks) != 3 or not start <= marks[0] <= marks[1] <= marks[2]:
            return []
        f, s, p = (min(mark, end) for mark in marks)
        if not self.slowed:
            return [("forward", start, f), ("backward", f, s), ("step", s, end)]
        return [("forward", start, f), ("backward", f, s), ("step", s, p), ("slowdown", p, end)]


class TraceHooks(RankHooks):
    """Records a rank's timeline on a :class:`Tracer`: compute (with its phases on the CPU), serve,
    data, link waits, eval, epoch end and one ``train`` span per training window."""

    def __init__(self, tracer: Tracer) -> None:
        self.tracer = tracer
        self.clock: _PhaseClock | None = None

    def attach(self, rank: Any) -> None:
        if rank.device.type == "cpu":
            self.clock = _PhaseClock(rank.step_obj.stage, rank.step_obj.optimizer, rank.slowdown > 1)

    def on_data(self, rank: Any, start: float, end: float) -> None:
        self.tracer.add("data", start, end)

    def on_step(self, rank: Any, start: float, end: float, *, trained: bool) -> None:
        # [start, end] is as long as what the rank counts as compute (its bookkeeping after the step
        # is not), so the trace's busy fraction and summary.json's idle fraction measure the same thing.
        if not trained:  # an asynchronous rank's forward for the ranks after it, once its budget is done
            self.tracer.add("serve", start, end, rank.global_step)
            return
        self.tracer.add("compute", start, end, rank.global_step)
        if self.clock is not None:
            for name, begin, stop in self.clock.spans(start, end):
                self.tracer.add(name, begin, stop, rank.global_step)

    def on_wait(self, rank: Any, name: str, start: float, end: float) -> None:
        self.tracer.add(name, start, end)

    def on_phase(self, rank: Any, name: str, start: float, end: float) -> None:
        self.tracer.add(name, start, end)

    def on_window(self, rank: Any) -> None:
        # The window the rank's idle fractions are measured over: this epoch's training, up to now.
        self.tracer.add("train", rank._start, rank._start + rank.timing.elapsed, rank.global_step)
