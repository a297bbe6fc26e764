"""Progress bars and progress figures of a training loop, independent of how the run was configured."""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from tqdm.auto import tqdm


def draws_progress(enabled: bool | None) -> bool:
    """Whether a progress bar with this setting is drawn: ``True`` always, ``False`` never, ``None``
    only when stderr is a terminal (a bar redrawn with carriage returns fills a log file or a pipe)."""
    if enabled is None:
        return sys.stderr.isatty()
    return enabled


def progress_bar(
    total: int, initial: int, desc: str, *, enabled: bool | None = None, unit: str = "step", leave: bool = True
) -> tqdm:
    """A tqdm bar on stderr; ``enabled``: see :func:`draws_progress` (default: on a terminal only)."""
    return tqdm(
        total=total,
        initial=initial,
        leave=leave,
        unit=unit,
        desc=desc,
        disable=not draws_progress(enabled),
        file=sys.stderr,
        dynamic_ncols=True,
    )


class ProgressBoard:
    """Every rank's progress, in memory shared by the local ranks, for rank 0's progress bar.

    Each rank writes its own slot after every step: (steps, busy seconds, its clock); rank 0 reads
    them all when it refreshes its bar. A few float stores per step, no messages, no locks: a torn
    read only shows one slightly stale figure. It needs the ranks to be forked or spawned from one
    process (``degl train --workers K``); under ``torchrun`` there is none and rank 0 shows its own
    figures (and the slowest rank of the last epoch, from the epoch-end reports).
    """

    FIELDS = 3

    def __init__(self, world: int, values: Any = None) -> None:
        import multiprocessing

        self.world = world
        self.values = values if values is not None else multiprocessing.RawArray("d", world * self.FIELDS)
        self._seen = [(0.0, 0.0, 0.0)] * world  # rank 0's previous reading, for rates over the last interval

    def publish(self, rank: int, steps: int, busy_s: float, now: float) -> None:
        i = rank * self.FIELDS
        self.values[i], self.values[i + 1], self.values[i + 2] = float(steps), busy_s, now

    def read(self) -> list[tuple[float, float, float]]:
        v = self.values
        return [(v[i], v[i + 1], v[i + 2]) for i in range(0, self.world * self.FIELDS, self.FIELDS)]

    def rates(self) -> list[tuple[int, float, float]]:
        """Per rank: (steps so far, busy fraction, steps/s) since the previous call (NaN when unknown)."""
        now, out = self.read(), []
        for (steps, busy, clock), (steps0, busy0, clock0) in zip(now, self._seen):
            span = clock - clock0 if clock0 > 0 else 0.0
            if span > 0 and steps > steps0:
                out.append((int(steps), (busy - busy0) / span, (steps - steps0) / span))
            else:
                out.append((int(steps), math.nan, math.nan))
        self._seen = now
        return out


def progress_note(samples_per_s: float, board: ProgressBoard | None, *, lockstep: bool) -> str:
    """Rank 0's progress-bar postfix: throughput and the rank holding the pipeline back.

    In the synchronous pipeline (``lockstep``) every rank does the same steps per second, so the
    slowest is the busiest one; asynchronous ranks run at their own pace, so their step counts say it.
    """
    note = f"{samples_per_s:.0f} samples/s"
    if board is None:
        return note
    rates = board.rates()
    if lockstep:
        known = [(busy, r) for r, (_, busy, _) in enumerate(rates) if not math.isnan(busy)]
        if known:
            busy, r = max(known)
            note += f", slowest rank {r} ({min(busy, 1.0):.0%} busy)"
        return note
    note += ", steps per rank " + "/".join(str(steps) for steps, _, _ in rates)
    known_rates = [(speed, r) for r, (_, _, speed) in enumerate(rates) if not math.isnan(speed)]
    if known_rates:
        speed, r = min(known_rates)
        note += f", slowest rank {r} ({speed:.1f} steps/s)"
    return note


def slowest_in_reports(reports: list[dict[str, Any]]) -> str:
    """The busiest rank of an epoch, from the epoch-end reports (works under torchrun too)."""
    busy = [1 - report["timing"]["idle"] for report in reports]
    r = max(range(len(busy)), key=busy.__getitem__)
    return f"last epoch: slowest rank {r} ({busy[r]:.0%} busy)"


class StepBar:
    """A step progress bar for a loop that draws none itself (rank 0 of the asynchronous pipeline)."""

    def __init__(
        self,
        total: int,
        batch_size: int,
        board: ProgressBoard | None,
        desc: str = "async-dgl steps",
        *,
        enabled: bool | None = None,
    ) -> None:
        """``enabled``: see :func:`draws_progress` (default: drawn only when stderr is a terminal)."""
        self.bar = progress_bar(total, 0, desc, enabled=enabled)
        self.batch_size, self.board = batch_size, board
        self._first = self._last = 0.0  # when rank 0 trained its first and its latest step

    def step(self, steps: int) -> None:
        """Rank 0 trained its ``steps``-th step."""
        self._last = time.perf_counter()
        if steps == 1:
            self._first = self._last
        if steps % 10 == 0:
            self.note(steps, refresh=False)
        self.bar.update(1)

    def note(self, steps: int, *, refresh: bool = True) -> None:
        """Refresh the postfix: rank 0's samples/s over its training steps and the others' progress."""
        rate = (steps - 1) * self.batch_size / max(self._last - self._first, 1e-9)
        self.bar.set_postfix_str(progress_note(rate, self.board, lockstep=False), refresh=refresh)

    def close(self) -> None:
        self.bar.close()
