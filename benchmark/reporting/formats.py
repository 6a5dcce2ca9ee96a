"""Leaderboards to share: filtered, sorted, seed-grouped, as a table, markdown, csv, json or html.

A ``Leaderboard`` holds ranked measured rows (``energybench.reporting.leaderboard.Row``) and published
reference rows (``energybench.storage.references.Reference``). The human formats (table, markdown, html)
show the terminal leaderboard's columns (``leaderboard.COLUMNS``); csv and json carry the same
numbers unrounded (accuracies as fractions) under the field names of ``FIELDS``. Reference rows
always come apart, after the measured ones, with rank ``-`` (null in json): they are never ranked.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import statistics
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.table import Table

from energybench.config import Catalogue, format_eps, parse_eps
from energybench.errors import EnergybenchError
from energybench.reporting.leaderboard import COLUMNS, SETTING_COLUMNS, Column, Row, collect
from energybench.storage.references import Reference, load_references
from energybench.storage.store import RunRecord, Store

FORMATS = ("table", "markdown", "csv", "json", "html")
REFERENCE_STYLE = "italic magenta"
REFERENCE_TITLE = "Published reference rows (not measured here, never ranked)"


@dataclass
class SeedGroup(Row):
    """Runs that differ only in their seed: ``results`` holds the means, ``std`` the standard deviations."""

    runs: list[RunRecord] = field(default_factory=list)
    std: dict[str, dict[str, float]] = field(default_factory=dict)

    def sd(self, checkpoint: str, metric: str) -> float:
        return self.std.get(checkpoint, {}).get(metric, math.nan)


def _metric(checkpoint: str, name: str) -> Callable[[Row], float]:
    return lambda r: r.get(checkpoint, name)


def _joined(texts: list[str] | None) -> str | None:
    return None if texts is None else "; ".join(texts)


#: Machine-readable fields of a measured row (csv/json); accuracies are fractions of the test points.
FIELDS: list[Column] = [
    Column("id", lambda r: r.run.id),
    Column("trainer", lambda r: r.run.trainer),
    Column("regularizer", lambda r: r.run.regularizer),
    Column("dataset", lambda r: r.run.dataset),
    Column("model", lambda r: r.run.model),
    Column("norm", lambda r: r.run.norm),
    Column("eps", lambda r: r.run.eps),
    Column("seed", lambda r: r.run.seed),
    Column("track", lambda r: r.run.track),
    Column("suite", lambda r: r.run.suite),
    Column("clean", _metric("last", "test_clean_acc")),
    Column("fgsm", _metric("last", "test_fgsm_acc")),
    Column("pgd", _metric("last", "test_pgd_acc")),
    Column("aa", _metric("last", "aa_acc")),
    Column("clean_best", _metric("best", "test_clean_acc")),
    Column("pgd_best", _metric("best", "test_pgd_acc")),
    Column("aa_best", _metric("best", "aa_acc")),
    Column("aa_points", _metric("last", "aa_points")),
    Column("co", _metric("last", "co")),
    Column("dE", _metric("last", "train_dE_mean")),
    Column("test_dE", _metric("last", "test_dE_mean")),
    Column("time", lambda r: r.run.wall_time),
    Column("warnings", lambda r: _joined(r.warnings())),
]
#: Fields whose seed groups also get ``<name>_std`` (the metrics of ``FIELDS`` read from the results).
_STD_FIELDS = {"clean": ("last", "test_clean_acc"), "pgd": ("last", "test_pgd_acc"), "aa": ("last", "aa_acc"),
               "clean_best": ("best", "test_clean_acc"), "pgd_best": ("best", "test_pgd_acc"),
               "aa_best": ("best", "aa_acc")}
_TEXT_FIELDS = {"id", "trainer", "regularizer", "dataset", "model", "norm", "track", "suite", "source", "link",
                "warnings"}


@dataclass
class Leaderboard:
    """Measured rows in rank order and reference rows, ready to format."""

    title: str
    rows: list[Row]
    references: list[Reference]

    @property
    def grouped(self) -> bool:
        return any(isinstance(r, SeedGroup) for r in self.rows)


# ----- building -----------------------------------------------------------------------------

def _group_key(run: RunRecord) -> str:
    config = {k: v for k, v in run.config.items() if k not in ("seed", "track", "device", "data_root", "fast")}
    return json.dumps(config, sort_keys=True, default=str)


def group_seeds(rows: list[Row]) -> list[SeedGroup]:
    """One row per configuration: mean and standard deviation over the runs that differ only by seed."""
    groups: dict[str, list[Row]] = {}
    for row in rows:
        groups.setdefault(_group_key(row.run), []).append(row)
    out = []
    for members in groups.values():
        members.sort(key=lambda r: r.run.created)  # the group is shown under its oldest run
        means: dict[str, dict[str, float]] = {}
        stds: dict[str, dict[str, float]] = {}
        for checkpoint in ("best", "last"):
            names = sorted({m for r in members for m in r.results.get(checkpoint, {})})
            for name in names:
                values = [v for r in members if not math.isnan(v := r.get(checkpoint, name))]
                if values:
                    means.setdefault(checkpoint, {})[name] = statistics.fmean(values)
                    stds.setdefault(checkpoint, {})[name] = statistics.pstdev(values) if len(values) > 1 else 0.0
        out.append(SeedGroup(run=members[0].run, results=means, runs=[r.run for r in members], std=stds))
    return out


def field_value(row: Row, name: str) -> Any:
    """The raw value of field ``name`` of a measured row (``<field>_std`` and ``n_seeds`` for seed groups)."""
    if name == "seed" and isinstance(row, SeedGroup):
        return ",".join(str(r.seed) for r in row.runs)
    if name == "n_seeds":
        return len(row.runs) if isinstance(row, SeedGroup) else 1
    if name.endswith("_std") and name[:-4] in _STD_FIELDS:
        return row.sd(*_STD_FIELDS[name[:-4]]) if isinstance(row, SeedGroup) else math.nan
    for column in FIELDS:
        if column.header == name:
            return column.value(row)
    raise EnergybenchError(f"unknown leaderboard column {name!r} (known: {', '.join(sort_fields())})")


def sort_fields() -> list[str]:
    """The field names ``--sort`` accepts."""
    return [c.header for c in FIELDS] + [f"{n}_std" for n in _STD_FIELDS] + ["n_seeds"]


def sort_rows(rows: list[Row], by: str, reverse: bool = False) -> list[Row]:
    """Rows sorted by field ``by``: numbers highest first, text A to Z (``reverse`` flips); gaps last."""
    if by not in sort_fields():
        raise EnergybenchError(f"cannot sort by {by!r}; use one of: {', '.join(sort_fields())}")
    text = by in _TEXT_FIELDS or by == "seed"

    def missing(v: Any) -> bool:
        return v is None or (isinstance(v, float) and math.isnan(v))

    present = [r for r in rows if not missing(field_value(r, by))]
    absent = [r for r in rows if missing(field_value(r, by))]
    key = (lambda r: str(field_value(r, by))) if text else (lambda r: float(field_value(r, by)))
    return sorted(present, key=key, reverse=(not text) != reverse) + absent


def build_leaderboard(store: Store, catalogue: Catalogue, *, dataset: str | None = None, model: str | None = None,
                      eps: float | None = None, norm: str | None = None, track: str | None = None,
                      suite: str | None = None, trainer: str | None = None, sort: str | None = None,
                      reverse: bool = False, group: bool = False, references: bool = True,
                      run_ids: Collection[str] | None = None, title: str = "Leaderboard") -> Leaderboard:
    """Completed runs matching the filters (and in ``run_ids`` if given; seed-grouped if ``group``),
    ranked; plus matching references.

    References are filtered by dataset, eps and norm (a track's when ``track`` is given); without a
    dataset filter, only those on a dataset, eps and norm of a measured row are kept.
    """
    rows = collect(store, dataset=dataset, model=model, eps=eps, norm=norm, track=track, suite=suite,
                   trainer=trainer)
    if run_ids is not None:
        rows = [r for r in rows if r.run.id in run_ids]
    if group:  # ranked like `collect` ranks runs: by mean AutoAttack, then mean PGD accuracy
        rows = sort_rows(sort_rows(group_seeds(rows), "pgd"), "aa")
    if sort:
        rows = sort_rows(rows, sort, reverse)
    elif reverse:
        rows = rows[::-1]
    refs: list[Reference] = []
    if references:
        if track is not None:
            settings = catalogue.track(track).settings
            dataset = dataset or settings.get("dataset")
            if eps is None and "eps" in settings:
                eps = parse_eps(settings["eps"])
            norm = norm or settings.get("norm", "Linf")
        refs = load_references(catalogue, store, dataset=dataset, eps=eps, norm=norm)
        if dataset is None and rows:
            settings_seen = {(r.run.dataset, round(r.run.eps, 9), r.run.norm) for r in rows}
            refs = [r for r in refs if (r.dataset, round(r.eps, 9), r.norm) in settings_seen]
    return Leaderboard(title, rows, refs)


# ----- human formats --------------------------------------------------------------------------

def _ranked(board: Leaderboard) -> list[tuple[str, Row]]:
    return [(str(i), row) for i, row in enumerate(board.rows, 1)]


def _pm(header: str, metric: str) -> Column:
    """The standard deviation over seeds of ``metric`` (last checkpoint), in percentage points."""
    return Column(header, lambda r: r.sd("last", metric) if isinstance(r, SeedGroup) else math.nan,
                  lambda v: "-" if math.isnan(v) else f"±{100 * v:.1f}")


def display_columns(board: Leaderboard) -> list[Column]:
    """The terminal leaderboard's columns (settings included), plus seeds and spreads for seed groups."""
    columns = COLUMNS[:3] + SETTING_COLUMNS + COLUMNS[3:]
    if board.grouped:
        columns = columns + [Column("seeds", lambda r: len(r.runs) if isinstance(r, SeedGroup) else 1),
                             _pm("PGD ±", "test_pgd_acc"), _pm("AA ±", "aa_acc")]
    return columns


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


#: Columns of reference rows: (header, text of a reference).
REFERENCE_COLUMNS: list[tuple[str, Callable[[Reference], str]]] = [
    ("reference", lambda r: r.id),
    ("method", lambda r: r.method),
    ("dataset", lambda r: r.dataset),
    ("architecture", lambda r: r.architecture),
    ("eps", lambda r: f"{r.norm} {format_eps(r.eps)}"),
    ("clean", lambda r: _pct(r.clean)),
    ("AA", lambda r: _pct(r.aa)),
    ("source", lambda r: r.source + (" [secondary source]" if r.secondary else "")),
]
_CAPTION = ("accuracy % on the test set, best/last checkpoint; AA: AutoAttack, the point-wise worst case over its "
            "attacks; dE: final train E(x) - E(x*); checks: evaluation sanity warnings (their text is in the json "
            "and csv formats); seed groups: means, ± the standard deviation of the last checkpoint")


def rich_tables(board: Leaderboard) -> list[Table]:
    """The leaderboard as rich tables: measured rows ranked, then the references in their own style."""
    tables = []
    if board.rows:
        columns = display_columns(board)
        table = Table(title=board.title, header_style="bold", title_justify="left", caption=_CAPTION,
                      caption_justify="left")
        table.add_column("#", justify="right")
        for col in columns:
            table.add_column(col.header, justify=col.justify, no_wrap=col.header == "run")
        for rank, row in _ranked(board):
            table.add_row(rank, *(col.fmt(col.value(row)) for col in columns))
        tables.append(table)
    if board.references:
        table = Table(title=REFERENCE_TITLE, header_style="bold", title_justify="left", style=REFERENCE_STYLE,
                      caption="published accuracy %, AutoAttack; rank '-': context, not a measurement of this "
                              "benchmark", caption_justify="left")
        table.add_column("#", justify="right")
        for header, _ in REFERENCE_COLUMNS:
            table.add_column(header, justify="right" if header in ("clean", "AA") else "left")
        for ref in board.references:
            table.add_row("-", *(text(ref) for _, text in REFERENCE_COLUMNS), style=REFERENCE_STYLE)
        tables.append(table)
    return tables


def to_text(board: Leaderboard, width: int = 200) -> str:
    """The rich tables as plain text (for ``-o FILE`` with the table format)."""
    console = Console(file=io.StringIO(), width=width, color_system=None, record=True)
    for table in rich_tables(board):
        console.print(table)
    return console.export_text()


def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def to_markdown(board: Leaderboard) -> str:
    """GitHub markdown: the ranked table, then the references (in italics, rank ``-``) under their own heading."""
    lines = [f"## {board.title}", ""]
    if board.rows:
        columns = display_columns(board)
        lines.append("| # | " + " | ".join(_md_cell(c.header) for c in columns) + " |")
        lines.append("|---:|" + "|".join("---:" if c.justify == "right" else ":---" for c in columns) + "|")
        for rank, row in _ranked(board):
            lines.append(f"| {rank} | " + " | ".join(_md_cell(c.fmt(c.value(row))) for c in columns) + " |")
        lines += ["", _CAPTION + ".", ""]
    else:
        lines += ["No measured runs match.", ""]
    if board.references:
        lines += [f"### {REFERENCE_TITLE}", ""]
        lines.append("| # | " + " | ".join(h for h, _ in REFERENCE_COLUMNS) + " |")
        lines.append("|---:|" + "|".join("---:" if h in ("clean", "AA") else ":---" for h, _ in REFERENCE_COLUMNS)
                     + "|")
        for ref in board.references:
            cells = [text(ref) for _, text in REFERENCE_COLUMNS]
            lines.append("| - | " + " | ".join(f"*{_md_cell(c)}*" for c in cells) + " |")
        lines.append("")
    return "\n".join(lines)


HTML_STYLE = """
table.leaderboard { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
table.leaderboard th, table.leaderboard td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
table.leaderboard th { background: #f0f0f0; }
table.leaderboard .text { text-align: left; }
table.leaderboard caption { caption-side: bottom; text-align: left; color: #555; padding-top: 4px; }
table.references { font-style: italic; color: #7a1f7a; }
table.references th { font-style: normal; }
"""


def to_html_tables(board: Leaderboard) -> str:
    """The leaderboard as HTML ``<table>`` elements (class ``measured`` and ``references``)."""
    esc = html.escape
    parts = [f"<h2>{esc(board.title)}</h2>"]
    if board.rows:
        columns = display_columns(board)
        head = "<th>#</th>" + "".join(f'<th{" class=text" if c.justify == "left" else ""}>{esc(c.header)}</th>'
                                      for c in columns)
        body = []
        for rank, row in _ranked(board):
            cells = "".join(f'<td{" class=text" if c.justify == "left" else ""}>{esc(c.fmt(c.value(row)))}</td>'
                            for c in columns)
            body.append(f'<tr data-run="{esc(row.run.id)}"><td>{rank}</td>{cells}</tr>')
        parts.append(f'<table class="leaderboard measured"><caption>{esc(_CAPTION)}</caption>'
                     f"<thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>")
    else:
        parts.append("<p>No measured runs match.</p>")
    if board.references:
        head = "<th>#</th>" + "".join(f'<th{"" if h in ("clean", "AA") else " class=text"}>{esc(h)}</th>'
                                      for h, _ in REFERENCE_COLUMNS)
        body = []
        for ref in board.references:
            cells = "".join(f'<td{"" if h in ("clean", "AA") else " class=text"}>{esc(text(ref))}</td>'
                            for h, text in REFERENCE_COLUMNS)
            body.append(f'<tr data-reference="{esc(ref.id)}"><td>-</td>{cells}</tr>')
        parts.append(f"<h3>{esc(REFERENCE_TITLE)}</h3>"
                     f'<table class="leaderboard references"><thead><tr>{head}</tr></thead>'
                     f"<tbody>{''.join(body)}</tbody></table>")
    return "\n".join(parts)


def to_html(board: Leaderboard) -> str:
    """A standalone HTML page of the leaderboard."""
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(board.title)}</title>'
            f"<style>{HTML_STYLE}</style></head><body>\n{to_html_tables(board)}\n</body></html>\n")


