"""Process-group plumbing: who am I, which device, how to reach the others.

Ranks are started either by ``torchrun`` (single or multi-node, its rendezvous sets RANK,
WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) or by :func:`degl.launch` / ``degl train
--workers K``, which set the same variables for K local processes. Rank k runs stage k.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, replace
from datetime import timedelta

import torch
import torch.distributed as dist

from degl.errors import UserError

CPU = torch.device("cpu")


@dataclass(frozen=True)
class DistEnv:
    """Who this rank is: what ``fn`` receives from :func:`degl.launch`."""

    rank: int
    world_size: int
    local_rank: int
    launcher: str  # "torchrun" or "degl"
    device: torch.device = CPU
    timeout_s: float = 300.0
    """How long this rank waits on a silent peer (the process group's timeout)."""

    def on(self, device: torch.device) -> DistEnv:
        return replace(self, device=device)

    @property
    def is_first(self) -> bool:
        return self.rank == 0

    @property
    def is_last(self) -> bool:
        return self.rank == self.world_size - 1


def dist_env() -> DistEnv | None:
    """The distributed environment set by torchrun or ``--workers``, or None for a plain process."""
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        return None
    world_size = int(os.environ["WORLD_SIZE"])
    if world_size < 2:
        return None
    launcher = "degl" if os.environ.get("DEGL_LAUNCHED") == "1" else "torchrun"
    return DistEnv(int(os.environ["RANK"]), world_size, int(os.environ.get("LOCAL_RANK", os.environ["RANK"])), launcher)


def device_for(env: DistEnv, requested: str) -> torch.device:
    """CPU, or GPU ``local_rank mod #GPUs`` (= rank mod #GPUs on one node)."""
    wants_cuda = requested.startswith("cuda") or (requested == "auto" and torch.cuda.is_available())
    if not wants_cuda:
        if requested not in ("cpu", "auto"):
            raise UserError(f"unsupported --device {requested!r} for the pipeline; use cpu, cuda or auto")
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise UserError(f"--device {requested} but no CUDA device is available; use --device cpu")
    device = torch.device("cuda", env.local_rank % torch.cuda.device_count())
    torch.cuda.set_device(device)
    return device


def init_process_group(env: DistEnv, device: torch.device, timeout_s: float) -> None:
    """NCCL when every local rank has a GPU of its own, else gloo (GPU tensors then travel through
    host memory: see :func:`staging_device`); every blocking operation gives up after ``timeout_s``."""
    local_ranks = int(os.environ.get("LOCAL_WORLD_SIZE", env.world_size))
    own_gpu = device.type == "cuda" and local_ranks <= torch.cuda.device_count()
    backend = "nccl" if own_gpu else "gloo"
    kwargs = {"device_id": device} if backend == "nccl" else {}
    try:
        dist.init_process_group(
            backend, rank=env.rank, world_size=env.world_size, timeout=timedelta(seconds=timeout_s), **kwargs
        )
    except (dist.DistError, TimeoutError) as exc:
        if env.launcher == "degl":
            raise
        where = f"{os.environ.get('MASTER_ADDR', '?')}:{os.environ.get('MASTER_PORT', '?')}"
        missing = "the other ranks did not join" if env.rank == 0 else "no rank 0 answered"
        raise UserError(
            f"RANK={env.rank} and WORLD_SIZE={env.world_size} are set (as torchrun sets them), but {missing} "
            f"at {where} within {timeout_s:.0f} s ({type(exc).__name__}); unset RANK, WORLD_SIZE, "
            "MASTER_ADDR and MASTER_PORT to train in one process, or start every rank"
        ) from None


def staging_device(device: torch.device) -> torch.device | None:
    """Where messages must be staged: the host when GPU tensors go through gloo, else nowhere."""
    if device.type == "cuda" and dist.get_backend() == "gloo":
        return torch.device("cpu")
    return None


def pin_cpus(local_rank: int, threads: int, local_world: int) -> set[int] | None:
    """Bind this process to cores ``[local_rank*threads, (local_rank+1)*threads)`` of its allowed set.

    Ranks of one machine then stop migrating between cores and evicting each other's caches (on
    the 2-core development machine the measured effect is within run-to-run noise). Does nothing,
    and returns None, when the ``local_world`` ranks' threads do not all fit in the allowed cores.
    """
    if not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    if local_world * threads > len(allowed):
        return None
    mine = allowed[local_rank * threads : (local_rank + 1) * threads]
    os.sched_setaffinity(0, set(mine))
    return set(mine)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def default_threads(num_processes: int) -> int:
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // num_processes)
