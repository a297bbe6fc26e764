"""The stage step: one stage's local update, the unit every trainer and every runtime calls.

A :class:`StageStep` owns a stage together with its optimizer, learning-rate schedule, gradient
scaler, precision and loss function. ``step(x, y)`` is paper Alg. 1's inner step: forward, local
loss, backward, optimizer and schedule step; it returns the stage's output detached. The
single-process trainers hold K of them; a pipeline rank holds one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from degl.core.objectives.base import stage_loss
from degl.core.stage import Stage
from degl.errors import UserError

PRECISION_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss_fn(logits, target) -> scalar loss``; the default is cross-entropy."""


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
        self,
        precision: str,
        device: torch.device | str = "cpu",
        *,
        init_scale: float = 2.0**16,
        growth_interval: int = 2000,
    ) -> None:
        device = torch.device(device)
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


def cross_entropy(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.float(), target)


def step_result(stage: int, logits: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> StepResult:
    return StepResult(stage, loss.detach(), (logits.argmax(dim=1) == y).sum(), y.numel())


def advance_schedule(optimizer: torch.optim.Optimizer, scheduler: Any, reset_at_decay: bool) -> None:
    """Step the lr schedule; with ``reset_at_decay`` a decay also clears the optimizer's state,
    which is what re-creating the optimizer does in the paper's ImageNet, DDG and buffer scripts."""
    if scheduler is None:
        return
    before = optimizer.param_groups[0]["lr"]
    scheduler.step()
    if reset_at_decay and optimizer.param_groups[0]["lr"] < before:
        optimizer.state.clear()


class StageStep:
    """One stage, its optimizer, schedule, grad scaler and loss; performs the stage's local update.

    Args:
        stage: the stage (block + head) to train.
        optimizer: an optimizer over ``stage.parameters()``, or a factory ``f(params) -> optimizer``.
        scheduler: an lr scheduler of that optimizer, or a factory ``f(optimizer) -> scheduler``;
            stepped once per training step.
        loss_fn: ``loss_fn(logits, target)``; default cross-entropy (computed in fp32).
        precision: ``fp32``, ``bf16`` or ``fp16`` (autocast; fp16 adds a gradient scaler), or a
            :class:`Precision`.
        device: where the stage lives (for autocast); default: the stage's parameters' device.
        reset_at_decay: clear the optimizer state whenever the schedule lowers the lr.
    """

    def __init__(
        self,
        stage: Stage,
        optimizer: torch.optim.Optimizer | Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
        *,
        scheduler: Any = None,
        loss_fn: LossFn | None = None,
        precision: str | Precision = "fp32",
        device: torch.device | str | None = None,
        reset_at_decay: bool = False,
    ) -> None:
        self.stage = stage
        if device is None:
            first = next(stage.parameters(), None)
            device = first.device if first is not None else torch.device("cpu")
        self.device = torch.device(device)
        self.precision = precision if isinstance(precision, Precision) else Precision(precision, self.device)
        self.optimizer = optimizer if isinstance(optimizer, torch.optim.Optimizer) else optimizer(stage.parameters())
        if scheduler is not None and not hasattr(scheduler, "step"):
            scheduler = scheduler(self.optimizer)
        self.scheduler = scheduler
        self.scaler = self.precision.make_scaler()
        self.loss_fn = loss_fn or cross_entropy
        self.stage_loss = stage_loss(stage.head, self.loss_fn)
        self.reset_at_decay = reset_at_decay

    @property
    def index(self) -> int:
        return self.stage.index

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    def step(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, StepResult]:
        """Train on one batch; return the stage's output (computed before the update), detached."""
        optimizer, scaler = self.optimizer, self.scaler
        optimizer.zero_grad(set_to_none=True)
        with self.precision.autocast():
            features, logits = self.stage(x)
            loss = self.stage_loss(features, logits, y)
        if scaler is None:
            loss.backward()
            optimizer.step()
        else:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        advance_schedule(optimizer, self.scheduler, self.reset_at_decay)
        return features.detach(), step_result(self.index, logits, y, loss)

    def rehearse(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """The work of :meth:`step` (forward, loss, backward) with no effect on any state.

        Emulates a slower device by doing real extra work on the core (a ``sleep`` would hand the
        core to other processes): gradients go to a throwaway list, not ``.grad``; normalisation
        statistics and the random-number state are put back; nothing is stepped.
        """
        buffers = [b.clone() for b in self.stage.buffers()]
        params = [p for p in self.stage.parameters() if p.requires_grad]
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            with self.precision.autocast():
                features, logits = self.stage(x)
                loss = self.stage_loss(features, logits, y)
            torch.autograd.grad(loss, params, allow_unused=True)
        with torch.no_grad():
            for saved, buffer in zip(buffers, self.stage.buffers()):
                buffer.copy_(saved)

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The block's output without training (a frozen stage, or evaluation)."""
        with self.precision.autocast():
            return self.stage.block(x)

    @torch.no_grad()
    def logits(self, features: torch.Tensor) -> torch.Tensor:
        with self.precision.autocast():
            return self.stage.head(features).float()

    def state_dict(self) -> dict[str, Any]:
        """Optimizer, schedule and scaler state (the stage's weights are saved by the caller)."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None and state.get("scheduler") is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler") is not None:
            self.scaler.load_state_dict(state["scaler"])

    def checkpoint(self) -> dict[str, Any]:
        """The content of a stage file: weights plus optimizer, schedule and scaler state."""
        return {"model": self.stage.state_dict(), **self.state_dict()}

    def load_checkpoint(self, state: dict[str, Any]) -> None:
        self.stage.load_state_dict(state["model"])
        self.load_state_dict(state)
