"""Robustness leaderboards: rows ranked only against rows of the same setting, tied where no test separates them.

A ``Ranking`` holds the rows of one setting (dataset, threat model and eps, as RobustBench ranks; the
architecture is a column, or with ``per_arch`` part of the setting), and the published reference rows of
that setting, shown apart below them and never ranked. Its rows are sorted by one accuracy of the last
checkpoint: AutoAttack when every row has it on at least ``AA_RANKING_POINTS``
test points, else PGD (on the protocol's test points, usually many more), with AutoAttack and its
interval shown beside it. Ranks come in tie blocks: walking down, a row is tested against the first row
of the block above and shares its rank unless their difference is significant at 5 %; then it opens a
new block (``energybench.evaluation.statistics.rank_with_ties``; ``energybench.reporting.compare.compare_rows``
picks the test: exact McNemar on the same points, Fisher's exact test as the unpaired fallback, Welch's
t-test for seed groups). Every accuracy is shown with its 95 % interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

from energybench.config import format_eps
from energybench.contracts.registry import get_plugin
from energybench.errors import EnergybenchError
from energybench.evaluation.external import EXTERNAL
from energybench.evaluation.statistics import ALPHA, GROUP_TESTS, UNPAIRED_TEST, Estimate, accuracy, rank_with_ties
from energybench.reporting.compare import Comparison, compare_rows, p_text
from energybench.reporting.numbers import MISSING, is_missing, number
from energybench.reporting.rows import LABELS, Row, SeedGroup, load_row
from energybench.storage.references import Reference
from energybench.storage.store import RunRecord, Store

#: What the AutoAttack versions other than standard are, for captions.
AA_VERSIONS = {"fast": "AutoAttack's fast subset, the standard version's APGD-CE and APGD-T only (no FAB-T, no "
                       "Square), an upper bound of standard AutoAttack's accuracy",
               "plus": "AutoAttack+ (more restarts and attacks than standard)",
               "rand": "AutoAttack for randomised defenses (APGD-CE and APGD-DLR with expectation over 20 draws)"}
#: AutoAttack ranks a setting only when every row has it on at least this many test points (95 % Wilson
#: interval at most about +-3.1 points); otherwise PGD on the protocol's test points ranks.
AA_RANKING_POINTS = 1000


def regularizer_label(run: RunRecord) -> str:
    """The run's regularizer name, with its variant when its hyper-parameters make it an ablation
    (``Regularizer.variant``), e.g. ``der [squared marginal dE, lambda 1]``."""
    try:
        variant = get_plugin("regularizer", run.regularizer).variant(run.config.get("regularizer_params", {}))
    except EnergybenchError:  # a plugin no longer installed: its name is all we know
        variant = None
    return f"{run.regularizer} [{variant}]" if variant else run.regularizer


def model_label(run: RunRecord) -> str:
    """The run's architecture with its non-default keyword arguments, e.g. ``preact-resnet18 [width=16]``."""
    params = run.config.get("model_params") or {}
    return f"{run.model} [{', '.join(f'{k}={v}' for k, v in sorted(params.items()))}]" if params else run.model


def method_label(row: Row) -> str:
    """What the row's method is called: the name given to an evaluated model (``--name``), else ``external`` for
    one, else the trainer and regularizer (``fgsm + der``), marked ``(never acted)`` when the regularizer's penalty
    was zero in every batch."""
    run = row.run
    if run.config.get("name"):
        return run.config["name"]
    if run.trainer == EXTERNAL:
        return EXTERNAL
    label = run.trainer if run.regularizer == "none" else f"{run.trainer} + {regularizer_label(run)}"
    return label + (" (never acted)" if row.get("last", "train_reg_active") == 0 else "")


@dataclass(frozen=True)
class Setting:
    """What makes accuracies comparable: the same dataset (by name: ``cifar10-jpeg`` is not ``cifar10``), threat
    model and eps; with per-architecture tables also the same architecture (``model``)."""

    dataset: str
    norm: str
    eps: float
    model: str | None = None

    @property
    def label(self) -> str:
        model = f"{self.model}, " if self.model else ""
        return f"{self.dataset}, {model}{self.norm} eps {format_eps(self.eps)}"

    def holds(self, ref: Reference) -> bool:
        """Whether published result ``ref`` belongs to this setting (its architecture does not matter)."""
        return ref.dataset == self.dataset and ref.norm == self.norm and abs(ref.eps - self.eps) < 1e-9


