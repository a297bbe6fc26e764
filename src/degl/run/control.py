"""Interactive control of a run: Ctrl-C handling and progress bars."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from degl.config import TrainConfig


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


class Interrupted(Exception):
    """Raised after the checkpoint is written when training was stopped by a signal."""

    def __init__(self, run_dir: Path, resume_hint: str | None = None) -> None:
        hint = resume_hint or f"degl train --resume {run_dir}"
        super().__init__(f"interrupted; checkpoint saved, continue with: {hint}")
        self.run_dir = run_dir


def epoch_bar(cfg: TrainConfig, total: int, initial: int) -> tqdm:
    return tqdm(
        total=total,
        initial=initial,
        desc=f"{cfg.method} epochs",
        unit="ep",
        disable=not cfg.progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )


def step_bar(cfg: TrainConfig, total: int, initial: int, number: int) -> tqdm:
    return tqdm(
        total=total,
        initial=initial,
        leave=False,
        unit="step",
        desc=f"epoch {number}",
        disable=not cfg.progress,
        file=sys.stderr,
        dynamic_ncols=True,
    )
