"""Single-process reference trainers: backprop, synchronous DGL and sequential greedy (SGL).

These are the oracles the multi-process runtime is tested against. A *phase* is a period in
which a fixed set of stages trains: one phase for ``backprop`` and ``dgl``, K phases (one per
stage, lower stages frozen) for ``sgl``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from degl.core.optim import OptimizerFactory, SchedulerFactory
from degl.core.stage import Stage
from degl.errors import UserError

PRECISION_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class StepResult:
    """One head's loss and number of correct predictions on one batch (0-dim tensors, detached)."""

    stage: int
    loss: torch.Tensor
    correct: torch.Tensor
    count: int


class Precision:
    """Autocast context and gradient scaling for one precision setting."""

    def __init__(
        self, precision: str, device: torch.device, *, init_scale: float = 2.0**16, growth_interval: int = 2000
    ) -> None:
        if precision not in PRECISION_DTYPES:
            raise UserError(f"unknown precision {precision!r}; choose fp32, bf16 or fp16")
        self.name = precision
        self.device_type = device.type
        self.dtype = PRECISION_DTYPES[precision]
        self.init_scale, self.growth_interval = init_scale, growth_interval
        if precision == "fp16" and device.type == "cpu":
            raise UserError("--precision fp16 needs a CUDA device; use bf16 on the CPU")

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def make_scaler(self) -> torch.amp.GradScaler | None:
        if self.name != "fp16":
            return None
        return torch.amp.GradScaler(self.device_type, init_scale=self.init_scale, growth_interval=self.growth_interval)


