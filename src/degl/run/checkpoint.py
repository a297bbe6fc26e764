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

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

from degl.errors import UserError

KEEP = 2


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to ``path`` via a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(obj, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
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
    complete = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in complete[:-KEEP]:
        if old.name != name:
            shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    pointer = checkpoint_root(run_dir) / "latest"
    if not pointer.is_file():
        return None
    name = pointer.read_text().strip()
    path = checkpoint_root(run_dir) / name
    return path if name and path.is_dir() else None


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
    if not run_dir.is_dir():
        raise UserError(f"run directory {run_dir} does not exist")
    path = latest_checkpoint(run_dir)
    if path is None:
        raise UserError(f"{run_dir} has no checkpoint (no {checkpoint_root(run_dir) / 'latest'}); nothing to resume")
    meta = _load(path / "meta.pt", map_location)
    if meta.get("format") != 1 or "config" not in meta:
        raise UserError(f"{path / 'meta.pt'} is not a degl checkpoint (format {meta.get('format')!r})")
    return path, meta


def load_stage(path: Path, index: int, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    state = _load(path / f"stage-{index}.pt", map_location)
    if "model" not in state:
        raise UserError(f"{path / f'stage-{index}.pt'} is not a degl stage checkpoint")
    return state
