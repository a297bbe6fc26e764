"""Classifier heads: the paper's auxiliary heads (paper-spec §2.1) and a linear probe.

Every head maps a stage's output to class logits: a feature map of shape ``(C, H, W)``, flat
features ``(F,)``, or a token sequence ``(T, D)`` (a transformer's stage: ``mlp`` and ``linear``
average over the T tokens first, ``mlp-sr`` reads the tokens as a 1-D map of D channels; ``cnn``
needs a feature map). They are plain
``nn.Sequential`` so that FLOP counting and state dicts need nothing special.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from degl.errors import UserError

AUX_KINDS = ("mlp", "mlp-sr", "cnn", "linear")
TOKEN_KINDS = ("mlp", "mlp-sr", "linear")
"""The heads that also take token sequences ``(T, D)``."""


class TokenMean(nn.Module):
    """``(N, T, D) -> (N, D)``: average over the tokens, the token version of global average pooling."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=1)


class TokensAsChannels(nn.Module):
    """``(N, T, D) -> (N, D, T)``: a token sequence as a 1-D map with D channels, for 1-D pools and 1x1 convs."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.transpose(1, 2)


def _mlp(features: int, hidden_layers: int, num_classes: int) -> list[nn.Module]:
    layers: list[nn.Module] = []
    for _ in range(hidden_layers):
        layers += [nn.Linear(features, features), nn.BatchNorm1d(features), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(features, num_classes))
    return layers


def _quarter_resolution(height: int, width: int) -> nn.Module:
    # The paper always pools to ceil(S/4) before the 2x2 pool; with sizes that are not multiples of
    # 4 the two adaptive pools differ from one direct pool, so both are kept.
    return nn.AdaptiveAvgPool2d((math.ceil(height / 4), math.ceil(width / 4)))


def mlp_head(in_shape: Sequence[int], num_classes: int, *, hidden_layers: int = 3) -> nn.Sequential:
    """``mlp``: pool to ceil(S/4), pool to 2x2, flatten to 4C, ``hidden_layers`` x (Linear, BN, ReLU).

    On tokens ``(T, D)``: the mean over the tokens, then the same MLP on D features.
    """
    if len(in_shape) == 1:
        return nn.Sequential(*_mlp(in_shape[0], hidden_layers, num_classes))
    if len(in_shape) == 2:
        return nn.Sequential(TokenMean(), *_mlp(in_shape[1], hidden_layers, num_classes))
    channels, height, width = _spatial(in_shape, "mlp")
    return nn.Sequential(
        _quarter_resolution(height, width),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        *_mlp(4 * channels, hidden_layers, num_classes),
    )


def mlp_sr_head(in_shape: Sequence[int], num_classes: int, *, conv_layers: int = 3) -> nn.Sequential:
    """``mlp-sr``: pool to ceil(S/4), 3 x (1x1 conv, BN, ReLU), pool to 2x2, then the 3-layer MLP.

    On tokens ``(T, D)``, the 1-D version: pool to ceil(T/4) tokens, 3 x (1x1 conv, BN, ReLU) over
    the D channels, the mean over the tokens, then the MLP on D features.
    """
    if len(in_shape) == 2:
        tokens, channels = in_shape
        return nn.Sequential(
            TokensAsChannels(),
            nn.AdaptiveAvgPool1d(math.ceil(tokens / 4)),
            *_pointwise(nn.Conv1d, nn.BatchNorm1d, channels, conv_layers),
            nn.AdaptiveAvgPool1d(1),
            nn.Flatten(),
            *_mlp(channels, 3, num_classes),
        )
    channels, height, width = _spatial(in_shape, "mlp-sr")
    return nn.Sequential(
        _quarter_resolution(height, width),
        *_pointwise(nn.Conv2d, nn.BatchNorm2d, channels, conv_layers),
        nn.AdaptiveAvgPool2d(2),
        nn.Flatten(),
        *_mlp(4 * channels, 3, num_classes),
    )


def _pointwise(conv: type[nn.Module], norm: type[nn.Module], channels: int, layers: int) -> list[nn.Module]:
    convs: list[nn.Module] = []
    for _ in range(layers):
        convs += [conv(channels, channels, 1, bias=False), norm(channels), nn.ReLU(inplace=True)]
    return convs


def cnn_head(in_shape: Sequence[int], num_classes: int, *, conv_layers: int = 2) -> nn.Sequential:
    """``cnn``: 2 x (3x3 conv, BN, ReLU) at full resolution, pool to 2x2, BN, linear."""
    channels, _, _ = _spatial(in_shape, "cnn")
    convs: list[nn.Module] = []
    for _ in range(conv_layers):
        convs += [
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
            nn.ReLU(inplace=True),
        ]
    return nn.Sequential(
        *convs,
        nn.AdaptiveAvgPool2d(2),
        nn.BatchNorm2d(channels),
        nn.Flatten(),
        nn.Linear(4 * channels, num_classes),
    )


def linear_head(in_shape: Sequence[int], num_classes: int) -> nn.Sequential:
    """``linear``: global average pool (the mean over the tokens, for ``(T, D)``) and one linear layer."""
    if len(in_shape) == 1:
        return nn.Sequential(nn.Linear(in_shape[0], num_classes))
    if len(in_shape) == 2:
        return nn.Sequential(TokenMean(), nn.Linear(in_shape[1], num_classes))
    channels = _spatial(in_shape, "linear")[0]
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))


def build_head(kind: str, in_shape: Sequence[int], num_classes: int) -> nn.Sequential:
    """Build the auxiliary head ``kind`` (one of :data:`AUX_KINDS`) for features of ``in_shape``."""
    if kind == "mlp":
        return mlp_head(in_shape, num_classes)
    if kind == "mlp-sr":
        return mlp_sr_head(in_shape, num_classes)
    if kind == "cnn":
        return cnn_head(in_shape, num_classes)
    if kind == "linear":
        return linear_head(in_shape, num_classes)
    raise UserError(f"unknown aux head {kind!r}; choose one of: {', '.join(AUX_KINDS)}")


def _spatial(in_shape: Sequence[int], kind: str) -> tuple[int, int, int]:
    if len(in_shape) != 3:
        what = {1: "flat features", 2: "tokens (T, D)"}.get(len(in_shape), "features")
        raise UserError(
            f"aux head {kind!r} needs a (C, H, W) feature map but the stage outputs {what} of shape "
            f"{tuple(in_shape)}; use --aux {' or '.join(TOKEN_KINDS)}, which take flat features and tokens"
        )
    channels, height, width = in_shape
    return channels, height, width
