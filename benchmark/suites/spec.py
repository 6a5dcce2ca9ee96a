"""Benchmark suites: named matrices of runs (trainers x regularizers x eps x seeds) from registry.toml.

A ``[suites.NAME]`` table names a base track, overrides some of its settings and lists the values
to sweep. It expands into cells, each a fully resolved ``RunConfig``. Running a suite skips the
cells whose config hash already has a completed run in the store, so re-running it retries only
the failed or missing cells; a cell that fails is recorded as failed and the others go on.
"""

from __future__ import annotations

import functools
import itertools
import json
import statistics
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from rich.table import Table

from energybench.config import Catalogue, RunConfig, parse_eps, readable, resolve_config
from energybench.errors import EnergybenchError, unknown_name
from energybench.reporting.leaderboard import format_eps
from energybench.storage.store import RunRecord, Store
from energybench.training.run import prepare

#: RunConfig fields a suite sweeps; its ``settings`` may not set them.
SWEPT = ("trainer", "trainer_params", "regularizer", "regularizer_params", "eps", "seed")

#: Train and test set sizes of the built-in datasets, used only to estimate costs.
DATASET_POINTS = {"fashion-mnist": (60000, 10000), "mnist": (60000, 10000), "digits": (1437, 360),
                  "cifar10": (50000, 10000), "cifar100": (50000, 10000), "svhn": (73257, 26032)}

#: Rough cost of AutoAttack per attacked point, in forward+backward pass equivalents: APGD-CE runs on
#: every point, APGD-T, FAB-T and Square only on those still robust (measured on CPU with the small CNN:
#: ~150 per point of a collapsed model, ~5000 per robust point). An estimate, not a measurement.
AA_PASSES_PER_POINT = 2000


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Choice(_Strict):
    """One trainer or regularizer of a suite: a plugin, its hyper-parameters and the label shown.

    In registry.toml a plain string ``"fgsm"`` stands for ``{ plugin = "fgsm" }``.
    """

    plugin: str
    params: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"plugin": value} if isinstance(value, str) else value

    @property
    def name(self) -> str:
        return self.label or self.plugin


class Resources(_Strict):
    """What one cell needs from a Ray cluster (the local executor ignores it)."""

    num_cpus: float = Field(1.0, gt=0)
    num_gpus: float = Field(0.0, ge=0)


class Calibration(_Strict):
    """A measured speed that turns estimated passes into time until the store holds runs to learn from."""

    seconds_per_mpass: float = Field(gt=0, description="seconds per million example forward+backward passes")
    machine: str = Field(description="where it was measured")


class SuiteSpec(_Strict):
    """A ``[suites.NAME]`` table of registry.toml."""

    description: str
    track: str
    settings: dict[str, Any] = Field(default_factory=dict, description="RunConfig fields overriding the track")
    trainers: list[Choice] = Field(min_length=1)
    regularizers: list[Choice] = Field(default_factory=lambda: [Choice(plugin="none")], min_length=1)
    eps: list[float] | None = Field(None, min_length=1, description="budgets to sweep (default: the track's)")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    resources: Resources = Field(default_factory=Resources)
    calibration: Calibration | None = None

    @field_validator("eps", mode="before")
    @classmethod
    def _eps(cls, value: Any) -> Any:
        return [parse_eps(v) for v in value] if isinstance(value, list) else value

    @model_validator(mode="after")
    def _distinct(self) -> SuiteSpec:
        swept = sorted(set(SWEPT) & self.settings.keys())
        if swept:
            raise ValueError(f"settings may not set {', '.join(swept)}: the suite sweeps them "
                             "(use trainers, regularizers, eps and seeds)")
        for what, values in (("trainer labels", [c.name for c in self.trainers]),
                             ("regularizer labels", [c.name for c in self.regularizers]),
                             ("eps", self.eps or []), ("seeds", self.seeds)):
            repeated = sorted({str(v) for v in values if values.count(v) > 1})
            if repeated:
                raise ValueError(f"repeated {what}: {', '.join(repeated)}")
        return self


@dataclass(frozen=True)
class Cell:
    """One run of a suite: its place in the matrix and its resolved, prepared config."""

    trainer: str
    regularizer: str
    eps: float
    seed: int
    config: RunConfig
    resources: Resources

    @property
    def group(self) -> tuple[str, str, float]:
        """The cell's row on the suite leaderboard (its seeds are aggregated)."""
        return self.trainer, self.regularizer, self.eps

    @property
    def config_hash(self) -> str:
        return self.config.config_hash()

    @property
    def label(self) -> str:
        """Trainer and regularizer as the suite labels them, e.g. ``fgsm + der-j10``."""
        return f"{self.trainer} + {self.regularizer}"

    def describe(self) -> str:
        return f"{self.label}, eps {format_eps(self.eps)}, seed {self.seed}"