# ----- machine formats --------------------------------------------------------------------------

def _field_names(board: Leaderboard) -> list[str]:
    names = [c.header for c in FIELDS]
    if board.grouped:
        names += ["n_seeds"] + [f"{n}_std" for n in _STD_FIELDS]
    return names


def _plain(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def records(board: Leaderboard) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Measured and reference rows as flat dicts: ``rank`` (None for references) then the fields."""
    names = _field_names(board)
    measured = [{"rank": i, **{n: _plain(field_value(row, n)) for n in names}} for i, row in enumerate(board.rows, 1)]
    refs = [{"rank": None, "id": r.id, "method": r.method, "dataset": r.dataset, "model": r.architecture,
             "norm": r.norm, "eps": r.eps, "clean": r.clean, "aa": r.aa, "source": r.source, "link": r.link,
             "secondary": r.secondary} for r in board.references]
    return measured, refs


def to_json(board: Leaderboard) -> str:
    measured, refs = records(board)
    return json.dumps({"title": board.title, "measured": measured, "references": refs}, indent=2) + "\n"


_REFERENCE_FIELDS = ["method", "source", "link", "secondary"]


def to_csv(board: Leaderboard) -> str:
    """One csv table: ``kind`` says measured or reference; references have rank ``-``; numbers unrounded."""
    measured, refs = records(board)
    names = ["rank", "kind"] + _field_names(board) + _REFERENCE_FIELDS
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=names, lineterminator="\n")
    writer.writeheader()
    for kind, rows in (("measured", measured), ("reference", refs)):
        for row in rows:
            cells = {k: ("-" if k == "rank" and v is None else "" if v is None else repr(v) if isinstance(v, float)
                         else v) for k, v in row.items()}
            writer.writerow({"kind": kind, **cells})
    return buffer.getvalue()


def export(board: Leaderboard, fmt: str) -> str:
    """``board`` as text in ``fmt`` (one of ``FORMATS``)."""
    writers = {"table": to_text, "markdown": to_markdown, "csv": to_csv, "json": to_json, "html": to_html}
    if fmt not in writers:
        raise EnergybenchError(f"unknown format {fmt!r} (use one of: {', '.join(FORMATS)})")
    return writers[fmt](board)
