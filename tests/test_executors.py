"""Executors: Ray for real on a local instance, and the store under several concurrent writers."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import ray
from datafiles import StopAfterFirstEpoch

from energybench.config import load_catalogue
from energybench.storage.checkpoint import load_checkpoint
from energybench.storage.store import Store
from energybench.suites.executors import LocalExecutor, RayExecutor, epochs_done, run_in_scratch_store
from energybench.suites.spec import load_suite, pending

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"aa_points": 2, "val_points": 20, "test_points": 20}  # AutoAttack on 2 points: present, not slow


def test_ray_executor_runs_cells_as_tasks_into_the_store(tmp_path):
    catalogue = load_catalogue()
    cells = [dataclasses.replace(c, config=c.config.model_copy(update={"eval": c.config.eval.model_copy(update=SMALL)}))
             for c in load_suite(catalogue, "tiny").cells(catalogue)[:3]]
    broken = dataclasses.replace(cells[2], config=cells[2].config.model_copy(update={"device": "cuda:99"}))
    store = Store(tmp_path / "store")
    seen = []
    outcomes = RayExecutor(num_cpus=2).run([cells[0], cells[1], broken], store, suite="tiny", on_done=seen.append)
    assert not ray.is_initialized()  # the local instance it started is shut down
    assert seen == outcomes and len(outcomes) == 3
    status = {o.cell.describe(): o for o in outcomes}
    assert status[broken.describe()].status == "failed" and "cuda:99" in status[broken.describe()].error
    for cell in cells[:2]:
        outcome = status[cell.describe()]
        assert outcome.status == "done" and outcome.wall_time > 0
        record = store.get_run(outcome.run_id)
        assert record.suite == "tiny" and record.config_hash == cell.config_hash and record.epochs_done == 1
        assert [e["epoch"] for e in store.epochs(record.id)] == [0]
        results = store.results(record.id)
        assert set(results) == {"best", "last"} and 0 <= results["last"]["test_aa_acc"] <= 1
        folder = store.run_dir(record.id)
        assert load_checkpoint(folder / "last.pt") and (folder / "config.json").is_file()
        assert len((folder / "metrics.jsonl").read_text().splitlines()) == 1
    failed = store.get_run(status[broken.describe()].run_id)
    assert failed.status == "failed" and failed.suite == "tiny"
    assert pending(store, cells) == [cells[2]]  # a re-run retries only the failed cell
    assert not any((store.home / "cells").iterdir())  # each scratch store is removed once its run is stored


def test_a_killed_ray_cell_resumes_in_its_scratch_store(tmp_path):
    catalogue = load_catalogue()
    (cell,) = load_suite(catalogue, "tiny").cells(catalogue)[:1]
    settings = cell.config.model_copy(update={"epochs": 2, "eval": cell.config.eval.model_copy(update=SMALL)})
    cell = dataclasses.replace(cell, config=settings)
    scratch = tmp_path / "cells"
    killed_in = Store(scratch / cell.config_hash)  # where the Ray task ran it when the suite was killed
    with pytest.raises(KeyboardInterrupt):
        LocalExecutor(reporter=StopAfterFirstEpoch).run([cell], killed_in, suite="tiny")
    (killed,) = killed_in.runs(status=None)
    killed_in.set_status(killed.id, "running")  # what a SIGKILL leaves behind
    killed_in.close()
    export = run_in_scratch_store(cell.config.model_dump(), "tiny", 1, str(scratch))
    assert export.status == "done" and [e["epoch"] for e in export.epochs] == [0, 1]
    assert [r.id for r in Store(scratch / cell.config_hash).runs(status=None)] == [killed.id]  # resumed, not redone
    again = run_in_scratch_store(cell.config.model_dump(), "tiny", 1, str(scratch))  # the driver died before storing
    assert again.epochs == export.epochs and again.results == export.results and again.files == export.files


def _cell_workers(ancestor: int) -> set[int]:
    """Ray workers running a cell (named ``ray::energybench <cell>``) that descend from process ``ancestor``."""
    parents, names = {}, {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            parents[int(proc.name)] = int((proc / "stat").read_text().rpartition(")")[2].split()[1])
            names[int(proc.name)] = (proc / "cmdline").read_bytes()
        except (OSError, ValueError):  # the process ended meanwhile
            pass

    def descends(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == ancestor:
                return True
        return False

    return {pid for pid, name in names.items() if name.startswith(b"ray::energybench") and descends(pid)}


def _alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def test_a_ray_cell_reports_its_epochs_and_sigterm_stops_it_as_ctrl_c_does(tmp_path):
    catalogue = load_catalogue()
    (cell,) = load_suite(catalogue, "tiny").cells(catalogue)[:1]
    long = cell.config.model_copy(update={"epochs": 200, "eval": cell.config.eval.model_copy(update=SMALL)})
    cell = dataclasses.replace(cell, config=long)
    store = Store(tmp_path / "store")
    heard, running = [], set()

    def on_sigterm(signum, frame):  # what `energybench` sets: SIGTERM stops a job as Ctrl-C does
        raise KeyboardInterrupt

    def terminate_after_two_epochs(reported, epochs: int) -> None:
        heard.append((reported, epochs))
        if epochs >= 2:
            running.update(_cell_workers(os.getpid()))
            os.kill(os.getpid(), signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, on_sigterm)
    try:
        with pytest.raises(KeyboardInterrupt):  # Ray would exit on SIGTERM at once, leaving the cell running
            RayExecutor(num_cpus=1, poll_seconds=0.05).run([cell], store, suite="tiny",
                                                           on_epoch=terminate_after_two_epochs)
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert [c for c, _ in heard] == [cell] * len(heard) and heard[-1][1] >= 2  # progress read from its scratch store
    assert [e for _, e in heard] == sorted({e for _, e in heard})  # each count once, rising
    assert not ray.is_initialized() and running  # its worker was running at the signal
    deadline = time.monotonic() + 30
    while any(map(_alive, running)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(map(_alive, running))  # and was stopped with the suite
    assert store.runs(status=None) == [] and pending(store, [cell]) == [cell]
    assert epochs_done(tmp_path / "store" / "cells" / cell.config_hash) >= 2  # a re-run resumes it there


WORKER = """
import sys, time
from pathlib import Path
from energybench.storage.store import Store

