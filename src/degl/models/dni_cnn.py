"""The DNI-comparison CNN (paper-spec §2.5; Jaderberg et al. 2017, App. C.1).

Three layers of 5x5 conv (128 channels, padding 2) + BN + ReLU + pool, one block each, so the
paper's K=3 is one stage per layer. Layer 1 ends with a 3x3/3 max-pool, layers 2 and 3 with a 3x3/3
average pool: 128@10x10, 128@3x3, 128@1x1 at 3x32x32. The classifier is one linear layer.

The paper gives DGL's aux heads the same shape as DNI's gradient synthesizer, so that DGL gets no
more capacity than DNI: three 5x5 convs, the last one zero-initialised, then global average pool and
a linear layer. That head costs about 2.46x the main network's MACs, on purpose. It is registered
as the model's own aux kind ``dni`` (``--aux dni``).
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from degl.errors import UserError
from degl.models.registry import Backbone, channels, register_model

_POOLS = ("max", "avg", "avg")


def dni_layer(in_channels: int, out_channels: int, pool: str) -> nn.Sequential:
    """5x5 conv (with bias, as in the paper) + BN + ReLU + 3x3 pool of stride 3."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 5, padding=2),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3) if pool == "max" else nn.AvgPool2d(3),
    )


def dni_head(in_shape: Sequence[int], num_classes: int) -> nn.Sequential:
    """``dni`` aux head: the DNI synthesizer's conv stack, global average pool, linear.

    The last conv's weight starts at zero, as the synthesizer's does, so each head starts out
    predicting from its bias alone; the convs keep the input's spatial size (padding 2).
    """
    if len(in_shape) != 3:
        raise UserError(f"aux head 'dni' needs a (C, H, W) feature map, got shape {tuple(in_shape)}")
    chans = in_shape[0]
    last = nn.Conv2d(chans, chans, 5, padding=2)
    nn.init.zeros_(last.weight)
    return nn.Sequential(
        nn.Conv2d(chans, chans, 5, padding=2),
        nn.BatchNorm2d(chans),
        nn.ReLU(inplace=True),
        nn.Conv2d(chans, chans, 5, padding=2),
        nn.BatchNorm2d(chans),
        nn.ReLU(inplace=True),
        last,
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(chans, num_classes),
    )


@register_model(
    "dni-cnn",
    description="3-layer 5x5-conv CNN of the DNI comparison (128@10, 128@3, 128@1; own aux 'dni')",
)
def dni_cnn(*, width: float = 1.0, input_shape: tuple[int, int, int] = (3, 32, 32), num_classes: int = 10) -> Backbone:
    in_channels, height, width_px = input_shape
    out_channels = channels(128, width)
    blocks: list[nn.Module] = []
    for pool in _POOLS:
        blocks.append(dni_layer(in_channels, out_channels, pool))
        in_channels = out_channels
        height, width_px = height // 3, width_px // 3
    if min(height, width_px) < 1:
        raise UserError(f"dni-cnn pools by 27 in all; input {tuple(input_shape)} is too small (need at least 27x27)")
    # At 32x32 the last map is 1x1 and this is the paper's Linear(128 -> classes); larger inputs keep
    # their last map's pixels rather than silently averaging them.
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(in_channels * height * width_px, num_classes))
    return Backbone(
        "dni-cnn",
        blocks,
        classifier,
        tuple(input_shape),
        paper_cuts={3: (1, 2)},
        extra_heads={"dni": dni_head},
    )
