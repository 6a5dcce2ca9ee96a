"""The training dE trace: E(x), E(x*) and dE of training batches, summarised per epoch (``train_dE_mean``, ...)."""

from __future__ import annotations

import torch
from torch import nn

from energybench.contracts.callback import Batch, Callback
from energybench.ops.energy import EnergyTrace
from energybench.ops.modes import frozen_batchnorm_stats

#: When a trainer does not compute clean logits itself, the trace computes them on every
#: ``TRACE_INTERVAL``-th batch only (one no-grad forward), to keep its cost negligible.
TRACE_INTERVAL = 4


def trace_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Clean logits for the trace: no gradient, BatchNorm running statistics left untouched."""
    with frozen_batchnorm_stats(model), torch.no_grad():
        return model(x)


class EnergyTraceCallback(Callback):
    """Records the energies of every adversarial training batch, on the device, and adds their epoch
    statistics to the epoch's metrics. Free when the trainer kept the clean logits (FGSM); otherwise
    one no-grad clean pass every ``TRACE_INTERVAL`` batches, before the update, so E(x) and E(x*) come
    from the same weights. Sets ``Batch.energies`` for the callbacks after it (the CO monitor)."""

    def on_epoch_start(self, run) -> None:
        self.trace = EnergyTrace()

    def on_before_backward(self, run, batch: Batch) -> None:
        out = batch.out
        if out.logits_adv is None:
            return
        clean = out.logits if out.logits is not None else (
            trace_logits(run.model, batch.x) if batch.index % TRACE_INTERVAL == 0 else None)
        if clean is not None:
            batch.energies = self.trace.add(clean, out.logits_adv, batch.y)

    def on_train_epoch_end(self, run, metrics: dict[str, float]) -> None:
        metrics.update(self.trace.summary(prefix="train_"))
