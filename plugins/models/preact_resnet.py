"""`preact-resnet18`: the PreAct ResNet-18 of He et al. (2016) used in the fast-AT literature."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from energybench import Classifier


class PreActBlock(nn.Module):
    """The pre-activation basic block (BN-ReLU-conv twice, identity or 1x1-conv shortcut); WideResNet's too."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.bn1, self.conv1 = nn.BatchNorm2d(cin), nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.conv2 = nn.BatchNorm2d(cout), nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.shortcut = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if self.shortcut is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


class PreActResNet18(Classifier):
    """PreAct ResNet-18 for 32x32 inputs (four stages of two blocks, ``width`` to 8 x ``width`` channels: 64 to
    512 by default; a narrow one, e.g. ``width=16``, for CPU-sized experiments)."""

    def __init__(self, num_classes: int, in_channels: int, mean, std, width: int = 64):
        super().__init__(num_classes, in_channels, mean, std)
        self.stem = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
        blocks, cin = [], width
        for cout, stride in ((width, 1), (2 * width, 2), (4 * width, 2), (8 * width, 2)):
            blocks += [PreActBlock(cin, cout, stride), PreActBlock(cout, cout, 1)]
            cin = cout
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(8 * width)
        self.fc = nn.Linear(8 * width, num_classes)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.blocks(self.stem(z))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))
