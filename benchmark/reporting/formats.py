"""Leaderboards to share: filtered, sorted, seed-grouped, as a table, markdown, csv, json or html.

A ``Leaderboard`` holds one ``Ranking`` per setting (dataset, threat model, eps, and the architecture with
``per_arch``: rows are only ever ranked against rows of the same setting, see
``energybench.reporting.leaderboard``), each with its published reference rows
(``energybench.storage.references.Reference``). The human formats (table, markdown, html) show one table per
setting with the terminal leaderboard's columns, every accuracy with its 95 % interval, the references in
italics below the ranked rows; csv and json carry the same numbers as stored (7 significant digits; accuracies
as fractions, with their interval bounds and n) under the field names of ``FIELDS`` (the result keys), and json
also each run's per-point correctness. Reference rows always come after the measured ones, with rank ``-``
(null in json): they are never ranked.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import math
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from energybench.config import Catalogue, parse_eps
from energybench.errors import EnergybenchError
from energybench.reporting.leaderboard import (
    Column,
    Entry,
    Ranking,
    aa_version,
    by_setting,
    caption,
    collect,
    columns,
    method_label,
    rank,
    rank_text,
    ranking_table,
    rankings,
    versus_text,
    with_references,
)
from energybench.reporting.numbers import is_missing
from energybench.reporting.rows import ACCURACIES, LABELS, Row, SeedGroup, group_seeds
from energybench.reporting.templating import render
from energybench.storage.references import Reference, load_references
from energybench.storage.store import Store, pack_points, stored_value, unpack_points

FORMATS = ("table", "markdown", "csv", "json", "html")


def _metric(checkpoint: str, name: str) -> Callable[[Row], float]:
    return lambda r: r.get(checkpoint, name)


def _joined(texts: list[str] | None) -> str | None:
    return None if texts is None else "; ".join(texts)


#: The accuracy fields of the exports: name -> (checkpoint, result key): the result key itself for the last checkpoint,
#: ``best_`` and the key for the best one. Each has ``<name>_low``, ``<name>_high`` (95 % interval), ``<name>_n`` (test
#: points) and, for seed groups, ``<name>_std``.
_BEST = ("test_clean_acc", "test_pgd_acc", "test_aa_acc")  # the accuracies exported for the best checkpoint too
ACCURACY_FIELDS = ({metric: ("last", metric) for metric in ACCURACIES}
                   | {f"best_{metric}": ("best", metric) for metric in _BEST})
#: Short names ``--sort`` also accepts (the column headers' words): short name -> field.
SORT_ALIASES = ({LABELS[metric].lower(): metric for metric in ACCURACIES}
                | {f"{LABELS[metric].lower()}_best": f"best_{metric}" for metric in _BEST}
                | {"dE": "train_dE_mean", "test_dE": "test_dE_mean", "time": "wall_time"})


def _bound(checkpoint: str, metric: str, side: str) -> Callable[[Row], float]:
    def value(row: Row) -> float:
        estimate = row.estimate(checkpoint, metric)
        return math.nan if estimate is None else getattr(estimate, side)
    return value


def _interval_fields() -> list[Column]:
    fields = []
    for name, (checkpoint, metric) in ACCURACY_FIELDS.items():
        fields += [Column(f"{name}_low", _bound(checkpoint, metric, "low")),
                   Column(f"{name}_high", _bound(checkpoint, metric, "high")),
                   Column(f"{name}_n", lambda r, c=checkpoint, m=metric: r.n(c, m))]
    return fields


#: Machine-readable fields of a measured row (csv/json); accuracies are fractions of the test points. Metrics carry
#: their result keys (``energybench.storage.migrations``).
FIELDS: list[Column] = [
    Column("id", lambda r: r.run.id),
    Column("name", lambda r: r.run.config.get("name")),
    Column("method", method_label),
    Column("trainer", lambda r: r.run.trainer),
    Column("regularizer", lambda r: r.run.regularizer),
    Column("dataset", lambda r: r.run.dataset),
    Column("model", lambda r: r.run.model),
    Column("norm", lambda r: r.run.norm),
    Column("eps", lambda r: r.run.eps),
    Column("seed", lambda r: r.run.seed),
    Column("track", lambda r: r.run.track),
    Column("suite", lambda r: r.run.suite),
    Column("aa_version", aa_version),
    *(Column(name, _metric(checkpoint, metric)) for name, (checkpoint, metric) in ACCURACY_FIELDS.items()),
    *_interval_fields(),
    Column("co", _metric("last", "co")),
    Column("train_dE_mean", _metric("last", "train_dE_mean")),
    Column("test_dE_mean", _metric("last", "test_dE_mean")),
    *(Column(key, _metric("last", key)) for key in ("train_reg_penalty", "train_reg_acted", "train_reg_active")),
    Column("wall_time", lambda r: r.run.wall_time),
    Column("warnings", lambda r: _joined(r.warnings())),
]
_TEXT_FIELDS = {"id", "name", "method", "trainer", "regularizer", "dataset", "model", "norm", "track", "suite",
                "aa_version", "source", "link", "warnings"}


@dataclass
class Leaderboard:
    """One ranking per setting, each with the setting's reference rows, ready to format."""

    title: str
    rankings: list[Ranking]

    @property
    def rows(self) -> list[Row]:
        return [row for ranking in self.rankings for row in ranking.rows]

    @property
    def references(self) -> list[Reference]:
        return list(dict.fromkeys(ref for ranking in self.rankings for ref in ranking.references))

    @property
    def grouped(self) -> bool:
        return any(isinstance(r, SeedGroup) for r in self.rows)

    def nonempty(self) -> Leaderboard:
        """This leaderboard; one line of error when no run matched its filters."""
        if not self.rows:
            raise EnergybenchError("no completed runs match these filters; start one with `energybench run`")
        return self

    def place(self, run_id: str) -> tuple[Ranking, Entry]:
        """The ranking that holds run ``run_id`` and its entry there."""
        return next((r, e) for r in self.rankings for e in r.entries if e.row.run.id == run_id)


