"""How long a K-process pipeline takes to stop after one rank is killed (SIGKILL).

Starts ``degl train --workers K`` on synthetic data, waits until the first checkpoint is committed,
kills one rank, and measures the time until the launcher and every rank have exited. Then checks
that the checkpoint written before the fault loads. Last stdout line: one JSON object.

    .venv/bin/python benchmarks/report.py --name fault-stop -- python benchmarks/fault_stop.py
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from degl.run import checkpoint
from degl.runtime.launch import local_rank_pids

RUN = [
    "--dataset", "synthetic", "--input-shape", "1,16,16", "--synthetic-size", "4096", "--num-classes", "4",
    "--model", "cnn4", "--width", "0.25", "--batch-size", "16", "--epochs", "20", "--no-progress", "--threads", "1",
]  # fmt: skip


def wait_for(predicate, what: str, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"fault_stop: timed out waiting for {what}")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def measure(workers: int, victim: int, fault_timeout: float | None) -> dict:
    with tempfile.TemporaryDirectory(prefix="degl-fault-") as tmp:
        out = Path(tmp) / "run"
        command = [sys.executable, "-m", "degl", "train", *RUN, "--workers", str(workers), "--out", str(out)]
        if fault_timeout is not None:
            command += ["--fault-timeout", str(fault_timeout)]
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        wait_for(lambda: (out / "checkpoints" / "latest").exists(), "the first checkpoint")
        pids = local_rank_pids(proc.pid)
        assert sorted(pids) == list(range(workers)), pids
        killed_at = time.monotonic()
        os.kill(pids[victim], signal.SIGKILL)
        exited = {}
        while len(exited) < workers or proc.poll() is None:
            now = time.monotonic() - killed_at
            for rank, pid in pids.items():
                if rank not in exited and not alive(pid):
                    exited[rank] = round(now, 3)
            time.sleep(0.01)
        total = time.monotonic() - killed_at
        stderr = proc.stderr.read() if proc.stderr else ""
        path, meta = checkpoint.load_meta(out)
        for stage in range(workers):
            checkpoint.load_stage(path, stage)
        return {
            "workers": workers,
            "killed_rank": victim,
            "seconds_until_all_exited": round(total, 3),
            "seconds_until_rank_exited": [exited[r] for r in range(workers)],
            "launcher_exit_status": proc.returncode,
            "checkpoint_loads": True,
            "checkpoint_step": meta["global_step"],
            "messages": [line for line in stderr.splitlines() if "rank" in line][:6],
        }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=3)
    parser.add_argument("--victim", type=int, default=1, help="rank to kill (default: 1, a middle one)")
    parser.add_argument("--fault-timeout", type=float, default=None, help="passed to degl train (default: its own)")
    args = parser.parse_args(argv)
    result = measure(args.workers, args.victim, args.fault_timeout)
    for line in result["messages"]:
        print(line)
    print(
        f"rank {args.victim} of {args.workers} killed: every process gone after {result['seconds_until_all_exited']} s "
        f"(per rank {result['seconds_until_rank_exited']}); checkpoint at step {result['checkpoint_step']} loads"
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
