"""Build one pipeline rank from its parts: the stage step, the link, the replay buffer, the loop.

Every way of running a pipeline builds its ranks here: ``degl.train_stage``
(:mod:`degl.runtime.pipeline`), ``degl train --workers K`` (:mod:`degl.run.pipeline_run`) and
``degl bench pipeline`` (:mod:`degl.bench.pipeline_ranks`, :mod:`degl.bench.method_ranks`). The
method decides which loop runs:

    dgl                  :class:`~degl.runtime.sync_rank.SyncRank` (activations forward only)
    async-dgl            :class:`~degl.runtime.async_rank.AsyncRank` (replay buffers; ``--buffer 0``
                         is the synchronous loop)
    dni, cdni, ddg, fr   :class:`~degl.runtime.gradient_rank.GradientRank` (gradients flow back)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from degl.core.alternatives import GRADIENT_METHODS, make_gradient_step
from degl.core.replay_buffer import BufferOptions, replay_buffer_for
from degl.core.stage import Stage
from degl.core.step import LossFn, Precision, StageStep
from degl.runtime.async_rank import AsyncRank
from degl.runtime.dist import staging_device
from degl.runtime.gradient_rank import GradientLink, GradientRank
from degl.runtime.plan import Link, Plan
from degl.runtime.sync_rank import SyncRank

PIPELINE_METHODS = ("dgl", "async-dgl", *GRADIENT_METHODS)
"""The methods a multi-process pipeline runs (the others train in one process only)."""


def check_pipeline_method(method: str) -> None:
    if method not in PIPELINE_METHODS:
        raise ValueError(f"method must be one of {', '.join(PIPELINE_METHODS)}; got {method!r}")


def make_step(
    method: str,
    stage: Stage,
    *,
    num_stages: int,
    num_classes: int,
    make_optimizer: Callable[..., torch.optim.Optimizer],
    make_scheduler: Callable[..., Any] | None = None,
    seed: int = 0,
    precision: str | Precision = "fp32",
    device: torch.device | None = None,
    loss_fn: LossFn | None = None,
    reset_at_decay: bool = False,
) -> StageStep:
    """Stage ``stage.index``'s step for ``method``: the same object one process trains.

    ``seed`` starts the dni/cdni synthesizers as the one-process run starts them.
    """
    options: dict[str, Any] = {
        "precision": precision,
        "device": device,
        "reset_at_decay": reset_at_decay,
        "loss_fn": loss_fn,
    }
    if method in GRADIENT_METHODS:
        return make_gradient_step(
            method,
            stage,
            num_stages=num_stages,
            num_classes=num_classes,
            seed=seed,
            make_optimizer=make_optimizer,
            make_scheduler=make_scheduler,
            **options,
        )
    return StageStep(stage, make_optimizer, scheduler=make_scheduler, **options)


def make_link(
    method: str,
    rank: int,
    world: int,
    device: torch.device,
    *,
    max_in_flight: int = 2,
    link_mbps: float | None = None,
) -> Link:
    """Rank ``rank``'s connections to its neighbours; gradient methods also receive gradients back."""
    options = {"max_in_flight": max_in_flight, "staging": staging_device(device), "link_mbps": link_mbps}
    if method in GRADIENT_METHODS:
        return GradientLink.for_gradients(rank, world, device, **options)
    return Link.for_rank(rank, world, device, **options)


def make_rank(
    method: str,
    step: StageStep,
    link: Link,
    plan: Plan,
    *,
    rank: int,
    world: int,
    buffers: BufferOptions | None = None,
    seed: int = 0,
    queue_depth: int = 2,
    timeout_s: float = 300.0,
    **loop: Any,
) -> SyncRank:
    """The rank loop of ``method`` around ``step`` and ``link``.

    ``buffers``: async-dgl's replay buffers (capacity 0 or None: the synchronous loop, as dgl); rank
    k > 0 owns the buffer of boundary k - 1, seeded by ``seed`` and that boundary.
    ``queue_depth``, ``timeout_s``: the asynchronous loop's receive queue and how long a silent
    predecessor may stay silent (gradient methods use ``timeout_s`` too).
    ``loop``: what every loop takes (see :class:`~degl.runtime.sync_rank.SyncRank`).
    """
    check_pipeline_method(method)
    if method in GRADIENT_METHODS:
        return GradientRank(step, link, plan, rank=rank, world=world, timeout_s=timeout_s, **loop)  # type: ignore[arg-type]
    if method == "dgl" or buffers is None or buffers.capacity == 0:
        return SyncRank(step, link, plan, rank=rank, world=world, **loop)
    buffer = replay_buffer_for(buffers, rank - 1, seed=seed, device=step.device) if rank > 0 else None
    return AsyncRank(
        step,
        link,
        plan,
        rank=rank,
        world=world,
        buffer=buffer,
        queue_depth=queue_depth,
        timeout_s=timeout_s,
        **loop,
    )
