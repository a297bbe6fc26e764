"""Explicit hooks on a rank loop: what tracing, progress figures and benchmarks subscribe to.

A rank loop (:class:`~degl.runtime.sync_rank.SyncRank` and the loops built on it) calls every hook
it was given at fixed moments, from its own thread, in order:

    attach(rank)                        once, when the rank is built
    on_data(rank, start, end)           rank 0 took a batch from its data
    on_step(rank, start, end, trained)  a training step (``trained``) or, on an asynchronous rank
                                        whose budget is done, a forward-only step ended;
                                        ``[start, end]`` is what the rank counts as compute
    on_wait(rank, name, start, end)     a link wait (``recv wait`` / ``send wait``) ended
    on_phase(rank, name, start, end)    ``eval`` or ``epoch end`` (checkpoint and reports) ended
    on_window(rank)                     a training window is over (its timing is final)

A loop with no hooks calls nothing and installs nothing on its transports. Times are
``time.perf_counter()`` seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from degl.runtime.control import ProgressBoard, StepBar


class RankHooks:
    """Base class: every hook does nothing; override the ones you need."""

    def attach(self, rank: Any) -> None:
        pass

    def on_data(self, rank: Any, start: float, end: float) -> None:
        pass

    def on_step(self, rank: Any, start: float, end: float, *, trained: bool) -> None:
        pass

    def on_wait(self, rank: Any, name: str, start: float, end: float) -> None:
        pass

    def on_phase(self, rank: Any, name: str, start: float, end: float) -> None:
        pass

    def on_window(self, rank: Any) -> None:
        pass


def wait_reporter(hooks: Sequence[RankHooks], rank: Any, name: str) -> Callable[[float, float], None]:
    """A transport's ``on_wait(start, end)`` callback telling every hook of a ``name`` wait."""

    def on_wait(start: float, end: float) -> None:
        for hook in hooks:
            hook.on_wait(rank, name, start, end)

    return on_wait


class ProgressHooks(RankHooks):
    """Publishes a rank's steps and busy seconds on the local ranks' shared :class:`ProgressBoard`,
    and feeds a :class:`StepBar` (for the asynchronous loop, which draws no bar of its own)."""

    def __init__(self, board: ProgressBoard | None, bar: StepBar | None = None) -> None:
        self.board, self.bar = board, bar
        self.steps, self.served = 0, 0
        # Busy seconds over the whole run: the rank starts a new Timing every epoch.
        self._timing: Any = None
        self._busy_before, self._busy_now = 0.0, 0.0

    def on_step(self, rank: Any, start: float, end: float, *, trained: bool) -> None:
        if trained:
            self.steps += 1
        else:
            self.served += 1
        timing = rank.timing
        if timing is not self._timing:
            self._busy_before += self._busy_now
            self._timing = timing
        self._busy_now = timing.compute + timing.data
        if self.board is not None:
            self.board.publish(rank.rank, self.steps, self._busy_before + self._busy_now, time.perf_counter())
        if self.bar is not None:
            if trained:
                self.bar.step(self.steps)
            elif self.served % 10 == 0:  # rank 0 serving: its bar stands still, the others' figures move
                self.bar.note(self.steps)

    def on_window(self, rank: Any) -> None:
        if self.bar is not None:  # the asynchronous loop reports once, at its end
            self.bar.close()