def setting_of(row: Row, per_arch: bool = False) -> Setting:
    return Setting(row.run.dataset, row.run.norm, round(row.run.eps, 9), model_label(row.run) if per_arch else None)


@dataclass
class Entry:
    """A row with its rank (None when it lacks the ranking accuracy) and the test that decided it: its comparison
    (``versus``) with ``leader``, the first row of the tie block above it."""

    row: Row
    rank: int | None
    versus: Comparison | None = None
    leader: Row | None = None


@dataclass
class Ranking:
    """The rows of one setting in order, and its published ``references`` (never ranked). ``metric`` (a result key,
    at ``checkpoint``) is what ranks the rows with ties; None when they are only ordered by another field
    (``order``), without tests."""

    setting: Setting
    entries: list[Entry]
    metric: str | None
    checkpoint: str = "last"
    order: str | None = None
    references: list[Reference] = field(default_factory=list)

    @property
    def rows(self) -> list[Row]:
        return [e.row for e in self.entries]

    def tests(self) -> set[str]:
        return {e.versus.difference.test for e in self.entries if e.versus and e.versus.difference}


def aa_version(row: Row) -> str:
    """The AutoAttack version of the row's protocol (``standard``, ``fast``, ``plus`` or ``rand``)."""
    return (row.run.config.get("eval") or {}).get("aa_version", "standard")


def ranking_metric(rows: list[Row]) -> str:
    """AutoAttack accuracy when every row has it on at least ``AA_RANKING_POINTS`` points, by one AutoAttack version,
    else PGD accuracy."""
    enough = all((n := r.n("last", "test_aa_acc")) is not None and n >= AA_RANKING_POINTS for r in rows)
    return "test_aa_acc" if rows and enough and len({aa_version(r) for r in rows}) == 1 else "test_pgd_acc"


def rank(rows: list[Row], metric: str, checkpoint: str = "last", reverse: bool = False) -> list[Entry]:
    """``rows`` sorted by ``metric`` at ``checkpoint`` (highest first; ``reverse``: lowest), the other of PGD/AA
    breaking exact ties; each row shares the rank of the first row of the tie block above it unless their
    difference is significant (``rank_with_ties``). Rows without ``metric`` come last, unranked."""
    other = {"test_aa_acc": "test_pgd_acc", "test_pgd_acc": "test_aa_acc"}.get(metric, metric)
    sign = 1 if reverse else -1

    def key(row: Row) -> tuple[float, float]:
        second = row.get(checkpoint, other)
        return sign * row.get(checkpoint, metric), sign * (second if not math.isnan(second) else -1)

    measured = sorted((r for r in rows if not math.isnan(r.get(checkpoint, metric))), key=key)
    versus: dict[int, Comparison] = {}

    def differs(first: int, i: int) -> bool:
        versus[i] = compare_rows(measured[first], measured[i], checkpoint, metric)
        return versus[i].significant

    ranks = rank_with_ties(range(len(measured)), differs)
    leaders = [None] + [measured[ranks[i - 1] - 1] for i in range(1, len(measured))]
    return ([Entry(row, r, versus.get(i), leader) for i, (row, r, leader) in enumerate(zip(measured, ranks, leaders))]
            + [Entry(row, None) for row in rows if math.isnan(row.get(checkpoint, metric))])


def by_setting(rows: list[Row], per_arch: bool = False) -> dict[Setting, list[Row]]:
    """``rows`` split by setting (dataset, threat model, eps; and architecture with ``per_arch``), in label order."""
    groups: dict[Setting, list[Row]] = {}
    for row in rows:
        groups.setdefault(setting_of(row, per_arch), []).append(row)
    return dict(sorted(groups.items(), key=lambda kv: kv[0].label))


def rankings(rows: list[Row], reverse: bool = False, per_arch: bool = False) -> list[Ranking]:
    """One ranking per setting, each by its ``ranking_metric`` of the last checkpoint."""
    out = []
    for setting, members in by_setting(rows, per_arch).items():
        metric = ranking_metric(members)
        out.append(Ranking(setting, rank(members, metric, reverse=reverse), metric))
    return out


