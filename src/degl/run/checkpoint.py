"""Checkpoints: one directory per save, one file per stage, committed by an atomic pointer file.

Layout under ``<run>/checkpoints/``::

    step-00001234/meta.pt      position, counters, method-wide optimizer state, config
    step-00001234/stage-0.pt   stage 0's weights, optimizer, schedule and grad-scaler state
    ...
    latest                     name of the newest complete checkpoint (written last, atomically)

Files are written to a temporary name and renamed; ``latest`` only ever names a directory whose
files are all complete, so an interrupted save leaves the previous checkpoint loadable. Loading
uses ``torch.load(weights_only=True)``. Several processes (one per stage) can write the same
checkpoint: each writes its own stage file, one of them writes ``meta.pt`` and ``latest``.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from degl.errors import UserError

KEEP = 2
STEP_NAME = re.compile(r"step-\d{8}")


# Write failures the user can fix (space, quota, file-size limit): one error line, not a traceback.
DISK_ERRORS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _disk_error(path: Path, exc: OSError) -> UserError:
    return UserError(
        f"cannot write {path}: {exc.strerror or exc}; nothing was replaced (the previous checkpoint is still "
        "the latest): free some space, then resume"
    )


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.errno in DISK_ERRORS:
            raise _disk_error(path, exc) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` via a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        # Through a Python file object: a failed write then keeps its OSError (and errno) as the context
        # of torch's RuntimeError, which a file name would hide.
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as exc:
        Path(tmp).unlink(missing_ok=True)
        # torch.save reports a failed write as a RuntimeError that wraps the OS error's text.
        cause = exc if isinstance(exc, OSError) else exc.__cause__ or exc.__context__
        if isinstance(cause, OSError) and cause.errno in DISK_ERRORS:
            raise _disk_error(path, cause) from None
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def checkpoint_root(run_dir: Path) -> Path:
    return Path(run_dir) / "checkpoints"


def checkpoint_name(global_step: int) -> str:
    return f"step-{global_step:08d}"


def save_stage(run_dir: Path, name: str, index: int, state: dict[str, Any]) -> None:
    atomic_save(state, checkpoint_root(run_dir) / name / f"stage-{index}.pt")


def commit(run_dir: Path, name: str, meta: dict[str, Any], num_stages: int, *, verify: bool = True) -> None:
    """Write ``meta.pt``, point ``latest`` at ``name`` and prune old checkpoints.

    ``verify=False`` when other processes wrote the stage files and confirmed it (on several nodes
    this process may not see a shared file system's newest entries yet).
    """
    root = checkpoint_root(run_dir)
    if verify:
        missing = [i for i in range(num_stages) if not (root / name / f"stage-{i}.pt").is_file()]
        assert not missing, f"checkpoint {name} lacks stage files {missing}"
    atomic_save(meta, root / name / "meta.pt")
    atomic_write_bytes(root / "latest", (name + "\n").encode())
    for stale in (root / name).glob(".*.tmp"):  # left by a save that was killed before its rename
        stale.unlink(missing_ok=True)
    complete = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in complete[:-KEEP]:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_dir: Path, *, say_fallback: bool = False) -> Path | None:
    """The newest complete checkpoint of ``run_dir``, or ``None``.

    ``latest`` names it; a ``latest`` that is missing, unreadable or names no complete checkpoint of
    this run (a crash between the files and the pointer, a hand edit) falls back to the newest
    directory whose ``meta.pt`` was written (meta.pt is written after every stage file).
    """
    root = checkpoint_root(run_dir)
    pointer = root / "latest"
    named = None
    if pointer.is_file():
        try:
            named = pointer.read_bytes().decode("ascii").strip()
        except UnicodeDecodeError:
            named = None
        if named is not None and STEP_NAME.fullmatch(named) and (root / named / "meta.pt").is_file():
            return root / named
    complete = sorted(p for p in root.glob("step-*") if STEP_NAME.fullmatch(p.name) and (p / "meta.pt").is_file())
    if not complete:
        return None
    if say_fallback:
        problem = "does not name a complete checkpoint of this run" if pointer.exists() else "is missing"
        print(f"degl: note: {pointer} {problem}; using {complete[-1].name}", file=sys.stderr)
    return complete[-1]


def _load(path: Path, map_location: str | torch.device) -> dict[str, Any]:
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError:
        raise UserError(f"checkpoint file {path} is missing; the checkpoint is incomplete") from None
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"checkpoint file {path} is corrupt or not a degl checkpoint ({first[:120]})") from None
    if not isinstance(obj, dict):
        raise UserError(f"checkpoint file {path} is not a degl checkpoint")
    return obj


def load_meta(run_dir: Path, map_location: str | torch.device = "cpu") -> tuple[Path, dict[str, Any]]:
    """The newest checkpoint's directory and its ``meta.pt``; :class:`UserError` when absent or corrupt."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UserError(f"{run_dir} is a file, not a run directory; give the directory a 'degl train' run wrote")
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist")
    path = latest_checkpoint(run_dir, say_fallback=True)
    if path is None:
        raise UserError(f"{run_dir} has no checkpoint (no {checkpoint_root(run_dir) / 'latest'}); nothing to resume")
    meta = _load(path / "meta.pt", map_location)
    if meta.get("format") != 1 or "config" not in meta:
        raise UserError(f"{path / 'meta.pt'} is not a degl checkpoint (format {meta.get('format')!r})")
    return path, meta


@contextmanager
def restoring(path: Path, mismatch: str = "does not match this run's model") -> Iterator[None]:
    """Loading a checkpoint's states into this run's objects: what goes wrong (a missing key, a
    shape that differs) becomes one user-error line, ``checkpoint PATH <mismatch>: <first line>``."""
    try:
        yield
    except (RuntimeError, KeyError, ValueError) as exc:
        raise UserError(f"checkpoint {path} {mismatch}: {str(exc).splitlines()[0][:160]}") from None


def load_stage(path: Path, index: int, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    state = _load(path / f"stage-{index}.pt", map_location)
    if "model" not in state:
        raise UserError(f"{path / f'stage-{index}.pt'} is not a degl stage checkpoint")
    return state
