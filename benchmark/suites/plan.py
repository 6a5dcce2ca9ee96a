"""What a suite will cost before it runs: passes per run, seconds per pass, and the dry-run table."""

from __future__ import annotations

import functools
import json
import statistics
from dataclasses import dataclass

from rich.table import Table

from energybench.config import Catalogue, RunConfig, format_eps
from energybench.data.datasets import split_sizes
from energybench.errors import EnergybenchError
from energybench.storage.store import Store
from energybench.suites.executors import Executor, LocalExecutor
from energybench.suites.runner import suite_stages
from energybench.suites.spec import FINISHED, Calibration, Cell, format_values, latest_runs, load_suite

#: Rough cost of AutoAttack per attacked point, in forward+backward pass equivalents: APGD-CE runs on
#: every point, APGD-T, FAB-T and Square only on those still robust (measured on CPU with the small CNN:
#: ~150 per point of a collapsed model, ~5000 per robust point). An estimate, not a measurement: the dry run's
#: times correct it with what completed runs' final tests took (``CostModel``).
AA_PASSES_PER_POINT = 2000


def _passes_key(config: RunConfig) -> str:
    fields = ("dataset", "model", "model_params", "trainer", "trainer_params", "regularizer", "regularizer_params",
              "norm")
    return json.dumps(config.model_dump(include=set(fields)), sort_keys=True)


@functools.cache
def _step_passes(key: str) -> float:
    """Forward+backward passes per example of one training step (``TrainingStep``, as a run counts them),
    measured on a 2-example random batch."""
    import torch

    from energybench.contracts.registry import create_model, create_regularizer, create_trainer
    from energybench.data.datasets import get_dataset
    from energybench.training.step import TrainingStep

    config = RunConfig(**json.loads(key))
    info = get_dataset(config.dataset)
    model = create_model(config.model, dataset=config.dataset, **config.model_params).train()
    trainer = create_trainer(config.trainer, eps=config.eps, norm=config.norm, **config.trainer_params)
    regularizer = create_regularizer(config.regularizer, trainer_eps=config.eps, trainer_norm=config.norm,
                                     trainer_single_step=trainer.single_step, **config.regularizer_params)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(2, info.in_channels, info.image_size, info.image_size, generator=generator)
    return TrainingStep(trainer, regularizer, num_classes=info.num_classes)(model, x, torch.tensor([0, 1])).passes


