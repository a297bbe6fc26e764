"""The run directory: ``config.yaml``, ``metrics.jsonl``, ``summary.json`` and ``checkpoints/``."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from degl.errors import UserError
from degl.run.checkpoint import atomic_write_bytes, latest_checkpoint

if TYPE_CHECKING:
    from degl.run.tensorboard import TensorBoardLog


def default_run_dir(method: str, model: str) -> Path:
    base = Path("runs") / f"{method}-{model}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def check_new_run_dir(path: Path) -> None:
    """Fail early, before anything is written, if ``path`` cannot hold a new run."""
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} exists and is not a directory; choose another --out")
    if path.is_dir() and any(path.iterdir()):
        if latest_checkpoint(path) is not None:
            raise UserError(
                f"--out {path} already holds a run; continue it with --resume {path} or choose another --out"
            )
        raise UserError(f"--out {path} exists and is not empty; choose another --out")
    ancestor = path
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK | os.X_OK):
        raise UserError(f"--out {path}: cannot create it under {ancestor} (not a writable directory)")


def write_json(path: Path, obj: dict[str, Any]) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())


def write_config(run_dir: Path, config: dict[str, Any]) -> None:
    atomic_write_bytes(run_dir / "config.yaml", yaml.safe_dump(config, sort_keys=False).encode())


def parse_metrics_line(text: str) -> dict[str, Any] | None:
    """One ``metrics.jsonl`` line, or ``None`` when it is not a JSON object (a line cut by a crash)."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


class MetricsLog:
    """Append-only ``metrics.jsonl``; ``truncate`` drops lines written after the last checkpoint.

    The single sink of metrics lines: ``clock`` (training seconds so far) stamps ``time_s`` on lines
    that lack it, and ``tensorboard`` receives every line written and every truncation.
    """

    def __init__(
        self,
        path: Path,
        *,
        clock: Callable[[], float] | None = None,
        tensorboard: TensorBoardLog | None = None,
    ) -> None:
        self.path = path
        self.lines = 0
        self.clock = clock
        self.tensorboard = tensorboard
        if path.exists():
            self.lines = sum(1 for _ in path.open())

    def truncate(self, lines: int, *, epochs_completed: int = 0) -> None:
        text = self.path.read_text().splitlines(keepends=True) if self.path.exists() else []
        kept = text[:lines]
        if self.path.exists():
            atomic_write_bytes(self.path, "".join(kept).encode())
        self.lines = len(kept)
        if self.tensorboard is not None:
            records = [[r for r in map(parse_metrics_line, part) if r is not None] for part in (kept, text[lines:])]
            self.tensorboard.resume(records[0], records[1], epochs_completed)

    def write(self, record: dict[str, Any]) -> None:
        if self.clock is not None and "time_s" not in record:
            record = {**record, "time_s": round(self.clock(), 3)}
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        self.lines += 1
        if self.tensorboard is not None:
            self.tensorboard.line(record)
