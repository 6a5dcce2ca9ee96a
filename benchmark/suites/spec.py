"""Benchmark suites: named matrices of runs (trainers x regularizers x eps x seeds) from registry.toml.

A ``[suites.NAME]`` table names a base track, overrides some of its settings and lists the values
to sweep. It expands into cells, each a fully resolved ``RunConfig``. Running a suite skips the
cells whose config hash already has a completed run in the store, so re-running it retries only
the failed or missing cells; a cell that fails is recorded as failed and the others go on.

A trainer or regularizer may declare candidate values of its key hyper-parameters (``tune``). The
suite then runs in two stages: tuning cells (every candidate on the tuning seeds, validation only)
pick one value per (trainer, regularizer, eps) (``energybench.suites.tuning``), then the evaluation
cells run the chosen value on the suite's seeds.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from energybench.config import Catalogue, RunConfig, format_eps, parse_eps, readable, resolve_config
from energybench.errors import EnergybenchError, unknown_name
from energybench.storage.store import RunRecord, Store
from energybench.training.run import prepare

#: RunConfig fields a suite sweeps; its ``settings`` may not set them.
SWEPT = ("trainer", "trainer_params", "regularizer", "regularizer_params", "eps", "seed")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Choice(_Strict):
    """One trainer or regularizer of a suite: a plugin, its hyper-parameters, the label shown, and the
    candidate values of hyper-parameters to tune (the grid is their product).

    In registry.toml a plain string ``"fgsm"`` stands for ``{ plugin = "fgsm" }``.
    """

    plugin: str
    params: dict[str, Any] = Field(default_factory=dict)
    label: str | None = None
    tune: dict[str, list[Any]] = Field(default_factory=dict, description="hyper-parameter -> candidate values")

    @model_validator(mode="before")
    @classmethod
    def _from_name(cls, value: Any) -> Any:
        return {"plugin": value} if isinstance(value, str) else value

    @model_validator(mode="after")
    def _grid(self) -> Choice:
        empty = [k for k, values in self.tune.items() if not values]
        if empty:
            raise ValueError(f"{self.name}: tune.{empty[0]} lists no candidate values")
        both = sorted(set(self.tune) & set(self.params))
        if both:
            raise ValueError(f"{self.name}: {', '.join(both)} is both fixed in params and tuned")
        return self

    @property
    def name(self) -> str:
        return self.label or self.plugin

    def candidates(self) -> list[dict[str, Any]]:
        """Every combination of the tuned values (one empty combination when nothing is tuned)."""
        keys = list(self.tune)
        return [dict(zip(keys, values)) for values in itertools.product(*(self.tune[k] for k in keys))]


class Pair(_Strict):
    """A (trainer, regularizer) combination by their suite labels."""

    trainer: str
    regularizer: str


class Tuning(_Strict):
    """How a suite picks the tuned values: on which seeds, by which epoch's validation PGD, under which guard."""

    seeds: list[int] = Field(default_factory=lambda: [100], min_length=1,
                             description="seeds of the tuning runs (distinct from the evaluation seeds)")
    checkpoint: Literal["best", "last"] = Field(
        "last", description="rank candidates by the validation PGD accuracy of the last epoch, or of the best one")
    min_clean: float = Field(0.8, ge=0, le=1, description="guard: a candidate's validation clean accuracy must "
                             "reach this fraction of the same trainer's run without regularizer")
    measure: Literal["worst", "pgd"] = Field(
        "worst", description="rank by the point-wise worst case of PGD on cross-entropy and on the CW margin loss "
                             "(validation), which gradient masking cannot inflate as easily, or by PGD alone")


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
    exclude: list[Pair] = Field(default_factory=list, description="trainer + regularizer pairs not to run")
    eps: list[float] | None = Field(None, min_length=1, description="budgets to sweep (default: the track's)")
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    tuning: Tuning | None = None
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
        trainers, regularizers = {c.name for c in self.trainers}, {c.name for c in self.regularizers}
        for pair in self.exclude:
            if pair.trainer not in trainers or pair.regularizer not in regularizers:
                raise ValueError(f"exclude names {pair.trainer} + {pair.regularizer}, which is not a trainer and "
                                 "regularizer label of this suite")
        return self

    @model_validator(mode="after")
    def _same_budget(self) -> SuiteSpec:
        grids = {c.name: len(c.candidates()) for c in self.trainers + self.regularizers if c.tune}
        if grids and self.tuning is None:
            raise ValueError("a trainer or regularizer declares tune, so the suite needs a [tuning] table")
        if len(set(grids.values())) > 1:
            sizes = ", ".join(f"{name} {n}" for name, n in grids.items())
            raise ValueError(f"every tuned method gets the same number of candidates (the same budget); got {sizes}")
        if self.tuning is not None and set(self.tuning.seeds) & set(self.seeds):
            raise ValueError("tuning seeds must differ from the evaluation seeds (no selection on the seeds "
                             "that are reported)")
        return self

    def pairs(self) -> list[tuple[Choice, Choice]]:
        """The (trainer, regularizer) combinations to run, in matrix order."""
        excluded = {(p.trainer, p.regularizer) for p in self.exclude}
        return [(t, r) for t, r in itertools.product(self.trainers, self.regularizers)
                if (t.name, r.name) not in excluded]


