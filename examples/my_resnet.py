"""A user's own residual network, written the ordinary way (not as an nn.Sequential), split by degl.

Its forward adds the residuals functionally and flattens before the classifier; degl traces it with
torch.fx and cuts it between the residual blocks. Try:

    degl models --stats examples/my_resnet.py:build --input-shape 3,32,32 --stages 4
    degl train --model examples/my_resnet.py:build --dataset synthetic --stages 3 --split-at layer2,layer3

or, from Python, ``degl.build_stages(build(), num_stages=4, input_shape=(3, 32, 32), num_classes=10)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class Residual(nn.Module):
    """Two 3x3 convs with BN; a strided 1x1 projection on the shortcut when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.shortcut is None else self.shortcut(x)
        return F.relu(out + identity)


class MyResNet(nn.Module):
    """CIFAR-style: a 3x3 stem, three groups of two residual blocks (16, 32, 64 channels), pool, linear."""

    def __init__(self, num_classes: int = 10, widths: tuple[int, int, int] = (16, 32, 64)) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(widths[0])
        self.layer1 = nn.Sequential(Residual(widths[0], widths[0]), Residual(widths[0], widths[0]))
        self.layer2 = nn.Sequential(Residual(widths[0], widths[1], 2), Residual(widths[1], widths[1]))
        self.layer3 = nn.Sequential(Residual(widths[1], widths[2], 2), Residual(widths[2], widths[2]))
        self.fc = nn.Linear(widths[2], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = F.adaptive_avg_pool2d(x, 1)
        return self.fc(torch.flatten(x, 1))


def build(num_classes: int = 10) -> nn.Module:
    """The function degl calls for ``--model examples/my_resnet.py:build``."""
    return MyResNet(num_classes)


if __name__ == "__main__":
    import degl

    stages = degl.build_stages(build(), num_stages=4, aux="mlp", input_shape=(3, 32, 32), num_classes=10)
    for stage in stages:
        print(stage.index, stage.block_indices, stage.out_shape, sum(p.numel() for p in stage.block.parameters()))
