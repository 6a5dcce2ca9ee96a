"""The generative leaderboard: (model, sampler) pairs ranked by FID, and published reference rows apart.

FID and IS depend on the number of samples n (FID is biased upwards at small n), so a ranking only
ever holds results of one dataset measured in one feature space on the same n: one table per
``FeatureSpace``, its metrics labelled with n and the space, e.g. ``FID@1000[fmnist-cnn]`` (the
domain extractor) or ``FID@1000`` (reference Inception weights). KID, unbiased at small n, is shown
beside them with its standard deviation over subsets. Published rows from registry.toml's
``[[references.generative]]`` keep their own n (their ``n`` key) in their labels (``?`` where it is
not recorded) and go in a table of their own, in a distinct style, never ranked.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from rich.markup import escape
from rich.table import Table

from energybench.config import Catalogue
from energybench.contracts.registry import get_registry
from energybench.errors import EnergybenchError
from energybench.reporting.leaderboard import REFERENCE_STYLE, Column
from energybench.reporting.numbers import is_missing, number
from energybench.storage.store import GenerativeRecord, Store

#: Metrics whose value depends on the number of samples: their labels carry it (``FID@1000[fmnist-cnn]``).
SIZED_METRICS = ("FID", "FID_std", "IS", "IS_std", "KID", "KID_std")


def fid_labels(record: GenerativeRecord) -> list[str]:
    """The feature-space labels ``record`` has an FID for: ``""`` (reference Inception), ``"[fmnist-cnn]"``..."""
    return [key[3:] for key in record.metrics if key == "FID" or key.startswith("FID[")]


def sized_label(key: str, n: int | str) -> str:
    """A stored metric key with its sample size: ``FID[fmnist-cnn]`` -> ``FID@1000[fmnist-cnn]``; other keys as is."""
    name, bracket, space = key.partition("[")
    return f"{name}@{n}{bracket}{space}" if name in SIZED_METRICS else key


class FeatureSpace(NamedTuple):
    """What a generative ranking holds fixed: the dataset, the feature space (FID label) and the sample size."""

    dataset: str
    label: str
    n: int

    def metric(self, name: str) -> str:
        """The stored key of metric ``name`` in this space, e.g. ``FID[fmnist-cnn]``."""
        return f"{name}{self.label}"

    def header(self, name: str) -> str:
        """Its label with the sample size, e.g. ``FID@1000[fmnist-cnn]``."""
        return sized_label(self.metric(name), self.n)

    def column(self, name: str) -> str:
        """Its column header in a table of this space (whose title names the space), e.g. ``FID@1000``."""
        return sized_label(name, self.n)


def rankings(records: Iterable[GenerativeRecord]) -> dict[FeatureSpace, list[GenerativeRecord]]:
    """Records grouped by (dataset, FID label, n), each group sorted by that FID, lowest first."""
    groups: dict[FeatureSpace, list[GenerativeRecord]] = {}
    for record in records:
        for label in fid_labels(record):
            groups.setdefault(FeatureSpace(record.dataset, label, record.n), []).append(record)
    for space, group in groups.items():
        group.sort(key=lambda r, key=space.metric("FID"): r.metrics[key])
    return dict(sorted(groups.items(), key=lambda kv: (kv[0].dataset, kv[0].label != "", kv[0].label, kv[0].n)))


def _num(spec: str):
    return lambda v: number(v, spec)


def sampler_label(record: GenerativeRecord) -> str:
    """The sampler's name with the hyper-parameters that differ from its plugin defaults, e.g. ``sgld steps=50``."""
    try:
        defaults = get_registry().load("sampler", record.sampler).Params().model_dump(by_alias=True)
    except EnergybenchError:  # the plugin is no longer installed
        return record.sampler
    changed = [f"{key}={value}" for key, value in record.params.items() if defaults.get(key) != value]
    return " ".join([record.sampler, *changed])


def _with_std(space: FeatureSpace, name: str, spec: str):
    """Metric ``name`` and its standard deviation (``<name>_std``), e.g. ``0.0123±0.0011`` (``-`` if stored without)."""
    def text(record: GenerativeRecord) -> str:
        mean, sd = record.metrics.get(space.metric(name)), record.metrics.get(space.metric(f"{name}_std"))
        return number(mean, spec) + ("" if is_missing(mean) or is_missing(sd) else f"±{sd:{spec}}")
    return text