def tuned_choice(trainer: Choice, regularizer: Choice) -> Choice | None:
    """Which choice of a pair is tuned: the regularizer's grid if it has one, else the trainer's, else None.

    A cell tunes one method's key hyper-parameters: a regularizer's when it declares a grid, and the
    trainer's only when it runs without a tuned regularizer (e.g. N-FGSM's noise with ``none``).
    """
    if regularizer.tune:
        return regularizer
    return trainer if trainer.tune else None


@dataclass(frozen=True)
class Cell:
    """One run of a suite: its place in the matrix and its resolved, prepared config.

    ``tuned`` holds the tuned hyper-parameter values the cell runs with (the candidate of a tuning
    cell, the chosen value of an evaluation cell); ``stage`` is ``evaluation`` or ``tuning``, and
    ``pending`` marks an evaluation cell whose value the tuning stage has not chosen yet (its config
    then holds the first candidate, good enough for cost estimates).
    """

    trainer: str
    regularizer: str
    eps: float
    seed: int
    config: RunConfig
    resources: Resources
    tuned: dict[str, Any] = field(default_factory=dict)
    stage: str = "evaluation"
    pending: bool = False

    @property
    def group(self) -> tuple[str, str, float]:
        """The cell's row on the suite leaderboard (its seeds are aggregated)."""
        return self.trainer, self.regularizer, self.eps

    @property
    def config_hash(self) -> str:
        return self.config.config_hash()

    @property
    def label(self) -> str:
        """Trainer and regularizer as the suite labels them, e.g. ``fgsm + der``, with tuned values if any."""
        return f"{self.trainer} + {self.regularizer}" + (f" ({format_values(self.tuned)})" if self.tuned else "")

    def describe(self) -> str:
        stage = "tuning: " if self.stage == "tuning" else ""
        return f"{stage}{self.label}, eps {format_eps(self.eps)}, seed {self.seed}"


def format_values(values: dict[str, Any]) -> str:
    """``beta=3, gamma=0.5``."""
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items())