class Method:
    """Owns the stages' optimizers and schedules and performs training steps."""

    name: ClassVar[str]

    def __init__(
        self,
        stages: Sequence[Stage],
        *,
        make_optimizer: OptimizerFactory,
        make_scheduler: SchedulerFactory | None = None,
        precision: str = "fp32",
        device: torch.device | str = "cpu",
        reset_at_decay: bool = False,
        loss_scale_init: float = 2.0**16,
        loss_scale_growth_interval: int = 2000,
    ) -> None:
        self.stages = list(stages)
        self.reset_at_decay = reset_at_decay
        self.device = torch.device(device)
        self.precision = Precision(
            precision, self.device, init_scale=loss_scale_init, growth_interval=loss_scale_growth_interval
        )
        self._make_optimizer = make_optimizer
        self._make_scheduler = make_scheduler

    @property
    def num_phases(self) -> int:
        return 1

    def trained_stages(self, phase: int) -> list[int]:
        """Stages whose heads are trained (and reported) in ``phase``."""
        return list(range(len(self.stages)))

    def evaluated_stages(self, phase: int) -> list[int]:
        """Stages whose test accuracy is meaningful at the end of an epoch of ``phase``."""
        return self.trained_stages(phase)

    def start_phase(self, phase: int) -> None:
        for stage in self.stages:
            stage.train()

    def train_step(self, x: torch.Tensor, y: torch.Tensor, phase: int = 0) -> list[StepResult]:
        raise NotImplementedError

    def current_lrs(self) -> list[float]:
        raise NotImplementedError

    def _advance_schedule(self, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        """Step the lr schedule; with ``reset_at_decay`` a decay also clears the optimizer's state,
        which is what re-creating the optimizer does in the paper's ImageNet, DDG and buffer scripts."""
        if scheduler is None:
            return
        before = optimizer.param_groups[0]["lr"]
        scheduler.step()
        if self.reset_at_decay and optimizer.param_groups[0]["lr"] < before:
            optimizer.state.clear()

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError


def _result(stage: int, logits: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> StepResult:
    return StepResult(stage, loss.detach(), (logits.argmax(dim=1) == y).sum(), y.numel())


class LocalLearning(Method):
    """Methods where every stage has its own optimizer, schedule, grad scaler and local loss."""

    def __init__(self, stages: Sequence[Stage], **kwargs: Any) -> None:
        super().__init__(stages, **kwargs)
        self.optimizers = [self._make_optimizer(list(stage.parameters())) for stage in self.stages]
        self.schedulers = [self._make_scheduler(opt) if self._make_scheduler else None for opt in self.optimizers]
        self.scalers = [self.precision.make_scaler() for _ in self.stages]

    def local_step(self, index: int, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, StepResult]:
        """Train stage ``index`` on one batch; return its output (computed before the update) detached.

        This is paper Alg. 1's inner step, shared by every runtime.
        """
        stage, optimizer, scaler = self.stages[index], self.optimizers[index], self.scalers[index]
        optimizer.zero_grad(set_to_none=True)
        with self.precision.autocast():
            features, logits = stage(x)
            loss = F.cross_entropy(logits.float(), y)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        self._advance_schedule(optimizer, self.schedulers[index])
        return features.detach(), _result(index, logits, y, loss)

    def current_lrs(self) -> list[float]:
        return [opt.param_groups[0]["lr"] for opt in self.optimizers]

    def state_dict(self) -> dict[str, Any]:
        return {
            "stages": [
                {
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict() if sched is not None else None,
                    "scaler": scaler.state_dict() if scaler is not None else None,
                }
                for opt, sched, scaler in zip(self.optimizers, self.schedulers, self.scalers)
            ],
            "shared": {},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for stage_state, opt, sched, scaler in zip(state["stages"], self.optimizers, self.schedulers, self.scalers):
            opt.load_state_dict(stage_state["optimizer"])
            if sched is not None and stage_state["scheduler"] is not None:
                sched.load_state_dict(stage_state["scheduler"])
            if scaler is not None and stage_state["scaler"] is not None:
                scaler.load_state_dict(stage_state["scaler"])


class DGL(LocalLearning):
    """Synchronous Decoupled Greedy Learning (paper Alg. 1): stages train in turn on each batch."""

    name = "dgl"

    def train_step(self, x: torch.Tensor, y: torch.Tensor, phase: int = 0) -> list[StepResult]:
        results = []
        for index in range(len(self.stages)):
            x, result = self.local_step(index, x, y)
            results.append(result)
        return results


class SequentialGreedy(LocalLearning):
    """Sequential greedy learning: stage k trains to the end of its budget, is frozen, then k+1."""

    name = "sgl"

    @property
    def num_phases(self) -> int:
        return len(self.stages)

    def trained_stages(self, phase: int) -> list[int]:
        return [phase]

    def evaluated_stages(self, phase: int) -> list[int]:
        return list(range(phase + 1))

    def start_phase(self, phase: int) -> None:
        for index, stage in enumerate(self.stages):
            frozen = index < phase
            stage.train(not frozen)
            stage.requires_grad_(not frozen)

    def train_step(
        self, x: torch.Tensor, y: torch.Tensor, phase: int = 0, *, frozen_applied: bool = False
    ) -> list[StepResult]:
        """Train stage ``phase`` on a batch of images, or, with ``frozen_applied``, of the frozen
        stages' output (see :mod:`degl.core.feature_cache`)."""
        if not frozen_applied:
            # Frozen stages run without autograd and without their heads: only their features are needed.
            with torch.no_grad(), self.precision.autocast():
                for stage in self.stages[:phase]:
                    x = stage.block(x)
        _, result = self.local_step(phase, x, y)
        return [result]


class Backprop(Method):
    """End-to-end backpropagation through all blocks into the last stage's head (the baseline).

    The earlier stages' aux heads are not used. With one stage this is exactly DGL with K=1.
    """

    name = "backprop"

    def __init__(self, stages: Sequence[Stage], **kwargs: Any) -> None:
        super().__init__(stages, **kwargs)
        params = [p for stage in self.stages for p in stage.block.parameters()]
        params += list(self.stages[-1].head.parameters())
        self.optimizer = self._make_optimizer(params)
        self.scheduler = self._make_scheduler(self.optimizer) if self._make_scheduler else None
        self.scaler = self.precision.make_scaler()

    def trained_stages(self, phase: int) -> list[int]:
        return [len(self.stages) - 1]

    def train_step(self, x: torch.Tensor, y: torch.Tensor, phase: int = 0) -> list[StepResult]:
        self.optimizer.zero_grad(set_to_none=True)
        with self.precision.autocast():
            for stage in self.stages:
                x = stage.block(x)
            logits = self.stages[-1].head(x)
            loss = F.cross_entropy(logits.float(), y)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self._advance_schedule(self.optimizer, self.scheduler)
        return [_result(len(self.stages) - 1, logits, y, loss)]

    def current_lrs(self) -> list[float]:
        return [self.optimizer.param_groups[0]["lr"]]

    def state_dict(self) -> dict[str, Any]:
        return {
            "stages": [{} for _ in self.stages],
            "shared": {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            },
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        shared = state["shared"]
        self.optimizer.load_state_dict(shared["optimizer"])
        if self.scheduler is not None and shared["scheduler"] is not None:
            self.scheduler.load_state_dict(shared["scheduler"])
        if self.scaler is not None and shared["scaler"] is not None:
            self.scaler.load_state_dict(shared["scaler"])


METHOD_CLASSES: dict[str, type[Method]] = {cls.name: cls for cls in (Backprop, DGL, SequentialGreedy)}


def build_method(name: str, stages: Sequence[Stage], **kwargs: Any) -> Method:
    """Instantiate the training method ``name`` (``backprop``, ``dgl`` or ``sgl``) over ``stages``."""
    if name == "async-dgl":  # the same per-stage updates; the runtime decides when each stage acts
        return DGL(stages, **kwargs)
    if name not in METHOD_CLASSES:
        raise UserError(f"unknown method {name!r}; choose one of: {', '.join(METHOD_CLASSES)}")
    return METHOD_CLASSES[name](stages, **kwargs)
