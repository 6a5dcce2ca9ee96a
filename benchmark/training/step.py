"""One training step of a trainer plus a regularizer, and what it costs in forward+backward passes."""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from energybench.contracts.guard import call_plugin, penalty_problem, train_output_problem
from energybench.contracts.regularizer import Regularizer, forward_calls
from energybench.contracts.trainer import Trainer, TrainOutput
from energybench.ops.modes import frozen_batchnorm_stats


@dataclass
class StepResult:
    """A step's total loss (with graph), the trainer's output, the passes per example it cost, the regularizer's
    penalty (detached) and the share of the batch it acted on as it reported it (``Regularizer.report_acted``)."""

    loss: torch.Tensor
    out: TrainOutput
    passes: float
    penalty: torch.Tensor
    acted: torch.Tensor | float | None = None


class TrainingStep:
    """The loss of one batch: the trainer's step, the clean logits the regularizer needs, its penalty.

    When the regularizer reads clean logits (``uses_clean_logits``) that the trainer did not keep, one
    more forward pass computes them, with BatchNorm running statistics frozen so the regularizer adds
    no BatchNorm update that the unregularized run lacks. Every plugin call goes through
    ``call_plugin`` (failures, ``timeout`` and broken contracts name the plugin; a trainer that leaves out
    ``TrainOutput.logits_start`` when the regularizer needs it breaks its contract). Passes per example:
    the trainer's ``TrainOutput.passes``, one for the extra clean pass, one per forward call the
    penalty makes (counted on the first step: the cost is the same every step).
    """

    def __init__(self, trainer: Trainer, regularizer: Regularizer, *, num_classes: int,
                 timeout: float | None = None):
        self.trainer, self.regularizer = trainer, regularizer
        self.num_classes, self.timeout = num_classes, timeout
        self.penalty_passes: int | None = None
        self.start_needed_by = (regularizer.name or type(regularizer).__name__) if regularizer.needs_attack_start \
            else None

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> StepResult:
        trainer, regularizer = self.trainer, self.regularizer
        out = call_plugin("trainer", trainer.name or type(trainer).__name__, trainer.step, model, x, y,
                          timeout=self.timeout, keep_clean_logits=regularizer.uses_clean_logits,
                          check=partial(train_output_problem, x=x, y=y, num_classes=self.num_classes,
                                        start_needed_by=self.start_needed_by))
        passes = out.passes
        if regularizer.uses_clean_logits and out.logits is None:
            with frozen_batchnorm_stats(model):
                out.logits = model(x)
            passes += 1
        penalty = partial(call_plugin, "regularizer", regularizer.name or type(regularizer).__name__,
                          regularizer.penalty, model, x, y, out, timeout=self.timeout, check=penalty_problem)
        regularizer.acted = None
        if self.penalty_passes is None:
            with forward_calls(model) as calls:
                value = penalty()
            self.penalty_passes = len(calls)
        else:
            value = penalty()
        return StepResult(out.loss + value, out, passes + self.penalty_passes, value.detach(), regularizer.acted)


class PenaltyTally:
    """What the regularizer did over an epoch's steps, summed on the device and read once: the mean penalty
    (``train_reg_penalty``), the share of batches where it was not zero (``train_reg_active``) and, when the
    regularizer reports it (``Regularizer.report_acted``), the share of samples it acted on (``train_reg_acted``)."""

    def __init__(self, device: torch.device):
        self.penalty = torch.zeros((), device=device)
        self.active = torch.zeros((), device=device, dtype=torch.long)
        self.acted = torch.zeros((), device=device)
        self.batches = self.samples = 0
        self.reported = True

    def add(self, step: StepResult, n: int) -> None:
        self.penalty += step.penalty.float() * n
        self.active += (step.penalty != 0).long()
        self.batches, self.samples = self.batches + 1, self.samples + n
        if step.acted is None:
            self.reported = False
        elif self.reported:
            self.acted += step.acted * n

    def metrics(self) -> dict[str, float]:
        out = {"train_reg_penalty": float(self.penalty) / self.samples,
               "train_reg_active": int(self.active) / self.batches}
        if self.reported:
            out["train_reg_acted"] = float(self.acted) / self.samples
        return out
