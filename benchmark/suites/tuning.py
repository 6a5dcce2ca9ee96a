"""The tuning stage of a suite: one value per (trainer, regularizer, eps) chosen on validation metrics only.

Every candidate ran on the tuning seeds (``Suite.tuning_cells``); the candidates are ranked by the
validation robust accuracy (``tuning.measure``: by default ``worst``, the point-wise worst case of PGD
on cross-entropy and PGD on the CW margin loss, which a candidate that saturates its cross-entropy, i.e.
masks its gradients, cannot inflate as easily as PGD alone; or ``pgd``) of the epoch
``tuning.checkpoint`` names (``last``, or ``best``), averaged over the tuning seeds. The guard against
degenerate winners (a regularizer strong enough to make the classifier constant beats a collapsed model
on PGD): a candidate is eligible only if its validation clean accuracy (same epoch, averaged over seeds)
reaches ``tuning.min_clean`` times that of the guard's reference, the same trainer without regularizer
at its own hyper-parameters (for a tuned trainer such as N-FGSM: its default values) on the same tuning
seeds and eps; its runs are ``Selection.reference_runs``. When no candidate is eligible, the one with
the highest clean accuracy is chosen and the selection says so (``guarded`` False). A candidate whose
training diverged (non-finite loss, run status 'diverged') on any tuning seed is never chosen; when every
candidate diverged, nothing is chosen and the method's evaluation cells are left out. Only
``Store.epochs`` (validation metrics) is read: tuning runs never evaluate on the test split.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field
from typing import Any

from energybench.config import Catalogue
from energybench.errors import EnergybenchError
from energybench.storage.store import Store
from energybench.suites.spec import FINISHED, Cell, Suite, format_values, latest_runs


@dataclass
class Candidate:
    """One candidate's validation scores, averaged over the tuning seeds."""

    values: dict[str, Any]
    robust: float  # the tuning measure: validation worst-case (or PGD) accuracy; NaN when diverged
    clean: float
    eligible: bool
    diverged: bool = False  # a tuning run's training loss became non-finite: never chosen


@dataclass
class Selection:
    """The value chosen for one (trainer, regularizer, eps), with every candidate's scores."""

    key: tuple[str, str, float]
    values: dict[str, Any]
    candidates: list[Candidate] = field(default_factory=list)
    reference_clean: float = float("nan")
    guarded: bool = True  # False when no candidate passed the guard
    reference_runs: list[str] = field(default_factory=list)  # the guard's reference: the trainer alone, tuning seeds

    def describe(self) -> str:
        note = "" if self.guarded else " (no candidate passed the clean-accuracy guard: most accurate taken)"
        return format_values(self.values) + note


#: The validation metric each ``tuning.measure`` ranks by.
MEASURES = {"worst": "val_worst_acc", "pgd": "val_pgd_acc"}


def _validation_scores(store: Store, cell: Cell, epoch_of: str, measure: str) -> tuple[float, float]:
    """(validation robust, validation clean) accuracy of a completed tuning run at its last or best epoch;
    (NaN, NaN) for a run that diverged."""
    record = latest_runs(store, [cell])[cell.config_hash]
    if record is None or record.status not in FINISHED:
        raise EnergybenchError(f"tuning cell {cell.describe()} has not completed")
    if record.status == "diverged":
        return math.nan, math.nan
    history = store.epochs(record.id)
    if epoch_of == "best":
        epoch = max(range(len(history)), key=lambda e: (history[e][MEASURES[measure]], -e))
    else:
        epoch = len(history) - 1
    return history[epoch][MEASURES[measure]], history[epoch]["val_clean_acc"]


def choose(store: Store, suite: Suite, catalogue: Catalogue, *, cells: list[Cell] | None = None
           ) -> dict[tuple[str, str, float], Selection]:
    """The selection of every tuned (trainer, regularizer, eps) whose tuning runs have all completed."""
    tuning = suite.spec.tuning
    if tuning is None:
        return {}
    cells = cells if cells is not None else suite.tuning_cells(catalogue)
    done = {c.config_hash for c in cells if (r := latest_runs(store, [c])[c.config_hash]) and r.status in FINISHED}
    by_group: dict[tuple[str, str, float], list[Cell]] = {}
    references: dict[tuple[str, float], list[Cell]] = {}
    for cell in cells:  # references: the trainer alone, nothing tuned (Suite.tuning_cells)
        if cell.tuned:
            by_group.setdefault(cell.group, []).append(cell)
        else:
            references.setdefault((cell.trainer, cell.eps), []).append(cell)
    selections = {}
    for key, group in by_group.items():
        trainer, _, eps = key
        reference = references.get((trainer, eps), [])
        if not all(c.config_hash in done for c in group + reference):
            continue
        ref_cleans = [_validation_scores(store, c, tuning.checkpoint, tuning.measure)[1] for c in reference]
        ref_clean = statistics.fmean([c for c in ref_cleans if not math.isnan(c)] or [math.nan])
        reference_runs = [record.id for record in latest_runs(store, reference).values() if record is not None]
        per_values: dict[str, list[tuple[float, float]]] = {}
        order: dict[str, dict[str, Any]] = {}
        for cell in group:
            tag = format_values(cell.tuned)
            order.setdefault(tag, cell.tuned)
            per_values.setdefault(tag, []).append(_validation_scores(store, cell, tuning.checkpoint, tuning.measure))
        candidates = []
        for tag, scores in per_values.items():
            robust = statistics.fmean(s[0] for s in scores)  # NaN when any tuning seed diverged
            clean = statistics.fmean(s[1] for s in scores)
            diverged = math.isnan(robust)
            eligible = not diverged and clean >= tuning.min_clean * ref_clean
            candidates.append(Candidate(order[tag], robust, clean, eligible, diverged))
        eligible = [c for c in candidates if c.eligible]
        trained = [c for c in candidates if not c.diverged]
        if not trained:  # every candidate diverged: nothing to choose, the method's evaluation cells stay out
            continue
        # ties go to the earlier candidate in the grid, so the choice never depends on dict order
        best = (max(eligible, key=lambda c: c.robust) if eligible else max(trained, key=lambda c: c.clean))
        selections[key] = Selection(key, best.values, candidates, ref_clean, guarded=bool(eligible),
                                    reference_runs=reference_runs)
    return selections


def chosen_values(selections: dict[tuple[str, str, float], Selection]) -> dict[tuple[str, str, float], dict]:
    """The chosen hyper-parameter values by (trainer, regularizer, eps), for ``Suite.cells``."""
    return {key: s.values for key, s in selections.items()}