def with_references(ranked: list[Ranking], references: list[Reference]) -> list[Ranking]:
    """``ranked`` with each setting's published references attached (every architecture's table of a setting gets
    them), plus a table of references alone for each setting of ``references`` that no row has, in label order."""
    for ranking in ranked:
        ranking.references = [ref for ref in references if ranking.setting.holds(ref)]
    alone = {Setting(ref.dataset, ref.norm, round(ref.eps, 9)) for ref in references
             if not any(r.setting.holds(ref) for r in ranked)}
    extra = [Ranking(s, [], None, references=[ref for ref in references if s.holds(ref)]) for s in alone]
    return sorted(ranked + extra, key=lambda r: r.setting.label) if extra else ranked


def collect(store: Store, **filters: Any) -> list[Row]:
    """Completed runs evaluated on the test set matching ``filters`` (dataset, eps, track, ...), oldest first,
    with their per-point correctness; suite tuning runs (validation only) are left out."""
    rows = [load_row(store, run) for run in store.runs(**filters)]
    return [row for row in rows if row.results]


# ----- columns ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Column:
    """A column of the ranking tables: how a measured row fills it (``value``, shown by ``fmt``) and how a published
    reference row does (``reference``; ``-`` when it has no such number)."""

    header: str
    value: Callable[[Row], Any]
    fmt: Callable[[Any], str] = str
    justify: str = "right"
    no_wrap: bool = False
    reference: Callable[[Reference], str] = lambda ref: "-"


def estimate_text(estimate: Estimate | None) -> str:
    """``13.0 ±2.1``: the accuracy in % and the larger distance to a bound of its 95 % interval."""
    if estimate is None:
        return "-"
    text = f"{100 * estimate.value:.1f}"
    return text if math.isnan(estimate.margin) else f"{text} ±{100 * estimate.margin:.1f}"


def pair_text(best: Estimate | None, last: Estimate | None) -> str:
    """``84.1/78.6 ±2.5``: best and last accuracy in %, ± the larger distance to a bound of either interval."""
    if best is None or last is None:
        return estimate_text(last if best is None else best) if best or last else "-"
    margin = max(best.margin, last.margin)
    text = f"{100 * best.value:.1f}/{100 * last.value:.1f}"
    return text if math.isnan(margin) else f"{text} ±{100 * margin:.1f}"


def published_text(value: float | None) -> str:
    """A published accuracy as published: percent with two decimals (``43.21``)."""
    return number(value, ".2f", scale=100)


def _pair(metric: str, reference: Callable[[Reference], str] = lambda ref: "-") -> Column:
    """best/last of ``metric`` with their intervals in one cell, e.g. ``84.1/78.6 ±2.5``; AutoAttack other than the
    standard version says which, e.g. ``50.0/50.0 ±14.8 (fast)``."""
    def text(row: Row) -> str:
        cell = pair_text(row.estimate("best", metric), row.estimate("last", metric))
        version = aa_version(row) if metric == "test_aa_acc" and cell != "-" else "standard"
        return cell if version == "standard" else f"{cell} ({version})"
    return Column(f"{LABELS[metric]} b/l", text, no_wrap=True, reference=reference)


def _points(row: Row) -> str:
    return "/".join("-" if (n := row.n("last", m)) is None else str(n) for m in ("test_pgd_acc", "test_aa_acc"))


def co_text(row: Row) -> str:
    """Catastrophic overfitting in the run (``yes``/``no``) or, for a seed group, in how many of its seeds (``1/3``)."""
    if isinstance(row, SeedGroup):
        flags = row.values("last", "co")
        return f"{sum(bool(f) for f in flags)}/{len(flags)}" if flags else "-"
    flag = row.get("last", "co")
    return MISSING if is_missing(flag) else ("yes" if flag else "no")


def _sd(row: Row, metric: str) -> str:
    """The sample standard deviation over seeds of ``metric`` (last checkpoint), in percentage points."""
    sd = row.sd("last", metric) if isinstance(row, SeedGroup) else math.nan
    return number(sd, ".1f", scale=100)


