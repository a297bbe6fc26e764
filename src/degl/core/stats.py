"""Per-stage cost of a split model: output shapes, parameters and MACs of blocks and heads.

This is what ``degl models --stats`` prints, and what the tests compare with the paper's figures.

Conventions (those of paper-spec §2, so the figures compare directly):

- MACs are ``torch.utils.flop_counter`` FLOPs / 2 for one sample (batch of 1, eval mode). Only
  matmuls and convolutions count; BN, ReLU, pooling and additions are free.
- The **main network** is the blocks only. Its classifier is reported separately
  (``classifier_macs``): the paper's "main MACs" (e.g. VGG-13 11.2G, cnn6 607.5M) exclude it.
- ``model_macs`` is the whole network counted in one piece (the traced model itself, or the
  blocks and classifier end to end); it equals ``total_macs + classifier_macs`` when the split
  neither drops nor repeats work, which the tests check.
- ``aux_ratio`` = MACs of the aux heads of stages 0..K-2 (the heads DGL adds) / main MACs; the last
  stage's head is the classifier, which backprop has too. Some of the paper's figures count every
  head including the last one (cnn6 and greedynet: "aux 5.45%"); that is
  ``(aux_macs + classifier_macs) / total_macs``, reported as ``all_heads_ratio``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from degl.core.measure import count_flops
from degl.core.split import build_stages
from degl.models.registry import Backbone, build_model


@dataclass
class StageStats:
    """One stage: its block's and its head's cost (the last stage's head is the classifier)."""

    index: int
    blocks: list[int]
    name: str
    """Where the stage begins: the name of its first block (a submodule name for traced models)."""
    in_shape: list[int]
    out_shape: list[int]
    params: int
    macs: int
    head: str
    aux_params: int
    aux_macs: int


@dataclass
class ModelStats:
    """Cost of one split of one model; ``to_json`` is the ``--stats --json`` contract."""

    model: str
    input_shape: list[int]
    num_classes: int
    aux: str
    stages: list[StageStats]
    cuts: list[int] = field(default_factory=list)
    cut_names: list[str] = field(default_factory=list)
    model_macs: int = 0

    @property
    def total_macs(self) -> int:
        return sum(s.macs for s in self.stages)

    @property
    def total_params(self) -> int:
        return sum(s.params for s in self.stages)

    @property
    def aux_macs(self) -> int:
        return sum(s.aux_macs for s in self.stages[:-1])

    @property
    def aux_params(self) -> int:
        return sum(s.aux_params for s in self.stages[:-1])

    @property
    def classifier_macs(self) -> int:
        return self.stages[-1].aux_macs

    @property
    def classifier_params(self) -> int:
        return self.stages[-1].aux_params

    @property
    def aux_ratio(self) -> float:
        return self.aux_macs / self.total_macs if self.total_macs else 0.0

    @property
    def all_heads_ratio(self) -> float:
        heads = self.aux_macs + self.classifier_macs
        return heads / self.total_macs if self.total_macs else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "input_shape": self.input_shape,
            "num_classes": self.num_classes,
            "num_stages": len(self.stages),
            "aux": self.aux,
            "cuts": self.cuts,
            "cut_names": self.cut_names,
            "stages": [asdict(s) for s in self.stages],
            "total_macs": self.total_macs,
            "total_params": self.total_params,
            "aux_macs": self.aux_macs,
            "aux_params": self.aux_params,
            "classifier_macs": self.classifier_macs,
            "classifier_params": self.classifier_params,
            "model_macs": self.model_macs,
            "aux_ratio": self.aux_ratio,
            "all_heads_ratio": self.all_heads_ratio,
        }

    def format_table(self) -> list[str]:
        """Human-readable lines: one row per stage, then the totals."""
        shape = "x".join(map(str, self.input_shape))
        lines = [
            f"{self.model}: {len(self.stages)} stage(s), input {shape}, {self.num_classes} classes, "
            f"aux {self.aux}, cuts {','.join(map(str, self.cuts)) or '-'}"
            + (f" (stages begin at {', '.join(self.cut_names)})" if self.cut_names else ""),
            f"{'stage':>5}  {'blocks':>7}  {'out shape':>14}  {'params':>8}  {'MACs':>8}  "
            f"{'head':>10}  {'head params':>11}  {'head MACs':>9}  begins at",
        ]
        for s in self.stages:
            blocks = f"{s.blocks[0]}-{s.blocks[-1]}" if len(s.blocks) > 1 else str(s.blocks[0])
            lines.append(
                f"{s.index:>5}  {blocks:>7}  {'x'.join(map(str, s.out_shape)):>14}  {human(s.params):>8}  "
                f"{human(s.macs):>8}  {s.head:>10}  {human(s.aux_params):>11}  {human(s.aux_macs):>9}  {s.name}"
            )
        lines += [
            f"main network (blocks): {human(self.total_params)} params, {human(self.total_macs)} MACs",
            f"whole model counted in one piece: {human(self.model_macs)} MACs "
            f"(blocks + classifier: {human(self.total_macs + self.classifier_macs)})",
            f"classifier (last stage's head): {human(self.classifier_params)} params, "
            f"{human(self.classifier_macs)} MACs",
            f"aux heads of stages 0..K-2: {human(self.aux_params)} params, {human(self.aux_macs)} MACs "
            f"= {100 * self.aux_ratio:.2f}% of main-network MACs "
            f"({100 * self.all_heads_ratio:.2f}% with the classifier)",
        ]
        return lines


