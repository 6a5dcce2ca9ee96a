"""`small-cnn`: a four-layer CNN for 28x28 and 8x8 grayscale inputs (Fashion-MNIST, digits)."""

from __future__ import annotations

import torch
from torch import nn

from energybench import Classifier


class SmallCNN(Classifier):
    """Two 3x3 conv blocks (32 and 64 channels) with max-pooling, then a 128-unit hidden layer.

    Adaptive pooling to 4x4 makes it work for any input size of at least 4x4.
    """

    def __init__(self, num_classes: int, in_channels: int, mean, std, width: int = 32):
        super().__init__(num_classes, in_channels, mean, std)
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(),
            nn.MaxPool2d(2, ceil_mode=True),
            nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(),
            nn.AdaptiveMaxPool2d(4),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * width * 16, 128), nn.ReLU(), nn.Linear(128, num_classes))

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(z))
