"""Model registry: every backbone is a list of blocks plus its own classifier.

Backbones are single-device ``nn.Module`` pieces with no training code. A stage is made of
consecutive blocks (see :mod:`degl.core.split`); the classifier is the last stage's head. Besides
the registered names, :func:`build_model` takes ``torchvision:NAME``, ``path/to/file.py:FUNCTION``
and ``package.module:FUNCTION`` (:mod:`degl.models.external`), cut by tracing
(:mod:`degl.models.traced`).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from degl.errors import UserError
from degl.models import external
from degl.models.backbone import Backbone, HeadBuilder
from degl.models.traced import trace_backbone

__all__ = [
    "Backbone",
    "HeadBuilder",
    "ModelEntry",
    "build_model",
    "channels",
    "he_init",
    "list_models",
    "model_entry",
    "register_model",
]

ModelBuilder = Callable[..., Backbone]


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: ModelBuilder
    description: str
    default_input_shape: tuple[int, int, int] | None
    """``None`` only for models from a file or module, whose input shape must be given."""
    test_input_shape: tuple[int, int, int] | None = None
    """Smaller input the contract tests build the model for (e.g. 3x64x64 for ImageNet nets, whose
    224x224 default makes the every-model x every-K suite slow); ``None`` means the default shape."""

    @property
    def contract_input_shape(self) -> tuple[int, int, int] | None:
        """The input shape tests should use: ``test_input_shape`` if set, else the default."""
        return self.test_input_shape or self.default_input_shape

    @property
    def external(self) -> bool:
        """Built from torchvision, a file or a module (not the registry), and cut by tracing."""
        return external.is_external(self.name)


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
    """The registered model ``name``, or an entry for a ``torchvision:``/``FILE.py:``/``module:`` name."""
    if external.is_external(name):
        builder = functools.partial(_build_external, name)
        return ModelEntry(name, builder, external.describe(name), external.default_input_shape(name))
    if name not in _REGISTRY:
        raise UserError(f"unknown model {name!r}; run 'degl models' to list them ({', '.join(list_models())})")
    return _REGISTRY[name]


def build_model(
    name: str,
    *,
    width: float = 1.0,
    input_shape: tuple[int, int, int] | None = None,
    num_classes: int | None = 10,
    dropout: float = 0.0,
) -> Backbone:
    """Build the backbone ``name`` for inputs of ``input_shape`` and ``num_classes`` classes.

    ``name`` is a registered model, or ``torchvision:NAME`` (default input 3x224x224),
    ``path/to/file.py:FUNCTION`` or ``package.module:FUNCTION`` (a function returning an
    ``nn.Module``, called with ``num_classes=`` if it takes it; ``input_shape`` required), which are
    traced and cut at their natural block boundaries. ``num_classes=None`` keeps an external
    model's own number of classes (10 for registered ones). ``dropout`` goes to models whose builder
    takes it (the VGGs' classifier); elsewhere it must be 0. ``width`` and ``dropout`` do not apply
    to external models.
    """
    entry = model_entry(name)
    if entry.external:
        return _build_external(name, width=width, input_shape=input_shape, num_classes=num_classes, dropout=dropout)
    num_classes = 10 if num_classes is None else num_classes
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
    except (MemoryError, torch.OutOfMemoryError) as exc:
        raise UserError(
            f"model {name!r} at width {width:g} does not fit in memory ({exc}); use a smaller width"
        ) from None
    except RuntimeError as exc:
        if "allocate" in str(exc).lower() or "out of memory" in str(exc).lower():
            first = str(exc).splitlines()[0][:160]
            raise UserError(
                f"model {name!r} at width {width:g} does not fit in memory ({first}); use a smaller width"
            ) from None
        raise UserError(
            f"model {name!r} cannot take inputs of shape {shape} (too small for its downsampling?): "
            f"{str(exc).splitlines()[0]}"
        ) from None
    return backbone


def _build_external(
    name: str,
    *,
    width: float = 1.0,
    input_shape: tuple[int, ...] | None = None,
    num_classes: int | None = None,
    dropout: float = 0.0,
) -> Backbone:
    if width != 1:
        raise UserError(f"--width {width}: the width multiplier applies to registered models only, not {name!r}")
    if dropout:
        raise UserError(f"--dropout {dropout}: applies to registered models only; {name!r} has its own dropout")
    if num_classes is not None and num_classes < 2:
        raise UserError(f"need at least 2 classes, got {num_classes}")
    shape = tuple(input_shape) if input_shape is not None else external.default_input_shape(name)
    if shape is None:
        raise UserError(f"model {name!r} needs an input shape: pass --input-shape C,H,W (input_shape= in Python)")
    module = external.load_model(name, num_classes=num_classes, input_shape=shape)
    return trace_backbone(module, shape, num_classes, name=name)


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
