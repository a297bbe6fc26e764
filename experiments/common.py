"""Helpers shared by the experiment scripts (they import degl; degl never imports them).

- :func:`train_or_reuse`: one run per directory, through :func:`degl.run.compare.run_one`, which reuses a
  completed run with the same options and resumes a stopped one, so a study can be interrupted and
  restarted without repeating work.
- :func:`results_stem`: the dated name of a results file, naming the hardware and torch version
  (``benchmarks/results/<date>-<study>-<hardware>-torch<version>``), as benchmarks/README.md asks.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from degl.errors import UserError
from degl.run.compare import run_one
from degl.run.config import make_config

REPO = Path(__file__).resolve().parents[1]
RESULTS_DIR = REPO / "benchmarks" / "results"


def add_common_options(parser: argparse.ArgumentParser, *, width: float, epochs: int, out: str) -> None:
    """Options every study has: budget, seeds, where runs and results go, threads, device, data."""
    parser.add_argument("--width", type=float, default=width, help=f"channel-width multiplier (default: {width})")
    parser.add_argument("--epochs", type=int, default=epochs, help=f"epochs per run (default: {epochs})")
    parser.add_argument("--seeds", default="0", help="comma-separated seeds (default: 0)")
    parser.add_argument("--batch-size", type=int, default=128, help="training batch size (default: 128)")
    parser.add_argument("--lr", type=float, default=0.1, help="initial learning rate of every stage (default: 0.1)")
    parser.add_argument(
        "--schedule",
        default="cosine",
        choices=("cosine", "step", "constant"),
        help="lr schedule; step: x0.2 every 15 epochs as in the paper's CIFAR scripts (default: cosine)",
    )
    parser.add_argument("--train-size", type=int, default=None, help="use only the first N training images")
    parser.add_argument(
        "--augment", action=argparse.BooleanOptionalAction, default=True, help="random crop + flip (default: on)"
    )
    parser.add_argument("--data-dir", default=None, help="Fashion-MNIST folder (default: the library's search)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (default: auto)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", default=out, help=f"folder of the individual runs, reused when rerun (default: {out})")
    parser.add_argument(
        "--results-dir",
        default=str(RESULTS_DIR),
        help="where the markdown table and JSON go (default: benchmarks/results)",
    )
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=False, help="progress bars")


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"error: --seeds must be comma-separated integers, got {text!r}") from None
    if not seeds:
        raise SystemExit("error: --seeds needs at least one seed")
    return seeds


def base_values(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig fields every run of a study shares (its budget)."""
    values: dict[str, Any] = {
        "dataset": "fashion-mnist",
        "data_dir": args.data_dir,
        "width": args.width,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "schedule": args.schedule,
        "train_size": args.train_size,
        "augment": args.augment,
        "device": args.device,
        "threads": args.threads,
        "progress": args.progress,
    }
    if args.schedule == "step":
        values.update(lr_decay_every=15, lr_decay_factor=0.2)
    return values


def train_or_reuse(values: dict[str, Any]) -> dict[str, Any]:
    """Train one run into ``values['out']``, or reuse / resume what is already there; its summary."""
    return run_one(make_config(values))


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def model_stats(model: str, stages: int, aux: str, width: float, input_shape: str) -> dict[str, Any]:
    """``degl models --stats ... --json`` (its last stdout line is the documented JSON contract)."""
    command = [sys.executable, "-m", "degl", "models", "--stats", model, "--stages", str(stages), "--aux", aux]
    command += ["--width", str(width), "--input-shape", input_shape, "--num-classes", "10", "--json"]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(command[2:])} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def resolved_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _slug(text: str) -> str:
    text = re.sub(r"\((R|TM)\)|CPU|@.*$", "", text, flags=re.I)
    return re.sub(r"[^a-z0-9.]+", "-", text.lower()).strip("-")


def hardware_tag(device: torch.device) -> str:
    """E.g. ``cuda-nvidia-h100-80gb-hbm3`` or ``cpu2-intel-xeon-processor``."""
    if device.type == "cuda":
        return "cuda-" + _slug(torch.cuda.get_device_name(device))
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1]
                break
    except OSError:
        pass
    import platform

    return f"cpu{os.cpu_count()}-" + (_slug(model or platform.processor() or platform.machine()) or "unknown")


def hardware_description(device: torch.device, threads: int | None) -> str:
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    tag = hardware_tag(device)
    return f"{tag} ({os.cpu_count()} logical CPUs, {threads or torch.get_num_threads()} torch thread(s))"


def results_stem(study: str, device: torch.device) -> str:
    """``<YYYY-MM-DD>-<study>-<hardware>-torch<version>`` (no suffix)."""
    version = torch.__version__.split("+")[0]
    return f"{dt.date.today().isoformat()}-{study}-{hardware_tag(device)}-torch{version}"


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(values: list[float]) -> str:
    """``mean`` for one value, ``mean ± std`` for several."""
    mean, std = mean_std(values)
    return f"{mean:.2f}" if len(values) == 1 else f"{mean:.2f} ± {std:.2f}"


def git_commit() -> str:
    """The commit results come from, marked when the working tree differs from it."""
    repo = Path(__file__).resolve().parents[1]
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True, text=True
        )
    except OSError:
        return "unknown"
    return head.stdout.strip() + (" + uncommitted changes" if dirty.stdout.strip() else "")


def train_command(out: Path, options: list[str]) -> dict[str, Any]:
    """``degl train OPTIONS --out OUT`` as a fresh command (a finished run is reused); its summary,
    with the whole command's wall-clock (start-up and evaluation included) as ``command_wall_s``."""
    summary_path = out / "summary.json"
    if summary_path.is_file():
        return json.loads(summary_path.read_text())
    if out.exists():
        raise SystemExit(f"error: {out} holds an unfinished run; remove it")
    command = [sys.executable, "-m", "degl", "train", *options, "--no-progress", "--out", str(out)]
    tick = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    wall = time.perf_counter() - tick
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(command[2:])} failed:\n{done.stderr[-3000:]}")
    summary = json.loads(summary_path.read_text())
    summary["command_wall_s"] = round(wall, 2)
    summary_path.write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def write_results(results_dir: str | Path, stem: str, markdown: str, data: dict[str, Any]) -> tuple[Path, Path]:
    folder = Path(results_dir)
    folder.mkdir(parents=True, exist_ok=True)
    md, js = folder / f"{stem}.md", folder / f"{stem}.json"
    md.write_text(markdown)
    js.write_text(json.dumps(data, indent=2) + "\n")
    return md, js


def run_script(main: Callable[[], int]) -> int:
    """Run a study's ``main``; a user error (bad option, clashing run directory) is one line, exit 2."""
    try:
        return main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
