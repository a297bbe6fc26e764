"""PredSim: a local prediction loss mixed with similarity matching (Nøkland & Eidnes, ICML 2019).

For a stage output H of a batch and its labels Y (one-hot):

    L_pred = CE(W · pool(H), y)                pool: average pooling until C·h·w <= 2048
    L_sim  = || S(conv3x3(H)) - S(Y) ||² / N²   S: the batch's cosine-similarity matrix
    L      = (1 - β) L_pred + β L_sim           β = 0.99 by default

S(X) centres each row of X over its features and takes the cosine of every pair of rows; for a
feature map, each channel is first summarised by its standard deviation over the positions, as in
the paper's code. ``sim`` alone (β = 1) gives the stage no classifier: its accuracy is then read by
a linear probe trained on the *detached* features, which does not shape the stage.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from degl.core.objectives.base import LocalObjective
from degl.models.heads import TokenMean

POOLED_FEATURES = 2048
"""The prediction head's input size at most (PredSim pools feature maps down to it)."""


def similarity(x: torch.Tensor) -> torch.Tensor:
    """The ``(N, N)`` cosine similarity of a batch's rows, each centred over its features."""
    if x.dim() == 4 and x.shape[2] * x.shape[3] > 1:
        x = x.flatten(2).std(dim=2)
    x = x.flatten(1).float()
    x = x - x.mean(dim=1, keepdim=True)
    x = F.normalize(x, dim=1)
    return (x @ x.t()).clamp(-1, 1)


def _pool_for(shape: Sequence[int]) -> tuple[nn.Module, int]:
    """Average pooling of a ``(C, H, W)`` map until it has at most POOLED_FEATURES values."""
    channels, height, width = shape
    side_h, side_w = height, width
    while channels * side_h * side_w > POOLED_FEATURES and (side_h > 1 or side_w > 1):
        side_h, side_w = math.ceil(side_h / 2), math.ceil(side_w / 2)
    return nn.AdaptiveAvgPool2d((side_h, side_w)), channels * side_h * side_w


class PredSim(LocalObjective):
    """``predsim`` (0 < β < 1), ``pred`` (β = 0) or ``sim`` (β = 1) on a stage output of ``in_shape``."""

    def __init__(self, in_shape: Sequence[int], num_classes: int, *, beta: float = 0.99) -> None:
        super().__init__()
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"predsim's beta must be in [0, 1], got {beta}")
        self.beta, self.num_classes = beta, num_classes
        shape = tuple(in_shape)
        if len(shape) == 3:
            pool, features = _pool_for(shape)
            self.pool: nn.Module = nn.Sequential(pool, nn.Flatten())
            self.project: nn.Module = nn.Conv2d(shape[0], shape[0], 3, padding=1, bias=False)
        else:
            features = shape[-1]
            self.pool = TokenMean() if len(shape) == 2 else nn.Identity()
            self.project = nn.Linear(features, features, bias=False)
        self.classifier = nn.Linear(features, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        pooled = self.pool(features)
        # sim alone: the readout learns from detached features, so only similarity shapes the stage.
        return self.classifier(pooled.detach() if self.beta == 1.0 else pooled)

    def local_loss(self, features: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pred = F.cross_entropy(logits.float(), y)
        if self.beta == 0.0:
            self.terms = {"pred": pred.detach()}
            return pred
        projected = self.project(self.pool(features) if features.dim() == 3 else features)
        target = similarity(F.one_hot(y, self.num_classes).float())
        sim = F.mse_loss(similarity(projected), target)
        self.terms = {"pred": pred.detach(), "sim": sim.detach()}
        if self.beta == 1.0:
            return sim + pred  # pred trains the readout only (its input is detached)
        return (1 - self.beta) * pred + self.beta * sim
