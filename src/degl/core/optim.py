"""Per-stage optimizers and learning-rate schedules (stepped once per training step)."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from degl.errors import UserError

OptimizerFactory = Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]


@dataclass(frozen=True)
class OptimSettings:
    optimizer: str = "sgd"
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    epochs: int = 10
    steps_per_epoch: int = 1
    lr_decay_every: int = 15
    lr_decay_factor: float = 0.2
    lr_milestones: tuple[int, ...] = ()
    reset_at_decay: bool = False

    def make_optimizer(self, params: Iterable[nn.Parameter]) -> torch.optim.Optimizer:
        if self.optimizer == "sgd":
            return torch.optim.SGD(
                params,
                lr=self.lr,
                momentum=self.momentum,
                nesterov=self.nesterov,
                weight_decay=self.weight_decay,
            )
        if self.optimizer == "adam":
            return torch.optim.Adam(params, lr=self.lr, weight_decay=self.weight_decay)
        raise UserError(f"unknown optimizer {self.optimizer!r}; choose sgd or adam")

    def lr_factor(self, step: int) -> float:
        """Multiplier of the initial lr after ``step`` steps of this stage's training."""
        if self.schedule == "constant":
            return 1.0
        if self.schedule == "step":
            return self.lr_decay_factor ** (step // (self.steps_per_epoch * self.lr_decay_every))
        if self.schedule == "milestones":
            epoch = step // self.steps_per_epoch
            return self.lr_decay_factor ** sum(epoch >= m for m in self.lr_milestones)
        if self.schedule == "cosine":
            total = max(1, self.epochs * self.steps_per_epoch)
            return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))
        raise UserError(f"unknown schedule {self.schedule!r}; choose constant, step, milestones or cosine")

    def make_scheduler(self, optimizer: torch.optim.Optimizer) -> LambdaLR:
        # A plain function (not a bound method) so LambdaLR does not try to pickle it into state_dict.
        return LambdaLR(optimizer, lambda step: self.lr_factor(step))
