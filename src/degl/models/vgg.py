"""ImageNet VGG-13 and VGG-19 with batch norm, as the paper splits them (paper-spec §2.7).

Configurations B (VGG-13) and E (VGG-19) of Simonyan & Zisserman, as in torchvision. Every 3x3
conv (with bias) + BN + ReLU is one block, and each 2x2 max-pool is *prepended* to the next conv's
block, so a stage boundary never falls between a pool and its conv. VGG-13 has 10 blocks, VGG-19
16; the last pool belongs to the classifier. Unlike the paper's code, which silently drops a
trailing remainder of two or more convs when grouping, every block always belongs to a stage.

The classifier is the paper's last head: max-pool, flatten, FC 4096, ReLU, FC 4096, ReLU, FC --
without the dropout of torchvision's ``vgg*_bn`` unless ``--dropout`` asks for it (the backprop
baselines' recipes do). Its input size comes from the real feature map
(25088 = 512x7x7 at 224x224), so smaller inputs such as 3x32x32 work. The width multiplier scales
every conv and the two hidden FC layers.
"""

from __future__ import annotations

from functools import partial

from torch import nn

from degl.errors import UserError
from degl.models.registry import Backbone, channels, he_init, register_model

Config = list[int | str]

CFG_B: Config = [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"]
CFG_E: Config = [
    64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
    512, 512, 512, 512, "M", 512, 512, 512, 512, "M",
]  # fmt: skip

_IMAGENET = (3, 224, 224)
_SMALL = (3, 64, 64)


def vgg(
    *,
    name: str,
    config: Config,
    width: float,
    input_shape: tuple[int, int, int],
    num_classes: int,
    paper_cuts: dict[int, tuple[int, ...]],
    dropout: float = 0.0,
) -> Backbone:
    """Blocks of [max-pool?] conv-BN-ReLU following ``config``; the final pool is in the classifier.

    ``dropout`` > 0 adds dropout after each hidden FC layer's ReLU, as torchvision's ``vgg*_bn``
    (0.5) that the paper's backprop baselines used.
    """
    in_channels, height, width_px = input_shape
    blocks: list[nn.Module] = []
    pool = False
    for item in config:
        if item == "M":
            pool = True
            height, width_px = height // 2, width_px // 2
            continue
        out_channels = channels(int(item), width)
        layers: list[nn.Module] = [nn.MaxPool2d(2)] if pool else []
        layers += [
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        ]
        blocks.append(nn.Sequential(*layers))
        in_channels, pool = out_channels, False
    assert pool, "a VGG config ends with the classifier's max-pool"
    if min(height, width_px) < 1:
        raise UserError(
            f"{name} halves the input 5 times; input {tuple(input_shape)} is too small (use at least 32x32)"
        )
    hidden = channels(4096, width)
    drop: list[nn.Module] = [nn.Dropout(dropout)] if dropout else []
    classifier = nn.Sequential(
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(in_channels * height * width_px, hidden),
        nn.ReLU(inplace=True),
        *drop,
        nn.Linear(hidden, hidden),
        nn.ReLU(inplace=True),
        *drop,
        nn.Linear(hidden, num_classes),
    )
    for module in [*blocks, classifier]:
        module.apply(partial(he_init, linear_std=0.01))
    return Backbone(name, blocks, classifier, tuple(input_shape), paper_cuts)


@register_model(
    "vgg13",
    description="ImageNet VGG-13-BN, one block per conv (10); paper K=4 and K=10",
    default_input_shape=_IMAGENET,
    test_input_shape=_SMALL,
)
def vgg13(
    *, width: float = 1.0, input_shape: tuple[int, int, int] = _IMAGENET, num_classes: int = 1000, dropout: float = 0.0
) -> Backbone:
    # K=4 is the paper's block_size 3: [c64 c64 M-c128] [c128 M-c256 c256] [M-c512 c512 M-c512] [c512].
    cuts = {4: (3, 6, 9), 10: tuple(range(1, 10))}
    return vgg(
        name="vgg13",
        config=CFG_B,
        width=width,
        input_shape=input_shape,
        num_classes=num_classes,
        paper_cuts=cuts,
        dropout=dropout,
    )


@register_model(
    "vgg19",
    description="ImageNet VGG-19-BN, one block per conv (16); paper K=2 and K=4",
    default_input_shape=_IMAGENET,
    test_input_shape=_SMALL,
)
def vgg19(
    *, width: float = 1.0, input_shape: tuple[int, int, int] = _IMAGENET, num_classes: int = 1000, dropout: float = 0.0
) -> Backbone:
    # K=4 is block_size 4 and K=2 block_size 8; K=16 one stage per conv.
    cuts = {2: (8,), 4: (4, 8, 12), 16: tuple(range(1, 16))}
    return vgg(
        name="vgg19",
        config=CFG_E,
        width=width,
        input_shape=input_shape,
        num_classes=num_classes,
        paper_cuts=cuts,
        dropout=dropout,
    )
