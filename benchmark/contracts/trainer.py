"""The `Trainer` base class: one adversarial-training step's loss."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from energybench.contracts.params import PluginParams, parse_params


@dataclass
class TrainOutput:
    """What a trainer's step hands back to the harness.

    ``loss`` is the trainer's scalar loss with its graph. ``x_adv`` (detached) and ``logits_adv``
    (with graph) are the adversarial inputs trained on and their logits, or None for a trainer
    that makes none. ``logits`` are the clean logits f(x) when the trainer computed them anyway
    (with their graph), else None: the harness then computes them only if something needs them.
    ``passes`` counts forward+backward passes per example spent by the step (for cost reports).
    """

    loss: torch.Tensor
    x_adv: torch.Tensor | None = None
    logits_adv: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    passes: float = 1.0


class Trainer(ABC):
    """Base class of every trainer plugin (entry-point group ``energybench.trainers``).

    Contract: ``step(model, x, y, keep_clean_logits=...)`` receives the model in train mode and a
    batch with ``x`` in [0, 1], and returns a ``TrainOutput``. It must not call ``backward`` on the
    loss or touch the optimizer: the harness adds regularizer penalties, back-propagates and steps.
    When ``keep_clean_logits`` is true and the step computes f(x) on the clean batch anyway, it
    returns those logits with their graph so a regularizer can reuse them instead of paying for
    another forward pass. ``adversarial`` says whether the step produces ``x_adv``.
    """

    Params: ClassVar[type[PluginParams]] = PluginParams
    adversarial: ClassVar[bool] = True
    name: ClassVar[str] = ""

    def __init__(self, *, eps: float, norm: str = "Linf", **params):
        self.eps = float(eps)
        self.norm = norm
        self.params = parse_params(self.Params, params, f"trainer {self.name or type(self).__name__!r}")

    @abstractmethod
    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, keep_clean_logits: bool) -> TrainOutput:
        """Compute this batch's training loss (see the class docstring)."""
