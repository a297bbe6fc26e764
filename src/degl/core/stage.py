"""A stage: a block of the main network plus the head that predicts the label from its output."""

from __future__ import annotations

import torch
from torch import nn


class Stage(nn.Module):
    """Block + head. Optimizer, schedule and loss live in the training method, not here.

    Args:
        block: the slice of the main network this stage owns.
        head: its auxiliary classifier (for the last stage: the network's classifier).
        index: position of the stage, 0-based.
        block_indices: which backbone blocks make up ``block``.
        in_shape: per-sample shape of the stage's input.
        out_shape: per-sample shape of the block's output.
    """

    def __init__(
        self,
        block: nn.Module,
        head: nn.Module,
        *,
        index: int,
        block_indices: tuple[int, ...],
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
    ) -> None:
        super().__init__()
        self.block = block
        self.head = head
        self.index = index
        self.block_indices = block_indices
        self.in_shape = in_shape
        self.out_shape = out_shape

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(features, logits)``; features are *not* detached here."""
        features = self.block(x)
        return features, self.head(features)

    def extra_repr(self) -> str:
        return f"index={self.index}, blocks={list(self.block_indices)}, in={self.in_shape}, out={self.out_shape}"


@torch.no_grad()
def head_classes(stage: Stage) -> int:
    """The number of classes ``stage``'s head predicts (one probe input, in eval mode)."""
    was = stage.training
    stage.head.eval()
    first = next(stage.parameters(), None)
    probe = stage.head(torch.zeros(1, *stage.out_shape, device=first.device if first is not None else "cpu"))
    stage.head.train(was)
    return int(probe.shape[-1])
