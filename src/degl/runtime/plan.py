"""What every rank of a pipeline agrees on and how it talks to its neighbours.

:class:`Plan` (rank 0 decides it and tells the others), :class:`Link` (a rank's inbox from rank - 1
and outbox to rank + 1), the message layout (labels with a control code, epoch and step), rank 0's
:class:`BatchSource`, the :class:`Recorder` a run writes through, and a rank's :class:`Timing`.
Used by every rank loop (:mod:`degl.runtime.sync_rank` and the loops built on it).

Messages (shapes are known from the plan, so receives are posted early):
    train:  [activations..., meta int64 (labels..., control, epoch, step)]
    eval:   [activations..., meta, ensemble float32 (n, classes)]
where "activations..." are the tensors of the boundary's codec (:mod:`degl.core.codecs`): with the
default ``none``, the activations (n, *shape) in the wire dtype.
A STOP (a step budget or Ctrl-C on rank 0) replaces a train message and travels down the line.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from degl.core.accounting import Position
from degl.core.step import StageStep
from degl.runtime.transport import Inbox, Outbox

DATA, STOP, DONE, ALIVE = 0, 1, 2, 3
"""Control codes: a batch, stop the line, the last message, a released rank's sign of life."""
WIRE_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Plan:
    """What every rank knows before the first step (rank 0 decides it and tells the others)."""

    train_sizes: tuple[int, ...]
    """The batch size of every training step of an epoch (the same every epoch)."""
    eval_sizes: tuple[int, ...]
    num_classes: int
    epochs: int
    wire: str = "fp32"
    """dtype of activations on the wire: fp32, bf16 or fp16."""
    codec: str = "none"
    """How activations cross each boundary (:mod:`degl.core.codecs`); ``none`` sends them in ``wire``."""
    codec_seed: int = 0
    """Seeds the codecs' random choices (the run's seed: the same codecs as in one process)."""

    @property
    def steps_per_epoch(self) -> int:
        return len(self.train_sizes)

    @property
    def wire_dtype(self) -> torch.dtype:
        return WIRE_DTYPES[self.wire]


class BatchSource(Protocol):
    """Rank 0's training batches: ``epoch(e, start_step)`` yields ``(x, y)`` (degl's loaders do)."""

    def epoch(self, epoch: int = 0, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


class Recorder(Protocol):
    """Where a pipeline's results go. Every rank calls ``save``; only rank 0 calls the others."""

    def save(self, rank: int, global_step: int, step: StageStep) -> None: ...

    def epoch_end(self, reports: list[dict[str, Any]], *, epoch: int, position: Position, finished: bool) -> None: ...

    def stopped(self, reports: list[dict[str, Any]], *, position: Position) -> None: ...

    def async_end(self, reports: list[dict[str, Any]], *, position: Position, completed: bool) -> None: ...


@dataclass
class Link:
    """A rank's connections: receive from rank - 1, send to rank + 1 (``None`` at the ends)."""

    inbox: Inbox | None
    outbox: Outbox | None

    @classmethod
    def for_rank(
        cls,
        rank: int,
        world: int,
        device: torch.device,
        *,
        max_in_flight: int = 2,
        staging: torch.device | None = None,
        link_mbps: float | None = None,
    ) -> Link:
        """``link_mbps``: emulate links of that speed (see :class:`~degl.runtime.transport.EmulatedLink`)."""
        inbox = Inbox(rank - 1, device, staging, link_mbps=link_mbps) if rank > 0 else None
        outbox = Outbox(rank + 1, max_in_flight, staging, link_mbps=link_mbps) if rank < world - 1 else None
        return cls(inbox, outbox)

    def waits(self) -> tuple[float, float]:
        return (self.inbox.wait_s if self.inbox else 0.0, self.outbox.wait_s if self.outbox else 0.0)


def pack(y: torch.Tensor, control: int, epoch: int, step: int) -> torch.Tensor:
    return torch.cat([y, torch.tensor([control, epoch, step], dtype=torch.int64, device=y.device)])


def unpack(meta: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
    control, epoch, step = meta[-3:].tolist()
    return meta[:-3], control, epoch, step


@dataclass
class Timing:
    """Where one rank's training time went during an epoch (seconds), with a mark after every step:
    ``(time, busy so far, waiting to receive so far, waiting to send so far)``."""

    compute: float = 0.0
    data: float = 0.0
    elapsed: float = 0.0
    marks: list[tuple[float, float, float, float]] = field(default_factory=list)
    waits: tuple[float, float] | None = None
    """(receive, send) waits during this epoch's training; the links count from the run's start and
    through evaluation. None: not measured (the links' totals are used)."""

    @property
    def step_ends(self) -> list[float]:
        return [mark[0] for mark in self.marks]

    def mark(self, waits: tuple[float, float]) -> None:
        self.marks.append((time.perf_counter(), self.compute + self.data, *waits))

    def idle_fraction(self, recv_wait: float, send_wait: float) -> dict[str, float]:
        busy = self.compute + self.data
        elapsed = max(self.elapsed, 1e-9)
        return {"idle": 1 - busy / elapsed, "recv_wait": recv_wait / elapsed, "send_wait": send_wait / elapsed}

    def idle_fraction_between(self, first: int, last: int) -> dict[str, float]:
        """The same fractions over the steps after step ``first`` up to step ``last`` (1-based counts)."""
        a, b = self.marks[first - 1], self.marks[last - 1]
        elapsed = max(b[0] - a[0], 1e-9)
        return {
            "idle": 1 - (b[1] - a[1]) / elapsed,
            "recv_wait": (b[2] - a[2]) / elapsed,
            "send_wait": (b[3] - a[3]) / elapsed,
        }


class ExtraWork:
    """How many times a rank slowed by ``slowdown`` = F repeats each step's work without effect, so
    that it does F times the work on average (F = 1.5: once every other step)."""

    def __init__(self, slowdown: float) -> None:
        self.slowdown, self._credit = slowdown, 0.0

    def repeats(self) -> int:
        if self.slowdown <= 1:
            return 0
        self._credit += self.slowdown - 1
        count = int(self._credit + 1e-9)
        self._credit -= count
        return count
