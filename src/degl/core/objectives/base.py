"""The local objective interface: what a stage minimises, besides passing its output on.

A stage's head *is* its objective. The paper's auxiliary classifiers (``aux``: plain heads from
:mod:`degl.models.heads`) are trained with the step's loss function on their logits, exactly as
before objectives existed. Any other objective is a :class:`LocalObjective`: an ``nn.Module`` whose
``forward(features)`` gives the logits the stage is scored with (test accuracy, the ensemble, early
exits) and whose :meth:`LocalObjective.local_loss` gives the scalar the stage minimises. Its
parameters (projections, decoders, readouts) are the head's, so they are trained by the stage's
optimizer, checkpointed in the stage file and moved with the stage, in every runtime.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from degl.errors import UserError


class LocalObjective(nn.Module):
    """Base class of objectives other than ``aux``. Subclasses define ``forward`` and ``local_loss``.

    ``local_loss(features, logits, y)`` receives the stage's output (not detached), the logits
    ``forward`` returned for it, and the labels; it returns the scalar loss. It may also set
    :attr:`terms` (name -> detached scalar) to report its parts.
    """

    def __init__(self) -> None:
        super().__init__()
        self.terms: dict[str, torch.Tensor] = {}

    def local_loss(self, features: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


StageLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
"""``f(features, logits, y) -> scalar``: what one stage's step minimises."""


def stage_loss(head: nn.Module, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> StageLoss:
    """The loss a stage with ``head`` minimises, decided once per stage (not on every step): its
    objective's ``local_loss``, or for a plain head (``aux``) ``loss_fn(logits, y)``."""
    local_loss = getattr(head, "local_loss", None)
    if local_loss is None:
        return lambda features, logits, y: loss_fn(logits, y)

    def checked(features: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = local_loss(features, logits, y)
        if not isinstance(loss, torch.Tensor) or loss.dim() != 0:
            shape = tuple(loss.shape) if isinstance(loss, torch.Tensor) else ""
            raise UserError(
                f"objective {type(head).__name__}.local_loss must return a scalar tensor, "
                f"got {type(loss).__name__}{shape}"
            )
        return loss

    return checked
