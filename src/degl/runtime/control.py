"""Signals and progress bars of a training loop, independent of how the run was configured."""

from __future__ import annotations

import signal
import sys
import threading
from typing import Any

from tqdm.auto import tqdm


class StopRequest:
    """First Ctrl-C (SIGINT) or SIGTERM asks the loop to checkpoint and stop; a second Ctrl-C aborts."""

    def __init__(self, message: str = "stopping after this step and writing a checkpoint") -> None:
        self.requested = False
        self.message = message
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write(f"degl: {self.message} (Ctrl-C again to abort)", file=sys.stderr)

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


class IgnoreSignals:
    """Ranks after the first leave Ctrl-C/SIGTERM to rank 0, which stops the whole line in order."""

    requested = False

    def __enter__(self) -> IgnoreSignals:
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def progress_bar(total: int, initial: int, desc: str, *, enabled: bool, unit: str = "step", leave: bool = True) -> tqdm:
    return tqdm(
        total=total,
        initial=initial,
        leave=leave,
        unit=unit,
        desc=desc,
        disable=not enabled,
        file=sys.stderr,
        dynamic_ncols=True,
    )
