"""Where training stands and what it has scored so far: shared by every trainer and rank loop."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

import torch

from degl.core.step import StepResult
from degl.errors import DivergedError

# On a GPU the finiteness check waits for the device: there it runs every this many steps.
CUDA_CHECK_EVERY = 50
NONFINITE_POLICIES = ("stop", "warn")
_nonfinite = {"policy": "stop", "warned": False}


def set_nonfinite_policy(policy: str) -> None:
    """``stop`` (default): a non-finite loss raises :class:`DivergedError`; ``warn``: one warning, go on."""
    assert policy in NONFINITE_POLICIES, policy
    _nonfinite.update(policy=policy, warned=False)


def report_nonfinite(message: str) -> None:
    """Stop the run with ``message``, or under ``--on-nonfinite warn`` print it once and go on."""
    if _nonfinite["policy"] == "stop":
        raise DivergedError(f"{message}; no checkpoint was written from this point: start again with a lower --lr")
    if not _nonfinite["warned"]:
        _nonfinite["warned"] = True
        print(f"degl: warning: {message}; going on (--on-nonfinite warn)", file=sys.stderr)


@dataclass
class Position:
    """Where training stands: ``step`` batches of epoch ``epoch`` of phase ``phase`` are done."""

    phase: int = 0
    epoch: int = 0
    step: int = 0

    def resumed_step(self, phase: int, epoch: int) -> int:
        """The first step to train in ``(phase, epoch)``: where a resumed run stopped in it, else 0."""
        return self.step if (phase, epoch) == (self.phase, self.epoch) else 0

    def after_epoch(self, epochs_per_phase: int) -> Position:
        if self.epoch + 1 == epochs_per_phase:
            return Position(self.phase + 1, 0, 0)
        return Position(self.phase, self.epoch + 1, 0)


@dataclass
class EpochStats:
    """Running sums of the trained heads' training loss and accuracy over the current epoch."""

    stages: list[int] = field(default_factory=list)
    loss_sum: torch.Tensor | None = None
    correct: torch.Tensor | None = None
    count: int = 0
    _adds: int = 0

    def reset(self, stages: list[int], device: torch.device) -> None:
        self.stages = list(stages)
        self.loss_sum = torch.zeros(len(stages), dtype=torch.float64, device=device)
        self.correct = torch.zeros(len(stages), dtype=torch.int64, device=device)
        self.count = 0

    def add(self, results: list[StepResult]) -> None:
        assert self.loss_sum is not None and self.correct is not None
        for i, result in enumerate(results):
            self.loss_sum[i] += result.loss.double() * result.count
            self.correct[i] += result.correct
        self.count += results[0].count
        self._adds += 1
        if self.loss_sum.device.type == "cpu" or self._adds % CUDA_CHECK_EVERY == 0:
            self.check_finite()

    def check_finite(self) -> None:
        """Stop a diverged run at once: a NaN or infinite loss is never trained on, recorded or saved."""
        assert self.loss_sum is not None
        if self.loss_sum.numel() and not bool(torch.isfinite(self.loss_sum).all()):
            i = int((~torch.isfinite(self.loss_sum)).nonzero()[0])
            report_nonfinite(
                f"training diverged: stage {self.stages[i]}'s training loss is {self.loss_sum[i].item()} at "
                f"step {self._adds} of this epoch ({self.count} training samples)"
            )

    def means(self) -> tuple[list[float], list[float]]:
        assert self.loss_sum is not None and self.correct is not None
        n = max(self.count, 1)
        return (self.loss_sum / n).tolist(), (100.0 * self.correct.double() / n).tolist()

    def state_dict(self) -> dict[str, Any]:
        return {"stages": self.stages, "loss_sum": self.loss_sum, "correct": self.correct, "count": self.count}

    def load_state_dict(self, state: dict[str, Any], device: torch.device) -> None:
        self.stages = list(state["stages"])
        self.loss_sum = state["loss_sum"].to(device)
        self.correct = state["correct"].to(device)
        self.count = int(state["count"])

    @staticmethod
    def merge(parts: list[EpochStats]) -> EpochStats:
        """Stats of several processes (one stage each) as if one process had trained them all."""
        # A process whose stage has no head of its own to train (dni, ddg, fr) counts nothing.
        merged = EpochStats(stages=[s for p in parts for s in p.stages], count=max(p.count for p in parts))
        merged.loss_sum = torch.cat([p.loss_sum.cpu() for p in parts])  # type: ignore[union-attr]
        merged.correct = torch.cat([p.correct.cpu() for p in parts])  # type: ignore[union-attr]
        return merged


def train_line(
    *, epoch: int, stage: int, loss: float, acc: float, lr: float, step: int, phase: int = 0
) -> dict[str, Any]:
    """One ``metrics.jsonl`` training line (every trainer and rank loop writes this shape)."""
    return {
        "epoch": epoch,
        "phase": phase,
        "stage": stage,
        "split": "train",
        "loss": loss,
        "acc": acc,
        "lr": lr,
        "step": step,
    }
