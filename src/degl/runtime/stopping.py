"""When a training loop stops before its end, and the signals that ask it to.

Every loop (one process: :mod:`degl.run.train` and the async-dgl simulation; the rank loops of
:mod:`degl.runtime`) asks one :class:`StopPolicy` after each step whether to stop: its step budget
for this invocation (``--max-steps``) is spent, or a :class:`StopRequest` (Ctrl-C, SIGTERM) came.
:func:`signals_handled` is the one place signal handlers are installed and restored.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from tqdm.auto import tqdm

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def signals_handled(handler: Callable[[int, Any], None] | int) -> Iterator[None]:
    """``handler`` (a function or ``signal.SIG_IGN``) for SIGINT and SIGTERM inside the block, the
    previous handlers restored after it. Off the main thread Python cannot install handlers: the
    block runs with the process's handlers unchanged."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


class StopRequest:
    """First Ctrl-C (SIGINT) or SIGTERM asks the loop to checkpoint and stop; a second Ctrl-C aborts."""

    def __init__(self, message: str = "stopping after this step and writing a checkpoint") -> None:
        self.requested = False
        self.message = message
        self._handled: Any = None

    def __enter__(self) -> StopRequest:
        self._handled = signals_handled(self._handle)
        self._handled.__enter__()
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        tqdm.write(f"degl: {self.message} (Ctrl-C again to abort)", file=sys.stderr)

    def __exit__(self, *exc: object) -> None:
        self._handled.__exit__(*exc)


class IgnoreSignals:
    """Ranks after the first leave Ctrl-C/SIGTERM to rank 0, which stops the whole line in order."""

    requested = False

    def __enter__(self) -> IgnoreSignals:
        self._handled = signals_handled(signal.SIG_IGN)
        self._handled.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._handled.__exit__(*exc)


class NeverStop:
    """The stop flag of a loop nobody can interrupt."""

    requested = False


class StopPolicy:
    """Whether a loop stops early: after ``max_steps`` steps of this invocation (None: no limit)
    or once ``stop.requested`` (a :class:`StopRequest`; None: never).

    The loop calls :meth:`stepped` after every step it counts and asks :attr:`due` where it can stop.
    """

    def __init__(self, max_steps: int | None = None, stop: Any = None) -> None:
        self.max_steps = max_steps
        self.stop = stop if stop is not None else NeverStop()
        self.steps = 0

    def stepped(self, count: int = 1) -> None:
        self.steps += count

    @property
    def requested(self) -> bool:
        """A signal asked to stop (as opposed to the step budget)."""
        return bool(self.stop.requested)

    @property
    def budget_spent(self) -> bool:
        return self.max_steps is not None and self.steps >= self.max_steps

    @property
    def due(self) -> bool:
        return self.requested or self.budget_spent
