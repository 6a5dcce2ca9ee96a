"""Rows of the robustness leaderboards: a run's final results (and per-point correctness), or a group of seeds.

A ``Row`` gives each accuracy with its 95 % Wilson interval on the number of test points it was
measured on: the length of its per-point correctness vector when the store has one, else the
run's protocol (``eval.test_points``, the whole test split when None; ``test_aa_points`` for AutoAttack).
A ``SeedGroup`` merges runs that differ only in their seed: means, sample standard deviations and
the t interval of each mean over the seeds (never narrower than the Wilson interval of the mean on
the test points, which every seed shares).
"""

from __future__ import annotations

import json
import math
import statistics
from dataclasses import dataclass, field

import numpy as np

from energybench.config import RunConfig
from energybench.data.datasets import split_sizes
from energybench.evaluation.sanity import evaluation_warnings
from energybench.evaluation.statistics import Estimate, SeedSummary, accuracy, seed_summary, wilson
from energybench.storage.store import RunRecord, Store

#: The accuracies of a final evaluation, by result key (their per-point correctness in ``Store.points`` is keyed
#: like the result without ``_acc``), and how tables name them.
LABELS = {"test_clean_acc": "clean", "test_fgsm_acc": "FGSM", "test_pgd_acc": "PGD", "test_aa_acc": "AA"}
ACCURACIES = tuple(LABELS)


@dataclass
class Row:
    """One run: its record, final metrics per checkpoint and per-point correctness per checkpoint and metric."""

    run: RunRecord
    results: dict[str, dict[str, float]] = field(default_factory=dict)
    points: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def get(self, checkpoint: str, metric: str) -> float:
        value = self.results.get(checkpoint, {}).get(metric)
        return math.nan if value is None else value

    def correct(self, checkpoint: str, metric: str) -> np.ndarray | None:
        """Which test points accuracy ``metric`` counted as correct (None for runs stored before this was kept)."""
        return self.points.get(checkpoint, {}).get(metric.removesuffix("_acc"))

    def n(self, checkpoint: str, metric: str) -> int | None:
        """The number of test points accuracy ``metric`` was measured on (None when unknown or not measured)."""
        if math.isnan(self.get(checkpoint, metric)):
            return None
        vector = self.correct(checkpoint, metric)
        if vector is not None:
            return len(vector)
        if metric == "test_aa_acc":
            points = self.get(checkpoint, "test_aa_points")
            return None if math.isnan(points) else int(points)
        test_size = split_sizes(self.run.dataset)[1]
        wanted = (self.run.config.get("eval") or {}).get("test_points")
        if wanted is None or test_size is None:
            return test_size if wanted is None else wanted
        return min(wanted, test_size)

    def estimate(self, checkpoint: str, metric: str) -> Estimate | None:
        """Accuracy ``metric`` with its 95 % Wilson interval (NaN bounds when n is unknown); None if not measured."""
        value, n = self.get(checkpoint, metric), self.n(checkpoint, metric)
        if math.isnan(value):
            return None
        if n is None:
            return Estimate(value, math.nan, math.nan)
        vector = self.correct(checkpoint, metric)
        return accuracy(int(vector.sum()) if vector is not None else round(value * n), n)

    def warnings(self) -> list[str] | None:
        """The evaluation's sanity warnings (``energybench.evaluation.sanity``) for either checkpoint;
        None if never checked."""
        if not any("test_check_randomized" in metrics for metrics in self.results.values()):
            return None
        return [f"{tag}: {text}" for tag in ("best", "last")
                for text in evaluation_warnings(self.results.get(tag, {}))]


@dataclass
class SeedGroup(Row):
    """Runs that differ only in their seed (``members``, oldest first): ``results`` holds the means; a group of
    one seed keeps its run's per-point correctness."""

    members: list[Row] = field(default_factory=list)

    @property
    def runs(self) -> list[RunRecord]:
        return [m.run for m in self.members]

    def values(self, checkpoint: str, metric: str) -> list[float]:
        """The per-seed values of ``metric`` (seeds that lack it left out)."""
        return [v for m in self.members if not math.isnan(v := m.get(checkpoint, metric))]

    def summary(self, checkpoint: str, metric: str) -> SeedSummary | None:
        """Mean, sample standard deviation and t interval over the seeds; None if no seed has ``metric``."""
        values = self.values(checkpoint, metric)
        return seed_summary(values) if values else None

    def sd(self, checkpoint: str, metric: str) -> float:
        summary = self.summary(checkpoint, metric)
        return math.nan if summary is None else summary.sd

    def n(self, checkpoint: str, metric: str) -> int | None:
        return self.members[0].n(checkpoint, metric)

    def estimate(self, checkpoint: str, metric: str) -> Estimate | None:
        """One seed: the run's Wilson interval. More: the mean with the 95 % t interval over the seeds, widened
        where needed to the Wilson interval of the mean on the n test points (every seed is evaluated on the same
        points, so their sampling error does not shrink with more seeds), within [0, 1]."""
        if len(self.members) == 1:
            return self.members[0].estimate(checkpoint, metric)
        summary, n = self.summary(checkpoint, metric), self.n(checkpoint, metric)
        if summary is None:
            return None
        low, high = wilson(summary.value * n, n) if n else (summary.low, summary.high)
        return Estimate(summary.value, max(0.0, min(summary.low, low)), min(1.0, max(summary.high, high)))


def load_row(store: Store, run: RunRecord) -> Row:
    """``run`` with its results and per-point correctness from ``store``."""
    return Row(run, store.results(run.id), store.points(run.id))


def group_key(run: RunRecord) -> str:
    """What runs of one seed group share: the run's identity without its seed (``RunConfig.identity``)."""
    return json.dumps(RunConfig(**run.config).identity(seed=False), sort_keys=True, default=str)


def group_seeds(rows: list[Row]) -> list[SeedGroup]:
    """One row per configuration: the means over the runs that differ only by seed, shown under the oldest run."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(group_key(row.run), []).append(row)
    out = []
    for members in groups.values():
        members.sort(key=lambda r: r.run.created)
        means: dict[str, dict[str, float]] = {}
        for checkpoint in ("best", "last"):
            for name in sorted({m for r in members for m in r.results.get(checkpoint, {})}):
                values = [v for r in members if not math.isnan(v := r.get(checkpoint, name))]
                if values:
                    means.setdefault(checkpoint, {})[name] = statistics.fmean(values)
        points = members[0].points if len(members) == 1 else {}
        out.append(SeedGroup(run=members[0].run, results=means, points=points, members=members))
    return out
