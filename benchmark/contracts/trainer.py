"""The `Trainer` base class: one adversarial-training step's loss."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from energybench.contracts.params import PluginParams, budget, parse_params


@dataclass
class TrainOutput:
    """What a trainer's step hands back to the harness.

    ``loss`` is the trainer's scalar loss with its graph. ``x_adv`` (detached) and ``logits_adv``
    (with graph) are the adversarial inputs trained on and their logits, or None for a trainer
    that makes none. ``logits`` are the clean logits f(x) when the trainer computed them anyway
    (with their graph), else None: the harness then computes them only if something needs them.
    ``logits_start`` (detached) are the logits at the attack's starting point (x itself for zero-init
    FGSM, x plus the random start for RS-FGSM and N-FGSM), which a single-step trainer's attack pass
    computed anyway: they tell which examples are abnormal (``abnormal``) at no extra forward pass.
    ``passes`` counts forward+backward passes per example spent by the step (for cost reports).
    """

    loss: torch.Tensor
    x_adv: torch.Tensor | None = None
    logits_adv: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    logits_start: torch.Tensor | None = None
    passes: float = 1.0

    def abnormal(self, y: torch.Tensor) -> torch.Tensor:
        """Abnormal adversarial examples (AAER, Lin et al. 2023): the samples whose loss went DOWN after the
        attack's step, CE at x* below CE at the attack's starting point. A boolean mask, without gradient."""
        if self.logits_start is None or self.logits_adv is None:
            raise ValueError("abnormal examples need logits_start and logits_adv (single-step trainers report both)")
        return (F.cross_entropy(self.logits_adv.detach(), y, reduction="none")
                < F.cross_entropy(self.logits_start.detach(), y, reduction="none"))


class Trainer(ABC):
    """Base class of every trainer plugin (entry-point group ``energybench.trainers``).

    Contract: ``step(model, x, y, keep_clean_logits=...)`` receives the model in train mode and a
    batch with ``x`` in [0, 1], and returns a ``TrainOutput``. It must not call ``backward`` on the
    loss or touch the optimizer: the harness adds regularizer penalties, back-propagates and steps.
    When ``keep_clean_logits`` is true and the step computes f(x) on the clean batch anyway, it
    returns those logits with their graph so a regularizer can reuse them instead of paying for
    another forward pass. ``adversarial`` says whether the step produces ``x_adv``. A trainer whose
    attack takes one gradient step declares ``single_step`` and returns ``TrainOutput.logits_start``
    (regularizers that act on abnormal adversarial examples need it).
    """

    Params: ClassVar[type[PluginParams]] = PluginParams
    adversarial: ClassVar[bool] = True
    single_step: ClassVar[bool] = False
    name: ClassVar[str] = ""

    def __init__(self, *, eps: float, norm: str = "Linf", **params):
        label = f"trainer {self.name or type(self).__name__!r}"
        self.eps = budget(eps, label)
        self.norm = norm
        self.params = parse_params(self.Params, params, label)

    @abstractmethod
    def step(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, keep_clean_logits: bool) -> TrainOutput:
        """Compute this batch's training loss (see the class docstring)."""
