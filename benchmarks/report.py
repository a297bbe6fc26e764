"""Run a degl command and store its output as a dated, self-describing result file.

    python benchmarks/report.py --name NAME [--note TEXT] -- degl ARGS...

Writes ``benchmarks/results/<NAME>_<hardware>_torch<version>_<date>.md`` with the command, the
machine, the torch version, the git commit, the human-readable lines and the final JSON object.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def hardware() -> tuple[str, str]:
    """(short tag for the file name, long description)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0)
        tag = re.sub(r"[^a-z0-9]+", "", gpu.lower().replace("nvidia", ""))
        return tag, f"{gpu} x{torch.cuda.device_count()}, {cores} CPU cores ({cpu_model()})"
    return f"{cores}cpu", f"{cores} CPU cores ({cpu_model()}), no GPU"


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True
        ).stdout.strip()
        return out.stdout.strip() + ("+uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--name", required=True, help="what was measured, e.g. bench-step-cnn6-k4")
    parser.add_argument("--note", default="", help="a sentence to put under the title")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- degl ARGS...")
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("give the command after --")
    if command[0] == "degl":
        command = [shutil.which("degl") or str(Path(sys.executable).parent / "degl"), *command[1:]]
    started = datetime.datetime.now()
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        return done.returncode
    lines = done.stdout.rstrip().lstrip("\n").splitlines()
    result = json.loads(lines[-1])
    tag, description = hardware()
    version = torch.__version__.split("+")[0]
    path = RESULTS / f"{args.name}_{tag}_torch{version}_{started:%Y-%m-%d}.md"
    shown = " ".join(["degl", *command[1:]] if command[0].endswith("degl") else command)
    text = [
        f"# {args.name}",
        "",
        *([args.note, ""] if args.note else []),
        f"- command: `{shown}`",
        f"- machine: {description}",
        f"- torch {torch.__version__}, Python {platform.python_version()}, degl commit {git_commit()}",
        f"- date: {started:%Y-%m-%d %H:%M}, wall time {(datetime.datetime.now() - started).total_seconds():.0f} s",
        "",
        "```",
        *lines[:-1],
        "```",
        "",
        "Raw result:",
        "",
        "```json",
        json.dumps(result, indent=2),
        "```",
        "",
    ]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(text))
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