def columns(space: FeatureSpace, model_names: dict[str, str]) -> list[Column]:
    """The columns of a ranking in ``space``; ``model_names`` maps model_ref to its display name."""
    def metric(name: str):
        return lambda r: r.metrics.get(space.metric(name))

    diversity = lambda r: r.metrics["diversity"] / r.metrics["diversity_real"]  # noqa: E731
    return [
        Column("model", lambda r: model_names.get(r.model_ref, r.model_ref), justify="left"),
        Column("sampler", sampler_label, justify="left"),
        Column(space.column("FID"), _with_std(space, "FID", ".2f")),
        Column(space.column("KID"), _with_std(space, "KID", ".4f")),
        Column(space.column("IS"), _with_std(space, "IS", ".2f")),
        Column("prec", metric("precision"), _num(".2f")),
        Column("recall", metric("recall"), _num(".2f")),
        Column("acc", metric("acc"), _num(".2f")),
        Column("div", diversity, _num(".2f")),
        Column("steps", lambda r: r.steps_mean, _num(".1f")),
        Column("time", lambda r: r.wall_time, lambda v: f"{v:.1f}s"),
    ]


def model_names(store: Store, records: Iterable[GenerativeRecord]) -> dict[str, str]:
    """Display names: ``RUN_ID trainer/checkpoint`` for stored runs, the file name for checkpoint files."""
    trainers = {run.id: run.trainer for run in store.runs(status=None)}
    return {r.model_ref: Path(r.model_ref).name if r.checkpoint is None else
            f"{r.model_ref} {trainers.get(r.model_ref, '?')}/{r.checkpoint}" for r in records}


def ranking_table(space: FeatureSpace, records: list[GenerativeRecord], names: dict[str, str]) -> Table:
    """One ranking: ``records`` (already sorted) of ``space.n`` samples each, by FID in ``space``."""
    if space.label == "" or space.label.startswith("[inception"):
        features = "Inception-v3 features"
    else:
        features = (f"features of {space.label[1:-1]}, a classifier trained on {space.dataset} by energybench (not "
                    "Inception, not comparable with published FID)")
    caption = (f"{features}. @{space.n}: scores of {space.n} samples per sampler in this feature space (FID@{space.n} "
               f"is {space.header('FID')}); FID and IS depend on n, so only results on the same n are ranked together. "
               "FID ± its standard deviation over 50 bootstrap resamples of the samples; KID: unbiased kernel "
               "distance ± its standard deviation over random subsets; IS ± its standard deviation over splits; "
               "prec/recall: in the same feature space; "
               "acc: samples that classifier assigns to their target class; div: within-class pixel "
               "diversity of the samples over that of real images; steps: mean updates per sample; time: sampling "
               "wall time")
    table = Table(title=escape(f"Generative leaderboard: {space.dataset}, ranked by {space.header('FID')}"),
                  title_justify="left", header_style="bold", caption=escape(caption), caption_justify="left")
    cols = columns(space, names)
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
                                 "sources, labelled with the number of samples they were computed on (?: not "
                                 "recorded, set n in registry.toml); not comparable with FID[...] measured in "
                                 "another feature space"),
                  caption_justify="left", style=REFERENCE_STYLE)
    for header in ("reference", "dataset", "IS", "FID", "source"):
        table.add_column(header, justify="left" if header in ("reference", "dataset", "source") else "right")
    for ref in references:
        n = ref.get("n", "?")
        scores = [f"{sized_label(name, n)} {text}" if (text := _num(fmt)(ref.get(name))) != "-" else text
                  for name, fmt in (("IS", ".2f"), ("FID", ".1f"))]
        table.add_row(*map(escape, (ref["method"], ref["dataset"], *scores, ref["source"])), style=REFERENCE_STYLE)
    return table


@dataclass
class GenerativeBoard:
    """The generative leaderboard: stored results ranked per ``FeatureSpace``, the display names of their models
    (``model_names``) and the published reference rows (empty when left out)."""

    rankings: dict[FeatureSpace, list[GenerativeRecord]]
    names: dict[str, str]
    references: list[dict] | None


def build_generative_board(store: Store, catalogue: Catalogue, *, dataset: str | None = None,
                           model: str | None = None, references: bool = True) -> GenerativeBoard:
    """The rankings of ``store``'s generative results (filtered by dataset/architecture) and the catalogue's
    references (``references`` False: None)."""
    records = store.generative(dataset=dataset, model=model)
    return GenerativeBoard(rankings(records), model_names(store, records),
                           catalogue.references.get("generative", []) if references else None)


def generative_tables(board: GenerativeBoard) -> list[Table]:
    """The tables of ``board``: one per ranking, then the references."""
    tables = [ranking_table(space, group, board.names) for space, group in board.rankings.items()]
    return tables + ([reference_table(board.references)] if board.references is not None else [])