# ----- building -----------------------------------------------------------------------------

def field_value(row: Row, name: str) -> Any:
    """The raw value of field ``name`` of a measured row (``<field>_std`` and ``n_seeds`` for seed groups)."""
    if name == "seed" and isinstance(row, SeedGroup):
        return ",".join(str(r.seed) for r in row.runs)
    if name == "n_seeds":
        return len(row.members) if isinstance(row, SeedGroup) else 1
    if name.endswith("_std") and name[:-4] in ACCURACY_FIELDS:
        return row.sd(*ACCURACY_FIELDS[name[:-4]]) if isinstance(row, SeedGroup) else math.nan
    for column in FIELDS:
        if column.header == name:
            return column.value(row)
    raise EnergybenchError(f"unknown leaderboard column {name!r} (known: {', '.join(sort_fields())})")


def sort_fields() -> list[str]:
    """The field names ``--sort`` accepts (besides the short names of ``SORT_ALIASES``)."""
    return [c.header for c in FIELDS] + [f"{n}_std" for n in ACCURACY_FIELDS] + ["n_seeds"]


def sort_field(by: str) -> str:
    """The field ``--sort BY`` means: a field name, or a short name such as ``aa`` or ``pgd_best``."""
    by = SORT_ALIASES.get(by, by)
    if by not in sort_fields():
        raise EnergybenchError(f"cannot sort by {by!r}; use one of: {', '.join(sort_fields())} (or the short "
                               f"names {', '.join(SORT_ALIASES)})")
    return by


def sort_rows(rows: list[Row], by: str, reverse: bool = False) -> list[Row]:
    """Rows sorted by field ``by``: numbers highest first, text A to Z (``reverse`` flips); gaps last."""
    by = sort_field(by)
    text = by in _TEXT_FIELDS or by == "seed"

    present = [r for r in rows if not is_missing(field_value(r, by))]
    absent = [r for r in rows if is_missing(field_value(r, by))]
    key = (lambda r: str(field_value(r, by))) if text else (lambda r: float(field_value(r, by)))
    return sorted(present, key=key, reverse=(not text) != reverse) + absent


def sorted_rankings(rows: list[Row], by: str, reverse: bool = False, per_arch: bool = False) -> list[Ranking]:
    """One ranking per setting ordered by field ``by``: an accuracy ranks with ties (tested differences),
    any other field only orders (ranks are positions)."""
    by = sort_field(by)
    out = []
    for setting, members in by_setting(rows, per_arch).items():
        if by in ACCURACY_FIELDS:
            checkpoint, metric = ACCURACY_FIELDS[by]
            out.append(Ranking(setting, rank(members, metric, checkpoint, reverse), metric, checkpoint, order=by))
        else:
            ordered = sort_rows(members, by, reverse)
            out.append(Ranking(setting, [Entry(row, i) for i, row in enumerate(ordered, 1)], None, order=by))
    return out


