"""Two runs or seed groups, accuracy by accuracy: the difference, its 95 % interval and a test.

The test (``compare_rows``, also what the leaderboards rank with):

- two runs with per-point correctness over the same test points: the exact McNemar test (paired);
- two runs otherwise (a run stored before per-point correctness was kept, or evaluated on another
  number of points): Fisher's exact test on their counts (unpaired), and the comparison says why;
- seed groups (two or more seeds on either side): Welch's t-test over the per-seed accuracies
  (Student's when one side has a single seed), held to at least the sampling error of the test points
  (``group_difference``); when no seed differs from another at all, there is no spread to test and the
  groups' oldest runs are compared as runs.

``energybench compare REF_A REF_B`` (``compare``): a REF is a run id, or ``group:RUN_ID`` for every
completed run of that run's configuration except the seed (as ``leaderboard --group-seeds`` groups).
Runs of different datasets, threat models or eps are never compared. Each difference comes with a
verdict in words (``energybench.evaluation.statistics.verdict``): a test that separates the two, or
"same within" the equivalence margin only when the whole interval lies inside it, else "not told apart".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rich.table import Table

from energybench.config import format_eps
from energybench.errors import EnergybenchError
from energybench.evaluation.statistics import (
    ALPHA,
    LEVEL,
    PAIRED_TEST,
    SEED_MEANS_TEST,
    Difference,
    Estimate,
    paired_difference,
    seed_difference,
    unpaired_difference,
    verdict,
)
from energybench.reporting.numbers import MISSING, is_missing, number
from energybench.reporting.rows import ACCURACIES, LABELS, Row, SeedGroup, group_key, group_seeds, load_row
from energybench.storage.store import Store

GROUP_PREFIX = "group:"
#: The equivalence margin of ``compare`` verdicts by default (a fraction: one percentage point).
MARGIN = 0.01


@dataclass
class Comparison:
    """Row A against row B on one accuracy: both estimates, their numbers of test points, the difference A - B
    (None when it cannot be tested) and a note on the test used."""

    checkpoint: str
    metric: str
    a: Estimate | None
    b: Estimate | None
    n_a: int | None
    n_b: int | None
    difference: Difference | None
    note: str

    @property
    def significant(self) -> bool:
        return self.difference is not None and self.difference.significant

    @property
    def paired(self) -> bool:
        return self.difference is not None and self.difference.test == PAIRED_TEST


def _seeds(row: Row) -> int:
    return len(row.members) if isinstance(row, SeedGroup) else 1


def _oldest(row: Row) -> Row:
    return row.members[0] if isinstance(row, SeedGroup) else row


def _values(row: Row, checkpoint: str, metric: str) -> list[float]:
    return row.values(checkpoint, metric) if isinstance(row, SeedGroup) else [row.get(checkpoint, metric)]


def _run_difference(a: Row, b: Row, checkpoint: str, metric: str) -> tuple[Difference | None, str]:
    """The test of two runs: paired on the same points, else unpaired on their counts; and why."""
    vector_a, vector_b = a.correct(checkpoint, metric), b.correct(checkpoint, metric)
    if vector_a is not None and vector_b is not None and len(vector_a) == len(vector_b):
        return paired_difference(vector_a, vector_b), f"paired on the same {len(vector_a)} test points"
    n_a, n_b = a.n(checkpoint, metric), b.n(checkpoint, metric)
    if n_a is None or n_b is None:
        return None, "number of test points unknown"
    if vector_a is not None and vector_b is not None:
        why = f"different test points ({n_a} vs {n_b})"
    else:
        missing = " and ".join(r.run.id for r, v in ((a, vector_a), (b, vector_b)) if v is None)
        why = f"no per-point correctness stored for {missing} (older run)"
    difference = unpaired_difference(round(a.get(checkpoint, metric) * n_a), n_a,
                                     round(b.get(checkpoint, metric) * n_b), n_b)
    return difference, why


def group_difference(a: Row, b: Row, checkpoint: str, metric: str) -> Difference | None:
    """Seed groups: the t-test over seeds (``seed_difference``), held to at least the sampling error of the test
    points. Every seed is evaluated on the same n points, so more seeds do not shrink that error, and a few seeds
    that agree by chance would otherwise claim more than the points allow: the interval is widened to Newcombe's
    interval of the two means as accuracies on their n points, and the p-value is the larger of the t-test's and
    Fisher's on those counts (the test named is the one that gave it). None when the t-test cannot apply."""
    difference = seed_difference(_values(a, checkpoint, metric), _values(b, checkpoint, metric))
    n_a, n_b = a.n(checkpoint, metric), b.n(checkpoint, metric)
    if difference is None or not n_a or not n_b:
        return difference
    points = unpaired_difference(round(a.get(checkpoint, metric) * n_a), n_a,
                                 round(b.get(checkpoint, metric) * n_b), n_b)
    test = difference.test if difference.p >= points.p else SEED_MEANS_TEST
    return Difference(difference.value, min(difference.low, points.low), max(difference.high, points.high),
                      max(difference.p, points.p), test)


