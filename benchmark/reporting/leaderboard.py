"""Robustness leaderboards: rows built from the store, rendered as rich tables."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

from energybench.config import format_eps
from energybench.contracts.registry import get_plugin
from energybench.errors import EnergybenchError
from energybench.evaluation.sanity import evaluation_warnings
from energybench.storage.store import RunRecord, Store


@dataclass
class Row:
    """One run on the leaderboard: its record and its final metrics per checkpoint."""

    run: RunRecord
    results: dict[str, dict[str, float]] = field(default_factory=dict)

    def get(self, checkpoint: str, metric: str) -> float:
        return self.results.get(checkpoint, {}).get(metric, math.nan)

    def warnings(self) -> list[str] | None:
        """The evaluation's sanity warnings (``energybench.evaluation.sanity``) for either checkpoint;
        None if never checked."""
        if not any("check_randomized" in metrics for metrics in self.results.values()):
            return None
        return [f"{tag}: {text}" for tag in ("best", "last")
                for text in evaluation_warnings(self.results.get(tag, {}))]


def regularizer_label(run: RunRecord) -> str:
    """The run's regularizer name, with its variant when its hyper-parameters make it an ablation
    (``Regularizer.variant``), e.g. ``der [squared marginal dE, lambda 1]``."""
    try:
        variant = get_plugin("regularizer", run.regularizer).variant(run.config.get("regularizer_params", {}))
    except EnergybenchError:  # a plugin no longer installed: its name is all we know
        variant = None
    return f"{run.regularizer} [{variant}]" if variant else run.regularizer


@dataclass(frozen=True)
class Column:
    header: str
    value: Callable[[Row], Any]
    fmt: Callable[[Any], str] = str
    justify: str = "right"


def _pct(v: float) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def _num(v: float) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:+.3f}"


def _pair(metric: str) -> Column:
    """best/last of ``metric`` in one cell, e.g. ``84.1/78.6``."""
    return Column(f"{_HEADERS[metric]} b/l", lambda r: (r.get("best", metric), r.get("last", metric)),
                  lambda v: f"{_pct(v[0])}/{_pct(v[1])}")


_HEADERS = {"test_clean_acc": "clean", "test_pgd_acc": "PGD", "aa_acc": "AA"}

#: Columns shown for every run; the setting columns are dropped when the title already fixes them.
SETTING_COLUMNS: list[Column] = [
    Column("dataset", lambda r: r.run.dataset, justify="left"),
    Column("model", lambda r: r.run.model, justify="left"),
    Column("eps", lambda r: format_eps(r.run.eps)),
]
COLUMNS: list[Column] = [
    Column("run", lambda r: r.run.id, justify="left"),
    Column("trainer", lambda r: r.run.trainer, justify="left"),
    Column("reg", lambda r: regularizer_label(r.run), justify="left"),
    _pair("test_clean_acc"),
    _pair("test_pgd_acc"),
    _pair("aa_acc"),
    Column("CO", lambda r: r.get("last", "co"), lambda v: "-" if math.isnan(v) else ("yes" if v else "no")),
    Column("dE", lambda r: r.get("last", "train_dE_mean"), _num),
    Column("time", lambda r: r.run.wall_time, lambda v: "-" if v is None else f"{v:.0f}s"),
    Column("checks", lambda r: r.warnings(), lambda v: "-" if v is None else (f"{len(v)} warn" if v else "ok")),
]


def collect(store: Store, **filters: Any) -> list[Row]:
    """Completed runs evaluated on the test set matching ``filters`` (dataset, eps, track, ...), most robust
    first; suite tuning runs (validation only) are left out."""
    rows = [Row(run, results) for run in store.runs(**filters) if (results := store.results(run.id))]

    def key(row: Row) -> tuple[float, float]:
        aa, pgd = row.get("last", "aa_acc"), row.get("last", "test_pgd_acc")
        return (-(aa if not math.isnan(aa) else -1), -(pgd if not math.isnan(pgd) else -1))

    return sorted(rows, key=key)


def render(rows: list[Row], title: str, highlight: str | None = None, settings: bool = True) -> Table:
    """A rich table of ``rows`` (accuracies in %, best/last checkpoint; dE = final training dE).

    The run ``highlight`` (just finished) is shown in bold; ``settings=False`` drops the
    dataset/model/eps columns when the title already fixes them.
    """
    columns = COLUMNS[:3] + (SETTING_COLUMNS if settings else []) + COLUMNS[3:]
    table = Table(title=title, header_style="bold", title_justify="left",
                  caption="accuracy % on the test set, best/last checkpoint; dE: final train E(x) - E(x*); "
                          "checks: evaluation sanity warnings (gradient masking, randomness; see `energybench "
                          "leaderboard --format json`)",
                  caption_justify="left")
    for col in columns:
        table.add_column(col.header, justify=col.justify, no_wrap=col.header == "run")
    for row in rows:
        style = "bold green" if row.run.id == highlight else None
        table.add_row(*(col.fmt(col.value(row)) for col in columns), style=style)
    return table