@dataclass(frozen=True)
class Suite:
    """A validated suite definition."""

    name: str
    spec: SuiteSpec

    def cells(self, catalogue: Catalogue, *, data_root: str | None = None, device: str | None = None) -> list[Cell]:
        """Every cell, eps outermost then trainer, regularizer and seed; configs checked against the registry.

        ``data_root`` and ``device`` do not change a cell's config hash.
        """
        spec = self.spec
        track = catalogue.track(spec.track)
        eps_values = spec.eps or [RunConfig(**track.settings).eps]
        cells, seen = [], {}
        for eps, trainer, reg, seed in itertools.product(eps_values, spec.trainers, spec.regularizers, spec.seeds):
            overrides = spec.settings | {
                "trainer": trainer.plugin, "trainer_params": trainer.params, "regularizer": reg.plugin,
                "regularizer_params": reg.params, "eps": eps, "seed": seed, "data_root": data_root, "device": device}
            where = f"suite {self.name!r}, cell {trainer.name} + {reg.name} at eps {format_eps(eps)}"
            try:
                config = prepare(resolve_config(catalogue, track=spec.track, overrides=overrides), catalogue)
            except EnergybenchError as exc:
                raise EnergybenchError(f"{where}: {exc}") from None
            cell = Cell(trainer.name, reg.name, eps, seed, config, spec.resources)
            if cell.config_hash in seen:
                raise EnergybenchError(f"{where}, seed {seed}: same settings as cell "
                                       f"{seen[cell.config_hash].describe()}; drop one of them")
            seen[cell.config_hash] = cell
            cells.append(cell)
        return cells


def cell_labels(catalogue: Catalogue, name: str) -> dict[str, str]:
    """``Cell.label`` by config hash for suite ``name`` (empty if the catalogue has no such suite)."""
    if name not in catalogue.suites:
        return {}
    return {cell.config_hash: cell.label for cell in load_suite(catalogue, name).cells(catalogue)}


def load_suite(catalogue: Catalogue, name: str) -> Suite:
    """The suite ``name`` of the catalogue, validated (one-line error naming it if malformed)."""
    if name not in catalogue.suites:
        raise unknown_name("suite", name, list(catalogue.suites))
    raw = catalogue.suites[name]
    if not isinstance(raw, dict):
        raise EnergybenchError(f"{catalogue.path}: suite {name!r} must be a table, got {raw!r}")
    try:
        spec = SuiteSpec(**raw)
    except ValidationError as exc:
        raise EnergybenchError(f"{catalogue.path}: suite {name!r} is malformed: {readable(exc)}") from None
    if spec.track not in catalogue.tracks:
        raise EnergybenchError(f"{catalogue.path}: suite {name!r} is malformed: "
                               f"{unknown_name('track', spec.track, list(catalogue.tracks))}")
    return Suite(name, spec)


# ----- the store's view of a suite ------------------------------------------------------------

def latest_runs(store: Store, cells: list[Cell]) -> dict[str, RunRecord | None]:
    """For each cell's config hash: its most recent completed run, else its most recent run, else None."""
    latest: dict[str, RunRecord | None] = {}
    for cell in cells:
        runs = store.runs(status=None, config_hash=cell.config_hash)
        done = [r for r in runs if r.status == "done"]
        latest[cell.config_hash] = (done or runs or [None])[-1]
    return latest


def pending(store: Store, cells: list[Cell]) -> list[Cell]:
    """The cells without a completed run in ``store`` (missing, failed, interrupted or never finished)."""
    latest = latest_runs(store, cells)
    return [c for c in cells if latest[c.config_hash] is None or latest[c.config_hash].status != "done"]


# ----- cost estimates -------------------------------------------------------------------------

def _passes_key(config: RunConfig) -> str:
    fields = ("dataset", "model", "trainer", "trainer_params", "regularizer", "regularizer_params", "norm")
    return json.dumps(config.model_dump(include=set(fields)), sort_keys=True)


@functools.cache
def _step_passes(key: str) -> float:
    """Forward+backward passes per example of one training step, measured on a 2-example random batch.

    The trainer reports its own passes; the harness adds one clean forward when the regularizer needs
    clean logits the trainer did not keep; each forward call the regularizer makes counts as one more
    (that forward and the backward through it).
    """
    import torch

    from energybench.contracts.registry import get_registry
    from energybench.contracts.regularizer import forward_calls
    from energybench.data.datasets import DATASETS
    from energybench.storage.trained import build

    config = RunConfig(**json.loads(key))
    info, registry = DATASETS[config.dataset], get_registry()
    model = build(config.model, info).train()
    trainer = registry.load("trainer", config.trainer)(eps=config.eps, norm=config.norm, **config.trainer_params)
    regularizer = registry.load("regularizer", config.regularizer)(**config.regularizer_params)
    regularizer.eps, regularizer.norm = config.eps, config.norm
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2, info.in_channels, info.image_size, info.image_size, generator=generator)
    y = torch.tensor([0, 1])
    out = trainer.step(model, x, y, keep_clean_logits=regularizer.uses_clean_logits)
    passes = out.passes
    if regularizer.uses_clean_logits and out.logits is None:
        out.logits, passes = model(x), passes + 1
    with forward_calls(model) as calls:
        regularizer.penalty(model, x, y, out)
    return passes + len(calls)


