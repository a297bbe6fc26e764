"""Single-process reference trainers: backprop, synchronous DGL and sequential greedy (SGL).

These are the oracles the multi-process runtime is tested against. A *phase* is a period in
which a fixed set of stages trains: one phase for ``backprop`` and ``dgl``, K phases (one per
stage, lower stages frozen) for ``sgl``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from degl.core.alternatives import GradientMethod
from degl.core.codecs import Codec, build_codec, check_codec
from degl.core.method_base import Method
from degl.core.optim import OptimizerFactory, SchedulerFactory
from degl.core.parameter_error import ParameterError
from degl.core.stage import Stage
from degl.core.step import LossFn, Precision, StageStep, StepResult, advance_schedule, step_result
from degl.errors import UserError

__all__ = ["DGL", "Backprop", "Method", "Precision", "SequentialGreedy", "StepResult", "build_method"]


class LocalLearning(Method):
    """Methods where every stage has its own optimizer, schedule, grad scaler and local loss."""

    # The parameters are Method's, spelled out again so that help() and inspect.signature show them.
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
                stage, e.g. ``lambda p: torch.optim.SGD(p, lr=0.1)``.
            make_scheduler: ``make_scheduler(optimizer) -> lr scheduler``, stepped once per
                training step; None keeps the lr constant.
            precision: ``"fp32"``, ``"bf16"`` (autocast) or ``"fp16"`` (autocast and a gradient
                scaler; CUDA only).
            device: where the stages live (for autocast and the scaler); the caller moves them.
            reset_at_decay: clear a stage's optimizer state whenever its schedule lowers the lr.
            loss_scale_init: fp16 only: the gradient scaler's initial scale.
            loss_scale_growth_interval: fp16 only: steps without overflow before the scale grows.
            loss_fn: ``loss_fn(logits, target) -> scalar``, every stage's local loss; default
                cross-entropy, computed in fp32.
            codec: what each boundary's activations pass through on their way to the next stage
                (``"none"``, ``"bf16"``, ``"int8"``, ``"vq"``...; see docs/codecs.md).
            codec_seed: seeds the codecs' random choices.
        """
        super().__init__(
            stages,
            make_optimizer=make_optimizer,
            make_scheduler=make_scheduler,
            precision=precision,
            device=device,
            reset_at_decay=reset_at_decay,
            loss_scale_init=loss_scale_init,
            loss_scale_growth_interval=loss_scale_growth_interval,
            loss_fn=loss_fn,
            codec=codec,
            codec_seed=codec_seed,
        )
        self.steps = [
            StageStep(
                stage,
                self._make_optimizer,
                scheduler=self._make_scheduler,
                loss_fn=self.loss_fn,
                precision=self.precision,
                device=self.device,
                reset_at_decay=self.reset_at_decay,
            )
            for stage in self.stages
        ]
        # The codec each boundary's activations pass through (None: exact, nothing simulated).
        self.codecs: list[Codec | None] = [None] * (len(self.stages) - 1)
        if self.codec != "none":
            check_codec(self.codec, [stage.out_shape for stage in self.stages[:-1]])
            self.codecs = [
                build_codec(self.codec, seed=self.codec_seed, boundary=k) for k in range(len(self.stages) - 1)
            ]

    def pass_on(self, index: int, out: torch.Tensor) -> torch.Tensor:
        """What stage ``index + 1`` receives of stage ``index``'s output: through the boundary's codec."""
        codec = self.codecs[index] if index < len(self.codecs) else None
        return out if codec is None else codec.roundtrip(out, train=True)

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [step.optimizer for step in self.steps]

    @property
    def schedulers(self) -> list[Any]:
        return [step.scheduler for step in self.steps]

    def local_step(self, index: int, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, StepResult]:
        """Train stage ``index`` on one batch; return its output (computed before the update) detached."""
        return self.steps[index].step(x, y)

    def current_lrs(self) -> list[float]:
        return [step.lr for step in self.steps]

    def state_dict(self) -> dict[str, Any]:
        return {"stages": [step.state_dict() for step in self.steps], "shared": {}}

    def stage_files(self) -> list[dict[str, Any]]:
        files = [step.checkpoint() for step in self.steps]
        for file, codec in zip(files, self.codecs):  # stage k's file holds its outgoing boundary's codec
            if codec is not None and codec.stateful:
                file["codec"] = codec.state_dict()
        return files

    def load_stage_files(self, files: list[dict[str, Any]], shared: dict[str, Any]) -> None:
        super().load_stage_files(files, shared)
        for index, (file, codec) in enumerate(zip(files, self.codecs)):
            if codec is not None and codec.stateful:
                if "codec" not in file:
                    raise ParameterError(
                        f"stage {index}'s checkpoint has no state for {{codec=}} (saved by a pipeline "
                        "run, which does not checkpoint codec state); start a new run",
                        codec=self.codec,
                    )
                codec.load_state_dict(file["codec"])

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for stage_state, step in zip(state["stages"], self.steps):
            step.load_state_dict(stage_state)


