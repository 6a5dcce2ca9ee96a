"""The `Regularizer` base class: a penalty added to any trainer's loss."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from torch import nn

from energybench.contracts.params import PluginParams, parse_params
from energybench.contracts.trainer import TrainOutput


class Regularizer(ABC):
    """Base class of every regularizer plugin (entry-point group ``energybench.regularizers``).

    Contract: ``penalty(model, x, y, out)`` receives the model, the clean batch and the trainer's
    ``TrainOutput`` and returns a scalar tensor (its own weight included) that the harness adds to
    the trainer's loss. ``requires_adversarial`` means it needs ``out.x_adv``/``out.logits_adv``,
    and the harness refuses to combine it with a trainer that makes none. ``uses_clean_logits``
    means it reads ``out.logits``: the harness guarantees they are present (reused from the trainer
    when it has them, else computed once with their graph). ``acts_on_energy`` means its penalty
    steers dE itself, which makes the CO monitor (it watches dE) unreliable: the run says so.
    ``requires_attack_start`` means it reads ``out.logits_start`` (abnormal adversarial examples),
    which only single-step trainers (``Trainer.single_step``) report; the harness refuses other
    trainers, and stops a run whose single-step trainer does not report them. ``trainer_single_step``
    tells the regularizer whether its trainer is single-step (set by the harness through
    ``create_regularizer``; None when it was built without one). Each forward call the penalty makes on
    the model counts as one more forward+backward pass per example in the run's cost.

    What it did: the harness records every batch's penalty and, per epoch, its mean (``train_reg_penalty``)
    and the share of batches where it was not zero (``train_reg_active``); a run whose penalty was zero in
    every batch says so. Optionally, ``penalty`` calls ``self.report_acted(fraction)`` with the share of the
    batch it acted on (a 0-dim tensor, read by the harness once per epoch, or a number), and ``acts_on`` names
    those samples; the epoch's mean is ``train_reg_acted``. A regularizer that does not report still works.
    """

    Params: ClassVar[type[PluginParams]] = PluginParams
    requires_adversarial: ClassVar[bool] = True
    uses_clean_logits: ClassVar[bool] = False
    requires_attack_start: ClassVar[bool] = False
    acts_on_energy: ClassVar[bool] = False
    name: ClassVar[str] = ""
    trainer_single_step: bool | None = None
    #: The share of the batch the last ``penalty`` call acted on, as it reported it (None: not reported).
    acted: torch.Tensor | float | None = None

    def __init__(self, **params):
        self.params = parse_params(self.Params, params, f"regularizer {self.name or type(self).__name__!r}")

    @property
    def acts_on(self) -> str:
        """What ``report_acted`` counts, as the epoch line names it (default: ``samples``)."""
        return "samples"

    def report_acted(self, fraction: torch.Tensor | float) -> None:
        """Optional, from ``penalty``: the share of this batch the penalty acted on (e.g. DER's abnormal adversarial
        examples); a tensor is kept on the device (no host synchronisation)."""
        self.acted = fraction.detach() if isinstance(fraction, torch.Tensor) else float(fraction)

    @property
    def needs_attack_start(self) -> bool:
        """Whether these hyper-parameters, with this trainer (``trainer_single_step``), need ``out.logits_start``
        (default: ``requires_attack_start``)."""
        return self.requires_attack_start

    @classmethod
    def variant(cls, params: dict[str, Any]) -> str | None:
        """A short description of a run's hyper-parameters for leaderboards when they make it a different
        method than the plugin's name says (an ablation), else None."""
        return None

    @abstractmethod
    def penalty(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, out: TrainOutput) -> torch.Tensor:
        """Return the weighted penalty for this batch (a scalar with graph)."""


@contextmanager
def forward_calls(model: nn.Module) -> Iterator[list[int]]:
    """Count the forward calls made on ``model`` inside the block (the length of the yielded list)."""
    calls: list[int] = []
    hook = model.register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        yield calls
    finally:
        hook.remove()
