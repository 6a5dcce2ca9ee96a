"""A suite's leaderboard: one row per cell of the matrix, its seeds aggregated.

Per cell: mean ± sample standard deviation (ddof 1) over the seeds, and the 95 % interval of the
last checkpoint's mean PGD and AutoAttack accuracy (``SeedGroup.estimate``: the t interval over the
seeds, at least the Wilson interval of the mean on the shared test points; one seed: the run's
Wilson interval). A matrix, not a ranking: nothing is ranked, the intervals say which differences are real.
A tuned value that no candidate's clean accuracy let through the tuning stage's guard is marked
``(failed guard)``: it was taken as the most accurate candidate, not as the best eligible one.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from rich.table import Table

from energybench.config import format_eps
from energybench.reporting.leaderboard import Column, co_text
from energybench.reporting.numbers import MISSING, is_missing, number
from energybench.reporting.rows import Row, SeedGroup, group_seeds, load_row
from energybench.storage.store import Store
from energybench.suites.spec import Cell, Tuning, format_values, latest_runs
from energybench.suites.tuning import Selection


@dataclass
class CellGroup:
    """The seeds of one (trainer, regularizer, eps) cell: their completed runs and how many failed."""

    trainer: str
    regularizer: str
    eps: float
    tuned: str = ""
    guarded: bool = True  # False: no candidate passed the tuning stage's clean-accuracy guard
    planned: int = 0
    failed: int = 0
    diverged: int = 0  # seeds whose training loss became non-finite (finished: not retried)
    rows: list[Row] = field(default_factory=list)

    @property
    def seeds(self) -> SeedGroup | None:
        """The completed seeds as one group: means, sample SDs, intervals (None before any completes)."""
        return group_seeds(self.rows)[0] if self.rows else None

    def mean(self, checkpoint: str, metric: str) -> float:
        return self.seeds.get(checkpoint, metric) if self.rows else math.nan


def group_cells(store: Store, cells: list[Cell], selections: dict[tuple[str, str, float], Selection] | None = None
                ) -> list[CellGroup]:
    """The suite's cells grouped over seeds, in matrix order, with the latest completed run of each; with the
    tuning stage's ``selections``, each tuned group knows whether its value passed the guard."""
    latest = latest_runs(store, cells)
    groups: dict[tuple[str, str, float], CellGroup] = {}
    for cell in cells:
        selection = (selections or {}).get(cell.group)
        group = groups.setdefault(cell.group, CellGroup(*cell.group, tuned=format_values(cell.tuned),
                                                        guarded=selection is None or selection.guarded))
        group.planned += 1
        record = latest[cell.config_hash]
        if record is not None and record.status == "done":
            group.rows.append(load_row(store, record))
        elif record is not None and record.status == "failed":
            group.failed += 1
        elif record is not None and record.status == "diverged":
            group.diverged += 1
    return list(groups.values())


def mean_std(group: CellGroup, checkpoint: str, metric: str, scale: float = 100.0, digits: int = 1) -> str:
    """``mean±sd`` over the group's seeds of ``metric`` times ``scale`` (sample SD; just the mean for one seed)."""
    mean = group.mean(checkpoint, metric)
    if is_missing(mean):
        return MISSING
    text = number(mean, f".{digits}f", scale=scale)
    return f"{text}±{scale * group.seeds.sd(checkpoint, metric):.{digits}f}" if len(group.rows) > 1 else text


def _pair(header: str, metric: str) -> Column:
    return Column(f"{header} best/last", lambda g: f"{mean_std(g, 'best', metric)} / {mean_std(g, 'last', metric)}")


def interval(group: CellGroup, metric: str) -> str:
    """``[low, high]`` in %: the 95 % interval of the last checkpoint's mean ``metric`` over the group's seeds."""
    estimate = group.seeds.estimate("last", metric) if group.rows else None
    if estimate is None or math.isnan(estimate.low):
        return "-"
    return f"[{100 * estimate.low:.1f}, {100 * estimate.high:.1f}]"


def _seeds(group: CellGroup) -> str:
    notes = [f"{count} {what}" for count, what in ((group.diverged, "diverged"), (group.failed, "failed")) if count]
    return f"{len(group.rows)}/{group.planned}" + (f" ({', '.join(notes)})" if notes else "")


def _aa_breaks(group: CellGroup) -> str:
    """``k/m``: over the seeds, the shared test points PGD left robust (m) that AutoAttack broke (k)."""
    counts = [(r.get("last", "test_shared_aa_breaks"), r.get("last", "test_shared_pgd_robust")) for r in group.rows]
    counts = [(k, m) for k, m in counts if not (math.isnan(k) or math.isnan(m))]
    if not counts:
        return "-"
    broken, robust = (sum(c) for c in zip(*counts))
    return f"{broken:.0f}/{robust:.0f}" + (f" ({broken / robust:.0%})" if robust else "")


def _checks(group: CellGroup) -> str:
    """How many seeds' evaluations carry sanity warnings (``ok`` when none do)."""
    warned = sum(bool(r.warnings()) for r in group.rows)
    return f"{warned}/{len(group.rows)} warn" if warned else ("ok" if group.rows else "-")