def epoch_passes(config: RunConfig, kept_epochs: int = 0) -> float:
    """Estimated forward+backward example passes of a run's epochs (training and per-epoch validation) after its
    ``kept_epochs``; exact up to the regularizer's own cost (see ``_step_passes``)."""
    train_size, _ = split_sizes(config.dataset, default=(50000, 10000))
    train_points = min(config.n_train or train_size, train_size - config.val_size)
    trained = max(1, train_points // config.batch_size) * config.batch_size
    p = config.eval
    epochs = max(0, config.epochs - kept_epochs)
    train = trained * epochs * _step_passes(_passes_key(config))
    return train + epochs * min(p.val_points, config.val_size) * (p.val_pgd_steps + 2)


def final_test_passes(config: RunConfig) -> float:
    """Estimated example passes of a run's final tests (PGD and AutoAttack on its best and last checkpoints); none
    for a tuning run (``eval.test`` off). AutoAttack is a rough ``AA_PASSES_PER_POINT`` per point."""
    _, test_size = split_sizes(config.dataset, default=(50000, 10000))
    p = config.eval
    test = min(p.test_points or test_size, test_size) * (p.pgd_steps * p.pgd_restarts + 1)
    autoattack = min(p.aa_points, test_size) * AA_PASSES_PER_POINT
    return 2 * (test + autoattack) if p.test else 0


def estimate_passes(config: RunConfig, kept_epochs: int = 0) -> float:
    """Estimated example passes of one run: its epochs after ``kept_epochs``, then its final tests."""
    return epoch_passes(config, kept_epochs) + final_test_passes(config)


Speeds = dict[tuple[str, str], float]


@dataclass
class CostModel:
    """Seconds per example pass of the epochs (``epochs``) and of the final tests (``final_tests``) per (dataset,
    model), learned from completed runs in the store, or the suite's calibration for both."""

    epochs: Speeds
    final_tests: Speeds
    fallback: Calibration | None

    @classmethod
    def learn(cls, store: Store, cells: list[Cell], fallback: Calibration | None) -> CostModel:
        """Median seconds per estimated pass over the store's completed runs on each (dataset, model) of ``cells``:
        of the epochs from their recorded epoch times, of the final tests from the rest of the run's wall time
        (where AutoAttack's real cost corrects its rough pass count). A run without epoch times counts its whole
        wall time for both."""
        epoch_speeds: Speeds = {}
        test_speeds: Speeds = {}
        for key in {(c.config.dataset, c.config.model) for c in cells}:
            epoch_samples, test_samples = [], []
            for run in store.runs(dataset=key[0], model=key[1]):
                if not run.wall_time:
                    continue
                epochs = store.epochs(run.id)
                epoch_seconds = sum(e.get("epoch_time", 0.0) for e in epochs)
                try:
                    config = RunConfig(**run.config)
                    ran, tested = epoch_passes(config, config.epochs - len(epochs)), final_test_passes(config)
                    whole = estimate_passes(config)
                except EnergybenchError:  # a run of a plugin no longer installed cannot be re-estimated
                    continue
                if not epoch_seconds:
                    epoch_samples.append(run.wall_time / whole)
                    test_samples.append(run.wall_time / whole)
                    continue
                epoch_samples.append(epoch_seconds / ran)
                if tested and run.wall_time > epoch_seconds:
                    test_samples.append((run.wall_time - epoch_seconds) / tested)
            if epoch_samples:
                epoch_speeds[key] = statistics.median(epoch_samples)
            if test_samples:
                test_speeds[key] = statistics.median(test_samples)
        return cls(epoch_speeds, test_speeds, fallback)

    def seconds(self, config: RunConfig, epochs: float, final_tests: float) -> float | None:
        """Estimated seconds of ``epochs`` passes of epochs and ``final_tests`` passes of final tests (None: no speed
        known); the final tests take the epochs' speed until a completed run has timed them."""
        key = (config.dataset, config.model)
        speed = self.epochs.get(key)
        if speed is None and self.fallback is not None:
            speed = self.fallback.seconds_per_mpass / 1e6
        return None if speed is None else epochs * speed + final_tests * self.final_tests.get(key, speed)

    def source(self, cells: list[Cell]) -> str:
        learned = sorted({f"{c.config.dataset}/{c.config.model}" for c in cells
                          if (c.config.dataset, c.config.model) in self.epochs})
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


@dataclass
class PlannedCell:
    """One cell of a suite's dry run: its stage, what it runs, whether the store holds it (``status``, ``run``), the
    epochs of a killed run the executor will resume (``kept_epochs``), and the estimated example passes and seconds
    still to spend (None until a speed is known)."""

    stage: str
    trainer: str
    regularizer: str
    tuned: str
    eps: float
    seed: int
    status: str
    run: str | None
    passes: float
    seconds: float | None
    kept_epochs: int = 0


@dataclass
class SuitePlan:
    """A suite's dry run: every cell of every stage with its status and estimated cost, and where the speed behind
    the times comes from (``source``)."""

    name: str
    description: str
    cells: list[PlannedCell]
    source: str


def plan_suite(catalogue: Catalogue, name: str, store: Store, *, data_root: str | None = None,
               device: str | None = None, executor: Executor | None = None) -> SuitePlan:
    """The dry run of suite ``name``: its stages as they would run now (``suite_stages``), each cell with its status in
    ``store`` and its estimated cost, less the epochs that ``executor`` (default local) would resume."""
    executor = executor or LocalExecutor()
    suite = load_suite(catalogue, name)
    stages = list(suite_stages(suite, catalogue, store, data_root=data_root, device=device))
    every = [cell for stage in stages for cell in stage.cells]
    latest = latest_runs(store, every)
    costs = CostModel.learn(store, every, suite.spec.calibration)
    out = []
    for stage in stages:
        for cell in stage.cells:
            record = latest[cell.config_hash]
            finished = record is not None and record.status in FINISHED
            kept = 0 if finished or cell.pending else executor.kept_epochs(store, cell)
            epochs, tests = epoch_passes(cell.config, kept), final_test_passes(cell.config)
            action = (f"resumes after epoch {kept}/{cell.config.epochs}" if kept
                      else "to run" if record is None else "to run again")
            if finished:
                status = record.status
            else:
                status = action if record is None else f"{record.status}: {action}"
            tuned = "after tuning" if cell.pending else (format_values(cell.tuned) or "-")
            out.append(PlannedCell(stage.name, cell.trainer, cell.regularizer, tuned, cell.eps, cell.seed, status,
                                   record.id if record else None, epochs + tests,
                                   costs.seconds(cell.config, epochs, tests), kept))
    return SuitePlan(suite.name, suite.spec.description, out, costs.source(every))


def render_plan(plan: SuitePlan) -> tuple[Table, str]:
    """The dry run as a table (every cell of every stage, tuning then evaluation) and a one-line total per stage."""
    cells = plan.cells
    table = Table(title=f"Suite {plan.name}: {plan.description}", title_justify="left", header_style="bold")
    for header in ("#", "stage", "trainer", "reg", "tuned", "eps", "seed", "status", "passes", "est. time"):
        table.add_column(header, justify="right" if header in ("#", "eps", "seed", "passes", "est. time") else "left")
    for i, c in enumerate(cells, 1):
        status = f"{c.status} ({c.run})" if c.status in FINISHED else c.status
        table.add_row(str(i), c.stage, c.trainer, c.regularizer, c.tuned, format_eps(c.eps), str(c.seed), status,
                      count(c.passes), duration(c.seconds), end_section=i == len(cells) or cells[i].stage != c.stage)
    totals = []
    for stage in dict.fromkeys(c.stage for c in cells):
        size = sum(c.stage == stage for c in cells)
        todo = [c for c in cells if c.stage == stage and c.status not in FINISHED]
        total = "?" if any(c.seconds is None for c in todo) else duration(sum(c.seconds for c in todo))
        totals.append(f"{stage}: {size} cells, {size - len(todo)} done, {len(todo)} to run, estimated "
                      f"{count(sum(c.passes for c in todo))} example passes, about {total}")
    return table, "; ".join(totals) + f" (one cell after another; {plan.source})"