home, worker, n = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
while not (home.parent / "go").exists():
    time.sleep(0.002)
store = Store(home)
for i in range(n):
    config = {"trainer": "fgsm", "regularizer": "none", "dataset": "digits", "model": "small-cnn", "eps": 0.1,
              "norm": "Linf", "seed": i}
    run_id = store.create_run(config, f"w{worker}-{i}", suite="concurrent")
    for epoch in range(3):
        store.add_epoch(run_id, epoch, {"worker": worker, "i": i})
    store.add_results(run_id, "best", {"acc": worker + i / 1000})
    store.add_results(run_id, "last", {"acc": worker + i / 1000, "i": i})
    store.set_status(run_id, "done", wall_time=1.0)
"""


def test_concurrent_writers_lose_and_duplicate_nothing(tmp_path):
    home, workers, per_worker = tmp_path / "store", 4, 12
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(home), str(w), str(per_worker)], cwd=ROOT,
                              stderr=subprocess.PIPE, text=True) for w in range(workers)]
    (tmp_path / "go").touch()  # all of them open the new store and write at once
    for proc in procs:
        _, errors = proc.communicate(timeout=120)
        assert proc.returncode == 0, errors
    store = Store(home)
    runs = store.runs(status=None, suite="concurrent")
    assert len(runs) == workers * per_worker and len({r.id for r in runs}) == len(runs)
    assert sorted(r.config_hash for r in runs) == sorted(f"w{w}-{i}" for w in range(workers) for i in range(per_worker))
    for run in runs:
        worker, i = (int(part) for part in run.config_hash[1:].split("-"))
        assert run.status == "done" and run.epochs_done == 3 and run.seed == i
        assert store.epochs(run.id) == [{"epoch": e, "worker": worker, "i": i} for e in range(3)]
        assert store.results(run.id) == {"best": {"acc": worker + i / 1000}, "last": {"acc": worker + i / 1000, "i": i}}
        assert len((store.run_dir(run.id) / "metrics.jsonl").read_text().splitlines()) == 3
    db = store._db
    assert db.execute("SELECT COUNT(*) FROM epochs").fetchone()[0] == 3 * len(runs)
    assert db.execute("SELECT COUNT(*) FROM results").fetchone()[0] == 3 * len(runs)


def test_a_run_id_already_taken_is_drawn_again(tmp_path, monkeypatch):
    from energybench.storage import store as store_module

    drawn = iter(["260101-0000-aaaa", "260101-0000-aaaa", "260101-0000-bbbb"])
    monkeypatch.setattr(store_module, "new_id", lambda: next(drawn))
    store = Store(tmp_path)
    config = {"trainer": "fgsm", "regularizer": "none", "dataset": "digits", "model": "small-cnn", "eps": 0.1,
              "norm": "Linf", "seed": 0}
    assert store.create_run(config, "h1") == "260101-0000-aaaa"
    assert store.create_run(config, "h2") == "260101-0000-bbbb"
    assert [r.config_hash for r in store.runs(status=None)] == ["h1", "h2"]
