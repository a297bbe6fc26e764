"""Train one stage per process from Python: the pipeline API behind ``degl.train_stage``.

Inside a function started by :func:`degl.launch` (or under ``torchrun``), every rank builds the
same stages (same seed), and :func:`train_stage` trains stage ``env.rank`` in the synchronous (or
asynchronous) pipeline. Rank 0 alone needs the data. This is the rank loop the CLI runs, with no
run directory: the reports come back as :attr:`PipelineResult.history`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist

from degl.core.replay_buffer import BufferOptions
from degl.core.stage import Stage, head_classes
from degl.core.step import LossFn, StageStep
from degl.runtime.build import check_pipeline_method, make_link, make_rank, make_step
from degl.runtime.dist import DistEnv
from degl.runtime.plan import BatchSource, Plan
from degl.runtime.stopping import IgnoreSignals, StopPolicy, StopRequest


class IterableSource:
    """Adapts a re-iterable of batches (a list, a ``torch.utils.data.DataLoader``) to :class:`BatchSource`."""

    def __init__(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> None:
        self.batches, self.device = batches, device

    def epoch(self, epoch: int = 0, start_step: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in itertools.islice(iter(self.batches), start_step, None):
            yield x.to(self.device), y.to(self.device)


def batch_sizes(batches: Any, what: str) -> tuple[int, ...]:
    """Every batch size of one pass, known in advance: degl loaders say so, DataLoaders are computed."""
    if hasattr(batches, "batch_sizes"):
        return tuple(batches.batch_sizes())
    if isinstance(batches, torch.utils.data.DataLoader) and batches.batch_size is not None:
        n, size = len(batches.dataset), batches.batch_size  # type: ignore[arg-type]
        full, rest = divmod(n, size)
        return (size,) * full + ((rest,) if rest and not batches.drop_last else ())
    if isinstance(batches, (list, tuple)):
        return tuple(len(y) for _, y in batches)
    raise ValueError(
        f"{what} must be a degl loader, a torch DataLoader with a batch_size, or a list of (x, y) batches: "
        "the other ranks must know every batch size before the first step"
    )


@dataclass
class PipelineResult:
    """What :func:`train_stage` returns on every rank."""

    step: StageStep
    """This rank's trained stage with its optimizer."""
    stopped: bool
    history: list[dict[str, Any]] = field(default_factory=list)
    """Rank 0: per epoch, every rank's report (test loss/accuracy, lr, idle fractions)."""

    def test_acc(self) -> list[float] | None:
        """Rank 0: the last epoch's test accuracy of every stage (percent), if the test set was given."""
        if not self.history or self.history[-1]["reports"][-1]["eval"] is None:
            return None
        # dni, cdni, ddg, fr: only the last stage has a trained head, the others report None
        return [r["eval"]["acc"] for r in self.history[-1]["reports"] if r["eval"] is not None]


def train_stage(
    env: DistEnv,
    stages: Sequence[Stage],
    make_optimizer: Callable[..., torch.optim.Optimizer],
    *,
    train_batches: Any = None,
    test_batches: Any = None,
    epochs: int = 1,
    make_scheduler: Callable[..., Any] | None = None,
    loss_fn: LossFn | None = None,
    precision: str = "fp32",
    max_in_flight: int = 2,
    max_steps: int | None = None,
    method: str = "dgl",
    buffer_size: int = 4,
    max_reuse: int | None = None,
    slowdown: float = 1.0,
    progress: bool | None = None,
    seed: int = 0,
) -> PipelineResult:
    """Train stage ``env.rank`` of ``stages`` in the pipeline of ``env.world_size`` processes.

    Args:
        env: from :func:`degl.launch` (or ``setup_rank`` under torchrun).
        stages: all K stages, built identically on every rank (seed first); K = world size.
        make_optimizer: ``f(params) -> optimizer`` (each rank builds its stage's own), as :class:`degl.DGL`'s.
        train_batches, test_batches: rank 0's data (degl loader, DataLoader or list of batches);
            ignored on the other ranks. Without ``test_batches`` nothing is evaluated.
        make_scheduler: ``f(optimizer) -> lr scheduler``, stepped every training step.
        method: ``dgl`` (synchronous, bit-identical to :class:`degl.DGL`), ``async-dgl`` (replay
            buffers of ``buffer_size`` batches between ranks, each reused at most ``max_reuse`` times),
            or one of the alternatives ``dni``, ``cdni``, ``ddg``, ``fr`` (gradients flow back between
            ranks; bit-identical to :class:`degl.GradientMethod`; only the last stage has a loss).
        seed: seeds the DNI/cDNI synthesizers and the replay buffers (the same on every rank, and in one process).
        progress: rank 0's progress bars: True, False, or None (drawn when stderr is a terminal).
        slowdown: make this rank emulate a device that many times slower (it repeats each step's
            work without effect; e.g. ``3.0 if env.rank == 1 else 1.0``).

    Returns:
        a :class:`PipelineResult`: this rank's trained step, and on rank 0 every epoch's reports
        (``result.test_acc()``: the last epoch's test accuracy of every stage).
    """
    if len(stages) != env.world_size:
        raise ValueError(
            f"{len(stages)} stages for {env.world_size} processes: the pipeline runs one stage per process"
        )
    check_pipeline_method(method)
    if env.rank == 0 and train_batches is None:
        raise ValueError("rank 0 needs train_batches")
    device = env.device
    num_classes = head_classes(stages[-1])
    step = make_step(
        method,
        stages[env.rank].to(device),
        num_stages=len(stages),
        num_classes=num_classes,
        make_optimizer=make_optimizer,
        make_scheduler=make_scheduler,
        seed=seed,
        precision=precision,
        device=device,
        loss_fn=loss_fn,
    )
    plan: list[Any] = [None]
    if env.rank == 0:
        eval_sizes = batch_sizes(test_batches, "test_batches") if test_batches is not None else ()
        plan = [Plan(batch_sizes(train_batches, "train_batches"), eval_sizes, num_classes, epochs, precision)]
    dist.broadcast_object_list(plan, src=0)
    source: BatchSource | None = None
    if env.rank == 0:
        source = train_batches if hasattr(train_batches, "epoch") else IterableSource(train_batches, device)
    rank = make_rank(
        method,
        step,
        make_link(method, env.rank, env.world_size, device, max_in_flight=max_in_flight),
        plan[0],
        rank=env.rank,
        world=env.world_size,
        buffers=BufferOptions(buffer_size, max_reuse=max_reuse) if method == "async-dgl" else None,
        seed=seed,
        queue_depth=max_in_flight,
        timeout_s=env.timeout_s,
        train_batches=source,
        test_batches=_OnDevice(test_batches, device) if env.rank == 0 and test_batches is not None else None,
        progress=progress,
        slowdown=slowdown,
    )
    with StopRequest("stopping the pipeline after this step") if env.rank == 0 else IgnoreSignals() as stop:
        stopped = rank.fit(StopPolicy(max_steps, stop))
    return PipelineResult(step, stopped, rank.history)


class _OnDevice:
    """Re-iterable view of test batches moved to the rank's device (evaluated after every epoch)."""

    def __init__(self, batches: Iterable[tuple[torch.Tensor, torch.Tensor]], device: torch.device) -> None:
        self.batches, self.device = batches, device

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, y in self.batches:
            yield x.to(self.device), y.to(self.device)
