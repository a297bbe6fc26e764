"""Interactive control of a run: the stop exception and the configured progress bars."""

from __future__ import annotations

from pathlib import Path

from tqdm.auto import tqdm

from degl.run.config import TrainConfig
from degl.runtime.control import progress_bar
from degl.runtime.stopping import StopPolicy, StopRequest

__all__ = ["Interrupted", "StopPolicy", "StopRequest", "epoch_bar", "step_bar"]


class Interrupted(Exception):
    """Raised after the checkpoint is written when training was stopped by a signal."""

    def __init__(self, run_dir: Path, resume_hint: str | None = None) -> None:
        hint = resume_hint or f"degl train --resume {run_dir}"
        super().__init__(f"interrupted; checkpoint saved, continue with: {hint}")
        self.run_dir = run_dir


def epoch_bar(cfg: TrainConfig, total: int, initial: int) -> tqdm:
    return progress_bar(total, initial, f"{cfg.method} epochs", enabled=cfg.progress, unit="ep")


def step_bar(cfg: TrainConfig, total: int, initial: int, number: int) -> tqdm:
    return progress_bar(total, initial, f"epoch {number}", enabled=cfg.progress, leave=False)
