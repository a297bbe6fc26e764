"""Evaluation of every stage in one pass over the data (O(K), not O(K^2)), plus head ensembles."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from degl.core.stage import Stage


def ensemble_weight(stage: int) -> float:
    """Weight of stage ``stage``'s softmax in the heads' ensemble (the paper's ``2^i``)."""
    return 2.0**stage


@dataclass
class EvalResult:
    """Per evaluated stage: mean cross-entropy, top-1 and top-5 accuracy and ensemble accuracy
    (percent, 0-100; top-5 is top-C with fewer than 5 classes).

    ``ensemble_acc[k]`` is the accuracy of the softmax average of heads ``0..k`` weighted by
    ``2^i`` (the paper's ensemble), over the evaluated stages up to ``k``.
    """

    stages: list[int]
    loss: list[float]
    acc: list[float]
    ensemble_acc: list[float]
    count: int
    acc5: list[float]

    def by_stage(self) -> dict[int, dict[str, float]]:
        return {
            s: {"loss": loss, "acc": acc, "acc5": acc5, "ensemble_acc": ens}
            for s, loss, acc, acc5, ens in zip(self.stages, self.loss, self.acc, self.acc5, self.ensemble_acc)
        }


class EvalAccumulator:
    """Running sums for :class:`EvalResult`; also used by the pipeline runtime, one stage per rank."""

    def __init__(self, stages: Sequence[int]) -> None:
        self.stages = list(stages)
        self.loss_sum = [0.0] * len(self.stages)
        self.correct = [0] * len(self.stages)
        self.correct5 = [0] * len(self.stages)
        self.ensemble_correct = [0] * len(self.stages)
        self.count = 0

    def add(self, position: int, logits: torch.Tensor, y: torch.Tensor, ensemble: torch.Tensor) -> None:
        logits = logits.float()
        self.loss_sum[position] += F.cross_entropy(logits, y, reduction="sum").item()
        self.correct[position] += (logits.argmax(1) == y).sum().item()
        top5 = logits.topk(min(5, logits.shape[1]), dim=1).indices
        self.correct5[position] += (top5 == y[:, None]).any(dim=1).sum().item()
        self.ensemble_correct[position] += (ensemble.argmax(1) == y).sum().item()

    def result(self) -> EvalResult:
        n = max(self.count, 1)
        return EvalResult(
            stages=self.stages,
            loss=[s / n for s in self.loss_sum],
            acc=[100.0 * c / n for c in self.correct],
            ensemble_acc=[100.0 * c / n for c in self.ensemble_correct],
            count=self.count,
            acc5=[100.0 * c / n for c in self.correct5],
        )


@torch.no_grad()
def evaluate(
    stages: Sequence[Stage],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    *,
    evaluated: Sequence[int] | None = None,
    autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> EvalResult:
    """Accuracy of the heads of ``evaluated`` stages (default: all) in one forward pass per batch.

    Stages are put in eval mode for the pass and restored afterwards. The pass stops at the last
    evaluated stage.
    """
    evaluated = sorted(evaluated if evaluated is not None else range(len(stages)))
    last = evaluated[-1]
    modes = [s.training for s in stages]
    for s in stages:
        s.eval()
    acc = EvalAccumulator(evaluated)
    try:
        for x, y in batches:
            ensemble = None
            acc.count += y.numel()
            for index, stage in enumerate(stages[: last + 1]):
                with autocast():
                    x = stage.block(x)
                    if index not in evaluated:
                        continue
                    logits = stage.head(x).float()
                weighted = logits.softmax(dim=1) * ensemble_weight(index)
                ensemble = weighted if ensemble is None else ensemble + weighted
                acc.add(evaluated.index(index), logits, y, ensemble)
    finally:
        for s, mode in zip(stages, modes):
            s.train(mode)
    return acc.result()
