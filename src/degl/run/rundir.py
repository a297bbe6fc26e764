"""The run directory: ``config.yaml``, ``metrics.jsonl``, ``summary.json`` and ``checkpoints/``."""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from degl.errors import UserError
from degl.run.checkpoint import atomic_write_bytes, latest_checkpoint

if TYPE_CHECKING:
    from degl.run.tensorboard import TensorBoardLog


LOCK_NAME = ".degl.lock"
# Locks this process holds, by resolved path: kept open for the process's life (the kernel drops them
# when it exits, however it exits) and inherited by the ranks it forks, which then need no lock of their own.
_held_locks: dict[str, int] = {}
_created_dirs: set[str] = set()  # run directories this process made (removed again if nothing was written)


def run_name_part(model: str) -> str:
    """``model`` as one path component: a file model ``dir/net.py:build`` becomes ``net-build``."""
    if ":" in model or "/" in model:
        file, _, function = model.rpartition(":") if ":" in model else (model, "", "")
        model = "-".join(part for part in (Path(file).stem, function) if part)
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", model).strip("-.") or "model"


def default_run_dir(method: str, model: str) -> Path:
    """``runs/<method>-<model>-<time>``, with a numbered suffix if that name is taken."""
    base = Path("runs") / f"{method}-{run_name_part(model)}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def lock_run_dir(path: Path) -> None:
    """Hold an exclusive lock on run directory ``path`` until this process exits.

    Two degl processes can never write one run: a second start or resume of a run in use is refused.
    """
    key = str(Path(path).resolve())
    if key in _held_locks:
        return
    fd = os.open(Path(path) / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip()
        os.close(fd)
        raise UserError(
            f"{path} is in use by another degl run{f' (process {holder})' if holder.isdigit() else ''}; "
            "wait for it to finish or choose another --out"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held_locks[key] = fd


def release_run_dir(path: Path) -> None:
    """Drop this process's lock on ``path`` (a no-op if it holds none)."""
    fd = _held_locks.pop(str(Path(path).resolve()), None)
    if fd is not None:
        os.close(fd)


def _holds_only_the_lock(path: Path) -> bool:
    return all(entry.name == LOCK_NAME for entry in path.iterdir())


def claim_new_run_dir(path: Path, *, default: bool) -> Path:
    """Create ``path`` and lock it for this run; the directory this run owns.

    The check of :func:`check_new_run_dir` at start-up happens long before anything is written, so
    another run may have taken the directory since. Under the lock the check is final: a run given
    ``--out`` is refused, a run on the default path takes the next free name.
    """
    base, n = path, 1
    while True:
        if not path.exists():
            path.mkdir(parents=True, exist_ok=True)
            _created_dirs.add(str(path.resolve()))
        try:
            lock_run_dir(path)
        except UserError:
            if not default:
                raise
            n += 1
            path = base.with_name(f"{base.name}-{n}")
            continue
        if _holds_only_the_lock(path):
            return path
        release_run_dir(path)
        if not default:
            raise UserError(f"--out {path} was filled by another run since this one started; choose another --out")
        n += 1
        path = base.with_name(f"{base.name}-{n}")


def discard_unused_run_dir(path: Path) -> None:
    """Remove ``path`` if this run created it and wrote nothing there (it stopped on bad input)."""
    release_run_dir(path)
    if str(path.resolve()) in _created_dirs and path.is_dir() and _holds_only_the_lock(path):
        (path / LOCK_NAME).unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            path.rmdir()


def check_new_run_dir(path: Path) -> None:
    """Fail early, before anything is written, if ``path`` cannot hold a new run."""
    if path.exists() and not path.is_dir():
        raise UserError(f"--out {path} exists and is not a directory; choose another --out")
    if path.is_dir() and not _holds_only_the_lock(path):
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
            self.lines = len(self._read_lines())

    def _read_lines(self) -> list[str]:
        try:
            return self.path.read_text().splitlines(keepends=True) if self.path.exists() else []
        except UnicodeDecodeError:
            raise UserError(f"{self.path} is not a text file; the run's metrics are corrupt") from None

    def truncate(self, lines: int, *, epochs_completed: int = 0) -> None:
        text = self._read_lines()
        kept = text[:lines]
        # A crash while a line was written leaves it cut short (no newline): drop it, or the next
        # line would be appended to its end and the file become unreadable.
        cut = 0
        while kept and (not kept[-1].endswith("\n") or parse_metrics_line(kept[-1]) is None):
            kept.pop()
            cut += 1
        if cut:
            print(f"degl: note: {self.path}: dropped {cut} line(s) cut short by a crash", file=sys.stderr)
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
            handle.write(json.dumps(_finite_or_null(record), allow_nan=False) + "\n")
        self.lines += 1
        if self.tensorboard is not None:
            self.tensorboard.line(record)


def _finite_or_null(value: Any) -> Any:
    """``value`` with NaN and infinities as ``None``: JSON has no spelling for them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite_or_null(v) for v in value]
    return value