def compare_rows(a: Row, b: Row, checkpoint: str, metric: str) -> Comparison:
    """Accuracy ``metric`` of ``a`` against ``b`` at ``checkpoint`` (runs or seed groups), with the test above."""
    estimate_a, estimate_b = a.estimate(checkpoint, metric), b.estimate(checkpoint, metric)
    n_a, n_b = a.n(checkpoint, metric), b.n(checkpoint, metric)
    if estimate_a is None or estimate_b is None:
        return Comparison(checkpoint, metric, estimate_a, estimate_b, n_a, n_b, None, "not measured on both")
    prefix = ""
    if max(_seeds(a), _seeds(b)) > 1:
        difference = group_difference(a, b, checkpoint, metric)
        if difference is not None:
            return Comparison(checkpoint, metric, estimate_a, estimate_b, n_a, n_b, difference,
                              f"{_seeds(a)} vs {_seeds(b)} seeds")
        a, b = _oldest(a), _oldest(b)
        prefix = "no spread over seeds, oldest runs compared; "
    difference, note = _run_difference(a, b, checkpoint, metric)
    return Comparison(checkpoint, metric, estimate_a, estimate_b, n_a, n_b, difference, prefix + note)


# ----- energybench compare ----------------------------------------------------------------------

def resolve(store: Store, ref: str) -> Row:
    """The run ``ref`` names, or with ``group:RUN_ID`` the seed group of that run, with its final results."""
    run_id = ref.removeprefix(GROUP_PREFIX)
    run = store.get_run(run_id)
    row = load_row(store, run)
    if run.status != "done" or not row.results:
        raise EnergybenchError(f"run {run_id} has no final test results (status {run.status}); compare completed "
                               "runs (see `energybench leaderboard`)")
    if not ref.startswith(GROUP_PREFIX):
        return row
    key = group_key(run)
    members = [load_row(store, r) for r in store.runs(dataset=run.dataset, model=run.model, norm=run.norm)
               if group_key(r) == key]
    return group_seeds([m for m in members if m.results])[0]


def setting(row: Row) -> str:
    return f"{row.run.dataset}, {row.run.model}, {row.run.norm} eps {format_eps(row.run.eps)}"


def _check_comparable(ref_a: str, a: Row, ref_b: str, b: Row) -> None:
    for what, value in (("dataset", lambda r: r.run.dataset), ("threat model", lambda r: r.run.norm),
                        ("eps", lambda r: format_eps(r.run.eps))):
        if value(a) != value(b):
            raise EnergybenchError(f"cannot compare {ref_a} with {ref_b}: their {what} differs ({value(a)} vs "
                                   f"{value(b)}), and accuracies under different datasets, threat models or eps "
                                   "measure different things")


@dataclass
class RowComparison:
    """``energybench compare``: the two rows named, one comparison per accuracy either measured, and the
    equivalence margin (a fraction) the verdicts use."""

    refs: tuple[str, str]
    rows: tuple[Row, Row]
    comparisons: list[Comparison]
    margin: float = MARGIN

    def verdict(self, comparison: Comparison) -> str:
        """What the comparison supports in words (``statistics.verdict``), or why there is no test."""
        d = comparison.difference
        return comparison.note if d is None else verdict(d, self.margin)


def compare(store: Store, ref_a: str, ref_b: str, checkpoint: str = "last", margin: float = MARGIN) -> RowComparison:
    """Compare ``ref_a`` with ``ref_b`` (run ids or ``group:RUN_ID``) on every accuracy at ``checkpoint``; verdicts
    call a difference negligible only when its interval lies inside +-``margin`` (a fraction)."""
    if checkpoint not in ("best", "last"):
        raise EnergybenchError(f"unknown checkpoint {checkpoint!r} (use best or last)")
    a, b = resolve(store, ref_a), resolve(store, ref_b)
    _check_comparable(ref_a, a, ref_b, b)
    metrics = [m for m in ACCURACIES if not (math.isnan(a.get(checkpoint, m)) and
                                                     math.isnan(b.get(checkpoint, m)))]
    return RowComparison((ref_a, ref_b), (a, b), [compare_rows(a, b, checkpoint, m) for m in metrics], margin)


