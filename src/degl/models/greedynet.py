"""The asynchronous/replay-buffer experiments' 6-layer net, ``greedyNet`` (paper-spec §2.4).

Six 3x3 conv + BN + ReLU layers, one block each: 128@32, 128@32, 256@16, 256@16, 512@8, 512@8 at
3x32x32. Layers 2 and 4 downsample by 2 and double the width; *how* they downsample is the
family's variable, so each way is registered under its own name (the registry's builder signature
is fixed):

- ``greedynet``: 2x2 max-pool before the conv (the official code's default ``--ds-type``);
- ``greedynet-avgpool``: 2x2 average pool before the conv;
- ``greedynet-stride``: the conv itself has stride 2;
- ``greedynet-psi``: invertible space-to-depth (:class:`Psi`), so no information is thrown away
  and the conv sees 4x the channels (which is why it costs 1060.5M MACs instead of 607.5M).

Every layer's aux head in the paper is "average pool to 2x2, then a 3-hidden-layer MLP of width
4C", with the same head on the last layer, which is therefore the classifier here. The official
head pools with a fixed kernel S/2; the generic ``mlp`` head pools to ceil(S/4) and then to 2x2,
which averages exactly the same S/2 x S/2 regions whenever S is a multiple of 8 (every size the
paper uses), with the same parameters and MACs. So no model-specific head kind is needed: use
``--aux mlp`` to train it as in the paper.
"""

from __future__ import annotations

import torch
from torch import nn

from degl.errors import UserError
from degl.models.heads import mlp_head
from degl.models.registry import Backbone, channels, register_model

DOWNSAMPLING = ("maxpool", "avgpool", "stride", "psi")

# Layers 2 and 4 downsample: the official ``--down [1,3]`` marks the layer *after* index 1 and 3.
_DOWNSAMPLE_AT = (2, 4)
_DEPTH = 6


class Psi(nn.Module):
    """Invertible space-to-depth by 2: ``(C, H, W) -> (4C, H/2, W/2)``, a pure permutation.

    Output channel ``(dy * 2 + dx) * C + c`` holds input pixel ``(2i + dy, 2j + dx)`` of channel
    ``c``: the order of the paper's official code (paper-spec §2.4). It differs from
    ``nn.PixelUnshuffle``, which puts the channel index first (``c * 4 + dy * 2 + dx``); with the
    official order a conv's weights can be ported between the two implementations unchanged.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, chans, height, width = x.shape
        if height % 2 or width % 2:
            raise RuntimeError(f"psi downsampling needs even height and width, got {height}x{width}")
        x = x.reshape(batch, chans, height // 2, 2, width // 2, 2)
        return x.permute(0, 3, 5, 1, 2, 4).reshape(batch, 4 * chans, height // 2, width // 2)

    @staticmethod
    def inverse(y: torch.Tensor) -> torch.Tensor:
        """Undo :meth:`forward` exactly (depth-to-space in the same channel order)."""
        batch, chans4, height, width = y.shape
        assert chans4 % 4 == 0, "psi output must have a multiple of 4 channels"
        chans = chans4 // 4
        y = y.reshape(batch, 2, 2, chans, height, width)
        return y.permute(0, 3, 4, 1, 5, 2).reshape(batch, chans, 2 * height, 2 * width)


def greedy_layer(in_channels: int, out_channels: int, downsample: str | None) -> nn.Sequential:
    """One layer: optional downsampling prefix, 3x3 conv (no bias: BN follows), BN, ReLU."""
    layers: list[nn.Module] = []
    stride = 1
    if downsample == "maxpool":
        layers.append(nn.MaxPool2d(2))
    elif downsample == "avgpool":
        layers.append(nn.AvgPool2d(2))
    elif downsample == "psi":
        layers.append(Psi())
        in_channels *= 4
    elif downsample == "stride":
        stride = 2
    else:
        assert downsample is None, f"unknown downsampling {downsample!r}"
    layers += [
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]
    return nn.Sequential(*layers)


def greedynet(
    *,
    downsample: str = "maxpool",
    width: float = 1.0,
    input_shape: tuple[int, int, int] = (3, 32, 32),
    num_classes: int = 10,
    name: str | None = None,
) -> Backbone:
    """Build ``greedyNet`` with downsampling ``downsample`` (one of :data:`DOWNSAMPLING`)."""
    if downsample not in DOWNSAMPLING:
        raise UserError(f"unknown downsampling {downsample!r}; choose one of: {', '.join(DOWNSAMPLING)}")
    in_channels, height, width_px = input_shape
    out_channels = channels(128, width)
    blocks: list[nn.Module] = []
    for index in range(_DEPTH):
        mode = downsample if index in _DOWNSAMPLE_AT else None
        if mode is not None:
            if mode == "psi" and (height % 2 or width_px % 2):
                raise UserError(
                    f"greedynet-psi needs even feature maps but layer {index} gets {height}x{width_px} "
                    f"from input {tuple(input_shape)}; use a height and width divisible by 4"
                )
            out_channels *= 2
            # Pools floor odd sizes; a stride-2 conv with padding 1 rounds them up.
            if mode == "stride":
                height, width_px = (height + 1) // 2, (width_px + 1) // 2
            else:
                height, width_px = height // 2, width_px // 2
        blocks.append(greedy_layer(in_channels, out_channels, mode))
        in_channels = out_channels
    classifier = mlp_head((in_channels, height, width_px), num_classes, hidden_layers=3)
    # The buffer experiments train one stage per layer.
    paper_cuts = {_DEPTH: tuple(range(1, _DEPTH))}
    return Backbone(name or _name(downsample), blocks, classifier, tuple(input_shape), paper_cuts)


def _name(downsample: str) -> str:
    return "greedynet" if downsample == "maxpool" else f"greedynet-{downsample}"


_DESCRIPTIONS = {
    "maxpool": "6-layer net of the async/buffer experiments, max-pool downsampling (607.5M MACs)",
    "avgpool": "greedynet with 2x2 average-pool downsampling",
    "stride": "greedynet with stride-2 conv downsampling",
    "psi": "greedynet with invertible space-to-depth (psi) downsampling (1060.5M MACs)",
}


def _register(downsample: str) -> None:
    name = _name(downsample)

    @register_model(name, description=_DESCRIPTIONS[downsample])
    def build(
        *,
        width: float = 1.0,
        input_shape: tuple[int, int, int] = (3, 32, 32),
        num_classes: int = 10,
    ) -> Backbone:
        return greedynet(
            downsample=downsample, width=width, input_shape=input_shape, num_classes=num_classes, name=name
        )


for _mode in DOWNSAMPLING:
    _register(_mode)
