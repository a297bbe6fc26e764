"""Local objectives: what each stage but the last minimises (``--objective``, ``build_stages(objective=)``).

    aux        the paper's auxiliary classifier (the head ``--aux`` chooses), cross-entropy
    predsim    prediction + similarity matching (Nøkland & Eidnes 2019), weight ``--predsim-beta``
    sim        similarity matching alone (the stage is scored by a detached linear readout)
    FILE.py:F  a user's own: ``F(in_shape, num_classes)`` returns a module with ``forward(features)``
               -> logits and ``local_loss(features, logits, y)`` -> scalar (see :class:`LocalObjective`)

The last stage always keeps the network's classifier and its cross-entropy (an ``nn.Sequential`` without
one: an ``aux`` head).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from degl.core.objectives.base import LocalObjective, stage_loss
from degl.core.objectives.predsim import PredSim
from degl.errors import UserError
from degl.models.external import load_function

__all__ = ["OBJECTIVES", "LocalObjective", "ObjectiveFactory", "objective_factory", "stage_loss"]

OBJECTIVES = ("aux", "predsim", "sim")
DEFAULT_BETA = 0.99

ObjectiveFactory = Callable[[tuple[int, ...], int], nn.Module]
"""``f(in_shape, num_classes) -> objective module`` for one stage's output shape."""


def objective_factory(objective: str | ObjectiveFactory, *, beta: float | None = None) -> ObjectiveFactory | None:
    """How to build each stage's objective (None: ``aux``, the heads the ``aux`` option chooses).

    ``objective``: a name of :data:`OBJECTIVES`, ``path/to/file.py:FUNCTION`` /
    ``package.module:FUNCTION``, or a function ``f(in_shape, num_classes)``.
    ``beta``: predsim's weight of similarity matching (default 0.99); only for ``predsim``.
    """
    if beta is not None and objective != "predsim":
        raise ValueError(f"beta (--predsim-beta) applies to the predsim objective, not {objective!r}")
    if callable(objective):
        return _checked(objective, getattr(objective, "__name__", repr(objective)))
    if objective == "aux":
        return None
    if objective == "predsim":
        weight = DEFAULT_BETA if beta is None else beta
        if not 0.0 < weight < 1.0:
            raise ValueError(f"predsim's beta must be strictly between 0 and 1 (sim is beta 1), got {weight}")
        return lambda shape, classes: PredSim(shape, classes, beta=weight)
    if objective == "sim":
        return lambda shape, classes: PredSim(shape, classes, beta=1.0)
    if ":" in objective:
        return _checked(load_function(objective, "objective"), objective)
    raise UserError(
        f"unknown objective {objective!r}; choose one of {', '.join(OBJECTIVES)} or give path/to/file.py:FUNCTION"
    )


def _checked(factory: Callable[..., Any], name: str) -> ObjectiveFactory:
    def build(shape: tuple[int, ...], classes: int) -> nn.Module:
        made = factory(tuple(shape), classes)
        if not isinstance(made, nn.Module) or not callable(getattr(made, "local_loss", None)):
            raise UserError(
                f"objective {name}: it returned a {type(made).__name__}; it must return an nn.Module with "
                "forward(features) -> logits and local_loss(features, logits, y) -> scalar tensor"
            )
        return made

    return build
