"""TensorBoard event files in ``RUN/tensorboard/``: a mirror of ``metrics.jsonl`` plus summary figures.

Every metrics line goes through :class:`degl.run.rundir.MetricsLog`, which hands it to
:class:`TensorBoardLog`; so the event files hold exactly the values of ``metrics.jsonl``. The
TensorBoard step of a line is its ``epoch`` (the one x axis train and test lines share; a run writes
lines only at epoch ends). Tags: ``{split}_{field}/stage{k}``, e.g. ``test_acc/stage1``,
``train_lr/stage0``; summary figures (throughput, steps per rank, buffer reuse and staleness, bytes
on the wire) go to ``summary/...`` at step ``epochs_completed``.

Resume: the run's metrics log drops the lines written after the last checkpoint; here a new writer
starts with ``purge_step`` = the first epoch the checkpoint had not finished, which makes TensorBoard
discard every older event at that step or later, and the kept lines of those epochs are logged again.
So a stopped-then-resumed run shows each step once.

``torch.utils.tensorboard`` (and with it the ``tensorboard`` package) is imported only when a run
writes its first event, so ``import degl`` stays fast and tensorboard stays optional.
"""

from __future__ import annotations

import importlib.util
import time
import weakref
from pathlib import Path
from typing import Any

from degl.errors import UserError

SUBDIR = "tensorboard"
# Fields that say where a line belongs, not what was measured.
_POSITION_FIELDS = frozenset({"epoch", "phase", "stage", "split"})
_SUMMARY_SCALARS = ("train_time_s", "samples_per_s", "steps_completed", "buffer_bytes")


def available() -> bool:
    """Whether the ``tensorboard`` package is importable (torch's SummaryWriter needs it)."""
    return importlib.util.find_spec("tensorboard") is not None


def resolve(setting: bool | None) -> bool:
    """``--tensorboard`` as given (``None``: on when the package is installed)."""
    if setting is None:
        return available()
    if setting and not available():
        raise UserError(
            "--tensorboard needs the tensorboard package: pip install 'degl[tensorboard]' (or pass --no-tensorboard)"
        )
    return setting


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def line_scalars(record: dict[str, Any]) -> dict[str, float]:
    """The tags and values of one metrics line (its numeric fields but the position ones)."""
    split = record.get("split", "other")
    suffix = f"/stage{record['stage']}" if "stage" in record else ""
    return {
        f"{split}_{key}{suffix}": float(value)
        for key, value in record.items()
        if key not in _POSITION_FIELDS and _number(value)
    }


def summary_scalars(summary: dict[str, Any]) -> dict[str, float]:
    """Throughput, per-rank figures (``*_per_stage`` lists) and bytes per sample of a summary."""
    values = {f"summary/{key}": float(summary[key]) for key in _SUMMARY_SCALARS if _number(summary.get(key))}
    for key, value in summary.items():
        # test accuracies are already logged from the test lines
        per_stage = key.endswith("_per_stage") and not key.startswith("test_")
        if (per_stage or key == "wire_bytes_per_sample") and isinstance(value, list):
            unit = "stage" if per_stage else "boundary"
            values.update({f"summary/{key}/{unit}{i}": float(v) for i, v in enumerate(value) if _number(v)})
    return values


def _epoch(record: dict[str, Any]) -> int | None:
    epoch = record.get("epoch")
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None


def _after_newest(files: list[Path]) -> None:
    """Wait, if need be, until a new event file's name sorts after ``files``.

    TensorBoard reads a run's event files in name order, and names start with the creation second;
    the purge must come after the events it purges, so a resume within the same second waits.
    """
    seconds = [int(part) for part in (f.name.split(".")[3] for f in files) if part.isdigit()]
    delay = max(seconds, default=0) + 1 - time.time()
    if delay > 0:
        time.sleep(delay)


class TensorBoardLog:
    """One run's event writer (rank 0 only: every runtime funnels its metrics through rank 0)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = log_dir
        self._writer: Any = None
        self._purge_step: int | None = None
        self._summary_step = -1

    def _open(self) -> Any:
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.log_dir), purge_step=self._purge_step)
            self._purge_step = None
            # Runs end without a hook of their own; close (flush, stop the writer thread) with the log.
            self._closer = weakref.finalize(self, self._writer.close)
        return self._writer

    def _add(self, scalars: dict[str, float], step: int) -> None:
        if not scalars:
            return
        writer = self._open()
        for tag, value in scalars.items():
            writer.add_scalar(tag, value, global_step=step)
        writer.flush()  # a live TensorBoard (or a crash) sees every finished epoch

    def line(self, record: dict[str, Any]) -> None:
        """Log one metrics line (lines without an integer epoch have no step and are skipped)."""
        epoch = _epoch(record)
        if epoch is not None:
            self._add(line_scalars(record), epoch)

    def summary(self, summary: dict[str, Any]) -> None:
        """Log a summary's figures once per ``epochs_completed`` (runs rewrite summary.json often)."""
        step = summary.get("epochs_completed")
        if _number(step) and step > self._summary_step:
            self._summary_step = int(step)
            self._add(summary_scalars(summary), int(step))
        if summary.get("completed"):
            self.close()

    def resume(self, kept: list[dict[str, Any]], dropped: list[dict[str, Any]], epochs_completed: int) -> None:
        """Start over from the checkpoint: ``kept`` lines stay in metrics.jsonl, ``dropped`` ones were removed."""
        self.close()
        files = list(self.log_dir.glob("events.out.tfevents.*"))
        if not files:
            # No events yet (tensorboard was off or missing until now): log the whole history.
            for record in kept:
                self.line(record)
            return
        # Purge from the first epoch the checkpoint has not finished (or from a dropped line's epoch, if
        # earlier); then restore the kept lines the purge hides (asynchronous stages run ahead).
        first = min([epochs_completed + 1, *(e for e in map(_epoch, dropped) if e is not None)])
        _after_newest(files)
        self._purge_step = first = max(first, 0)  # the writer opened by the first line below applies it
        # The checkpoint's own epoch keeps the summary logged when it ended; log none there again.
        self._summary_step = first - 1
        for record in kept:
            epoch = _epoch(record)
            if epoch is not None and epoch >= first:
                self.line(record)

    def close(self) -> None:
        if self._writer is not None:
            self._closer()
            self._writer = None
