"""Catastrophic-overfitting early warning from the training-batch delta energy (no extra attack).

The harness already computes dE = E(x) - E(x*) on training batches (``EnergyTrace``). The
monitor keeps, on the device, the mean dE of every traced batch; every ``check_every`` batches
it copies the window's means to the host at once (asynchronously on CUDA: a window is read at
the next check, so no step waits for the GPU) and feeds the window mean to a ``DriftRule``.

``DriftRule``: an exponentially weighted mean and variance of the window means (half-life
``halflife`` checks) form the recent history; after ``warmup`` checks, a window whose z-score
``(s - mean) / max(std, min_std)`` exceeds ``threshold`` (in magnitude, or upwards only with
``direction="up"``) for ``patience`` consecutive checks raises the alarm. While a window exceeds
the threshold the history is frozen, so a divergence is not absorbed into the baseline it is
compared with. The rule is plain Python over floats, so ``bench/co_monitor_eval.py`` replays
stored traces through the very same code.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from energybench.config import MonitorConfig
from energybench.files import read_text
from energybench.storage.checkpoint import atomic_write


@dataclass
class DriftRule:
    """EWMA baseline + z-score alarm with patience, over one value per check (see module docstring)."""

    threshold: float
    patience: int
    halflife: float
    warmup: int
    min_std: float
    direction: str = "both"
    checks: int = 0
    mean: float = 0.0
    var: float = 0.0
    streak: int = 0
    fired: bool = False

    @classmethod
    def from_config(cls, settings: MonitorConfig) -> DriftRule:
        return cls(threshold=settings.threshold, patience=settings.patience, halflife=settings.halflife,
                   warmup=settings.warmup, min_std=settings.min_std, direction=settings.direction)

    def update(self, value: float) -> float:
        """Feed one window mean; return its z-score against the history (0 during warm-up).

        Sets ``fired`` (and keeps it set) once ``patience`` consecutive z-scores exceed ``threshold``.
        """
        if not math.isfinite(value):
            self.fired = True
            return math.inf
        self.checks += 1
        if self.checks == 1:
            self.mean, self.var = value, 0.0
            return 0.0
        z = (value - self.mean) / max(math.sqrt(self.var), self.min_std)
        if self.checks > self.warmup and (z if self.direction == "up" else abs(z)) > self.threshold:
            self.streak += 1
            self.fired = self.fired or self.streak >= self.patience
            return z
        self.streak = 0
        alpha = 1 - 0.5 ** (1 / self.halflife)
        diff = value - self.mean
        self.mean += alpha * diff
        self.var = (1 - alpha) * (self.var + alpha * diff * diff)
        return z if self.checks > self.warmup else 0.0

    def reset(self) -> None:
        """Forget the history (a new warm-up follows), e.g. after the training setting changed."""
        self.checks, self.mean, self.var, self.streak, self.fired = 0, 0.0, 0.0, 0, False


@dataclass
class MonitorLog:
    """Everything the monitor saw: the traced batches' mean dE and each check's z-score, by iteration."""

    batch_iters: list[int] = field(default_factory=list)
    batch_dE: list[float] = field(default_factory=list)
    batch_dE_joint: list[float] = field(default_factory=list)
    check_iters: list[int] = field(default_factory=list)
    check_z: list[float] = field(default_factory=list)
    alarm_iters: list[int] = field(default_factory=list)
    rollback_iters: list[int] = field(default_factory=list)


class COMonitor:
    """Online CO alarm fed by the harness: ``observe`` per traced batch, ``step`` per batch.

    ``step`` returns True on the batch at which the alarm fires (once until ``rearm``); the harness
    then applies the configured action (warn, stop or rollback).
    """

    def __init__(self, settings: MonitorConfig, device: torch.device):
        self.settings = settings
        self.device = device
        self.rule = DriftRule.from_config(settings)
        self.log = MonitorLog()
        self._pending: list[torch.Tensor] = []  # per traced batch: [mean dE, mean joint dE], on the device
        self._pending_iters: list[int] = []
        self._in_flight: tuple[torch.Tensor, list[int], torch.cuda.Event] | None = None
        self._epoch_z = 0.0
        self._epoch_alarm: int | None = None
        self._iteration = 0

    # ----- feeding ------------------------------------------------------------------------------

    def observe(self, values: dict[str, torch.Tensor], iteration: int) -> None:
        """Record a traced batch (``EnergyTrace.add``'s per-sample values); no host synchronisation."""
        self._pending.append(torch.stack((values["dE"].mean(), values["dE_joint"].mean())))
        self._pending_iters.append(iteration)

    def step(self, iteration: int) -> bool:
        """Called after optimizer step ``iteration`` (1-based, whole run); True when the alarm fires now."""
        self._iteration = iteration
        if iteration % self.settings.check_every or not (self._pending or self._in_flight):
            return False
        fired = self._read_in_flight(iteration)
        if self._pending:
            window, iters = torch.stack(self._pending), self._pending_iters
            self._pending, self._pending_iters = [], []
            if self.device.type == "cuda":  # read at the next check, when the copy has long finished
                host = torch.empty(window.shape, dtype=window.dtype, pin_memory=True)
                host.copy_(window, non_blocking=True)
                event = torch.cuda.Event()
                event.record()
                self._in_flight = (host, iters, event)
            else:
                fired = self._check(window.tolist(), iters, iteration) or fired
        return fired

    def end_epoch(self, iteration: int) -> bool:
        """At an epoch end (host syncs anyway): read a window still in flight; True if the alarm fires."""
        return self._read_in_flight(iteration)

    def _read_in_flight(self, iteration: int) -> bool:
        if self._in_flight is None:
            return False
        host, iters, event = self._in_flight
        self._in_flight = None
        event.synchronize()
        return self._check(host.tolist(), iters, iteration)

    def _check(self, rows: list[list[float]], iters: list[int], iteration: int) -> bool:
        self.log.batch_iters.extend(iters)
        self.log.batch_dE.extend(r[0] for r in rows)
        self.log.batch_dE_joint.extend(r[1] for r in rows)
        column = 0 if self.settings.signal == "dE" else 1
        was_fired = self.rule.fired
        z = self.rule.update(sum(r[column] for r in rows) / len(rows))
        self.log.check_iters.append(iteration)
        self.log.check_z.append(z)
        self._epoch_z = max(self._epoch_z, abs(z))
        if self.rule.fired and not was_fired:
            self.log.alarm_iters.append(iteration)
            if self._epoch_alarm is None:
                self._epoch_alarm = iteration
            return True
        return False

    def rearm(self) -> None:
        """After a rollback (to before the last alarm): forget the baseline and watch the new setting afresh."""
        self.log.rollback_iters.append(self.log.alarm_iters[-1])
        self.rule.reset()
        self._pending, self._pending_iters, self._in_flight = [], [], None

    # ----- reporting and state ------------------------------------------------------------------

    def epoch_metrics(self) -> dict[str, float]:
        """This epoch's ``monitor_alarm`` (0/1), ``monitor_alarm_iter`` (-1 if none), ``monitor_z_max``, the
        rollbacks so far and ``monitor_iters``, the training iterations done by the epoch's end."""
        alarm = self._epoch_alarm
        metrics = {"monitor_alarm": float(alarm is not None),
                   "monitor_alarm_iter": float(-1 if alarm is None else alarm),
                   "monitor_z_max": self._epoch_z, "monitor_rollbacks": float(len(self.log.rollback_iters)),
                   "monitor_iters": float(self._iteration)}
        self._epoch_z, self._epoch_alarm = 0.0, None
        return metrics

    @property
    def rolled_back(self) -> bool:
        return bool(self.log.rollback_iters)

    def state_dict(self) -> dict[str, Any]:
        """Plain containers only (safe for ``weights_only`` loading); call after ``end_epoch``."""
        pending = [p.tolist() for p in self._pending]
        return {"rule": asdict(self.rule), "log": asdict(self.log), "pending": pending,
                "pending_iters": list(self._pending_iters)}

    def write_log(self, path: Path) -> None:
        """Write ``MonitorLog`` as JSON (read back by ``read_log``; replayed by bench/co_monitor_eval.py)."""
        atomic_write(path, json.dumps(asdict(self.log)).encode())

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rule = DriftRule(**state["rule"])
        self.log = MonitorLog(**state["log"])
        self._pending = [torch.tensor(p, device=self.device) for p in state["pending"]]
        self._pending_iters = list(state["pending_iters"])
        self._in_flight = None


def read_log(path: Path) -> MonitorLog | None:
    """The ``MonitorLog`` a run wrote to ``path`` (``monitor.json`` in its folder), or None if absent."""
    return MonitorLog(**json.loads(read_text(path, "monitor log"))) if path.is_file() else None


def replay(log: MonitorLog, settings: MonitorConfig, last_iter: int | None = None) -> int | None:
    """The iteration at which ``settings`` would first raise the alarm on ``log``'s traced batches.

    Groups the stored batch means into the windows the online monitor checks (every
    ``check_every`` iterations, host timing as on the CPU) and feeds them to a fresh ``DriftRule``;
    windows ending after ``last_iter`` are never checked. None when the alarm would stay silent.
    """
    rule = DriftRule.from_config(settings)
    values = log.batch_dE if settings.signal == "dE" else log.batch_dE_joint
    windows: dict[int, list[float]] = {}
    for iteration, value in zip(log.batch_iters, values):
        windows.setdefault(-(-iteration // settings.check_every) * settings.check_every, []).append(value)
    for end, window in sorted(windows.items()):
        if last_iter is not None and end > last_iter:
            break
        rule.update(sum(window) / len(window))
        if rule.fired:
            return end
    return None
