"""Stage steps of the methods that pass gradients backwards: DNI, cDNI, DDG and FR.

DGL's stages learn from their own heads; these methods' stages (all but the last) learn from a
gradient that comes back from the stage above, and send one back to the stage below. One
interface serves the single-process trainer and a pipeline rank alike:

- ``advance(x, y)`` trains on (or, for DDG and FR, runs forward on) a new batch and returns its
  output, the gradient to send back now (or ``None``) and the head's result (last stage only);
- while ``needs_gradient()``, ``settle(grad)`` consumes the oldest batch's gradient from above and
  returns the gradient to send back for it (or ``None``).

A stage k < K-1 gets the gradient of batch t ``delay`` batches after it ran batch t forward. In a
pipeline the forward moves one rank per step and the gradient one rank back per step, so the
delay that lets no rank wait is 2 per boundary between the stage and the one that makes the
gradient: 2 for DNI's synthesizer targets (made at once by stage k+1), ``2(K-1-k)`` for DDG and
FR (made by stage K-1's loss and passed down).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch.func import functional_call

from degl.core.alternatives.synthesizer import Synthesizer
from degl.core.step import StageStep, StepResult, advance_schedule

Advance = tuple[torch.Tensor, torch.Tensor | None, StepResult | None]
"""``(output detached, gradient to send back or None, head's result or None)``."""


def _input(x: torch.Tensor, input_grad: bool) -> torch.Tensor:
    return x.detach().requires_grad_(True) if input_grad else x


def _backward(h: torch.Tensor, grad: torch.Tensor) -> None:
    h.backward(grad.to(h.dtype))


def _grad_back(x: torch.Tensor) -> torch.Tensor | None:
    return None if x.grad is None else x.grad.float()


class LossStep(StageStep):
    """The last stage: its head's loss, backpropagated at once (with one stage this is backprop)."""

    delay = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.pending: deque[Any] = deque()

    def advance(self, x: torch.Tensor, y: torch.Tensor, *, input_grad: bool) -> Advance:
        x = _input(x, input_grad)
        out, result = self.step(x, y)
        return out, _grad_back(x) if input_grad else None, result

    def needs_gradient(self) -> bool:
        return False

    def settle(self, grad: torch.Tensor) -> torch.Tensor | None:
        raise AssertionError("the last stage gets no gradient from above")


class SyntheticGradientStep(StageStep):
    """DNI / cDNI stage k < K-1: updates at once with its synthesizer's predicted gradient; the
    synthesizer learns by regression (MSE) on the true gradient when it comes back (``delay`` 2)."""

    delay = 2

    def __init__(
        self,
        *args: Any,
        synthesizer: Synthesizer,
        make_optimizer: Callable[..., torch.optim.Optimizer],
        make_scheduler: Callable[[torch.optim.Optimizer], Any] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.synthesizer = synthesizer.to(self.device)
        self.synth_optimizer = make_optimizer(self.synthesizer.parameters())
        self.synth_scheduler = make_scheduler(self.synth_optimizer) if make_scheduler else None
        self.pending: deque[tuple[torch.Tensor, torch.Tensor]] = deque()
        self.synth_loss = 0.0  # the last regression loss (for reports)

    def advance(self, x: torch.Tensor, y: torch.Tensor, *, input_grad: bool) -> Advance:
        x = _input(x, input_grad)
        self.optimizer.zero_grad(set_to_none=True)
        with self.precision.autocast():
            h = self.stage.block(x)
            with torch.no_grad():
                predicted = self.synthesizer(h.detach(), y)
        _backward(h, predicted)
        self.optimizer.step()
        advance_schedule(self.optimizer, self.scheduler, self.reset_at_decay)
        out = h.detach()
        self.pending.append((out, y))
        return out, _grad_back(x) if input_grad else None, None

    def needs_gradient(self) -> bool:
        return len(self.pending) > self.delay

    def settle(self, grad: torch.Tensor) -> torch.Tensor | None:
        h, y = self.pending.popleft()
        self.synth_optimizer.zero_grad(set_to_none=True)
        with self.precision.autocast():
            predicted = self.synthesizer(h, y)
        loss = F.mse_loss(predicted.float(), grad.float())
        loss.backward()
        self.synth_optimizer.step()
        advance_schedule(self.synth_optimizer, self.synth_scheduler, self.reset_at_decay)
        self.synth_loss = float(loss.detach())
        return None

    def state_dict(self) -> dict[str, Any]:
        assert not self.pending, "a DNI stage is saved only when no gradient is outstanding"
        return {
            **super().state_dict(),
            "synthesizer": self.synthesizer.state_dict(),
            "synth_optimizer": self.synth_optimizer.state_dict(),
            "synth_scheduler": self.synth_scheduler.state_dict() if self.synth_scheduler is not None else None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.synthesizer.load_state_dict(state["synthesizer"])
        self.synth_optimizer.load_state_dict(state["synth_optimizer"])
        if self.synth_scheduler is not None and state.get("synth_scheduler") is not None:
            self.synth_scheduler.load_state_dict(state["synth_scheduler"])


class DelayedGradientStep(StageStep):
    """DDG / FR stage k < K-1: forward now, update when the gradient from above arrives ``delay``
    batches later.

    DDG (``replay=False``) keeps the forward's graph, computed with a snapshot of the weights of
    that time, so the update uses the stale gradient of Huo et al. 2018a. FR (``replay=True``)
    keeps only the input and recomputes the forward with the current weights when the gradient
    arrives (features replay, Huo et al. 2018b); the replay leaves normalisation statistics as
    they were.
    """

    def __init__(self, *args: Any, delay: int, replay: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        assert delay > 0
        self.delay, self.replay = delay, replay
        self.pending: deque[Any] = deque()

    def advance(self, x: torch.Tensor, y: torch.Tensor, *, input_grad: bool) -> Advance:
        block = self.stage.block
        if self.replay:
            with torch.no_grad(), self.precision.autocast():
                out = block(x)
            self.pending.append((x.detach(), input_grad))
            return out.detach(), None, None
        x = _input(x, input_grad)
        weights = {name: p.detach().clone().requires_grad_() for name, p in block.named_parameters() if p.requires_grad}
        with self.precision.autocast():
            h = functional_call(block, weights, (x,))
        self.pending.append((x, h, weights))
        return h.detach(), None, None

    def needs_gradient(self) -> bool:
        return len(self.pending) > self.delay

    def settle(self, grad: torch.Tensor) -> torch.Tensor | None:
        block = self.stage.block
        self.optimizer.zero_grad(set_to_none=True)
        if self.replay:
            x, input_grad = self.pending.popleft()
            x = _input(x, input_grad)
            saved = [b.clone() for b in block.buffers()]
            with self.precision.autocast():
                h = block(x)
            _backward(h, grad)
            with torch.no_grad():
                for buffer, value in zip(block.buffers(), saved):
                    buffer.copy_(value)
        else:
            x, h, weights = self.pending.popleft()
            _backward(h, grad)
            for name, p in block.named_parameters():
                if name in weights:
                    p.grad = weights[name].grad
        self.optimizer.step()
        advance_schedule(self.optimizer, self.scheduler, self.reset_at_decay)
        return _grad_back(x) if x.requires_grad else None

    def state_dict(self) -> dict[str, Any]:
        assert not self.pending, "a DDG/FR stage is saved only when no gradient is outstanding"
        return super().state_dict()


GradientStep = LossStep | SyntheticGradientStep | DelayedGradientStep
