"""Model registry: every backbone is a list of blocks plus its own classifier.

Backbones are single-device ``nn.Module`` pieces with no training code. A stage is made of
consecutive blocks (see :mod:`degl.core.split`); the classifier is the last stage's head.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from degl.errors import UserError

HeadBuilder = Callable[[tuple[int, ...], int], nn.Module]
"""``builder(in_shape, num_classes) -> head`` for one stage's output of per-sample shape ``in_shape``."""


@dataclass
class Backbone:
    """A network cut into its smallest splittable pieces.

    Attributes:
        name: registry name.
        blocks: consecutive pieces of the main network; stages are made of whole blocks.
        classifier: the network's own head, applied to the last block's output.
        paper_cuts: cut points (block indices where a new stage starts) used in the paper for some
            numbers of stages; other K are balanced automatically.
        input_shape: ``(C, H, W)`` the backbone was built for.
    """

    name: str
    blocks: list[nn.Module]
    classifier: nn.Module
    input_shape: tuple[int, int, int]
    paper_cuts: dict[int, tuple[int, ...]] = field(default_factory=dict)
    extra_heads: dict[str, HeadBuilder] = field(default_factory=dict)
    """Aux-head kinds specific to this model (e.g. ``dni`` for the DNI-comparison CNN), by name."""

    def as_sequential(self) -> nn.Sequential:
        """The whole network, end to end, sharing parameters with the blocks."""
        return nn.Sequential(*self.blocks, self.classifier)


ModelBuilder = Callable[..., Backbone]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: ModelBuilder
    description: str
    default_input_shape: tuple[int, int, int]
    test_input_shape: tuple[int, int, int] | None = None
    """Smaller input the contract tests build the model for (e.g. 3x64x64 for ImageNet nets, whose
    224x224 default makes the every-model x every-K suite slow); ``None`` means the default shape."""

    @property
    def contract_input_shape(self) -> tuple[int, int, int]:
        """The input shape tests should use: ``test_input_shape`` if set, else the default."""
        return self.test_input_shape or self.default_input_shape


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    name: str,
    *,
    description: str,
    default_input_shape: tuple[int, int, int] = (3, 32, 32),
    test_input_shape: tuple[int, int, int] | None = None,
) -> Callable[[ModelBuilder], ModelBuilder]:
    """Register ``builder(width=, input_shape=, num_classes=) -> Backbone`` under ``name``.

    ``test_input_shape`` (default: ``default_input_shape``) is what the contract tests use.
    """

    def decorate(builder: ModelBuilder) -> ModelBuilder:
        assert name not in _REGISTRY, f"model {name!r} registered twice"
        _REGISTRY[name] = ModelEntry(name, builder, description, default_input_shape, test_input_shape)
        return builder

    return decorate


def list_models() -> list[str]:
    """Names of all registered models, sorted."""
    return sorted(_REGISTRY)


def model_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        raise UserError(f"unknown model {name!r}; run 'degl models' to list them ({', '.join(list_models())})")
    return _REGISTRY[name]


def build_model(
    name: str,
    *,
    width: float = 1.0,
    input_shape: tuple[int, int, int] | None = None,
    num_classes: int = 10,
    dropout: float = 0.0,
) -> Backbone:
    """Build the registered backbone ``name`` for inputs of ``input_shape`` and ``num_classes`` classes.

    ``dropout`` goes to models whose builder takes it (the VGGs' classifier); elsewhere it must be 0.
    """
    entry = model_entry(name)
    if width <= 0:
        raise UserError(f"--width must be positive, got {width}")
    options: dict[str, float] = {}
    if dropout:
        if not 0 < dropout < 1:
            raise UserError(f"--dropout must be in [0, 1), got {dropout}")
        if "dropout" not in inspect.signature(entry.builder).parameters:
            takers = [n for n, e in _REGISTRY.items() if "dropout" in inspect.signature(e.builder).parameters]
            raise UserError(f"model {name!r} has no dropout option; --dropout applies to: {', '.join(takers)}")
        options["dropout"] = dropout
    if num_classes < 2:
        raise UserError(f"need at least 2 classes, got {num_classes}")
    shape = tuple(input_shape) if input_shape is not None else entry.default_input_shape
    if len(shape) != 3 or min(shape) < 1:
        raise UserError(f"input shape must be C,H,W with positive sizes, got {shape}")
    try:
        backbone = entry.builder(width=width, input_shape=shape, num_classes=num_classes, **options)
        _probe(backbone)
    except RuntimeError as exc:
        raise UserError(
            f"model {name!r} cannot take inputs of shape {shape} (too small for its downsampling?): "
            f"{str(exc).splitlines()[0]}"
        ) from None
    return backbone


def _probe(backbone: Backbone) -> None:
    """Run one tiny forward pass so that impossible input shapes fail here, not mid-training."""
    was_training = [m.training for m in backbone.blocks]
    with torch.no_grad():
        x = torch.zeros(2, *backbone.input_shape)
        for block in backbone.blocks:
            block.eval()
            x = block(x)
        backbone.classifier.eval()
        backbone.classifier(x)
    for block, mode in zip(backbone.blocks, was_training):
        block.train(mode)
    backbone.classifier.train()


def he_init(module: nn.Module, *, linear_std: float | None = None) -> None:
    """The paper's (and torchvision's) init: He over fan-out for convs, BatchNorm weight 1 and bias 0;
    with ``linear_std`` also linear layers N(0, std) with zero bias (conv biases zeroed then too)."""
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        if linear_std is not None and module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.BatchNorm2d, nn.BatchNorm1d)):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Linear) and linear_std is not None:
        nn.init.normal_(module.weight, 0.0, linear_std)
        nn.init.zeros_(module.bias)


def channels(base: int, width: float) -> int:
    """Apply the channel-width multiplier; never fewer than one channel."""
    return max(1, round(base * width))