def human(count: float) -> str:
    """``607500000 -> '607.5M'``: three significant figures or so, SI suffixes."""
    for threshold, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(count) >= threshold:
            return f"{count / threshold:.2f}{suffix}" if count < 10 * threshold else f"{count / threshold:.1f}{suffix}"
    return str(int(count))


def count_macs(module: nn.Module, in_shape: Sequence[int]) -> int:
    """MACs of one eval-mode forward on one sample of ``in_shape``; restores training flags."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        return count_flops(module, torch.zeros(1, *in_shape)) // 2
    finally:
        for m, mode in modes:
            m.train(mode)


def objective_macs(head: nn.Module, in_shape: Sequence[int]) -> int:
    """MACs per sample of what a stage's head computes in training: its forward, and for a local
    objective its ``local_loss`` too (projections, similarity matrices), on a batch of two."""
    if not callable(getattr(head, "local_loss", None)):
        return count_macs(head, in_shape)
    from torch.utils.flop_counter import FlopCounterMode

    features = torch.zeros(2, *in_shape)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        head.local_loss(features, head(features), torch.zeros(2, dtype=torch.long))
    return counter.get_total_flops() // 2 // len(features)  # a MAC is two FLOPs; per sample


def num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def backbone_stats(
    backbone: Backbone,
    num_stages: int | None,
    *,
    aux: str = "mlp-sr",
    split: str = "auto",
    cuts: Sequence[int] | None = None,
    split_at: Sequence[str] | None = None,
    objective: str = "aux",
) -> ModelStats:
    """Split ``backbone`` exactly as training would (:func:`~degl.core.split.build_stages`) and measure it."""
    stages = build_stages(backbone, num_stages, aux=aux, split=split, cuts=cuts, split_at=split_at, objective=objective)
    rows: list[StageStats] = []
    for stage in stages:
        last = stage.index == len(stages) - 1
        rows.append(
            StageStats(
                index=stage.index,
                blocks=list(stage.block_indices),
                name=backbone.block_names[stage.block_indices[0]],
                in_shape=list(stage.in_shape),
                out_shape=list(stage.out_shape),
                params=num_params(stage.block),
                macs=count_macs(stage.block, stage.in_shape),
                head="classifier" if last else aux if objective == "aux" else objective,
                aux_params=num_params(stage.head),
                aux_macs=count_macs(stage.head, stage.out_shape)
                if last
                else objective_macs(stage.head, stage.out_shape),
            )
        )
    head = stages[-1].head
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    return ModelStats(
        model=backbone.name,
        input_shape=list(backbone.input_shape),
        num_classes=linears[-1].out_features if linears else 0,
        aux=aux if objective == "aux" else f"none (objective {objective})",
        stages=rows,
        cuts=[s.block_indices[0] for s in stages[1:]],
        cut_names=[backbone.block_names[s.block_indices[0]] for s in stages[1:]],
        model_macs=count_macs(backbone.module or backbone.as_sequential(), backbone.input_shape),
    )


def model_stats(
    name: str,
    num_stages: int | None,
    *,
    aux: str = "mlp-sr",
    split: str = "auto",
    cuts: Sequence[int] | None = None,
    input_shape: tuple[int, ...] | None = None,
    width: float = 1.0,
    num_classes: int | None = 10,
    split_at: Sequence[str] | None = None,
    objective: str = "aux",
) -> ModelStats:
    """Build the model ``name`` (registered, ``torchvision:NAME`` or ``FILE.py:FUNCTION``, see
    :func:`~degl.models.build_model`) and measure its split into ``num_stages`` stages."""
    backbone = build_model(name, width=width, input_shape=input_shape, num_classes=num_classes)
    return backbone_stats(backbone, num_stages, aux=aux, split=split, cuts=cuts, split_at=split_at, objective=objective)