def estimate_passes(config: RunConfig) -> float:
    """Estimated forward+backward example passes of one run: training, per-epoch validation, final tests.

    Training is exact up to the regularizer's own cost (see ``_step_passes``); AutoAttack is a rough
    ``AA_PASSES_PER_POINT`` per point and checkpoint.
    """
    train_size, test_size = DATASET_POINTS.get(config.dataset, (50000, 10000))
    train_points = min(config.n_train or train_size, train_size - config.val_size)
    trained = max(1, train_points // config.batch_size) * config.batch_size
    p = config.eval
    train = trained * config.epochs * _step_passes(_passes_key(config))
    validation = config.epochs * min(p.val_points, config.val_size) * (p.val_pgd_steps + 2)
    test = min(p.test_points or test_size, test_size) * (p.pgd_steps * p.pgd_restarts + 1)
    autoattack = min(p.aa_points, test_size) * AA_PASSES_PER_POINT
    return train + validation + 2 * (test + autoattack)  # best and last checkpoints


@dataclass
class CostModel:
    """Seconds per example pass, learned from completed runs in the store or taken from the suite."""

    seconds_per_pass: dict[tuple[str, str], float]
    fallback: Calibration | None

    @classmethod
    def learn(cls, store: Store, cells: list[Cell], fallback: Calibration | None) -> CostModel:
        """Median seconds per estimated pass of the store's completed runs on each (dataset, model) of ``cells``."""
        speeds: dict[tuple[str, str], float] = {}
        for dataset, model in {(c.config.dataset, c.config.model) for c in cells}:
            samples = []
            for run in store.runs(dataset=dataset, model=model):
                try:
                    passes = estimate_passes(RunConfig(**run.config))
                except EnergybenchError:  # a run of a plugin no longer installed cannot be re-estimated
                    continue
                if run.wall_time:
                    samples.append(run.wall_time / passes)
            if samples:
                speeds[(dataset, model)] = statistics.median(samples)
        return cls(speeds, fallback)

    def seconds(self, config: RunConfig, passes: float) -> float | None:
        speed = self.seconds_per_pass.get((config.dataset, config.model))
        if speed is None and self.fallback is not None:
            speed = self.fallback.seconds_per_mpass / 1e6
        return None if speed is None else passes * speed

    def source(self, cells: list[Cell]) -> str:
        learned = sorted({f"{c.config.dataset}/{c.config.model}" for c in cells
                          if (c.config.dataset, c.config.model) in self.seconds_per_pass})
        if learned:
            return f"speed learned from completed runs in the store ({', '.join(learned)})"
        if self.fallback is not None:
            return (f"speed {self.fallback.seconds_per_mpass:g} s per million passes, measured on "
                    f"{self.fallback.machine}; completed runs in the store refine it")
        return "no speed known yet: times appear once a run of this dataset and model completes in the store"


# ----- the dry run ----------------------------------------------------------------------------

def duration(seconds: float | None) -> str:
    """``42s``, ``17m`` or ``2.3h``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    if seconds < 90:
        return f"{seconds:.0f}s"
    return f"{seconds / 60:.0f}m" if seconds < 5400 else f"{seconds / 3600:.1f}h"


def count(n: float) -> str:
    """``830k``, ``12.5M`` or ``2.9G``."""
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:.0f}"


def render_plan(suite: Suite, cells: list[Cell], store: Store) -> tuple[Table, str]:
    """The dry run: every cell with its status in ``store`` and estimated cost, plus a one-line total."""
    latest = latest_runs(store, cells)
    costs = CostModel.learn(store, cells, suite.spec.calibration)
    table = Table(title=f"Suite {suite.name}: {suite.spec.description}", title_justify="left", header_style="bold")
    for header in ("#", "trainer", "reg", "eps", "seed", "status", "passes", "est. time"):
        table.add_column(header, justify="left" if header in ("trainer", "reg", "status") else "right")
    todo_passes, todo_seconds, todo, unknown = 0.0, 0.0, 0, False
    for i, cell in enumerate(cells, 1):
        record = latest[cell.config_hash]
        passes = estimate_passes(cell.config)
        seconds = costs.seconds(cell.config, passes)
        if record is None or record.status != "done":
            todo, todo_passes = todo + 1, todo_passes + passes
            unknown |= seconds is None
            todo_seconds += seconds or 0.0
        status = "to run" if record is None else (
            f"done ({record.id})" if record.status == "done" else f"{record.status}: to run again")
        table.add_row(str(i), cell.trainer, cell.regularizer, format_eps(cell.eps), str(cell.seed), status,
                      count(passes), duration(seconds))
    total = "?" if unknown else duration(todo_seconds)
    summary = (f"{len(cells)} cells: {len(cells) - todo} done, {todo} to run; estimated {count(todo_passes)} "
               f"example passes, about {total} one cell after another ({costs.source(cells)})")
    return table, summary
