"""The generative leaderboard: (model, sampler) pairs ranked by FID, and published reference rows apart.

A ranking only ever holds results of one dataset measured in one feature space: one table per
(dataset, FID label) pair, e.g. ``FID[fmnist-cnn]`` (the domain extractor) or plain ``FID``
(reference Inception weights). Published rows from registry.toml's ``[[references.generative]]``
go in a table of their own, in a distinct style, never ranked.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

from rich.markup import escape
from rich.table import Table

from energybench.config import Catalogue
from energybench.contracts.registry import get_registry
from energybench.errors import EnergybenchError
from energybench.reporting.leaderboard import Column
from energybench.storage.store import GenerativeRecord, Store

REFERENCE_STYLE = "italic magenta"


def fid_labels(record: GenerativeRecord) -> list[str]:
    """The feature-space labels ``record`` has an FID for: ``""`` (reference Inception), ``"[fmnist-cnn]"``..."""
    return [key[3:] for key in record.metrics if key == "FID" or key.startswith("FID[")]


def rankings(records: Iterable[GenerativeRecord]) -> dict[tuple[str, str], list[GenerativeRecord]]:
    """Records grouped by (dataset, FID label), each group sorted by that FID, lowest first."""
    groups: dict[tuple[str, str], list[GenerativeRecord]] = {}
    for record in records:
        for label in fid_labels(record):
            groups.setdefault((record.dataset, label), []).append(record)
    for (_, label), group in groups.items():
        group.sort(key=lambda r, label=label: r.metrics[f"FID{label}"])
    return dict(sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] != "", kv[0][1])))


def _num(fmt: str):
    return lambda v: "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def sampler_label(record: GenerativeRecord) -> str:
    """The sampler's name with the hyper-parameters that differ from its plugin defaults, e.g. ``sgld steps=50``."""
    try:
        defaults = get_registry().load("sampler", record.sampler).Params().model_dump(by_alias=True)
    except EnergybenchError:  # the plugin is no longer installed
        return record.sampler
    changed = [f"{key}={value}" for key, value in record.params.items() if defaults.get(key) != value]
    return " ".join([record.sampler, *changed])


def columns(label: str, model_names: dict[str, str]) -> list[Column]:
    """The columns of a ranking in feature space ``label``; ``model_names`` maps model_ref to its display name."""
    def metric(key: str):
        return lambda r: r.metrics.get(key)

    diversity = lambda r: r.metrics["diversity"] / r.metrics["diversity_real"]  # noqa: E731
    return [
        Column("model", lambda r: model_names.get(r.model_ref, r.model_ref), justify="left"),
        Column("sampler", sampler_label, justify="left"),
        Column("n", lambda r: r.n),
        Column(f"FID{label}", metric(f"FID{label}"), _num(".2f")),
        Column(f"IS{label}", metric(f"IS{label}"), _num(".2f")),
        Column("prec", metric(f"precision{label}"), _num(".2f")),
        Column("recall", metric(f"recall{label}"), _num(".2f")),
        Column("acc", metric(f"acc{label}"), _num(".2f")),
        Column("div", diversity, _num(".2f")),
        Column("steps", lambda r: r.steps_mean, _num(".1f")),
        Column("time", lambda r: r.wall_time, lambda v: f"{v:.1f}s"),
    ]


def model_names(store: Store, records: Iterable[GenerativeRecord]) -> dict[str, str]:
    """Display names: ``RUN_ID trainer/checkpoint`` for stored runs, the file name for checkpoint files."""
    trainers = {run.id: run.trainer for run in store.runs(status=None)}
    return {r.model_ref: Path(r.model_ref).name if r.checkpoint is None else
            f"{r.model_ref} {trainers.get(r.model_ref, '?')}/{r.checkpoint}" for r in records}


def ranking_table(dataset: str, label: str, records: list[GenerativeRecord], names: dict[str, str]) -> Table:
    """One ranking: ``records`` (already sorted) of ``dataset`` by ``FID<label>``."""
    if label == "" or label.startswith("[inception"):
        space = "Inception-v3 features"
    else:
        space = (f"features of {label[1:-1]}, a classifier trained on {dataset} by energybench (not Inception, "
                 "not comparable with published FID)")
    caption = (f"{space}. prec/recall: in the same feature space; acc: samples that classifier assigns to their "
               "target class; div: within-class pixel diversity of the samples over that of real images; "
               "steps: mean updates per sample; time: sampling wall time")
    table = Table(title=escape(f"Generative leaderboard: {dataset}, ranked by FID{label}"), title_justify="left",
                  header_style="bold", caption=escape(caption), caption_justify="left")
    cols = columns(label, names)
    table.add_column("#", justify="right")
    for col in cols:
        table.add_column(escape(col.header), justify=col.justify, no_wrap=True)
    for rank, record in enumerate(records, 1):
        table.add_row(str(rank), *(escape(col.fmt(col.value(record))) for col in cols))
    return table


def reference_table(references: list[dict]) -> Table:
    """Published generative results (registry.toml), shown apart and unranked."""
    table = Table(title="Published references (not measured here, never ranked)", title_justify="left",
                  header_style="bold", caption=escape("Inception-v3 IS/FID on the datasets shown, quoted from the "
                                 "sources; not comparable with FID[...] measured in another feature space"),
                  caption_justify="left", style=REFERENCE_STYLE)
    for header in ("reference", "dataset", "IS", "FID", "source"):
        table.add_column(header, justify="left" if header in ("reference", "dataset", "source") else "right")
    for ref in references:
        cells = (ref["method"], ref["dataset"], _num(".2f")(ref.get("IS")), _num(".1f")(ref.get("FID")), ref["source"])
        table.add_row(*map(escape, cells), style=REFERENCE_STYLE)
    return table


def generative_tables(store: Store, catalogue: Catalogue, *, dataset: str | None = None, model: str | None = None,
                      references: bool = True) -> list[Table]:
    """The rankings of stored generative results (filtered by dataset/architecture), then the references."""
    records = store.generative(dataset=dataset, model=model)
    names = model_names(store, records)
    tables = [ranking_table(ds, label, group, names) for (ds, label), group in rankings(records).items()]
    return tables + ([reference_table(catalogue.references.get("generative", []))] if references else [])
