"""``degl bench memory --method M,N,...``: what each stage (one pipeline rank) holds, per method.

Measured in one process running the method's own trainer, whose order of operations per stage is
the pipeline rank's (:mod:`degl.core.alternatives`), on a fresh copy of the batch every step (as a
loader gives), until every stage is in its steady state (2(K-1) + 1 steps; dgl: 1), then over one more:

    kept        bytes the stage keeps from one step to the next for the gradients still owed: its
                pending inputs (fr), outputs (dni) or forward graphs with their weight snapshots
                (ddg), together with everything those graphs saved for backward; each storage once
    peak        the high-water mark during a step of (bytes saved for backward by the stage's own
                computations, the graphs it keeps included) together with the kept tensors
    state       what the stage trains, between steps: parameters, buffers, gradients and optimizer
                state of its block, of the head it trains (every stage's for dgl, the last stage's
                otherwise) and of dni's synthesizer; "own" is the method's extra module in it (dgl's
                aux head, dni's synthesizer)

Saved tensors are seen through ``torch.autograd.graph.saved_tensors_hooks``
(:class:`~degl.core.measure.SavedActivationMeter`), parameters excluded; kept tensors by walking the
stage's pending queue. Not counted: transport buffers and gradients in flight between ranks (in
one process they wait in a queue that a pipeline does not need), temporaries neither saved nor kept.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from degl.core.alternatives.steps import DelayedGradientStep
from degl.core.measure import SavedActivationMeter
from degl.core.methods import build_method
from degl.core.optim import OptimSettings
from degl.core.split import build_stages
from degl.core.stage import Stage
from degl.models import build_model
from degl.run.config import parse_cuts, parse_shape

Key = tuple[torch.device, int]


def storages(obj: Any, found: dict[Key, int] | None = None) -> dict[Key, int]:
    """Every tensor storage reachable from ``obj`` through tuples, lists, dicts and deques, by key."""
    found = {} if found is None else found
    if isinstance(obj, torch.Tensor):
        storage = obj.untyped_storage()
        if storage.data_ptr() != 0:
            found[(obj.device, storage.data_ptr())] = storage.nbytes()
    elif isinstance(obj, dict):
        for value in obj.values():
            storages(value, found)
    elif isinstance(obj, (list, tuple)) or hasattr(obj, "popleft"):
        for value in obj:
            storages(value, found)
    return found


def module_state(modules: Iterable[nn.Module], optimizers: Iterable[torch.optim.Optimizer]) -> dict[Key, int]:
    """Parameters, buffers, gradients and the optimizers' state for those parameters, by storage."""
    found: dict[Key, int] = {}
    params = set()
    for module in modules:
        storages(list(module.parameters()), found)
        storages(list(module.buffers()), found)
        storages([p.grad for p in module.parameters() if p.grad is not None], found)
        params |= set(module.parameters())
    for optimizer in optimizers:
        storages([state for p, state in optimizer.state.items() if p in params], found)
    return found


class KeptMeter(SavedActivationMeter):
    """Saved-for-backward bytes of one stage's computations, and the peak of those together with
    what the stage keeps (``kept()``), sampled whenever either grows."""

    def __init__(self, exclude: Iterable[torch.Tensor], kept: Callable[[], dict[Key, int]]) -> None:
        super().__init__(exclude)
        self.kept = kept
        self.union_peak = 0

    def _acquire(self, key: Key, nbytes: int) -> None:
        super()._acquire(key, nbytes)
        self.sample()

    def saved(self) -> dict[Key, int]:
        return {key: entry[1] for key, entry in self._refs.items()}

    def union(self) -> int:
        return sum({**self.kept(), **self.saved()}.values())

    def sample(self) -> None:
        self.union_peak = max(self.union_peak, self.union())


@dataclass
class StageMemory:
    kept_bytes: int
    kept_batches: int
    snapshot_bytes: int
    """Of ``kept_bytes``: weight snapshots (ddg)."""
    saved_peak_bytes: int
    """Peak bytes saved for backward during the step (graphs kept from earlier steps included)."""
    peak_bytes: int
    state_bytes: int
    own_bytes: int
    """Of ``state_bytes``: the method's own module (dgl's aux head, dni's synthesizer)."""


def bench_stages(args: argparse.Namespace, device: torch.device) -> list[Stage]:
    """The stages of ``build_bench_models``, initialised identically, for one more method."""
    torch.manual_seed(args.seed)
    shape = parse_shape(args.input_shape)
    backbone = build_model(args.model, width=args.width, input_shape=shape, num_classes=args.num_classes)
    stages = build_stages(backbone, args.stages, aux=args.aux, cuts=parse_cuts(args.cuts), split=args.split)
    stages = [s.to(device) for s in stages]
    return [s.to(memory_format=torch.channels_last) for s in stages] if args.channels_last else stages


