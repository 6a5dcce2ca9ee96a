"""Executors: where a suite's cells run.

``local`` (the default, nothing to install) runs them one after another in this process, straight
into the store. ``ray`` runs each as a Ray task with the CPUs/GPUs the suite asks per cell, on a
local Ray instance it starts or on an existing cluster (``--ray-address``). A Ray task runs its
cell into a scratch store and returns the whole run (metrics, results, checkpoints); the driver
writes it into the suite's store, so workers need no shared filesystem and the store has a single
writer; on a local instance the scratch stores stay in the store's ``cells/`` folder until their
run is stored, so a killed suite's cells resume there. Either way a failing cell is recorded as failed
with its error and the others go on.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from energybench.config import RunConfig
from energybench.errors import EnergybenchError
from energybench.storage.checkpoint import atomic_write
from energybench.storage.store import RunInUse, Store
from energybench.suites.spec import Cell
from energybench.training.progress import Reporter
from energybench.training.run import execute


@dataclass
class CellOutcome:
    """How a cell's run ended: ``done``, ``failed`` (with the error) or ``in use`` (another process is
    running it), and where it is stored."""

    cell: Cell
    status: str
    run_id: str
    error: str | None = None
    wall_time: float | None = None


def _error_text(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, EnergybenchError) else f"{type(exc).__name__}: {exc}"


def resumable(store: Store, config_hash: str) -> str | None:
    """The latest run of ``config_hash`` that was interrupted, killed (left 'running' by a dead process) or
    failed after completing some epochs (it has a resume state), or None."""
    unfinished = [r for r in store.runs(status=None, config_hash=config_hash)
                  if r.status in ("interrupted", "running", "failed") and (store.run_dir(r.id) / "state.pt").is_file()]
    return unfinished[-1].id if unfinished else None


def _outcome(store: Store, cell: Cell, run_id: str) -> CellOutcome:
    record = store.get_run(run_id)
    return CellOutcome(cell, record.status, run_id, record.error, record.wall_time)


def record_failure(store: Store, config: RunConfig, suite: str, error: str) -> str:
    """Store a failed run of ``config`` that failed before it was stored (bad input) or whose worker died."""
    run_id = store.create_run(config.model_dump(), config.config_hash(), suite=suite)
    store.set_status(run_id, "failed", error=error)
    return run_id


class Executor(ABC):
    """Runs a suite's pending cells, records each in the store and reports each as it ends."""

    #: Whether the cells read their data from this machine's files (the suite checks them before the first cell).
    reads_local_files = True

    @abstractmethod
    def run(self, cells: list[Cell], store: Store, *, suite: str,
            on_done: Callable[[CellOutcome], None] = lambda outcome: None,
            on_epoch: Callable[[Cell, int], None] = lambda cell, epochs: None) -> list[CellOutcome]:
        """Run ``cells``; a failing cell is recorded and reported, never raised. ``on_epoch(cell, epochs_done)``
        hears a running cell's progress where the executor cannot show it live (Ray workers)."""

    @abstractmethod
    def kept_epochs(self, store: Store, cell: Cell) -> int:
        """Completed epochs of a killed or interrupted run of ``cell`` that ``run`` would resume, not train again."""


class LocalExecutor(Executor):
    """One cell after another in this process.

    A cell whose latest run was interrupted, killed (left 'running' by a dead process) or failed after
    completing some epochs is resumed after its last completed epoch rather than started again.
    """

    def __init__(self, reporter: Callable[[], Reporter] = Reporter):
        self.reporter = reporter

    def kept_epochs(self, store, cell):
        resume = resumable(store, cell.config_hash)
        return store.get_run(resume).epochs_done if resume else 0

    def run(self, cells, store, *, suite, on_done=lambda outcome: None, on_epoch=lambda cell, epochs: None):
        outcomes = []  # progress is the reporter's, live
        for cell in cells:
            resume = resumable(store, cell.config_hash)
            started = time.time()
            try:
                run_id = execute(None if resume else cell.config, store, reporter=self.reporter(), resume=resume,
                                 suite=suite)
                outcome = _outcome(store, cell, run_id)
            except RunInUse as exc:  # another live process is running this cell: leave it to that process
                outcome = CellOutcome(cell, "in use", resume, str(exc))
            except Exception as exc:  # stored as failed (or diverged) by execute, unless it failed before storing
                failed = [r for r in store.runs(status=None, config_hash=cell.config_hash)
                          if r.status in ("failed", "diverged") and (r.id == resume or r.created >= started)]
                run_id = failed[-1].id if failed else record_failure(store, cell.config, suite, _error_text(exc))
                outcome = _outcome(store, cell, run_id)
            outcomes.append(outcome)
            on_done(outcome)
        return outcomes


