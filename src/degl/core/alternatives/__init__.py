"""The paper's alternatives to DGL, single-process reference: DNI, cDNI, DDG and FR.

- ``dni``: synthetic gradients (Jaderberg et al. 2017): after every boundary a synthesizer
  predicts the gradient of the stage's output; the stage updates with it at once and the
  synthesizer learns by MSE on the true gradient when it comes back.
- ``cdni``: the same with the label as the synthesizer's context.
- ``ddg``: decoupled delayed gradients (Huo et al. 2018a): stage k updates with the true gradient
  of a batch it ran ``2(K-1-k)`` batches ago, computed with the weights of that time.
- ``fr``: features replay (Huo et al. 2018b): the same delays, the forward recomputed with the
  current weights when the gradient arrives.

Only the last stage has a loss, so only its head is trained and scored (as in backprop). The
order of operations is that of the pipeline (:mod:`degl.runtime.gradient_rank`), so a pipeline
run equals this one bit for bit; :mod:`degl.core.alternatives.steps` explains the delays. At the end
of an epoch (and at a stop) every outstanding gradient is settled, top stage first, so an epoch
gives every stage exactly one update per batch and checkpoints hold no gradient in flight.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from typing import Any

import torch

from degl.core.alternatives.steps import DelayedGradientStep, GradientStep, LossStep, SyntheticGradientStep
from degl.core.alternatives.synthesizer import build_synthesizer
from degl.core.method_base import Method
from degl.core.optim import OptimizerFactory, SchedulerFactory
from degl.core.parameter_error import ParameterError
from degl.core.stage import Stage, head_classes
from degl.core.step import LossFn, StepResult
from degl.errors import UserError

GRADIENT_METHODS = ("dni", "cdni", "ddg", "fr")


def make_gradient_step(
    method: str,
    stage: Stage,
    *,
    num_stages: int,
    num_classes: int,
    seed: int,
    make_optimizer: Any,
    make_scheduler: Any = None,
    **options: Any,
) -> GradientStep:
    """Stage ``stage.index``'s step for ``method`` (the same in one process and on a pipeline rank).

    ``options``: what :class:`~degl.core.step.StageStep` takes besides the optimizer and schedule.
    """
    index = stage.index
    common = {"scheduler": make_scheduler, **options}
    if index == num_stages - 1:
        return LossStep(stage, make_optimizer, **common)
    if method in ("dni", "cdni"):
        synthesizer = build_synthesizer(
            stage.out_shape, num_classes=num_classes, conditioned=method == "cdni", seed=seed, boundary=index
        )
        return SyntheticGradientStep(
            stage,
            make_optimizer,
            synthesizer=synthesizer,
            make_optimizer=make_optimizer,
            make_scheduler=make_scheduler,
            **common,
        )
    if method in ("ddg", "fr"):
        return DelayedGradientStep(
            stage, make_optimizer, delay=2 * (num_stages - 1 - index), replay=method == "fr", **common
        )
    raise UserError(f"unknown method {method!r}; choose one of: {', '.join(GRADIENT_METHODS)}")


class GradientMethod(Method):
    """One process running dni, cdni, ddg or fr over K stages (see the module's docstring)."""

    def __init__(
        self,
        stages: Sequence[Stage],
        *,
        method: str,
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
            method: ``"dni"``, ``"cdni"``, ``"ddg"`` or ``"fr"`` (see the module's docstring).
            make_optimizer: ``make_optimizer(params) -> torch.optim.Optimizer``; called once per
                stage (and per synthesizer), e.g. ``lambda p: torch.optim.SGD(p, lr=0.1)``.
            make_scheduler: ``make_scheduler(optimizer) -> lr scheduler``, stepped once per
                training step; None keeps the lr constant.
            precision: ``"fp32"`` or ``"bf16"`` (fp16's loss scale would scale the gradients sent back).
            device: where the stages live (for autocast); the caller moves them.
            reset_at_decay: clear a stage's optimizer state whenever its schedule lowers the lr.
            loss_scale_init: accepted for a uniform signature; these methods do not run in fp16.
            loss_scale_growth_interval: accepted for a uniform signature; unused.
            loss_fn: ``loss_fn(logits, target) -> scalar``, the last stage's loss; default
                cross-entropy, computed in fp32.
            codec: must be ``"none"``: codecs apply to DGL's forward messages only.
            codec_seed: seeds the DNI/cDNI synthesizers (the same seed in every runtime gives the
                same synthesizers).
        """
        if codec != "none":
            raise ParameterError(
                "{codec=} applies to the methods dgl and async-dgl, not to {method=}", codec=codec, method=method
            )
        if precision == "fp16":
            raise ParameterError(
                "{method=} runs in fp32 or bf16, not {precision=} (its loss scale would scale the gradients)",
                method=method,
                precision=precision,
            )
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
        self.name = method  # type: ignore[misc]
        num_classes = head_classes(self.stages[-1])
        self.steps: list[GradientStep] = [
            make_gradient_step(
                method,
                stage,
                num_stages=len(self.stages),
                num_classes=num_classes,
                seed=self.codec_seed,  # the run's seed: synthesizers start the same in every runtime
                make_optimizer=self._make_optimizer,
                make_scheduler=self._make_scheduler,
                loss_fn=self.loss_fn,
                precision=self.precision,
                device=self.device,
                reset_at_decay=self.reset_at_decay,
            )
            for stage in self.stages
        ]
        # grads[k]: gradients of stage k's outputs sent back by stage k+1, oldest first.
        self.grads: list[deque[torch.Tensor]] = [deque() for _ in self.stages]

    def trained_stages(self, phase: int) -> list[int]:
        return [len(self.stages) - 1]

    def _send_back(self, index: int, grad: torch.Tensor | None) -> None:
        if grad is not None:
            self.grads[index - 1].append(grad)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, phase: int = 0) -> list[StepResult]:
        results = []
        for index, step in enumerate(self.steps):
            out, back, result = step.advance(x, y, input_grad=index > 0)
            self._send_back(index, back)
            while step.needs_gradient():
                self._send_back(index, step.settle(self.grads[index].popleft()))
            if result is not None:
                results.append(result)
            x = out
        return results

    def finish_epoch(self) -> None:
        """Settle every outstanding gradient, top stage first (each one's come from the stage above)."""
        for index in reversed(range(len(self.steps))):
            step = self.steps[index]
            while step.pending:
                self._send_back(index, step.settle(self.grads[index].popleft()))
        assert not any(self.grads), "a gradient was sent back that no stage consumed"

    def current_lrs(self) -> list[float]:
        return [step.lr for step in self.steps]

    def state_dict(self) -> dict[str, Any]:
        return {"stages": [step.state_dict() for step in self.steps], "shared": {}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for stage_state, step in zip(state["stages"], self.steps):
            step.load_state_dict(stage_state)

    def stage_files(self) -> list[dict[str, Any]]:
        return [step.checkpoint() for step in self.steps]

    def load_stage_files(self, files: list[dict[str, Any]], shared: dict[str, Any]) -> None:
        for step, file in zip(self.steps, files):
            step.load_checkpoint(file)
