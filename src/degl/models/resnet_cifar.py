"""CIFAR ResNets: ResNet-110 of the DDG comparison (paper-spec §2.6), and ResNet-20/32/56 of its family.

BasicBlocks in three groups of 18, 16/32/64 channels, with "option A" shortcuts: where a block
halves the resolution and doubles the width, the identity path subsamples every other pixel and
pads the new channels with zeros, so shortcuts have no parameters (He et al. 2016, §4.2). The
paper's list of 58 splittable pieces is kept exactly: conv, BN, ReLU, the 54 residual blocks, and
global average pool + flatten. So any K from 1 to 58 works and the paper's K=2 cut is at 29: stem,
group 1 and the first 8 blocks of group 2 (32@16x16, 121.9M MACs), then the rest (130.9M MACs).

The residual block itself is torchvision's public ``BasicBlock`` with the option-A shortcut passed
as its ``downsample`` module.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from degl.models.registry import Backbone, channels, he_init, register_model

_WIDTHS = (16, 32, 64)


class ShortcutA(nn.Module):
    """Parameter-free shortcut: keep every ``stride``-th pixel, append zero channels.

    Same as the paper's ``AvgPool2d(kernel 1, stride)`` followed by concatenating zeros, and the
    output size matches a 3x3 conv with padding 1 and the same stride (ceil(S / stride)).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        assert out_channels >= in_channels, "option-A shortcuts can only add channels"
        self.stride = stride
        self.extra = out_channels - in_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, 0, self.extra))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, zero_channels={self.extra}"


def cifar_resnet(
    *,
    name: str,
    blocks_per_group: int,
    width: float,
    input_shape: tuple[int, int, int],
    num_classes: int,
) -> Backbone:
    """A CIFAR ResNet of depth ``6 * blocks_per_group + 2`` as stem pieces, blocks and the pool."""
    from torchvision.models.resnet import BasicBlock  # here: importing torchvision.models costs ~1 s per process

    widths = [channels(w, width) for w in _WIDTHS]
    blocks: list[nn.Module] = [
        nn.Conv2d(input_shape[0], widths[0], 3, padding=1, bias=False),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(inplace=True),
    ]
    in_channels = widths[0]
    for group, planes in enumerate(widths):
        for index in range(blocks_per_group):
            stride = 2 if group > 0 and index == 0 else 1
            shortcut = None
            if stride != 1 or in_channels != planes:
                shortcut = ShortcutA(in_channels, planes, stride)
            blocks.append(BasicBlock(in_channels, planes, stride=stride, downsample=shortcut))
            in_channels = planes
    blocks.append(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    classifier = nn.Linear(in_channels, num_classes)
    for module in nn.ModuleList(blocks).modules():
        he_init(module)  # the DDG code's N(0, sqrt(2/(k*k*out))) convs; classifier default
    paper_cuts = {2: (math.ceil(len(blocks) / 2),)}
    for num_stages, ends in INFOPRO_ENDS.get(name, {}).items():
        paper_cuts.setdefault(num_stages, infopro_cuts(ends, blocks_per_group))
    return Backbone(name, blocks, classifier, tuple(input_shape), paper_cuts=paper_cuts)


# Where InfoPro (Wang et al., ICLR 2021, its CIFAR configs table, read not copied) ends each local
# module but the last: (group, block) = after that 0-based block of residual group 1..3; (0, 0) =
# after the stem. Its Table 2 (K = 2..16) is measured at these boundaries.
INFOPRO_ENDS: dict[str, dict[int, tuple[tuple[int, int], ...]]] = {
    "resnet32": {
        2: ((2, 1),),
        4: ((1, 2), (2, 1), (3, 0)),
        8: ((1, 0), (1, 2), (1, 4), (2, 1), (2, 3), (3, 0), (3, 2)),
        16: ((0, 0), *((1, b) for b in range(5)), *((2, b) for b in range(5)), *((3, b) for b in range(4))),
    },
    "resnet110": {
        2: ((2, 8),),
        4: ((1, 11), (2, 7), (3, 3)),
        8: ((1, 4), (1, 11), (2, 0), (2, 7), (2, 14), (3, 3), (3, 10)),
        16: (
            *((1, b) for b in (1, 4, 7, 10, 13, 16)),
            *((2, b) for b in (1, 4, 7, 11, 15)),
            *((3, b) for b in (1, 5, 9, 13)),
        ),
    },
}
STEM_PIECES = 3  # conv, BN, ReLU


def infopro_cuts(ends: tuple[tuple[int, int], ...], blocks_per_group: int) -> tuple[int, ...]:
    """Block indices where stages 1..K-1 start, from InfoPro's module ends."""
    return tuple(
        STEM_PIECES if group == 0 else STEM_PIECES + (group - 1) * blocks_per_group + block + 1 for group, block in ends
    )


@register_model(
    "resnet110",
    description="CIFAR ResNet-110 (option-A shortcuts) of the DDG comparison; 58 blocks, DDG's K=2, InfoPro's K=4-16",
)
def resnet110(
    *, width: float = 1.0, input_shape: tuple[int, int, int] = (3, 32, 32), num_classes: int = 10
) -> Backbone:
    return cifar_resnet(
        name="resnet110", blocks_per_group=18, width=width, input_shape=input_shape, num_classes=num_classes
    )


@register_model(
    "resnet32",
    description="CIFAR ResNet-32 (option-A shortcuts), 19 blocks; InfoPro's cuts at K=2, 4, 8, 16",
)
def resnet32(*, width: float = 1.0, input_shape: tuple[int, int, int] = (3, 32, 32), num_classes: int = 10) -> Backbone:
    return cifar_resnet(
        name="resnet32", blocks_per_group=5, width=width, input_shape=input_shape, num_classes=num_classes
    )


@register_model(
    "resnet56",
    description="CIFAR ResNet-56 (option-A shortcuts), 31 blocks; cut by the splitter",
)
def resnet56(*, width: float = 1.0, input_shape: tuple[int, int, int] = (3, 32, 32), num_classes: int = 10) -> Backbone:
    return cifar_resnet(
        name="resnet56", blocks_per_group=9, width=width, input_shape=input_shape, num_classes=num_classes
    )


@register_model(
    "resnet20",
    description="CIFAR ResNet-20, resnet110's family at 3 blocks per group (11 blocks, paper-style K=2 cut)",
)
def resnet20(*, width: float = 1.0, input_shape: tuple[int, int, int] = (3, 32, 32), num_classes: int = 10) -> Backbone:
    return cifar_resnet(
        name="resnet20", blocks_per_group=3, width=width, input_shape=input_shape, num_classes=num_classes
    )
