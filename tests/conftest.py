"""Shared fixtures: hygiene after every test, and helpers to run the real CLI."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from degl.data.fashion_mnist import candidate_dirs

REPO = Path(__file__).resolve().parents[1]


def pytest_configure(config: pytest.Config) -> None:
    """Under ``pytest -n N`` every worker (and every CLI it starts) gets its share of the cores: with
    torch's default of all cores each, the workers' threads fight over the same cores and a one-second
    epoch can take a minute. Tests that measure threads set them explicitly."""
    workers = os.environ.get("PYTEST_XDIST_WORKER_COUNT")
    if workers:
        share = str(max(1, (os.cpu_count() or 1) // int(workers)))
        os.environ.setdefault("OMP_NUM_THREADS", share)
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


@pytest.fixture(autouse=True)
def hygiene(tmp_path, monkeypatch):
    """Run in an empty directory; restore env, torch flags and threads; fail on leaked children."""
    monkeypatch.chdir(tmp_path)
    env_before = dict(os.environ)
    threads_before = torch.get_num_threads()
    threads_alive = {t.ident for t in threading.enumerate()}
    yield
    torch.use_deterministic_algorithms(False)
    torch.set_num_threads(threads_before)
    leaked_env = set(os.environ) - set(env_before)
    for key in leaked_env:
        del os.environ[key]
    os.environ.update(env_before)
    children = multiprocessing.active_children()
    for child in children:
        child.kill()
    assert not children, f"test left child processes running: {children}"
    leaked = [t for t in threading.enumerate() if t.ident not in threads_alive and t.is_alive() and not t.daemon]
    assert not leaked, f"test left threads running: {leaked}"
    # torch itself sets a few variables lazily (inductor cache, cuBLAS workspace); anything else is a leak.
    leaked_env = {k for k in leaked_env if not k.startswith(("TORCH", "_TORCH", "CUBLAS_"))}
    assert not leaked_env, f"test leaked env variables {leaked_env}"


def fashion_mnist_dir() -> Path | None:
    for path in candidate_dirs():
        if (path / "train-images-idx3-ubyte.gz").is_file() or (path / "train-images-idx3-ubyte").is_file():
            return path.resolve()
    return None


@pytest.fixture
def fmnist_dir() -> Path:
    path = fashion_mnist_dir()
    if path is None:
        pytest.skip("Fashion-MNIST is not installed; 'make install' installs Debian's dataset-fashion-mnist")
    return path


def run_degl(*args: str, timeout: float = 300, env: dict | None = None, cwd: Path | None = None):
    """Run ``python -m degl ARGS`` as a real process; return the CompletedProcess."""
    full_env = {**os.environ, **(env or {})}
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    return subprocess.run(
        [sys.executable, "-m", "degl", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=full_env,
        cwd=cwd,
    )


SYNTH = [
    "--dataset",
    "synthetic",
    "--input-shape",
    "1,12,12",
    "--synthetic-size",
    "256",
    "--num-classes",
    "4",
    "--model",
    "cnn4",
    "--width",
    "0.125",
    "--batch-size",
    "32",
    "--no-progress",
]


def read_metrics(run: Path) -> list[dict] | None:
    """A run's metrics.jsonl lines without their wall-clock field (``time_s``), which differs
    between otherwise identical runs; None before the first epoch has ended."""
    import json

    path = Path(run) / "metrics.jsonl"
    if not path.exists():
        return None
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in line.items() if k != "time_s"} for line in lines]