@dataclass(frozen=True)
class Suite:
    """A validated suite definition."""

    name: str
    spec: SuiteSpec

    def _cell(self, catalogue: Catalogue, trainer: Choice, regularizer: Choice, eps: float, seed: int, *,
              tuned: dict[str, Any], stage: str = "evaluation", pending: bool = False,
              data_root: str | None, device: str | None) -> Cell:
        spec = self.spec
        target = tuned_choice(trainer, regularizer)
        trainer_params = trainer.params | (tuned if target is trainer else {})
        reg_params = regularizer.params | (tuned if target is regularizer else {})
        settings = spec.settings
        if stage == "tuning":  # ranked on validation metrics only: the test split is never read
            extra = {"test": False, "val_margin": spec.tuning.measure == "worst"}
            settings = settings | {"eval": settings.get("eval", {}) | extra}
        overrides = settings | {
            "trainer": trainer.plugin, "trainer_params": trainer_params, "regularizer": regularizer.plugin,
            "regularizer_params": reg_params, "eps": eps, "seed": seed, "data_root": data_root, "device": device}
        where = f"suite {self.name!r}, cell {trainer.name} + {regularizer.name} at eps {format_eps(eps)}"
        try:
            config = prepare(resolve_config(catalogue, track=spec.track, overrides=overrides), catalogue)
        except EnergybenchError as exc:
            raise EnergybenchError(f"{where}: {exc}") from None
        return Cell(trainer.name, regularizer.name, eps, seed, config, spec.resources, tuned, stage, pending)

    def _eps_values(self, catalogue: Catalogue) -> list[float]:
        return self.spec.eps or [RunConfig(**catalogue.track(self.spec.track).settings).eps]

    def tuning_cells(self, catalogue: Catalogue, *, data_root: str | None = None,
                     device: str | None = None) -> list[Cell]:
        """The tuning stage: every candidate of every tuned pair on the tuning seeds, then, as the guard's
        reference, each tuned pair's trainer without regularizer (``none``, nothing tuned) on the same
        seeds. A reference may have the settings of a candidate (then ``unique`` runs it once)."""
        spec = self.spec
        if spec.tuning is None:
            return []
        candidates, references = [], {}
        none = Choice(plugin="none")
        for eps, (trainer, regularizer) in itertools.product(self._eps_values(catalogue), spec.pairs()):
            target = tuned_choice(trainer, regularizer)
            if target is None:
                continue
            plain = Choice(plugin=trainer.plugin, params=trainer.params, label=trainer.name)
            for seed in spec.tuning.seeds:
                for values in target.candidates():
                    candidates.append(self._cell(catalogue, trainer, regularizer, eps, seed, tuned=values,
                                                 stage="tuning", data_root=data_root, device=device))
                reference = self._cell(catalogue, plain, none, eps, seed, tuned={}, stage="tuning",
                                       data_root=data_root, device=device)
                references.setdefault(reference.config_hash, reference)
        return candidates + list(references.values())

    def cells(self, catalogue: Catalogue, *, chosen: dict[tuple[str, str, float], dict[str, Any]] | None = None,
              data_root: str | None = None, device: str | None = None) -> list[Cell]:
        """The evaluation cells, eps outermost then trainer, regularizer and seed; configs checked against
        the registry. A tuned pair runs its value in ``chosen`` (from ``tuning.choose``); before the tuning
        stage has chosen, its cells are ``pending``. ``data_root`` and ``device`` do not change a config hash.
        """
        spec, chosen = self.spec, chosen or {}
        cells, seen = [], {}
        for eps, (trainer, regularizer), seed in itertools.product(self._eps_values(catalogue), spec.pairs(),
                                                                   spec.seeds):
            target = tuned_choice(trainer, regularizer)
            key = (trainer.name, regularizer.name, eps)
            pending = target is not None and key not in chosen
            tuned = {} if target is None else chosen.get(key) or target.candidates()[0]
            cell = self._cell(catalogue, trainer, regularizer, eps, seed, tuned=tuned, pending=pending,
                              data_root=data_root, device=device)
            if cell.config_hash in seen:
                raise EnergybenchError(f"suite {self.name!r}, cell {cell.describe()}: same settings as cell "
                                       f"{seen[cell.config_hash].describe()}; drop one of them")
            seen[cell.config_hash] = cell
            cells.append(cell)
        return cells


def unique(cells: list[Cell]) -> list[Cell]:
    """``cells`` without repeated settings (the first cell of each config hash), to run each once."""
    seen: dict[str, Cell] = {}
    for cell in cells:
        seen.setdefault(cell.config_hash, cell)
    return list(seen.values())


def cell_labels(catalogue: Catalogue, name: str, store: Store | None = None) -> dict[str, str]:
    """``Cell.label`` by config hash for suite ``name`` (empty if the catalogue has no such suite); with a
    store, the evaluation cells carry the values its tuning stage chose."""
    if name not in catalogue.suites:
        return {}
    from energybench.suites.tuning import choose, chosen_values

    suite = load_suite(catalogue, name)
    chosen = chosen_values(choose(store, suite, catalogue)) if store is not None else None
    return {cell.config_hash: cell.label for cell in suite.cells(catalogue, chosen=chosen)}


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

#: Run statuses that end a cell: 'done', or 'diverged' (its training loss became non-finite: the method's outcome
#: in that setting, which a re-run would repeat). Any other status is retried.
FINISHED = ("done", "diverged")


def latest_runs(store: Store, cells: list[Cell]) -> dict[str, RunRecord | None]:
    """For each cell's config hash: its most recent finished run (done before diverged), else its most recent run,
    else None."""
    latest: dict[str, RunRecord | None] = {}
    for cell in cells:
        runs = store.runs(status=None, config_hash=cell.config_hash)
        done = [r for r in runs if r.status == "done"]
        diverged = [r for r in runs if r.status == "diverged"]
        latest[cell.config_hash] = (done or diverged or runs or [None])[-1]
    return latest


def pending(store: Store, cells: list[Cell]) -> list[Cell]:
    """The cells without a finished run in ``store`` (missing, failed, interrupted or never finished)."""
    latest = latest_runs(store, cells)
    return [c for c in cells if latest[c.config_hash] is None or latest[c.config_hash].status not in FINISHED]
