"""``degl train --workers K``: start K local ranks, watch them, stop them all when one fails.

The ranks are ordinary ``python -m degl train`` processes with the environment torchrun would
give them (RANK, WORLD_SIZE, MASTER_ADDR, ...), so both launchers run the same code. They live in
their own session: Ctrl-C reaches this process only, which asks rank 0 to stop the pipeline in
order (checkpoint included); a second Ctrl-C kills every rank.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from degl.config import TrainConfig
from degl.rundir import check_new_run_dir, default_run_dir
from degl.runtime.dist import free_port
from degl.runtime.worker import PEER_FAILED, check_pipeline_config

# Exit statuses that are not a failure of that rank: done, user error (reported by rank 0), stopped
# on request, stopped because a neighbour failed.
EXPECTED = (0, 2, 130, PEER_FAILED)


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def launch_local(cfg: TrainConfig, *, resume_dir: Path | None) -> int:
    """Run the pipeline as ``cfg.workers`` local processes; return the exit status for the CLI."""
    num = cfg.workers or 1
    check_pipeline_config(cfg, num)
    if resume_dir is None:
        run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg.method, cfg.model)
        check_new_run_dir(run_dir)
        cfg = replace(cfg, out=str(run_dir))
    else:
        run_dir = resume_dir
    with tempfile.TemporaryDirectory(prefix="degl-workers-") as tmp:
        config_path = Path(tmp) / "config.json"
        config_path.write_text(json.dumps(cfg.to_dict()))
        port = free_port()
        procs = []
        for rank in range(num):
            env = {
                **os.environ,
                "RANK": str(rank),
                "WORLD_SIZE": str(num),
                "LOCAL_RANK": str(rank),
                "LOCAL_WORLD_SIZE": str(num),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": str(port),
                "DEGL_WORKER": "1",
                "DEGL_WORKER_CONFIG": str(config_path),
                "DEGL_WORKER_RESUME": str(resume_dir) if resume_dir is not None else "",
            }
            procs.append(subprocess.Popen([sys.executable, "-m", "degl", "train"], env=env, start_new_session=True))
        codes = _watch(procs, cfg.fault_timeout)
    failed = [(rank, code) for rank, code in enumerate(codes) if code not in EXPECTED]
    if failed or PEER_FAILED in codes:
        causes = "; ".join(f"rank {r} (stage {r}) {describe_exit(c)}" for r, c in failed) or "a rank failed"
        followers = [str(r) for r, c in enumerate(codes) if c == PEER_FAILED]
        note = f"; rank(s) {', '.join(followers)} stopped because of it" if followers else ""
        print(f"degl: error: {causes}{note}", file=sys.stderr)
        return 1
    if codes[0] in (2, 130):
        return codes[0]
    summary_path = run_dir / "summary.json"
    if summary_path.is_file():
        from degl.cli import print_summary

        print_summary(json.loads(summary_path.read_text()), run_dir)
    return 0


def _watch(procs: list[subprocess.Popen], fault_timeout: float) -> list[int]:
    """Wait for every rank; after the first failure give the others ``fault_timeout`` s, then kill them."""
    signals = {"count": 0}

    def on_signal(signum: int, frame: object) -> None:
        signals["count"] += 1
        if signals["count"] == 1:
            print(
                "degl: stopping: rank 0 will stop the pipeline after its current step (Ctrl-C again to kill)",
                file=sys.stderr,
            )
            if procs[0].poll() is None:
                procs[0].send_signal(signal.SIGINT)
        else:
            for proc in procs:
                if proc.poll() is None:
                    proc.kill()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    deadline = None
    try:
        while True:
            codes = [proc.poll() for proc in procs]
            if all(code is not None for code in codes):
                return codes  # type: ignore[return-value]
            if deadline is None and any(code is not None and code not in (0, 2, 130) for code in codes):
                # Peers notice a dead neighbour at once or after --fault-timeout; then the backstop.
                deadline = time.monotonic() + fault_timeout + 10
            if deadline is not None and time.monotonic() > deadline:
                for proc in procs:
                    if proc.poll() is None:
                        proc.kill()
                deadline = float("inf")
            time.sleep(0.1)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def local_rank_pids(launcher_pid: int) -> dict[int, int]:
    """PIDs of the ranks that the ``degl train --workers`` process ``launcher_pid`` started, by rank.

    Linux only (reads ``/proc``); for tests, benchmarks and tools that need to signal one rank.
    """
    pids = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) != launcher_pid:
            continue
        env = dict(item.split(b"=", 1) for item in environ if b"=" in item)
        if env.get(b"DEGL_WORKER") == b"1":
            pids[int(env[b"RANK"])] = int(entry)
    return pids
