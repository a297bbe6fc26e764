"""The run directory: ``config.yaml``, ``metrics.jsonl``, ``summary.json`` and ``checkpoints/``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import yaml

from degl.errors import UserError
from degl.run.checkpoint import atomic_write_bytes, latest_checkpoint


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


class MetricsLog:
    """Append-only ``metrics.jsonl``; ``truncate`` drops lines written after the last checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.lines = 0
        if path.exists():
            self.lines = sum(1 for _ in path.open())

    def truncate(self, lines: int) -> None:
        if not self.path.exists():
            self.lines = 0
            return
        kept = self.path.read_text().splitlines(keepends=True)[:lines]
        atomic_write_bytes(self.path, "".join(kept).encode())
        self.lines = len(kept)

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        self.lines += 1
