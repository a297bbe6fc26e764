"""The paper's small CIFAR networks (paper-spec §2.2, §2.3): VGG-like stacks of 3x3 conv + BN + ReLU.

Each layer is one block, so one stage per layer is K = depth. Blocks that downsample start with a
2x2 max-pool and double the width. The classifier is the paper's last head: pool to 2x2 and a
2-hidden-layer MLP of width 4C.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from degl.models.heads import mlp_head
from degl.models.registry import Backbone, channels, register_model


def conv_bn_relu(in_channels: int, out_channels: int, *, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.MaxPool2d(2)] if pool else []
    layers += [
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    ]
    return nn.Sequential(*layers)


def vgg_like(
    *,
    name: str,
    depth: int,
    feature_size: int,
    downsample: Sequence[int],
    width: float,
    input_shape: tuple[int, int, int],
    num_classes: int,
) -> Backbone:
    in_channels, height, width_px = input_shape
    out_channels = channels(feature_size, width)
    blocks: list[nn.Module] = []
    for index in range(depth):
        pool = index in downsample
        if pool:
            out_channels *= 2
            height, width_px = height // 2, width_px // 2
        blocks.append(conv_bn_relu(in_channels, out_channels, pool=pool))
        in_channels = out_channels
    classifier = mlp_head((in_channels, height, width_px), num_classes, hidden_layers=2)
    # The paper groups b consecutive layers per stage (K = depth / b).
    paper_cuts = {k: tuple(range(depth // k, depth, depth // k)) for k in range(1, depth + 1) if depth % k == 0}
    return Backbone(name, blocks, classifier, tuple(input_shape), paper_cuts)


@register_model(
    "cnn6",
    description="6-layer VGG-like CIFAR net of the aux-net study (128@32 .. 512@8; 607.5M MACs at 3x32x32)",
)
def cnn6(*, width: float = 1.0, input_shape=(3, 32, 32), num_classes: int = 10) -> Backbone:
    return vgg_like(
        name="cnn6",
        depth=6,
        feature_size=128,
        downsample=(1, 3),
        width=width,
        input_shape=input_shape,
        num_classes=num_classes,
    )


@register_model(
    "cnn4",
    description="4-layer VGG-like CIFAR net of the learning-curve study (64@32 .. 256@8; 77.3M MACs)",
)
def cnn4(*, width: float = 1.0, input_shape=(3, 32, 32), num_classes: int = 10) -> Backbone:
    return vgg_like(
        name="cnn4",
        depth=4,
        feature_size=64,
        downsample=(1, 3),
        width=width,
        input_shape=input_shape,
        num_classes=num_classes,
    )
