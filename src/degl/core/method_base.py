"""The base class of every training method: owns the stages' optimizers and schedules."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch

from degl.core.optim import OptimizerFactory, SchedulerFactory
from degl.core.stage import Stage
from degl.core.step import LossFn, Precision, StepResult, cross_entropy


class Method:
    """Owns the stages' optimizers and schedules and performs training steps.

    Every method's constructor takes the same keyword parameters (documented on ``__init__``);
    :class:`~degl.core.alternatives.GradientMethod` adds ``method``.
    """

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
        loss_fn: LossFn | None = None,
        codec: str = "none",
        codec_seed: int = 0,
    ) -> None:
        """
        Args:
            stages: the K stages to train, in order (from :func:`degl.build_stages`).
            make_optimizer: ``make_optimizer(params) -> torch.optim.Optimizer``; called once per
                stage (once in all for backprop), e.g. ``lambda p: torch.optim.SGD(p, lr=0.1)``.
            make_scheduler: ``make_scheduler(optimizer) -> lr scheduler``, stepped once per
                training step; None keeps the lr constant.
            precision: ``"fp32"``, ``"bf16"`` (autocast) or ``"fp16"`` (autocast and a gradient
                scaler; CUDA only).
            device: where the stages live (for autocast and the scaler); the caller moves them.
            reset_at_decay: clear an optimizer's state whenever its schedule lowers the lr.
            loss_scale_init: fp16 only: the gradient scaler's initial scale.
            loss_scale_growth_interval: fp16 only: steps without overflow before the scale grows.
            loss_fn: ``loss_fn(logits, target) -> scalar``; default cross-entropy, computed in fp32.
            codec: what each boundary's activations pass through on their way to the next stage
                (``"none"``, ``"bf16"``, ``"int8"``, ``"vq"``...; see docs/codecs.md); DGL only.
            codec_seed: seeds the codecs' random choices (and the DNI synthesizers').
        """
        self.stages = list(stages)
        self.codec, self.codec_seed = codec, codec_seed
        self.loss_fn = loss_fn or cross_entropy
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

    def finish_epoch(self) -> None:
        """Complete any work still in flight (gradients owed by a delayed method) at an epoch's end
        or a stop, before evaluation and checkpointing; nothing for methods without delays."""

    def current_lrs(self) -> list[float]:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def stage_files(self) -> list[dict[str, Any]]:
        """The content of each stage's checkpoint file: weights plus that stage's optimizer state."""
        per_stage = self.state_dict()["stages"]
        return [{"model": stage.state_dict(), **extra} for stage, extra in zip(self.stages, per_stage)]

    def shared_state(self) -> dict[str, Any]:
        """Optimizer state that belongs to no single stage (backprop's), saved with the run's metadata."""
        return self.state_dict()["shared"]

    def load_stage_files(self, files: list[dict[str, Any]], shared: dict[str, Any]) -> None:
        for stage, state in zip(self.stages, files):
            stage.load_state_dict(state["model"])
        self.load_state_dict(
            {
                "stages": [{k: v for k, v in f.items() if k in ("optimizer", "scheduler", "scaler")} for f in files],
                "shared": shared,
            }
        )
