"""Start K local ranks from Python over torch's own launcher, and watch them.

:func:`launch` is the Python entry: ``degl.launch(fn, nprocs=K, args=...)`` runs ``fn(env, *args)``
in K fresh processes (``torch.multiprocessing.start_processes``, spawn), each with the environment
``torchrun`` would give it and a ``torch.distributed`` process group, and returns what each rank's
``fn`` returned. ``degl train --workers K`` uses :func:`start` and :func:`watch` the same way.

The ranks live in their own session: Ctrl-C reaches the launching process only, which asks rank 0
to stop the pipeline in order (checkpoint included); a second Ctrl-C kills every rank. When a rank
fails, its neighbours notice at once (a closed connection) or after the process group's timeout;
:func:`watch` kills whatever is left ``fault_timeout + 10`` s after the first failure.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from degl.runtime.dist import DistEnv, default_threads, device_for, dist_env, free_port, init_process_group, pin_cpus
from degl.runtime.stopping import signals_handled
from degl.runtime.transport import PeerError

PEER_FAILED = 3  # exit status of a rank that stopped because a neighbour failed
STOPPED = 130
# Exit statuses that are not a failure of that rank: done, user error (reported by rank 0), stopped
# on request, stopped because a neighbour failed.
EXPECTED = (0, 2, STOPPED, PEER_FAILED)
RANK_NAME = "degl-rank"
# After a rank fails, the others get this long to notice and stop by themselves (a rank waiting on the
# failed one notices at once); then the launcher stops them, so a rank busy in local code cannot hold the
# job (and the error) for minutes.
FAILURE_GRACE_S = 5.0


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"was killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"was killed by signal {-code}"
    return f"exited with status {code}"


def start(
    fn: Callable[..., int | None], nprocs: int, args: Sequence[Any] = (), *, start_method: str = "spawn"
) -> mp.ProcessContext:
    """Start ``fn(*args)`` in ``nprocs`` local ranks; the exit status of each is what ``fn`` returns.

    ``spawn`` (the default) starts fresh interpreters; ``fork`` skips re-importing torch (about 2 s
    per rank here) and is safe only while this process has run no torch computation yet (OpenMP
    and CUDA do not survive a fork).
    """
    port = free_port()
    return mp.start_processes(
        _bootstrap, args=(fn, tuple(args), nprocs, port), nprocs=nprocs, join=False, start_method=start_method
    )


def _bootstrap(local_rank: int, fn: Callable[..., int | None], args: tuple[Any, ...], nprocs: int, port: int) -> None:
    os.setsid()  # a terminal's Ctrl-C goes to the launcher, which stops rank 0 in order
    os.environ.update(
        {
            "RANK": str(local_rank),
            "WORLD_SIZE": str(nprocs),
            "LOCAL_RANK": str(local_rank),
            "LOCAL_WORLD_SIZE": str(nprocs),
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "DEGL_LAUNCHED": "1",
        }
    )
    # `ps` and local_rank_pids() tell the ranks apart by name.
    with contextlib.suppress(OSError):
        Path("/proc/self/comm").write_text(f"{RANK_NAME}{local_rank}")
    code = fn(*args)
    sys.stdout.flush()
    sys.stderr.flush()
    if code:
        os._exit(code)  # skip interpreter teardown: a process group whose peers died can block it


def watch(context: mp.ProcessContext, fault_timeout: float, on_tick: Callable[[], None] | None = None) -> list[int]:
    """Wait for every rank and return their exit statuses (negative: killed by that signal).

    ``on_tick`` runs while waiting (e.g. to drain a results queue the ranks would otherwise block on).
    """
    procs = context.processes
    signals = {"count": 0}

    def on_signal(signum: int, frame: object) -> None:
        signals["count"] += 1
        if signals["count"] == 1:
            print(
                "degl: stopping: rank 0 will stop the pipeline after its current step (Ctrl-C again to kill)",
                file=sys.stderr,
            )
            if procs[0].exitcode is None:
                os.kill(procs[0].pid, signal.SIGINT)
        else:
            for proc in procs:
                if proc.exitcode is None:
                    proc.kill()

    deadline = None
    stopped_by_launcher: set[int] = set()
    with signals_handled(on_signal):
        while True:
            if on_tick is not None:
                on_tick()
            codes = [proc.exitcode for proc in procs]
            if all(code is not None for code in codes):
                if on_tick is not None:
                    on_tick()
                for proc in procs:
                    proc.join()
                # A rank the launcher stopped did not fail: it stopped because another one did.
                return [PEER_FAILED if r in stopped_by_launcher else c for r, c in enumerate(codes)]  # type: ignore[misc]
            if deadline is None and any(code is not None and code not in (0, 2, STOPPED) for code in codes):
                deadline = time.monotonic() + min(FAILURE_GRACE_S, fault_timeout + 10)
            if deadline is not None and time.monotonic() > deadline:
                for rank, proc in enumerate(procs):
                    if proc.exitcode is None:
                        stopped_by_launcher.add(rank)
                        proc.kill()
                deadline = float("inf")
            time.sleep(0.05)


def failures(codes: Sequence[int]) -> str | None:
    """One line naming the ranks that failed (and those that stopped because of them), or None."""
    failed = [(rank, code) for rank, code in enumerate(codes) if code not in EXPECTED]
    if not failed and (PEER_FAILED not in codes or 2 in codes):
        return None  # no failure, or a user error: that rank has printed its one line
    causes = "; ".join(f"rank {r} (stage {r}) {describe_exit(c)}" for r, c in failed) or "a rank failed"
    followers = [str(r) for r, c in enumerate(codes) if c == PEER_FAILED]
    note = f"; rank(s) {', '.join(followers)} stopped because of it" if followers else ""
    return f"{causes}{note}"


def log(rank: int, message: str) -> None:
    print(f"degl: rank {rank} (stage {rank}): {message}", file=sys.stderr, flush=True)


def setup_rank(*, threads: int | None, pin: bool, device: str, timeout_s: float) -> DistEnv:
    """Threads, core binding, device and process group of this rank (under torchrun or a launcher)."""
    env = dist_env()
    if env is None:  # a world of one process: no torchrun-style variables needed
        rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
        env = DistEnv(rank, world, rank, "degl" if os.environ.get("DEGL_LAUNCHED") == "1" else "torchrun")
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size))
    threads = threads or default_threads(local_world)
    if pin and not device.startswith("cuda"):
        pin_cpus(env.local_rank, threads, local_world)
    torch.set_num_threads(threads)
    env = replace(env.on(device_for(env, device)), timeout_s=timeout_s)
    init_process_group(env, env.device, timeout_s)
    return env


def launch(
    fn: Callable[..., Any],
    nprocs: int,
    args: Sequence[Any] = (),
    *,
    threads: int | None = None,
    pin_cpus: bool = True,
    device: str = "cpu",
    timeout_s: float = 300.0,
) -> list[Any]:
    """Run ``fn(env, *args)`` in ``nprocs`` processes and return each rank's result, by rank.

    Every rank gets a :class:`~degl.runtime.dist.DistEnv` (``rank``, ``world_size``, ``device``)
    and an initialised ``torch.distributed`` process group (gloo on CPU, NCCL when each rank has a
    GPU). ``fn`` and ``args`` must be picklable (a module-level function; in a script, call
    ``launch`` under ``if __name__ == "__main__":``), as must the results. ``threads`` per rank
    defaults to cores // nprocs. Raises ``RuntimeError`` naming the rank when one fails.
    """
    if nprocs < 1:
        raise ValueError(f"nprocs must be at least 1, got {nprocs}")
    results = mp.get_context("spawn").SimpleQueue()
    context = start(_python_rank, nprocs, (fn, tuple(args), threads, pin_cpus, device, timeout_s, results))
    gathered: dict[int, Any] = {}

    def drain() -> None:
        while not results.empty():
            rank, payload = results.get()
            gathered[rank] = pickle.loads(payload)

    codes = watch(context, timeout_s, on_tick=drain)
    problem = failures(codes)
    if problem is not None:
        raise RuntimeError(f"degl.launch: {problem} (its traceback is above)")
    if STOPPED in codes:
        raise KeyboardInterrupt
    return [gathered.get(rank) for rank in range(nprocs)]


def _python_rank(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    threads: int | None,
    pin: bool,
    device: str,
    timeout_s: float,
    results: Any,
) -> int:
    rank = int(os.environ["RANK"])
    try:
        env = setup_rank(threads=threads, pin=pin, device=device, timeout_s=timeout_s)
        value = fn(env, *args)
        # Plain pickling: torch's queue would share tensors through files that vanish with this process.
        results.put((rank, pickle.dumps(value)))
        dist.barrier()
        dist.destroy_process_group()
    except PeerError as exc:
        log(rank, f"error: {exc}")
        return PEER_FAILED
    except KeyboardInterrupt:
        log(rank, "aborted")
        return STOPPED
    except Exception:
        log(rank, "error:\n" + traceback.format_exc())
        return 1
    return 0


def local_rank_pids(launcher_pid: int) -> dict[int, int]:
    """PIDs of the ranks that the process ``launcher_pid`` started (:func:`start`), by rank.

    Linux only (reads ``/proc``); for tests, benchmarks and tools that need to signal one rank.
    """
    pids = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        name, rest = stat.split("(", 1)[1].rsplit(")", 1)
        if int(rest.split()[1]) == launcher_pid and name.startswith(RANK_NAME):
            pids[int(name[len(RANK_NAME) :])] = int(entry)
    return pids