# ----- Ray ------------------------------------------------------------------------------------

@dataclass
class RunExport:
    """A whole stored run, as plain data that can travel from a worker to the driver."""

    config: dict[str, Any]
    config_hash: str
    status: str
    error: str | None
    wall_time: float | None
    epochs: list[dict[str, Any]]
    results: dict[str, dict[str, float]]
    points: dict[str, dict[str, Any]] = field(default_factory=dict)
    files: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def of(cls, store: Store, run_id: str) -> RunExport:
        record = store.get_run(run_id)
        folder = store.run_dir(run_id)
        rewritten = {"config.json", "metrics.jsonl", "record.json"}  # by the importing store; dot files: run locks
        files = {p.name: p.read_bytes() for p in sorted(folder.iterdir())
                 if p.is_file() and p.name not in rewritten and not p.name.startswith(".")}
        return cls(record.config, record.config_hash, record.status, record.error, record.wall_time,
                   store.epochs(run_id), store.results(run_id), store.points(run_id), files)

    def save_to(self, store: Store, suite: str) -> str:
        """Insert this run into ``store`` under a new id (status set last, so a partial copy is not 'done')."""
        run_id = store.create_run(self.config, self.config_hash, suite=suite)
        for metrics in self.epochs:
            metrics = dict(metrics)
            store.add_epoch(run_id, metrics.pop("epoch"), metrics)
        for checkpoint, metrics in self.results.items():
            store.add_results(run_id, checkpoint, metrics)
        for checkpoint, correct in self.points.items():
            store.add_points(run_id, checkpoint, correct)
        for name, data in self.files.items():
            atomic_write(store.run_dir(run_id) / name, data)
        store.set_status(run_id, self.status, error=self.error, wall_time=self.wall_time)
        return run_id


def run_in_scratch_store(settings: dict[str, Any], suite: str, threads: int,
                         scratch: str | None = None) -> RunExport | None:
    """A Ray task's body: run the config ``settings`` into a scratch store and return the run, failed or not.

    ``scratch``, a folder on the worker that outlives the task, makes the cell kill-safe: run again, the
    cell resumes its killed run there after the last completed epoch, or returns the run it finished
    there if the driver died before storing it. Without it the run goes to a temporary folder. None
    when another live process is running the cell.
    """
    import torch

    torch.set_num_threads(threads)
    config = RunConfig(**settings)
    config_hash = config.config_hash()
    with contextlib.ExitStack() as stack:
        home = (os.path.join(scratch, config_hash) if scratch
                else stack.enter_context(tempfile.TemporaryDirectory(prefix="energybench-cell-")))
        store = Store(home)
        stack.callback(store.close)
        earlier = store.runs(status=None)
        if not any(r.status in ("done", "diverged") for r in earlier):  # else: it finished there
            resume = resumable(store, config_hash)
            try:
                execute(None if resume else config, store, suite=suite, resume=resume)
            except RunInUse:
                return None
            except Exception as exc:  # stored as failed by execute, unless it failed before storing the run
                if not resume and len(store.runs(status=None)) == len(earlier):
                    record_failure(store, config, suite, _error_text(exc))
        return RunExport.of(store, store.runs(status=None)[-1].id)


def epochs_done(scratch_store: Path) -> int:
    """Completed epochs of the latest run in a cell's scratch store (0 before it has one)."""
    if not (scratch_store / "store.sqlite").is_file():
        return 0
    store = Store(scratch_store, readonly=True)
    try:
        runs = store.runs(status=None)
        return runs[-1].epochs_done if runs else 0
    finally:
        store.close()


