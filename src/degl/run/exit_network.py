"""A trained run's stages assembled into one plain network with one or several exits.

DGL trains a classifier at every stage, so a DGL network is a multi-exit model: exit ``k`` runs
the blocks of stages ``0..k`` and stage ``k``'s head. :class:`ExitNetwork` takes raw images as
the data set stores them (``uint8``, ``N x C x H x W``, 0-255) and normalises them inside the
graph, so an exported file needs nothing of degl's data pipeline. Exits are numbered by stage,
from 0, as ``degl eval`` numbers them; only trained heads (``degl eval``'s scored stages) are exits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from degl.core.evaluate import ensemble_weight
from degl.core.stage import Stage
from degl.core.stats import count_macs
from degl.errors import UserError

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)  # fmt: skip
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
EXIT_KINDS = ("last", "all", "ensemble")


@dataclass(frozen=True)
class ExitChoice:
    """What an :class:`ExitNetwork` returns: ``logits`` of one exit, of ``all`` exits, or the ``ensemble``."""

    kind: str  # "logits", "all" or "ensemble"
    exits: tuple[int, ...]
    """The stages whose heads the output uses, in order."""

    @property
    def label(self) -> str:
        return f"exit{self.exits[0]}" if self.kind == "logits" else self.kind

    def output_names(self) -> list[str]:
        if self.kind == "all":
            return [f"exit_{stage}" for stage in self.exits]
        return ["probabilities" if self.kind == "ensemble" else "logits"]


def parse_exit(text: str, evaluated: Sequence[int]) -> ExitChoice:
    """``K`` (a stage, 0-based), ``last``, ``all`` or ``ensemble``, checked against the trained heads."""
    exits = tuple(sorted(evaluated))
    if text == "all":
        return ExitChoice("all", exits)
    if text == "ensemble":
        return ExitChoice("ensemble", exits)
    if text == "last":
        return ExitChoice("logits", (exits[-1],))
    try:
        stage = int(text)
    except ValueError:
        raise UserError(f"--exit {text!r}: give a stage number (0-based) or one of {', '.join(EXIT_KINDS)}") from None
    if stage not in exits:
        beyond = stage < 0 or stage > exits[-1]
        why = "beyond the network's stages" if beyond else "not a trained head at this checkpoint"
        raise UserError(
            f"--exit {stage}: {why}; the exits are stages {', '.join(map(str, exits))} (or last, all, ensemble)"
        )
    return ExitChoice("logits", (stage,))


class Normalise(nn.Module):
    """``uint8`` images (0-255) to the float input the stages were trained on: ``(x / 255 - mean) / std``."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # The same operations in the same order as degl's loaders, so the results agree bit for bit.
        return (images.float().div(255) - self.mean) / self.std


class ExitNetwork(nn.Module):
    """Normalisation, the blocks up to the last exit used, and the heads of the exits used."""

    def __init__(self, stages: Sequence[Stage], choice: ExitChoice, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.choice = choice
        self.normalise = Normalise(mean, std)
        last = choice.exits[-1]
        self.blocks = nn.ModuleList(stage.block for stage in stages[: last + 1])
        self.heads = nn.ModuleDict({str(stage): stages[stage].head for stage in choice.exits})

    def forward(self, images: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        logits = self.exit_logits(self.normalise(images))
        if self.choice.kind == "all":
            return tuple(logits)
        if self.choice.kind == "ensemble":
            return ensemble_probabilities(logits, self.choice.exits)
        return logits[0]

    def exit_logits(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Every used exit's logits (float) for already normalised inputs ``x``, in one pass."""
        logits: list[torch.Tensor] = []
        for index, block in enumerate(self.blocks):
            x = block(x)
            if str(index) in self.heads:
                logits.append(self.heads[str(index)](x).float())
        return logits


def ensemble_probabilities(logits: Sequence[torch.Tensor], stages: Sequence[int]) -> torch.Tensor:
    """The heads' softmax averaged with ``degl eval``'s weights (``2^stage``), normalised to sum to 1."""
    weights = [ensemble_weight(stage) for stage in stages]
    total = sum(w * part.softmax(dim=1) for w, part in zip(weights, logits))
    return total / sum(weights)


def build_exit_network(
    stages: Sequence[Stage], choice: ExitChoice, mean: Sequence[float], std: Sequence[float]
) -> ExitNetwork:
    """An eval-mode :class:`ExitNetwork` on CPU sharing ``stages``' modules (not copies)."""
    return ExitNetwork(stages, choice, mean, std).eval()


@dataclass(frozen=True)
class ExitCost:
    """MACs per sample of one exit (:func:`degl.core.stats.count_macs`: matmuls and convolutions, one
    sample, eval mode): ``macs`` for the exit alone (blocks of stages ``0..stage`` and its head)."""

    stage: int
    macs: int
    head_macs: int


def exit_costs(stages: Sequence[Stage], exits: Sequence[int]) -> list[ExitCost]:
    blocks = [count_macs(stage.block, stage.in_shape) for stage in stages]
    heads = {k: count_macs(stages[k].head, stages[k].out_shape) for k in exits}
    return [ExitCost(k, sum(blocks[: k + 1]) + heads[k], heads[k]) for k in exits]


def cascade_macs(costs: Sequence[ExitCost]) -> list[int]:
    """MACs per sample of a sample leaving an early-exit cascade at each exit: the exit's own cost
    plus every earlier exit's head, each of which was asked first."""
    return [cost.macs + sum(c.head_macs for c in costs[:i]) for i, cost in enumerate(costs)]


def normalisation(data: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The per-channel mean and std the run's loaders normalise with."""
    if hasattr(data, "mean") and hasattr(data, "std"):
        return tuple(data.mean), tuple(data.std)
    if getattr(data, "name", None) == "imagenet":
        from degl.data import imagenet

        return imagenet.MEAN, imagenet.STD
    raise UserError(f"cannot tell the normalisation of data set {getattr(data, 'name', data)!r}")


def class_names(data: Any) -> list[str]:
    """Names of the data set's classes, in label order (ImageNet: its class folders)."""
    name = getattr(data, "name", "")
    if name == "fashion-mnist":
        return list(FASHION_MNIST_CLASSES)
    if name == "cifar10":
        return list(CIFAR10_CLASSES)
    if hasattr(data, "classes"):
        return list(data.classes)
    return [f"class {i}" for i in range(data.num_classes)]