#: Columns shown for every row: the run, its method and architecture, then its results.
COLUMNS: list[Column] = [
    Column("run", lambda r: r.run.id, justify="left", no_wrap=True, reference=lambda ref: ref.id),
    Column("method", method_label, justify="left",
           reference=lambda ref: ref.method + (" [secondary source]" if ref.secondary else "")),
    Column("model", lambda r: model_label(r.run), justify="left", reference=lambda ref: ref.architecture),
    _pair("test_clean_acc", lambda ref: published_text(ref.clean)),
    _pair("test_pgd_acc"),
    _pair("test_aa_acc", lambda ref: published_text(ref.aa)),
    Column("n PGD/AA", _points),
    Column("CO", co_text),
    Column("dE", lambda r: r.get("last", "train_dE_mean"), lambda v: number(v, "+.3f")),
    Column("time", lambda r: r.run.wall_time, lambda v: number(v, ".0f", suffix="s")),
    Column("checks", lambda r: r.warnings(), lambda v: "-" if v is None else (f"{len(v)} warn" if v else "ok")),
]
#: Added for seed groups.
SEED_COLUMNS: list[Column] = [
    Column("seeds", lambda r: len(r.members) if isinstance(r, SeedGroup) else 1),
    Column("sd PGD/AA", lambda r: "/".join(_sd(r, m) for m in ("test_pgd_acc", "test_aa_acc"))),
]


def columns(*, grouped: bool = False) -> list[Column]:
    """The columns of a ranking table, with the seed columns when ``grouped``."""
    return COLUMNS + (SEED_COLUMNS if grouped else [])


# ----- ranks and captions -----------------------------------------------------------------------

SEED_MARK, UNPAIRED_MARK = "†", "*"
#: How reference rows look in the terminal, and what they are.
REFERENCE_STYLE = "italic magenta"


def rank_text(entry: Entry) -> str:
    return "-" if entry.rank is None else str(entry.rank)


def versus_text(entry: Entry) -> str:
    """The p-value of the test that decided the row's rank (against the first row of the tie block above it),
    marked by its test (see ``caption``)."""
    difference = entry.versus.difference if entry.versus else None
    if difference is None:
        return "-"
    mark = UNPAIRED_MARK if difference.test == UNPAIRED_TEST else SEED_MARK if difference.test in GROUP_TESTS else ""
    return p_text(difference.p) + mark


def references_caption(references: list[Reference]) -> str:
    """What the italic reference rows of a table are, and where each comes from."""
    sources = "; ".join(f"{ref.id}: {ref.source}" + (" (secondary source)" if ref.secondary else "")
                        for ref in references)
    return (f"italic rows, rank -: published results (accuracy % as published, AA: AutoAttack), context from other "
            f"machines and protocols, not measured here and never ranked; {sources}")


