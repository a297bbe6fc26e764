"""Functions that tests run in ranks started by ``degl.launch`` (spawned processes import them by name)."""

from __future__ import annotations

import os

import torch
from torch import nn

import degl


def tiny_net() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 8, 3, padding=1, stride=2),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.ReLU(),
    )


def tiny_stages(num_stages: int) -> list[degl.Stage]:
    torch.manual_seed(0)
    return degl.build_stages(tiny_net(), num_stages, aux="mlp", input_shape=(1, 8, 8), num_classes=3)


def tiny_batches(n: int, size: int = 16, seed: int = 1) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(size, 1, 8, 8, generator=generator), torch.randint(0, 3, (size,), generator=generator))
        for _ in range(n)
    ]


def sgd(params):
    return torch.optim.SGD(params, lr=0.05, momentum=0.9)


def train_tiny_pipeline(env: degl.DistEnv, epochs: int, method: str = "dgl") -> dict:
    """Every rank builds the same stages; rank 0 alone has the data."""
    stages = tiny_stages(env.world_size)
    train = tiny_batches(6) if env.rank == 0 else None
    test = tiny_batches(2, size=10, seed=2) if env.rank == 0 else None
    result = degl.train_stage(
        env, stages, sgd, train_batches=train, test_batches=test, epochs=epochs, method=method, progress=False
    )
    return {
        "rank": env.rank,
        "world": env.world_size,
        "weights": {k: v.clone() for k, v in result.step.stage.state_dict().items()},
        "test_acc": result.test_acc(),
    }


def whoami(env: degl.DistEnv, tag: str) -> tuple[str, int, int, int]:
    return tag, env.rank, env.world_size, torch.get_num_threads()


def fail_on_rank_one(env: degl.DistEnv) -> None:
    if env.rank == 1:
        raise ValueError("rank one refuses")
    torch.distributed.barrier()


def kill_rank_one(env: degl.DistEnv) -> None:
    if env.rank == 1:
        os._exit(7)
    torch.distributed.barrier()


def async_with_a_slow_last_rank(env):
    """The fast rank finishes its budget long before the slow one releases it (longer than the
    process group's timeout in the test): it must keep serving, then stop cleanly."""
    stages = tiny_stages(2)
    result = degl.train_stage(
        env,
        stages,
        sgd,
        train_batches=tiny_batches(8) if env.rank == 0 else None,
        epochs=4,
        method="async-dgl",
        buffer_size=4,
        slowdown=100.0 if env.rank == 1 else 1.0,
        progress=False,
    )
    if env.rank != 0:
        return None
    reports = result.history[-1]["reports"]
    return [r["steps"] for r in reports], [r["served"] for r in reports], [r["budget_s"] for r in reports]


def fail_on_rank_1_while_rank_0_computes(env: degl.DistEnv) -> None:
    if env.rank == 1:
        raise ValueError("rank 1 refuses")
    import time

    time.sleep(120)  # local work that never talks to rank 1: only the launcher can stop it


def async_with_a_slow_first_rank(env):
    """The last rank is through its budget long before the slowed first one (longer than the process
    group's timeout in the test): released, the first rank keeps telling it that it is alive."""
    result = degl.train_stage(
        env,
        tiny_stages(2),
        sgd,
        train_batches=tiny_batches(8) if env.rank == 0 else None,
        epochs=4,
        method="async-dgl",
        buffer_size=4,
        slowdown=100.0 if env.rank == 0 else 1.0,
        progress=False,
    )
    return [r["steps"] for r in result.history[-1]["reports"]] if env.rank == 0 else None