def _wrap(obj: Any, names: tuple[str, ...], meter: KeptMeter) -> None:
    """Run ``obj``'s methods ``names`` inside ``meter`` (an instance attribute shadows the method)."""
    for name in names:
        call = getattr(obj, name)

        def metered(*args: Any, _call: Callable[..., Any] = call, **kwargs: Any) -> Any:
            with meter:
                out = _call(*args, **kwargs)
            meter.sample()
            return out

        setattr(obj, name, metered)


def measure_method(
    name: str, stages: list[Stage], x: torch.Tensor, y: torch.Tensor, args: argparse.Namespace
) -> tuple[list[StageMemory], int | None]:
    """Per stage figures of ``name`` in its steady state, and the process's CUDA peak over that step."""
    device = x.device
    settings = OptimSettings(lr=0.01, schedule="constant")
    method = build_method(
        name, stages, make_optimizer=settings.make_optimizer, precision=args.precision, device=device, codec_seed=0
    )
    steps: list[Any] = method.steps  # type: ignore[attr-defined]
    last = len(stages) - 1
    meters = []
    for step in steps:
        synthesizer = getattr(step, "synthesizer", None)
        params = [*step.stage.parameters(), *(synthesizer.parameters() if synthesizer is not None else [])]
        kept = getattr(step, "pending", None)
        meter = KeptMeter(params, (lambda q=kept: storages(q)) if kept is not None else dict)
        _wrap(step, ("advance", "settle") if name != "dgl" else ("step",), meter)
        meters.append(meter)
    # Until every stage has updated once (optimizer state exists) and keeps its full queue: 2(K-1) + 1
    # steps for the methods with delays, one for dgl.
    for _ in range(1 if name == "dgl" else 2 * last + 1):
        method.train_step(x.clone(), y.clone())
    for meter in meters:
        meter.peak_bytes = meter.live_bytes
        meter.union_peak = meter.union()
    cuda_peak = None
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    method.train_step(x.clone(), y.clone())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        cuda_peak = torch.cuda.max_memory_allocated(device)
    figures = []
    for index, (step, meter) in enumerate(zip(steps, meters)):
        pending = getattr(step, "pending", ())
        kept = {**storages(pending), **meter.saved()}
        ddg = isinstance(step, DelayedGradientStep) and not step.replay
        snapshots = storages([weights for _, _, weights in pending] if ddg else [])
        trained = [step.stage.block, step.stage.head] if name == "dgl" or index == last else [step.stage.block]
        own: list[nn.Module] = [step.stage.head] if name == "dgl" and index < last else []
        optimizers = [step.optimizer]
        if getattr(step, "synthesizer", None) is not None:
            own.append(step.synthesizer)
            optimizers.append(step.synth_optimizer)
        figures.append(
            StageMemory(
                kept_bytes=sum(kept.values()),
                kept_batches=len(pending),
                snapshot_bytes=sum(snapshots.values()),
                saved_peak_bytes=meter.peak_bytes,
                peak_bytes=meter.union_peak,
                state_bytes=sum(module_state([*trained, *own], optimizers).values()),
                own_bytes=sum(module_state(own, optimizers).values()),
            )
        )
    method.finish_epoch()
    return figures, cuda_peak


def kept_words(name: str, stage: StageMemory) -> str:
    n = stage.kept_batches
    if n == 0:
        return "nothing"
    what = {"ddg": "forward graphs + weight snapshots", "fr": "inputs"}.get(name, "outputs")
    return f"{n} {what}"


def table(per_method: dict[str, list[StageMemory]]) -> list[str]:
    mib = 2**20
    lines = [
        f"{'method':<8}{'stage':>5}{'kept':>9}{'peak':>9}{'saved pk':>10}{'state':>9}{'own':>8}   kept between steps"
    ]
    for name, stages in per_method.items():
        for index, s in enumerate(stages):
            lines.append(
                f"{name:<8}{index:>5}{s.kept_bytes / mib:>9.2f}{s.peak_bytes / mib:>9.2f}"
                f"{s.saved_peak_bytes / mib:>10.2f}{s.state_bytes / mib:>9.2f}{s.own_bytes / mib:>8.2f}   "
                f"{kept_words(name, s)}"
            )
    lines += [
        "MiB per stage (= per pipeline rank), steady state: the step after 2(K-1)+1 (dgl: 1), in one process,",
        "in the ranks' order. kept: tensors kept between steps for gradients still owed, with everything their",
        "graphs saved for backward; peak: high-water mark in a step of (saved for backward + kept); saved pk: of",
        "saved for backward alone (saved_tensors_hooks); state: trained parameters, buffers, gradients, optimizer",
        "state; own: of it dgl's aux head or dni's synthesizer. Transport buffers, gradients in flight: not counted.",
    ]
    return lines


def as_json(figures: list[StageMemory]) -> list[dict[str, int]]:
    return [asdict(s) for s in figures]
