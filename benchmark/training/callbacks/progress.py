"""Progress of a run for its reporter: the run's start, every batch, every finished epoch."""

from __future__ import annotations

from energybench.contracts.callback import Batch, Callback


class ProgressCallback(Callback):
    """Forwards the loop's progress to ``run.reporter`` (rich progress bars and one line per epoch in the
    terminal; nothing in library use)."""

    def on_fit_start(self, run) -> None:
        run.reporter.start(run.run_id, run.config, run.epoch, acts_on=run.regularizer.acts_on)

    def on_epoch_start(self, run) -> None:
        run.reporter.start_epoch(run.epoch, run.batches_per_epoch)

    def on_train_batch_end(self, run, batch: Batch) -> None:
        run.reporter.batch_done()

    def on_epoch_end(self, run, metrics: dict[str, float]) -> None:
        run.reporter.epoch_done(run.epoch - 1, metrics)