def build_leaderboard(store: Store, catalogue: Catalogue, *, dataset: str | None = None, model: str | None = None,
                      eps: float | None = None, norm: str | None = None, track: str | None = None,
                      suite: str | None = None, trainer: str | None = None, sort: str | None = None,
                      reverse: bool = False, group: bool = False, references: bool = True,
                      per_arch: bool = False, run_ids: Collection[str] | None = None,
                      title: str = "Leaderboard") -> Leaderboard:
    """Completed runs matching the filters (and in ``run_ids`` if given; seed-grouped if ``group``), ranked
    per setting (dataset, threat model, eps; and architecture with ``per_arch``), each with its references.

    References are filtered by dataset, eps and norm (a track's when ``track`` is given); without a
    dataset filter, only those on a dataset, eps and norm of a measured row are kept.
    """
    rows = collect(store, dataset=dataset, model=model, eps=eps, norm=norm, track=track, suite=suite,
                   trainer=trainer)
    if run_ids is not None:
        rows = [r for r in rows if r.run.id in run_ids]
    if group:
        rows = group_seeds(rows)
    ranked = sorted_rankings(rows, sort, reverse, per_arch) if sort else rankings(rows, reverse, per_arch)
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
    return Leaderboard(title, with_references(ranked, refs))


# ----- human formats --------------------------------------------------------------------------

def _heading(board: Leaderboard, ranking: Ranking) -> str:
    """The title of one ranking's table: the board's title and the setting."""
    return f"{board.title}: {ranking.setting.label}"


def _cells(board: Leaderboard, entry: Entry) -> list[str]:
    """One row of a ranking table as text: rank, the display columns (the heading names the setting), the p-value
    of the test that decided the rank."""
    return [rank_text(entry), *(c.fmt(c.value(entry.row)) for c in columns(grouped=board.grouped)),
            versus_text(entry)]


def _reference_cells(board: Leaderboard, ref: Reference) -> list[str]:
    """A reference row as text: rank ``-``, what it publishes in the same columns, ``-`` for the rest."""
    return ["-", *(c.reference(ref) for c in columns(grouped=board.grouped)), "-"]


def _headers(board: Leaderboard) -> list[tuple[str, str]]:
    """(header, justify) of a ranking table's columns."""
    return [("#", "right"), *((c.header, c.justify) for c in columns(grouped=board.grouped)), ("p", "right")]


def rich_tables(board: Leaderboard, highlight: str | None = None, only: str | None = None) -> list[Table]:
    """The leaderboard as rich tables, one per setting, its references in italics below its ranked rows;
    ``highlight`` a run in bold, or ``only`` that run's row (``ranking_table``)."""
    rankings = [r for r in board.rankings if only is None or only in {row.run.id for row in r.rows}]
    return [ranking_table(r, _heading(board, r), grouped=board.grouped, highlight=highlight, only=only)
            for r in rankings]


def to_text(board: Leaderboard, width: int = 200) -> str:
    """The rich tables as plain text (for ``-o FILE`` with the table format)."""
    console = Console(file=io.StringIO(), width=width, color_system=None, record=True)
    for table in rich_tables(board):
        console.print(table)
    return console.export_text()


def template_context(board: Leaderboard) -> dict[str, Any]:
    """What the markdown and HTML templates (reporting/templates) show of a leaderboard: per setting its ranked
    rows, then its reference rows."""
    return {
        "title": board.title,
        "headers": _headers(board),
        "tables": [{"label": r.setting.label, "caption": caption(r, board.grouped),
                    "rows": [{"id": e.row.run.id, "cells": _cells(board, e)} for e in r.entries],
                    "references": [{"id": ref.id, "cells": _reference_cells(board, ref)} for ref in r.references]}
                   for r in board.rankings],
    }


def to_markdown(board: Leaderboard) -> str:
    """GitHub markdown: one ranked table per setting, its references in italics (rank ``-``) below its ranked rows,
    with its caption."""
    return render("leaderboard.md", board=template_context(board))