COLUMNS: list[Column] = [
    Column("trainer", lambda g: g.trainer, justify="left"),
    Column("reg", lambda g: g.regularizer, justify="left"),
    Column("tuned", lambda g: (g.tuned or "-") + ("" if g.guarded else " (failed guard)"), justify="left"),
    Column("eps", lambda g: format_eps(g.eps)),
    Column("seeds", _seeds),
    _pair("clean", "test_clean_acc"),
    _pair("PGD", "test_pgd_acc"),
    Column("PGD 95% CI", lambda g: interval(g, "test_pgd_acc")),
    _pair("AA", "test_aa_acc"),
    Column("AA 95% CI", lambda g: interval(g, "test_aa_acc")),
    Column("AA breaks", _aa_breaks),
    Column("checks", _checks),
    Column("CO", lambda g: co_text(g.seeds) if g.rows else "-"),
    Column("PGD gap", lambda g: g.mean("best", "test_pgd_acc") - g.mean("last", "test_pgd_acc"),
           lambda v: number(v, "+.1f", scale=100)),
    Column("dE", lambda g: mean_std(g, "last", "train_dE_mean", scale=1.0, digits=2)),
    Column("time", lambda g: [r.run.wall_time for r in g.rows if r.run.wall_time is not None],
           lambda v: f"{statistics.fmean(v):.0f}s" if v else "-"),
    Column("passes", lambda g: g.mean("last", "passes_per_example"), lambda v: number(v, ".1f")),
]


def render_suite(groups: list[CellGroup], title: str) -> Table:
    """A rich table of ``groups``, one section per eps."""
    table = Table(title=title, header_style="bold", title_justify="left", caption_justify="left",
                  caption="test accuracy % (mean±sample SD over seeds), best/last checkpoint by validation PGD; "
                          "95% CI: t interval of the last checkpoint's mean over seeds, at least the Wilson interval "
                          "of the mean on the test points (one seed: the run's); seeds: completed/planned; tuned: the "
                          "value chosen on validation metrics of the tuning seeds, '(failed guard)': no candidate "
                          "reached the clean-accuracy guard against the trainer without regularizer (runs in the "
                          "tuning table), the most accurate was taken; "
                          "AA breaks: shared test points (first n) PGD left robust that AutoAttack broke, summed "
                          "over seeds; checks: seeds whose evaluation has sanity warnings (leaderboard json/csv "
                          "carry their text); CO: seeds with catastrophic overfitting; PGD gap: best - last (robust "
                          "overfitting); dE: final train E(x) - E(x*); time: wall time per run; passes: "
                          "forward+backward passes per example per epoch")
    for col in COLUMNS:
        table.add_column(col.header, justify=col.justify)
    for i, group in enumerate(groups):
        last_of_eps = i + 1 == len(groups) or groups[i + 1].eps != group.eps
        table.add_row(*(col.fmt(col.value(group)) for col in COLUMNS), end_section=last_of_eps)
    return table


#: How the tuning table names each ``tuning.measure``.
MEASURE_LABELS = {"worst": "val worst(PGD, margin)", "pgd": "val PGD"}


def render_tuning(selections: dict[tuple[str, str, float], Selection], tuning: Tuning) -> Table:
    """Every candidate of the tuning stage with its validation scores; the chosen one marked."""
    table = Table(title="Tuning stage: validation accuracy % of each candidate (mean over tuning seeds "
                        f"{', '.join(map(str, tuning.seeds))}; {tuning.checkpoint} epoch)", header_style="bold",
                  title_justify="left", caption_justify="left",
                  caption=f"eligible: validation clean accuracy at least {tuning.min_clean:.0%} of the guard's "
                          "reference (ref clean), the same trainer without regularizer at its own hyper-parameters "
                          "on the same tuning seeds and eps (ref runs); the chosen candidate has the best "
                          f"{MEASURE_LABELS[tuning.measure]} among the eligible ones, else (failed guard) the highest "
                          "clean accuracy")
    headers = ("trainer", "reg", "eps", "candidate", MEASURE_LABELS[tuning.measure], "val clean", "ref clean",
               "ref runs", "eligible", "chosen")
    for header in headers:
        table.add_column(header, justify="left" if header in ("trainer", "reg", "candidate", "ref runs") else "right")
    for (trainer, regularizer, eps), selection in selections.items():
        chosen = "<-" if selection.guarded else "<- (failed guard)"
        for i, c in enumerate(selection.candidates):
            table.add_row(trainer, regularizer, format_eps(eps), format_values(c.values),
                          "diverged" if c.diverged else f"{100 * c.robust:.1f}",
                          "-" if c.diverged else f"{100 * c.clean:.1f}", f"{100 * selection.reference_clean:.1f}",
                          ", ".join(selection.reference_runs), "yes" if c.eligible else "no",
                          chosen if c.values == selection.values else "",
                          end_section=i == len(selection.candidates) - 1)
    return table
