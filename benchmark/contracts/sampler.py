"""The `Sampler` base class: class-conditional generation from a classifier's energy."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from energybench.contracts.params import PluginParams, parse_params


@dataclass
class SampleBatch:
    """Samples and their bookkeeping: ``x`` in [0, 1], target labels ``y``, the number of update
    steps each sample used (``steps``) and its final joint energy E(x, y) (``energy``)."""

    x: torch.Tensor
    y: torch.Tensor
    steps: torch.Tensor
    energy: torch.Tensor


class Sampler(ABC):
    """Base class of every sampler plugin (entry-point group ``energybench.samplers``).

    A classifier f defines p(x | y) proportional to exp(-E(x, y)) with E(x, y) = -f(x)[y].
    Contract: callers always call ``fit(model, x_train, y_train)`` first (float images in [0, 1]);
    it collects what the sampler needs from the training data (image shape, class statistics, the
    class-typical energies), then ``sample(model, y, generator)`` returns
    a ``SampleBatch`` with one sample per entry of ``y``, clamped to [0, 1], deterministic for a
    given ``generator`` state. The model is used in eval mode and its parameters are not changed.
    """

    Params: ClassVar[type[PluginParams]] = PluginParams
    name: ClassVar[str] = ""

    def __init__(self, **params):
        self.params = parse_params(self.Params, params, f"sampler {self.name or type(self).__name__!r}")

    def fit(self, model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor) -> None:  # noqa: B027
        """Collect statistics of the training data; samplers that need none keep this default."""

    @abstractmethod
    def sample(self, model: nn.Module, y: torch.Tensor, generator: torch.Generator) -> SampleBatch:
        """Draw one sample per label in ``y``."""
