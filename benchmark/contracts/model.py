"""The `Classifier` base class for model plugins: normalisation lives inside the model."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Classifier(nn.Module):
    """Base class of the built-in models (entry-point group ``energybench.models``).

    Contract for any model plugin: ``Model(num_classes=K, in_channels=C, mean=..., std=...)``
    builds a module mapping inputs in [0, 1] of shape (N, C, H, W) to logits (N, K). This base
    normalises with the per-channel ``mean``/``std`` inside ``forward`` and hands the result to
    ``logits``, so attacks and samplers always work in [0, 1] pixel space.
    """

    def __init__(self, num_classes: int, in_channels: int, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.num_classes = num_classes
        self.in_channels = in_channels
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits((x - self.mean) / self.std)

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        """Logits for normalised inputs ``z``; implemented by subclasses."""
        raise NotImplementedError
