"""ImageNet ResNet-152 as the paper splits it (paper-spec §2.8).

torchvision's layout (Bottleneck blocks with the stride on the 3x3 conv, layers [3, 8, 36, 3]),
built from torchvision's public ``Bottleneck`` and ``conv1x1`` so that the residual arithmetic is
theirs. The splittable pieces are the stem (7x7/2 conv, BN, ReLU, 3x3/2 max-pool) and the 50
bottlenecks: 51 blocks. The paper's K=2 cut is at ceil(51/2) = 26: stem, layer1, layer2 and 14
blocks of layer3 (1024@14x14, 5.90G MACs, 18.6M params), then the rest (5.61G MACs).

The classifier is global average pool + FC. Aux heads are sized from the real feature map (the
paper's code thinks stage 1 ends at 7x7 because its size tracker also halves on layer1's
projection shortcut; we do not replicate that).
"""

from __future__ import annotations

from torch import nn

from degl.models.registry import Backbone, channels, he_init, register_model

_IMAGENET = (3, 224, 224)


def imagenet_resnet(
    *,
    name: str,
    layers: tuple[int, int, int, int],
    width: float,
    input_shape: tuple[int, int, int],
    num_classes: int,
) -> Backbone:
    """A bottleneck ResNet as [stem, bottleneck, ...]; widths 64/128/256/512 x ``width`` (x4 out)."""
    stem_channels = channels(64, width)
    blocks: list[nn.Module] = [
        nn.Sequential(
            nn.Conv2d(input_shape[0], stem_channels, 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(stem_channels),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
    ]
    from torchvision.models.resnet import Bottleneck, conv1x1  # here: importing torchvision.models costs ~1 s

    in_channels = stem_channels
    for group, count in enumerate(layers):
        planes = channels(64 * 2**group, width)
        for index in range(count):
            stride = 2 if group > 0 and index == 0 else 1
            downsample = None
            if stride != 1 or in_channels != planes * Bottleneck.expansion:
                downsample = nn.Sequential(
                    conv1x1(in_channels, planes * Bottleneck.expansion, stride),
                    nn.BatchNorm2d(planes * Bottleneck.expansion),
                )
            blocks.append(Bottleneck(in_channels, planes, stride=stride, downsample=downsample))
            in_channels = planes * Bottleneck.expansion
    classifier = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, num_classes))
    for block in blocks:
        block.apply(he_init)  # classifier keeps PyTorch's default, as the paper's code
    half = (len(blocks) + 1) // 2
    return Backbone(name, blocks, classifier, tuple(input_shape), paper_cuts={2: (half,)})


@register_model(
    "resnet152",
    description="ImageNet ResNet-152 (torchvision Bottleneck [3, 8, 36, 3]); 51 blocks, paper K=2",
    default_input_shape=_IMAGENET,
    test_input_shape=(3, 64, 64),
)
def resnet152(
    *, width: float = 1.0, input_shape: tuple[int, int, int] = _IMAGENET, num_classes: int = 1000
) -> Backbone:
    return imagenet_resnet(
        name="resnet152", layers=(3, 8, 36, 3), width=width, input_shape=input_shape, num_classes=num_classes
    )