def caption(ranking: Ranking, grouped: bool = False) -> str:
    """What the ranking's numbers, ranks and marks mean."""
    if not ranking.entries:
        return references_caption(ranking.references)
    if ranking.metric is None:
        ranked = f"ordered by {ranking.order}: positions only, no test"
    else:
        n = {r.n(ranking.checkpoint, ranking.metric) for r in ranking.rows} - {None}
        points = f" on {'/'.join(map(str, sorted(n)))} test points" if n else ""
        ranked = f"ranked by {LABELS[ranking.metric]} accuracy of the {ranking.checkpoint} checkpoint{points}"
        if ranking.metric == "test_pgd_acc" and ranking.order is None:
            ranked += (f" (AutoAttack ran on fewer than {AA_RANKING_POINTS} points for some row, or in different "
                       "versions: it is shown beside PGD with its interval)")
        tests = ranking.tests()
        ranked += (f"; ranks come in tie blocks: walking down, a row is tested against the first row of the block "
                   f"above and shares its rank unless their difference is significant at {ALPHA:.0%}, two-sided, "
                   "else it opens a new block (rows sharing a rank: none told apart from the block's first row; "
                   "a lower rank: told apart from the first row of the block above, not necessarily from every "
                   "row in it; p: that test's p-value): exact McNemar test on per-point correctness over the same "
                   "test points")
        if UNPAIRED_TEST in tests:
            ranked += (f"; {UNPAIRED_MARK} unpaired fallback, Fisher's exact test (an older run without per-point "
                       "correctness, or other test points)")
        if tests & set(GROUP_TESTS):
            ranked += (f"; {SEED_MARK} Welch's t-test over seeds (Student's when one side has one seed), held to the "
                       "sampling error of the shared test points: the larger p of it and Fisher's exact test on the "
                       "seed means as counts on those points")
    seeds = ("; seed groups: means ± their 95% t interval over seeds (at least the Wilson interval of the mean on "
             "the shared test points), sd PGD/AA: sample standard deviation over seeds (ddof 1), CO: seeds with "
             "catastrophic overfitting / seeds" if grouped else "")
    versions = {aa_version(r) for r in ranking.rows if not math.isnan(r.get("last", "test_aa_acc"))}
    other = "".join(f"; AA ({v}): {AA_VERSIONS[v]}" for v in sorted(versions - {"standard"}))
    if any(r.get("last", "train_reg_active") == 0 for r in ranking.rows):
        other += "; (never acted): the regularizer's penalty was 0 in every batch, the trainer alone trained"
    published = f"; {references_caption(ranking.references)}" if ranking.references else ""
    return (f"{ranked}. Accuracy % on the test set, best/last checkpoint, ± the larger distance to a bound of "
            f"either's 95% Wilson interval on n test points (n PGD/AA){seeds}; method: trainer + regularizer, or the "
            "name of an evaluated model; model: the architecture; AA: AutoAttack, the point-wise worst case over its "
            f"attacks (standard version){other}; dE: final train E(x) - E(x*); checks: evaluation sanity warnings "
            f"(their text is in the json and csv formats){published}")


def ranking_table(ranking: Ranking, title: str, *, grouped: bool = False, highlight: str | None = None,
                  only: str | None = None) -> Table:
    """A rich table of one ranking: rank, the columns, and the p-value of the test that decided the rank; then the
    setting's references in italics. ``highlight``: a run shown in bold; ``only``: show that run's row alone (its
    rank still from the whole setting) and no references."""
    cols = columns(grouped=grouped)
    table = Table(title=title, header_style="bold", title_justify="left",
                  caption=caption(ranking if only is None else _alone(ranking), grouped), caption_justify="left")
    table.add_column("#", justify="right", no_wrap=True)
    for col in cols:
        table.add_column(col.header, justify=col.justify, no_wrap=col.no_wrap)
    table.add_column("p", justify="right", no_wrap=True)
    entries = [e for e in ranking.entries if only is None or e.row.run.id == only]
    for i, entry in enumerate(entries):
        style = "bold green" if entry.row.run.id == highlight else None
        table.add_row(rank_text(entry), *(col.fmt(col.value(entry.row)) for col in cols), versus_text(entry),
                      style=style, end_section=i == len(entries) - 1)
    for ref in ranking.references if only is None else []:
        table.add_row("-", *(col.reference(ref) for col in cols), "-", style=REFERENCE_STYLE)
    return table


def _alone(ranking: Ranking) -> Ranking:
    """``ranking`` without its references (a table of one of its rows)."""
    return Ranking(ranking.setting, ranking.entries, ranking.metric, ranking.checkpoint, ranking.order)


def evaluation_table(metrics: dict[str, float]) -> Table:
    """An evaluation's accuracies (``evaluate(..., store=False)``) with their 95 % Wilson intervals and test points."""
    table = Table(header_style="bold", caption_justify="left",
                  caption="accuracy % on the first n test points, with its 95% Wilson interval; AA: AutoAttack, the "
                          "point-wise worst case over its attacks")
    for header in ("accuracy", "%", "95% interval", "n"):
        table.add_column(header, justify="left" if header == "accuracy" else "right")
    for key, label in LABELS.items():
        n = metrics.get("test_aa_points" if key == "test_aa_acc" else "test_points")
        if key in metrics and n:
            estimate = accuracy(round(metrics[key] * n), int(n))
            table.add_row(label, f"{100 * estimate.value:.1f}",
                          f"[{100 * estimate.low:.1f}, {100 * estimate.high:.1f}]", str(int(n)))
    return table
