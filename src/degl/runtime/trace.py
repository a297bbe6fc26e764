"""A pipeline's timeline (``degl train --trace``): what every rank did when, as a Chrome trace.

Each rank records spans (name, start, end in ``time.perf_counter()`` seconds) of its training
steps (``compute``, on the CPU split into ``forward``, ``backward`` and ``step``), of an
asynchronous rank's forward-only ``serve`` steps once its budget is done, of rank 0's ``data``, of
``recv wait`` and ``send wait`` on the links, of ``eval``, of the ``epoch end`` (checkpoint and
reports), and one ``train`` span per epoch's training window (the interval the run's
``idle_fraction`` is measured over). At the end
rank 0 gathers the spans and writes ``trace.json``: plain Chrome trace events (``ph: "X"``,
``pid`` = rank), readable by Perfetto (ui.perfetto.dev) and ``chrome://tracing``.

Nothing is added to a rank loop when tracing is off: :func:`instrument` replaces a few of the
rank's bound methods by timed wrappers only when a tracer (or a progress board) is given, and the
transport calls its wait hook only when one is set.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist

from degl.runtime.control import ProgressBoard, StepBar

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

    enabled = True

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

    def wait_hook(self, name: str) -> Callable[[float, float], None]:
        """A transport's ``on_wait(start, end)`` callback recording ``name`` spans."""
        return lambda start, end: self.spans.append((name, start, end, -1))

    def watch(self, inbox: Any, name: str = "recv wait") -> None:
        """Record the blocking waits of a transport object created during the run (async's receiver)."""
        inbox.on_wait = self.wait_hook(name)

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


class NullTracer(Tracer):
    """Tracing off: records nothing, and :func:`instrument` leaves the rank untouched."""

    enabled = False

    def __init__(self) -> None:
        super().__init__(-1)

    def start(self) -> None:
        pass

    def add(self, name: str, start: float, end: float, step: int = -1) -> None:
        pass

    def watch(self, inbox: Any, name: str = "recv wait") -> None:
        pass


NULL_TRACER = NullTracer()


class _TimedBatches:
    """Rank 0's batch source, recording a ``data`` span around every batch it hands out."""

    def __init__(self, batches: Any, tracer: Tracer) -> None:
        self.batches, self.tracer = batches, tracer

    def epoch(self, epoch: int = 0, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        it = iter(self.batches.epoch(epoch, start_step))
        while True:
            tick = time.perf_counter()
            try:
                item = next(it)
            except StopIteration:
                return
            self.tracer.add("data", tick, time.perf_counter())
            yield item

    def __getattr__(self, name: str) -> Any:
        return getattr(self.batches, name)


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


class _RankProbe:
    """The timed stand-ins :func:`instrument` puts in place of a rank's methods (it keeps the originals)."""

    def __init__(self, rank: Any, tracer: Tracer, board: ProgressBoard | None, bar: StepBar | None) -> None:
        self.rank, self.tracer, self.board, self.bar = rank, tracer, board, bar
        self.clock = None
        if tracer.enabled and rank.device.type == "cpu":
            self.clock = _PhaseClock(rank.step_obj.stage, rank.step_obj.optimizer, rank.slowdown > 1)
        self._train, self._serve = rank._train, getattr(rank, "_serve", None)
        self._report, self._evaluate, self._save_and_gather = rank.report, rank.evaluate, rank.save_and_gather
        self.steps, self.served = 0, 0
        # Busy seconds over the whole run: the rank starts a new Timing every epoch.
        self._timing, self._busy_before, self._busy_now = None, 0.0, 0.0

    def train(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        rank = self.rank
        before, tick = rank.timing.compute, time.perf_counter()
        out = self._train(x, y)
        # As long as what the rank counts as compute (its bookkeeping after the step is not), so the
        # trace's busy fraction and summary.json's idle fraction measure the same thing.
        end = tick + rank.timing.compute - before
        if self.tracer.enabled:
            self.tracer.add("compute", tick, end, rank.global_step)
            if self.clock is not None:
                for name, start, stop in self.clock.spans(tick, end):
                    self.tracer.add(name, start, stop, rank.global_step)
        self.steps += 1
        self._progress(trained=True)
        return out

    def serve(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """An asynchronous rank's forward pass for the ranks after it, once its budget is done."""
        assert self._serve is not None
        rank = self.rank
        before, tick = rank.timing.compute, time.perf_counter()
        self._serve(x, y)
        # Its compute only (what it adds to timing.compute); its send waits are spans of their own.
        self.tracer.add("serve", tick, tick + rank.timing.compute - before, rank.global_step)
        self.served += 1
        self._progress(trained=False)

    def _progress(self, *, trained: bool) -> None:
        if self.board is None and self.bar is None:
            return
        timing = self.rank.timing
        if timing is not self._timing:
            self._busy_before += self._busy_now
            self._timing = timing
        self._busy_now = timing.compute + timing.data
        if self.board is not None:
            self.board.publish(self.rank.rank, self.steps, self._busy_before + self._busy_now, time.perf_counter())
        if self.bar is not None:
            if trained:
                self.bar.step(self.steps)
            elif self.served % 10 == 0:  # rank 0 serving: its bar stands still, the others' figures move
                self.bar.note(self.steps)

    def report(self, evaluation: Any) -> dict[str, Any]:
        if self.bar is not None:  # the asynchronous loop reports once, at its end
            self.bar.close()
        # The window the rank's idle fractions are measured over: this epoch's training, up to now.
        rank = self.rank
        self.tracer.add("train", rank._start, rank._start + rank.timing.elapsed, rank.global_step)
        return self._report(evaluation)

    def evaluate(self) -> Any:
        tick = time.perf_counter()
        try:
            return self._evaluate()
        finally:
            self.tracer.add("eval", tick, time.perf_counter())

    def save_and_gather(self, evaluation: Any) -> Any:
        tick = time.perf_counter()
        try:
            return self._save_and_gather(evaluation)
        finally:
            self.tracer.add("epoch end", tick, time.perf_counter())


def instrument(rank: Any, tracer: Tracer, board: ProgressBoard | None, bar: StepBar | None) -> None:
    """Time a rank's steps for the tracer, the shared progress board and a step bar (any may be off).

    Replaces the rank's ``_train`` (one training step, in both rank loops), ``_serve`` (the
    asynchronous loop's forward-only steps) and ``report`` (called once per training window, when
    its length is known); when tracing also ``evaluate``, ``save_and_gather`` and rank 0's batches,
    and hooks the links' waits. With nothing to feed, the rank is left exactly as it was.
    """
    if not tracer.enabled and board is None and bar is None:
        return
    probe = _RankProbe(rank, tracer, board, bar)
    rank._train, rank.report = probe.train, probe.report
    if probe._serve is not None:
        rank._serve = probe.serve
    if not tracer.enabled:
        return
    rank.evaluate, rank.save_and_gather = probe.evaluate, probe.save_and_gather
    if rank.train_batches is not None:
        rank.train_batches = _TimedBatches(rank.train_batches, tracer)
    if rank.link.inbox is not None:
        tracer.watch(rank.link.inbox, "recv wait")
    if rank.link.outbox is not None:
        tracer.watch(rank.link.outbox, "send wait")
