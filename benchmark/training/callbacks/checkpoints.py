"""Checkpoint files of a run: the last epoch's weights, the best epoch's, and optionally every epoch's."""

from __future__ import annotations

from energybench.contracts.callback import Callback
from energybench.storage.checkpoint import save_checkpoint


class CheckpointFiles(Callback):
    """After validation, before the epoch is stored: ``last.pt``; ``best.pt`` when the epoch has the best
    validation PGD accuracy so far (the run's model selection); ``epoch-K.pt`` with ``keep_epochs``."""

    def on_validation_end(self, run, metrics: dict[str, float]) -> None:
        weights = run.model.state_dict()
        save_checkpoint(run.dir / "last.pt", weights)
        if run.config.keep_epochs:
            save_checkpoint(run.dir / f"epoch-{run.epoch}.pt", weights)
        if run.improved:
            save_checkpoint(run.dir / "best.pt", weights)