class DGL(LocalLearning):
    """Synchronous Decoupled Greedy Learning (paper Alg. 1): stages train in turn on each batch."""

    name = "dgl"

    def train_step(self, x: torch.Tensor, y: torch.Tensor, phase: int = 0) -> list[StepResult]:
        results = []
        for index in range(len(self.stages)):
            out, result = self.local_step(index, x, y)
            x = self.pass_on(index, out)  # the stage trained on its exact output; the next one gets this
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
            stages: the stages whose blocks are chained (usually one: ``build_stages(model, 1)``).
            make_optimizer: ``make_optimizer(params) -> torch.optim.Optimizer``; called once, over
                every block and the last head, e.g. ``lambda p: torch.optim.SGD(p, lr=0.1)``.
            make_scheduler: ``make_scheduler(optimizer) -> lr scheduler``, stepped once per
                training step; None keeps the lr constant.
            precision: ``"fp32"``, ``"bf16"`` (autocast) or ``"fp16"`` (autocast and a gradient
                scaler; CUDA only).
            device: where the stages live (for autocast and the scaler); the caller moves them.
            reset_at_decay: clear the optimizer's state whenever the schedule lowers the lr.
            loss_scale_init: fp16 only: the gradient scaler's initial scale.
            loss_scale_growth_interval: fp16 only: steps without overflow before the scale grows.
            loss_fn: ``loss_fn(logits, target) -> scalar``; default cross-entropy, computed in fp32.
            codec: accepted for a uniform signature; backprop sends nothing between stages.
            codec_seed: accepted for a uniform signature; unused.
        """
        super().__init__(
            stages,
            make_optimizer=make_optimizer,
            make_scheduler=make_scheduler,
            precision=precision,
            device=device,
            reset_at_decay=reset_at_decay,
            loss_scale_init=loss_scale_init,
            loss_scale_growth_interval=loss_scale_growth_interval,
            loss_fn=loss_fn,
            codec=codec,
            codec_seed=codec_seed,
        )
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
            loss = self.loss_fn(logits, y)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        advance_schedule(self.optimizer, self.scheduler, self.reset_at_decay)
        return [step_result(len(self.stages) - 1, logits, y, loss)]

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
    """Instantiate the training method ``name`` (``backprop``, ``dgl``, ``sgl``, ``dni``, ``cdni``, ``ddg`` or
    ``fr``) over ``stages``.

    ``kwargs`` are the method's constructor parameters, the same for every method (``make_optimizer``
    is required): see ``help(degl.DGL)``.
    """
    if name == "async-dgl":  # the same per-stage updates; the runtime decides when each stage acts
        return DGL(stages, **kwargs)
    if name in ("dni", "cdni", "ddg", "fr"):
        return GradientMethod(stages, method=name, **kwargs)
    if name not in METHOD_CLASSES:
        choices = [*METHOD_CLASSES, "dni", "cdni", "ddg", "fr"]
        raise UserError(f"unknown method {name!r}; choose one of: {', '.join(choices)}")
    return METHOD_CLASSES[name](stages, **kwargs)