def _describe(row: Row) -> str:
    seeds = f", {len(row.members)} seeds ({', '.join(str(r.seed) for r in row.runs)})" \
        if isinstance(row, SeedGroup) else f", seed {row.run.seed}"
    return f"{row.run.trainer} + {row.run.regularizer} ({row.run.model}{seeds})"


def _pct(value: float) -> str:
    return number(value, ".1f", scale=100)


def _cell(estimate: Estimate | None, n: int | None) -> str:
    if estimate is None:
        return MISSING
    interval = "" if is_missing(estimate.low) else f" [{_pct(estimate.low)}, {_pct(estimate.high)}]"
    return f"{_pct(estimate.value)}{interval}" + ("" if n is None else f" n={n}")


def p_text(p: float) -> str:
    """A p-value as tables show it: three decimals, ``<0.001`` below that."""
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def comparison_table(result: RowComparison) -> Table:
    """A rich table: per accuracy, A and B with their intervals, A - B with its interval, p-value and test."""
    (ref_a, ref_b), (a, b) = result.refs, result.rows
    checkpoint = result.comparisons[0].checkpoint if result.comparisons else "last"
    group_note = ("; seed groups: mean [95% t interval over seeds, at least the Wilson interval of the mean], n = "
                  "test points per run"
                  if isinstance(a, SeedGroup) or isinstance(b, SeedGroup) else "")
    table = Table(title=f"A = {ref_a}: {_describe(a)}\nB = {ref_b}: {_describe(b)}\n{setting(a)}, {checkpoint} "
                        "checkpoint", title_justify="left", header_style="bold", caption_justify="left",
                  caption=f"accuracy % [95% Wilson interval] on n test points{group_note}; A - B in points with "
                          f"its 95% interval and the two-sided p-value; significant (*) at {ALPHA:.0%}; verdict: "
                          f"'same within ±{100 * result.margin:g} points' (the equivalence margin, --margin) only "
                          "when the whole interval lies inside it; 'not told apart' claims no equality")
    for header in ("metric", "A", "B", "A - B", f"{LEVEL:.0%} interval", "p", "verdict", "test"):
        table.add_column(header, justify="left" if header in ("metric", "verdict", "test") else "right")
    for c in result.comparisons:
        d = c.difference
        table.add_row(LABELS[c.metric], _cell(c.a, c.n_a), _cell(c.b, c.n_b),
                      "-" if d is None else f"{100 * d.value:+.1f}",
                      "-" if d is None else f"[{100 * d.low:+.1f}, {100 * d.high:+.1f}]",
                      "-" if d is None else p_text(d.p) + (" *" if d.significant else ""),
                      "-" if d is None else result.verdict(c), c.note if d is None else f"{d.test}: {c.note}")
    return table


def _estimate_json(estimate: Estimate | None, n: int | None) -> dict | None:
    return None if estimate is None else {"value": estimate.value, "low": _finite(estimate.low),
                                          "high": _finite(estimate.high), "n": n}


def _finite(value: float) -> float | None:
    return None if is_missing(value) else value


def comparison_dict(result: RowComparison) -> dict:
    """The comparison as plain data: both rows (their runs), then per accuracy the estimates, difference, interval,
    test and verdict."""
    def row_json(ref: str, row: Row) -> dict:
        runs = row.runs if isinstance(row, SeedGroup) else [row.run]
        return {"ref": ref, "runs": [r.id for r in runs], "seeds": [r.seed for r in runs],
                "trainer": row.run.trainer, "regularizer": row.run.regularizer, "dataset": row.run.dataset,
                "model": row.run.model, "norm": row.run.norm, "eps": row.run.eps}

    metrics = []
    for c in result.comparisons:
        d = c.difference
        metrics.append({"metric": c.metric, "checkpoint": c.checkpoint,
                        "a": _estimate_json(c.a, c.n_a), "b": _estimate_json(c.b, c.n_b),
                        "difference": None if d is None else d.value, "low": None if d is None else d.low,
                        "high": None if d is None else d.high, "p": None if d is None else d.p,
                        "test": None if d is None else d.test, "paired": c.paired,
                        "significant": c.significant, "verdict": None if d is None else result.verdict(c),
                        "note": c.note})
    return {"a": row_json(result.refs[0], result.rows[0]), "b": row_json(result.refs[1], result.rows[1]),
            "level": LEVEL, "margin": result.margin, "metrics": metrics}

