"""`wrn-28-10`: the WideResNet-28-10 of Zagoruyko and Komodakis (2016), as used by RobustBench."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from energybench import Classifier
from energybench.plugins.models.preact_resnet import PreActBlock


class WideResNet(Classifier):
    """WideResNet of ``depth`` and ``widen`` for 32x32 inputs (default 28-10)."""

    def __init__(self, num_classes: int, in_channels: int, mean, std, depth: int = 28, widen: int = 10):
        super().__init__(num_classes, in_channels, mean, std)
        n = (depth - 4) // 6
        widths = [16, 16 * widen, 32 * widen, 64 * widen]
        self.stem = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
        layers, cin = [], widths[0]
        for cout, stride in zip(widths[1:], (1, 2, 2)):
            for i in range(n):
                layers.append(PreActBlock(cin, cout, stride if i == 0 else 1))
                cin = cout
        self.blocks = nn.Sequential(*layers)
        self.bn = nn.BatchNorm2d(cin)
        self.fc = nn.Linear(cin, num_classes)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.blocks(self.stem(z))))
        return self.fc(F.adaptive_avg_pool2d(out, 1).flatten(1))
