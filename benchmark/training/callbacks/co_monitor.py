"""The catastrophic-overfitting early warning as a callback: it watches the trace's dE and acts on its alarm."""

from __future__ import annotations

import copy
from typing import Any

import torch

from energybench.config import MonitorConfig
from energybench.contracts.callback import Batch, Callback
from energybench.training.monitor import COMonitor


class COMonitorCallback(Callback):
    """Feeds every traced batch's dE to a ``COMonitor`` (``energybench.training.monitor``) and, when it raises
    its alarm, warns, stops training, or rolls back to the start of the epoch and continues with the
    fallback trainer (``MonitorConfig.action``; one rollback per run, later alarms only warn). Adds the
    epoch's ``monitor_*`` metrics and keeps ``monitor.json`` in the run folder."""

    state_key = "co-monitor"

    def __init__(self, settings: MonitorConfig, device: torch.device):
        super().__init__()
        self.settings = settings
        self.monitor = COMonitor(settings, device)
        self._healthy: dict[str, Any] | None = None

    def on_fit_start(self, run) -> None:
        if run.regularizer.acts_on_energy:
            run.reporter.alert(f"the CO monitor watches dE, which regularizer {run.config.regularizer!r} steers: "
                               "its alarms are unreliable in this run (docs/energy.md)")
        if self.monitor.rolled_back:  # a resumed run that had rolled back goes on with the fallback trainer
            run.use_trainer(self.settings.fallback_trainer)

    def on_epoch_start(self, run) -> None:
        if self.settings.action == "rollback" and not self.monitor.rolled_back:
            self._healthy = copy.deepcopy(run.state())

    def on_train_batch_end(self, run, batch: Batch) -> None:
        if batch.energies is not None:
            self.monitor.observe(batch.energies, batch.iteration)
        if self.monitor.step(batch.iteration):
            self._alarm(run, batch.iteration)

    def on_train_epoch_end(self, run, metrics: dict[str, float]) -> None:
        if self.monitor.end_epoch(run.iteration):
            self._alarm(run, run.iteration)

    def on_validation_end(self, run, metrics: dict[str, float]) -> None:
        metrics.update(self.monitor.epoch_metrics())
        self.monitor.write_log(run.dir / "monitor.json")

    def _alarm(self, run, iteration: int) -> None:
        action = self.settings.action
        if action == "rollback" and self.monitor.rolled_back:
            action = "warn"
        consequence = {"warn": "", "stop": "; stopping training here",
                       "rollback": f"; rolling back to the start of epoch {run.epoch + 1} and continuing with "
                                   f"trainer {self.settings.fallback_trainer!r}"}[action]
        run.reporter.alert(f"CO alarm at iteration {iteration} (epoch {run.epoch + 1}): the training dE left "
                           f"its recent range{consequence}")
        if action == "stop":
            run.request_stop()
        elif action == "rollback":
            self.monitor.rearm()
            run.request_rollback(self._healthy, self.settings.fallback_trainer)

    def state_dict(self) -> dict[str, Any]:
        return self.monitor.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.monitor.load_state_dict(state)