def _forwarded_environment() -> dict[str, str]:
    """ENERGYBENCH_* settings (offline mode, data folder) that workers should see, not the store."""
    return {k: v for k, v in os.environ.items() if k.startswith("ENERGYBENCH_") and k != "ENERGYBENCH_HOME"}


class RayExecutor(Executor):
    """Cells as Ray tasks with per-cell ``num_cpus``/``num_gpus``; results written into the driver's store.

    ``address`` joins an existing cluster (workers need energybench and the data installed);
    without it a local Ray instance is started (with ``num_cpus`` CPUs, default all) and shut
    down at the end. If Ray is already initialised in this process, that instance is used.
    """

    def __init__(self, address: str | None = None, *, num_cpus: int | None = None, poll_seconds: float = 30.0):
        self.address, self.num_cpus, self.poll_seconds = address, num_cpus, poll_seconds
        self.reads_local_files = address is None  # a cluster's workers read their own files

    def _scratch(self, store: Store) -> Path | None:
        """Where a local instance's workers keep each cell's scratch store, which outlives a killed suite (a
        cluster's workers keep theirs in temporary folders)."""
        return None if self.address else store.home / "cells"

    def kept_epochs(self, store, cell):
        scratch = self._scratch(store)
        return epochs_done(scratch / cell.config_hash) if scratch else 0

    def _connect(self, ray) -> bool:
        if ray.is_initialized():
            return False
        options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                   "runtime_env": {"env_vars": _forwarded_environment()}}
        if self.address is None:
            options.update(address="local", num_cpus=self.num_cpus)
        else:
            options["address"] = self.address
        sigterm = signal.getsignal(signal.SIGTERM)
        try:
            ray.init(**options)
        except ConnectionError as exc:
            raise EnergybenchError(f"cannot connect to the Ray cluster at {self.address!r}: {exc}") from None
        if callable(sigterm) and threading.current_thread() is threading.main_thread():
            # ray.init makes SIGTERM exit at once, which would leave the running cells' workers behind; the handler
            # set before (the CLI's: stop like Ctrl-C) cancels them and shuts Ray down in ``run``
            signal.signal(signal.SIGTERM, sigterm)
        return True

    def run(self, cells, store, *, suite, on_done=lambda outcome: None, on_epoch=lambda cell, epochs: None):
        try:
            import ray
        except ImportError:
            raise EnergybenchError("the ray executor needs Ray: pip install 'energybench[ray]'") from None
        started = self._connect(ray)
        task = ray.remote(max_retries=0)(run_in_scratch_store)
        scratch = self._scratch(store)
        waiting = {}
        for cell in cells:
            threads = max(1, int(cell.resources.num_cpus))
            ref = task.options(num_cpus=cell.resources.num_cpus, num_gpus=cell.resources.num_gpus,
                               name=f"energybench {cell.describe()}").remote(cell.config.model_dump(), suite, threads,
                                                                             str(scratch) if scratch else None)
            waiting[ref] = cell
        outcomes, progress = [], {}
        try:
            while waiting:
                ready, _ = ray.wait(list(waiting), num_returns=1, timeout=self.poll_seconds if scratch else None)
                if not ready:  # every poll_seconds: the running cells' epochs, read from their scratch stores
                    for cell in waiting.values():
                        done = epochs_done(scratch / cell.config_hash)
                        if done > progress.get(cell.config_hash, 0):
                            progress[cell.config_hash] = done
                            on_epoch(cell, done)
                    continue
                ref = ready[0]
                cell = waiting.pop(ref)
                try:
                    export = ray.get(ref)
                    if export is None:
                        where = scratch / cell.config_hash
                        outcome = CellOutcome(cell, "in use", "", f"in use by another process in {where}")
                    else:
                        outcome = _outcome(store, cell, export.save_to(store, suite))
                        if scratch:
                            shutil.rmtree(scratch / cell.config_hash, ignore_errors=True)
                except ray.exceptions.RayError as exc:
                    lines = str(exc).strip().splitlines() or [type(exc).__name__]
                    outcome = _outcome(store, cell, record_failure(store, cell.config, suite,
                                                                   f"Ray task failed: {lines[-1]}"))
                outcomes.append(outcome)
                on_done(outcome)
        finally:
            for ref in waiting:
                ray.cancel(ref, force=True)
            if started:
                ray.shutdown()
        return outcomes