def to_html(board: Leaderboard) -> str:
    """A standalone HTML page of the leaderboard."""
    return render("leaderboard.html", board=template_context(board))


# ----- machine formats --------------------------------------------------------------------------

def _field_names(board: Leaderboard) -> list[str]:
    names = [c.header for c in FIELDS]
    if board.grouped:
        names += ["n_seeds"] + [f"{n}_std" for n in ACCURACY_FIELDS]
    return names


def _plain(value: Any, name: str = "") -> Any:
    """A value as csv/json carry it: NaN as null, measured numbers to the store's significant digits (0.6, not the
    0.6000000238418579 of a float32), settings (eps) exactly."""
    if is_missing(value):
        return None
    return value if name == "eps" else stored_value(value)


def _ranking_fields(ranking: Ranking, entry: Entry) -> dict[str, Any]:
    """Where a measured row stands: its rank, setting, what ranks it, and the test that decided its rank (against
    ``compared_with``, the first row of the tie block above it)."""
    difference = entry.versus.difference if entry.versus else None
    return {"rank": entry.rank, "setting": ranking.setting.label, "ranked_by": ranking.order or (
                next(k for k, v in ACCURACY_FIELDS.items() if v == (ranking.checkpoint, ranking.metric))),
            "p_above": None if difference is None else _plain(difference.p),
            "test_above": None if difference is None else difference.test,
            "compared_with": None if entry.leader is None else entry.leader.run.id}


def records(board: Leaderboard) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Measured and reference rows as flat dicts: rank (None for references), setting, ranked_by, p_above,
    test_above and compared_with (the test that decided the rank, against the first row of the tie block above),
    then the fields."""
    names = _field_names(board)
    measured = [{**_ranking_fields(ranking, entry), **{n: _plain(field_value(entry.row, n), n) for n in names}}
                for ranking in board.rankings for entry in ranking.entries]
    refs = [{"rank": None, "setting": ranking.setting.label, "id": r.id, "method": r.method, "dataset": r.dataset,
             "model": r.architecture,
             "norm": r.norm, "eps": r.eps, "test_clean_acc": r.clean, "test_aa_acc": r.aa, "source": r.source,
             "link": r.link, "secondary": r.secondary} for ranking in board.rankings for r in ranking.references]
    return measured, refs


def encode_points(correct: np.ndarray) -> dict[str, Any]:
    """A per-point correctness vector for json: ``n`` and the store's packed bits in base64 (``decode_points``)."""
    n, packed = pack_points(correct)
    return {"n": n, "packed": base64.b64encode(packed).decode("ascii")}


def decode_points(encoded: dict[str, Any]) -> np.ndarray:
    """The bool vector ``encode_points`` wrote."""
    return unpack_points(encoded["n"], base64.b64decode(encoded["packed"]))


def _points_json(row: Row) -> dict[str, dict[str, Any]] | None:
    """The run's per-point correctness by checkpoint and metric (None for seed groups of several runs)."""
    if isinstance(row, SeedGroup) and len(row.members) > 1:
        return None
    return {checkpoint: {metric: encode_points(v) for metric, v in vectors.items()}
            for checkpoint, vectors in row.points.items()}


def to_json(board: Leaderboard) -> str:
    """``measured`` rows (each with ``points``: its per-point correctness, see ``encode_points``), ``settings``
    (what ranks each and how) and ``references``."""
    measured, refs = records(board)
    for record, row in zip(measured, board.rows):
        record["points"] = _points_json(row)
    settings = [{"setting": r.setting.label, "dataset": r.setting.dataset, "model": r.setting.model,
                 "norm": r.setting.norm, "eps": r.setting.eps, "caption": caption(r, board.grouped)}
                for r in board.rankings]
    return json.dumps({"title": board.title, "settings": settings, "measured": measured, "references": refs},
                      indent=2) + "\n"


_REFERENCE_FIELDS = ["method", "source", "link", "secondary"]


def to_csv(board: Leaderboard) -> str:
    """One csv table: ``kind`` says measured or reference; references have rank ``-``; numbers unrounded."""
    measured, refs = records(board)
    names = (["rank", "kind", "setting", "ranked_by", "p_above", "test_above", "compared_with"] + _field_names(board)
             + _REFERENCE_FIELDS)
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
