"""Best-checkpoint selection from a run's per-epoch metrics: by validation PGD, or by the training dE alone.

``val-pgd`` needs an attack on held-out points every epoch. ``dE`` needs none: it reads the CO
monitor's per-epoch alarm flags, computed from the training attack's dE that training produces
anyway, and keeps the last epoch that ended before the dE diverged (the last epoch if it never did).
"""

from __future__ import annotations

from typing import Any

from energybench.errors import EnergybenchError, unknown_name

CRITERIA = ("val-pgd", "dE", "last")


def select_epoch(history: list[dict[str, Any]], criterion: str) -> int:
    """The 0-based epoch that ``criterion`` picks from ``history`` (``Store.epochs``).

    - ``val-pgd``: highest validation PGD accuracy, the earliest on ties (the harness's ``best.pt``).
    - ``dE``: the epoch before the first one with a monitor alarm (``monitor_alarm``), epoch 0 if
      that is the first, the last epoch if the monitor never fired.
    - ``last``: the final epoch.
    """
    if criterion not in CRITERIA:
        raise unknown_name("selection criterion", criterion, list(CRITERIA))
    if not history:
        raise EnergybenchError("the run has no finished epoch to select from")
    if criterion == "val-pgd":
        return max(range(len(history)), key=lambda e: (history[e]["val_pgd_acc"], -e))
    if criterion == "dE":
        if any("monitor_alarm" not in h for h in history):
            raise EnergybenchError("criterion 'dE' needs the CO monitor's per-epoch alarms (monitor.enabled)")
        alarmed = [e for e, h in enumerate(history) if h["monitor_alarm"]]
        return max(alarmed[0] - 1, 0) if alarmed else len(history) - 1
    return len(history) - 1
