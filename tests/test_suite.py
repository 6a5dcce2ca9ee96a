"""Suites: definition and validation, expansion into cells, skip-if-done, retries, dry run, leaderboard."""

from __future__ import annotations

import json
import os
import signal
import statistics
import time

import pytest
import scipy.stats
import torch
from datafiles import StopAfterFirstEpoch, run_cli

from energybench.config import default_catalogue_path, load_catalogue
from energybench.contracts import registry as reg
from energybench.contracts.trainer import Trainer, TrainOutput
from energybench.errors import EnergybenchError
from energybench.reporting.suite_leaderboard import group_cells, render_suite
from energybench.storage.store import Store
from energybench.suites.executors import LocalExecutor, RayExecutor
from energybench.suites.plan import (
    AA_PASSES_PER_POINT,
    _passes_key,
    _step_passes,
    epoch_passes,
    estimate_passes,
    final_test_passes,
    plan_suite,
)
from energybench.suites.spec import load_suite, pending

TRACK = """
[tracks.t]
description = "digits, one quick epoch"
dataset = "digits"
model = "small-cnn"
trainer = "fgsm"
eps = 0.1
epochs = 1
batch_size = 64
n_train = 256
val_size = 200
eval = { val_points = 40, val_pgd_steps = 3, test_points = 40, pgd_steps = 3, aa_points = 0, batch_size = 100 }
"""


def catalogue_with(tmp_path, suites: str):
    path = tmp_path / "registry.toml"
    path.write_text(TRACK + suites)
    return load_catalogue(path)


def test_shipped_suites_expand_into_prepared_cells():
    catalogue = load_catalogue()
    sizes = {name: len(load_suite(catalogue, name).cells(catalogue)) for name in catalogue.suites}
    assert sizes == {"tiny": 4, "co-fmnist": 90, "ro-fmnist": 8, "co-cifar10": 81, "ro-cifar10": 4,
                     "co-cifar10jpeg": 48, "ro-cifar10jpeg": 12}
    suite = load_suite(catalogue, "co-fmnist")
    cells = suite.cells(catalogue, data_root="/data", device="cpu")
    ablation = [c for c in cells if c.regularizer == "der-all"]
    assert {c.trainer for c in ablation} == {"fgsm"}  # the AAE ablation runs with FGSM only
    assert ablation[0].config.regularizer == "der" and ablation[0].config.regularizer_params["aae"] == "never"
    assert ablation[0].pending and ablation[0].config.data_root == "/data"  # nothing tuned yet
    assert {c.eps for c in cells} == {0.2, 0.25, 0.3} and {c.seed for c in cells} == {0, 1, 2}
    assert cells[0].config.n_train == 8000 and cells[0].config.eval.aa_points == 100  # suite settings over the track
    assert cells[0].config.eval.pgd_steps == 20  # the track's, not overridden
    assert not any(c.pending for c in cells if c.regularizer == "none" and c.trainer != "n-fgsm")
    tuning = suite.tuning_cells(catalogue)
    assert {c.seed for c in tuning} == {100} and not any(c.config.eval.test for c in tuning)
    der = [c for c in tuning if c.trainer == "rs-fgsm" and c.regularizer == "der" and c.eps == 0.3]
    assert [c.config.regularizer_params["beta"] for c in der] == [3.0, 10.0, 30.0]
    nfgsm = [c for c in tuning if c.trainer == "n-fgsm" and c.eps == 0.3]
    assert [c.tuned for c in nfgsm] == [{"k": 1.0}, {"k": 2.0}, {"k": 3.0}, {}]  # the last: the guard's reference
    assert nfgsm[1].config_hash == nfgsm[3].config_hash  # the reference is the default candidate: run once
    ro = load_suite(catalogue, "ro-fmnist").cells(catalogue)
    trades = [c for c in ro if c.trainer == "trades"][0]
    assert trades.config.trainer_params["steps"] == 5 and trades.config.schedule.kind == "step"
    cifar = load_suite(catalogue, "co-cifar10").cells(catalogue)
    assert cifar[0].eps == pytest.approx(8 / 255) and cifar[0].resources.num_gpus == 1


@pytest.mark.parametrize("body, message", [
    ('trainers = ["fgsm"]\nbogus = 1', "unknown setting 'bogus'"),
    ('trainers = []', "trainers"),
    ('trainers = ["fgsm"]\nsettings = { eps = 0.2 }', "settings may not set eps"),
    ('trainers = ["fgsm", { plugin = "fgsm", label = "fgsm" }]', "repeated trainer labels: fgsm"),
    ('trainers = ["fgsm"]\neps = ["a lot"]', "eps 'a lot' is not a number"),
    ('trainers = ["fgsm"]\nregularizers = [{ plugin = "der", params = { beta = -1 } }]', "beta=-1"),
    ('trainers = ["fgsm"]\nregularizers = [{ plugin = "der", tune = { beta = [1, 2] } }]', "needs a [tuning] table"),
    ('trainers = [{ plugin = "n-fgsm", tune = { k = [1, 2] } }]\nregularizers = [{ plugin = "der", tune = '
     '{ beta = [1, 2, 3] } }]\ntuning = {}', "the same number of candidates (the same budget); got n-fgsm 2, der 3"),
    ('trainers = ["fgsm"]\nregularizers = [{ plugin = "der", tune = { beta = [1] } }]\ntuning = { seeds = [0] }',
     "tuning seeds must differ from the evaluation seeds"),
    ('trainers = ["fgsm"]\nexclude = [{ trainer = "fgsm", regularizer = "der" }]', "exclude names fgsm + der"),
    ('trainers = ["standard"]\nregularizers = ["der"]', "needs adversarial examples"),
    ('trainers = ["fgsm"]\nregularizers = ["none", { plugin = "none", label = "nothing" }]', "same settings as cell"),
])
def test_a_malformed_suite_is_one_line_naming_it(tmp_path, capsys, body, message):
    catalogue = catalogue_with(tmp_path, f'[suites.bad]\ndescription = "x"\ntrack = "t"\n{body}\n')
    with pytest.raises(EnergybenchError, match="suite 'bad'") as info:
        load_suite(catalogue, "bad").cells(catalogue)
    assert message in str(info.value) and "\n" not in str(info.value)
    code, out, err = run_cli(capsys, "suite", "bad", "--dry-run", "--registry", str(tmp_path / "registry.toml"))
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1


def test_unknown_suite_and_track_are_named(tmp_path):
    catalogue = catalogue_with(tmp_path, '[suites.s]\ndescription = "x"\ntrack = "nope"\ntrainers = ["fgsm"]\n')
    with pytest.raises(EnergybenchError, match="suite 's' is malformed: unknown track 'nope'"):
        load_suite(catalogue, "s")
    with pytest.raises(EnergybenchError, match="unknown suite 'z'.*known: s"):
        load_suite(catalogue, "z")


def test_training_passes_are_measured_per_trainer_and_regularizer():
    catalogue = load_catalogue()
    cells = {(c.trainer, c.regularizer): c.config for c in load_suite(catalogue, "co-fmnist").cells(catalogue)}

    def passes(trainer, regularizer):
        return _step_passes(_passes_key(cells[(trainer, regularizer)]))

    assert passes("fgsm", "none") == 2 and passes("fgsm", "der") == 2  # DER reuses FGSM's clean logits
    assert passes("rs-fgsm", "der") == 3  # RS-FGSM keeps no clean logits: one more forward
    assert passes("rs-fgsm", "aaer") == 2  # AAER reuses the attack's own passes
    assert passes("fgsm", "gradalign") == 4  # GradAlign's two forward passes of its own
    config = cells[("fgsm", "none")]
    no_aa = config.model_copy(update={"eval": config.eval.model_copy(update={"aa_points": 0})})
    assert estimate_passes(config) - estimate_passes(no_aa) == 2 * 100 * AA_PASSES_PER_POINT  # best and last
    training, validation = (8000 // 128) * 128 * 3 * 2, 3 * 500 * (10 + 2)
    assert estimate_passes(no_aa) == training + validation + 2 * 1000 * (20 + 1)
    tuning = config.model_copy(update={"eval": config.eval.model_copy(update={"test": False})})
    assert estimate_passes(tuning) == training + validation  # a tuning run never evaluates on the test set


class _Flaky(Trainer):
    """A trainer that raises while ``broken`` is set."""

    adversarial = False
    broken = True

    def step(self, model, x, y, *, keep_clean_logits):
        if type(self).broken:
            raise ValueError("flaky on purpose")
        logits = model(x)
        return TrainOutput(loss=torch.nn.functional.cross_entropy(logits, y), logits=logits)


def test_a_failing_cell_is_recorded_and_only_it_is_retried(tmp_path, monkeypatch, scoped_registry):
    reg.get_registry().register("trainer", "flaky", _Flaky)
    catalogue = catalogue_with(tmp_path, '[suites.s]\ndescription = "x"\ntrack = "t"\ntrainers = ["fgsm", "flaky"]\n')
    cells = load_suite(catalogue, "s").cells(catalogue)
    store = Store(tmp_path / "store")
    seen = []
    outcomes = LocalExecutor().run(pending(store, cells), store, suite="s", on_done=seen.append)
    assert [(o.cell.trainer, o.status) for o in outcomes] == [("fgsm", "done"), ("flaky", "failed")]
    assert seen == outcomes
    failed = store.get_run(outcomes[1].run_id)
    assert failed.status == "failed" and "flaky on purpose" in failed.error and failed.suite == "s"
    assert [c.trainer for c in pending(store, cells)] == ["flaky"]

    monkeypatch.setattr(_Flaky, "broken", False)  # restored after the test, whatever happens
    again = LocalExecutor().run(pending(store, cells), store, suite="s")
    assert [(o.cell.trainer, o.status) for o in again] == [("flaky", "done")]
    assert pending(store, cells) == []
    assert len(store.runs(status=None, trainer="fgsm")) == 1 and len(store.runs(status=None, trainer="flaky")) == 2


def test_a_cell_failing_before_its_run_is_stored_is_recorded_too(tmp_path):
    catalogue = catalogue_with(tmp_path, '[suites.s]\ndescription = "x"\ntrack = "t"\ntrainers = ["fgsm"]\n')
    cells = load_suite(catalogue, "s").cells(catalogue, device="cuda:99")
    store = Store(tmp_path / "store")
    (outcome,) = LocalExecutor().run(cells, store, suite="s")
    assert outcome.status == "failed" and "cuda:99" in outcome.error
    assert store.get_run(outcome.run_id).error == outcome.error and pending(store, cells) == cells


def _fake_run(store, cell, status="done", wall_time=10.0, **results):
    run_id = store.create_run(cell.config.model_dump(), cell.config_hash, suite="tiny")
    for checkpoint in ("best", "last"):
        store.add_results(run_id, checkpoint, {k: v[checkpoint == "last"] if isinstance(v, tuple) else v
                                               for k, v in results.items()})
    store.set_status(run_id, status, wall_time=wall_time, error="boom" if status == "failed" else None)
    return run_id


def test_the_dry_run_lists_cells_status_and_estimated_cost(tmp_path, capsys):
    catalogue = load_catalogue()
    cells = load_suite(catalogue, "tiny").cells(catalogue)
    store = Store(tmp_path / "store")
    done = _fake_run(store, cells[0], wall_time=estimate_passes(cells[0].config) * 2e-6)  # 2 s per million passes
    _fake_run(store, cells[1], status="failed")
    code, out, _ = run_cli(capsys, "suite", "tiny", "--dry-run", "--store", str(tmp_path / "store"))
    assert code == 0
    assert f"done ({done})" in out and "failed: to run again" in out and out.count("│ to run ") == 2
    assert "evaluation: 4 cells, 1 done, 3 to run" in out and "speed learned from completed runs in the store" in out
    assert len(store.runs(status=None)) == 2  # nothing ran

    code, out, _ = run_cli(capsys, "suite", "co-fmnist", "--dry-run", "--store", str(tmp_path / "empty"))
    assert code == 0 and "evaluation: 90 cells, 0 done, 90 to run" in out and "n-fgsm" in out and "gradalign" in out
    assert "tuning: 78 cells, 0 done, 78 to run" in out and "after tuning" in out and "beta=30" in out
    assert "measured on" in out and "about ?" not in out


def test_the_dry_run_times_the_epochs_and_the_final_tests_apart(tmp_path):
    """AutoAttack's pass count is a rough guess; the time a completed run spent after its epochs corrects it."""
    catalogue = load_catalogue()
    cells = load_suite(catalogue, "tiny").cells(catalogue)
    timed = cells[0].config
    store = Store(tmp_path / "store")
    run_id = _fake_run(store, cells[0], wall_time=2e-6 * epoch_passes(timed) + 7e-6 * final_test_passes(timed))
    store.add_epoch(run_id, 0, {"epoch_time": 2e-6 * epoch_passes(timed)})
    planned = plan_suite(catalogue, "tiny", store).cells
    for cell, plan in zip(cells[1:], planned[1:]):
        assert (plan.regularizer, plan.seed, plan.status) == (cell.regularizer, cell.seed, "to run")
        assert plan.passes == epoch_passes(cell.config) + final_test_passes(cell.config) == estimate_passes(cell.config)
        assert plan.seconds == pytest.approx(2e-6 * epoch_passes(cell.config) + 7e-6 * final_test_passes(cell.config))

    # only a tuning run (no final tests) in the store: the final tests take the epochs' speed
    untested = Store(tmp_path / "untested")
    tuning = timed.model_copy(update={"eval": timed.eval.model_copy(update={"test": False})})
    run_id = untested.create_run(tuning.model_dump(), tuning.config_hash(), suite="tiny")
    untested.add_epoch(run_id, 0, {"epoch_time": 2e-6 * epoch_passes(tuning)})
    untested.set_status(run_id, "done", wall_time=2e-6 * epoch_passes(tuning) + 0.5)
    assert final_test_passes(tuning) == 0
    plan = plan_suite(catalogue, "tiny", untested).cells[0]
    assert plan.seconds == pytest.approx(2e-6 * estimate_passes(timed))


def test_the_suite_leaderboard_aggregates_seeds(tmp_path):
    catalogue = load_catalogue()
    cells = load_suite(catalogue, "tiny").cells(catalogue)  # fgsm x (none, der) x seeds 0, 1
    store = Store(tmp_path)
    _fake_run(store, cells[0], test_clean_acc=0.8, test_pgd_acc=(0.5, 0.4), test_aa_acc=0.3, co=1.0,
              train_dE_mean=0.5, passes_per_example=2.0, test_shared_pgd_robust=16.0, test_shared_aa_breaks=4.0)
    _fake_run(store, cells[1], test_clean_acc=0.9, test_pgd_acc=(0.5, 0.2), test_aa_acc=0.3, co=0.0,
              train_dE_mean=0.7, passes_per_example=2.0, wall_time=20.0, test_shared_pgd_robust=24.0,
              test_shared_aa_breaks=14.0, test_check_randomized=0.0)
    _fake_run(store, cells[2], test_clean_acc=0.7, test_pgd_acc=0.45, test_aa_acc=0.4, co=0.0, train_dE_mean=0.1,
              passes_per_example=2.0)
    _fake_run(store, cells[3], status="failed")
    groups = group_cells(store, cells)
    assert [(g.regularizer, len(g.rows), g.planned, g.failed) for g in groups] == [("none", 2, 2, 0), ("der", 1, 2, 1)]
    none = groups[0]
    assert none.mean("last", "test_pgd_acc") == pytest.approx(0.3)
    assert none.seeds.sd("last", "test_pgd_acc") == pytest.approx(statistics.stdev([0.4, 0.2]))  # sample SD
    from rich.console import Console

    console = Console(width=250, record=True, color_system=None)
    console.print(render_suite(groups, "Suite tiny"))
    text = console.export_text()
    none_line = next(line for line in text.splitlines() if "│ none" in line)
    der_line = next(line for line in text.splitlines() if "│ der" in line)
    for expected in ("2/2", "85.0±7.1 / 85.0±7.1", "50.0±0.0 / 30.0±14.1", "1/2", "+20.0", "0.60±0.14", "15s", "2.0",
                     "18/40 (45%)", "1/2 warn"):  # AutoAttack broke 14 of seed 1's 24: its masking warning
        assert expected in none_line, expected
    # two seeds: the t interval of the mean (12.7 standard errors each side) spans every accuracy
    assert none_line.count("[0.0, 100.0]") == 1
    # one seed: the run's Wilson interval on the suite's 40 test points (45%: 18 of 40 correct)
    low, high = scipy.stats.binomtest(18, 40).proportion_ci(method="wilson")
    for expected in ("1/2 (1 failed)", "70.0 / 70.0", "0/1", "+0.0", "0.10", f"[{100 * low:.1f}, {100 * high:.1f}]"):
        assert expected in der_line, expected


def test_tiny_suite_end_to_end_then_nothing_left_to_run(tmp_path, capsys):
    store = str(tmp_path / "store")
    shipped = default_catalogue_path().read_text()
    setting = "eval = { val_points = 40, test_points = 40, aa_points = 10 } }"
    assert shipped.count(setting) == 1  # the tiny suite's, as shipped; run here with AutoAttack on 2 points
    registry = tmp_path / "registry.toml"
    registry.write_text(shipped.replace(setting, setting.replace("aa_points = 10", "aa_points = 2")))
    code, out, err = run_cli(capsys, "suite", "tiny", "--store", store, "--registry", registry)
    assert code == 0, err
    assert "4 cells, 0 already done, 4 to run (local executor)" in err
    assert "[4/4] fgsm + der, eps 0.1, seed 1: done" in err
    assert "Suite tiny: digits, small-cnn, Linf" in out and "2/2" in out and "±" in out
    runs = Store(store).runs()
    assert len(runs) == 4 and {r.suite for r in runs} == {"tiny"}
    code, out, err = run_cli(capsys, "suite", "tiny", "--store", store, "--registry", registry)
    assert code == 0 and "4 already done, 0 to run" in err and "Suite tiny" in out
    assert len(Store(store).runs(status=None)) == 4
    code, _, err = run_cli(capsys, "suite", "tiny", "--ray-address", "x:1", "--store", store, "--registry", registry)
    assert code == 2 and "--ray-address needs --executor ray" in err


def test_a_dataset_the_cells_cannot_read_is_one_error_before_any_cell_runs(tmp_path, capsys):
    registry = tmp_path / "registry.toml"
    registry.write_text(TRACK.replace('dataset = "digits"', 'dataset = "mnist"')
                        + '[suites.s]\ndescription = "x"\ntrack = "t"\ntrainers = ["fgsm", "rs-fgsm"]\n')
    empty, store = tmp_path / "no-data", tmp_path / "store"
    empty.mkdir()
    code, _, err = run_cli(capsys, "suite", "s", "--data-root", empty, "--store", store, "--registry", registry)
    assert code == 2 and "Traceback" not in err
    (line,) = err.strip().splitlines()
    assert line.startswith("energybench: error: dataset 'mnist' not found") and str(empty) in line
    assert Store(store).runs(status=None) == []  # no cell ran, none is recorded as failed


def killed_cell(tmp_path):
    """A one-cell suite whose run was killed after its first epoch: (cell, store, run left 'running')."""
    catalogue = catalogue_with(tmp_path, '[suites.two]\ndescription = "x"\ntrack = "t"\ntrainers = ["fgsm"]\n'
                                         'settings = { epochs = 2 }\n')
    (cell,) = load_suite(catalogue, "two").cells(catalogue)
    store = Store(tmp_path / "store")
    with pytest.raises(KeyboardInterrupt):
        LocalExecutor(reporter=StopAfterFirstEpoch).run([cell], store, suite="two")
    (killed,) = store.runs(status=None)
    store.set_status(killed.id, "running")  # what a SIGKILL leaves behind
    return cell, store, killed


def test_rerunning_a_suite_resumes_a_killed_cell_after_its_last_epoch(tmp_path):
    cell, store, killed = killed_cell(tmp_path)
    (first,) = store.epochs(killed.id)
    store.add_epoch(killed.id, 0, first | {"epoch_time": 1000.0})  # a long first epoch, then the kill
    (outcome,) = LocalExecutor().run(pending(store, [cell]), store, suite="two")
    assert outcome.run_id == killed.id and outcome.status == "done"
    assert outcome.wall_time > 1000.0  # the killed attempt's time is counted, not only the resumed part's
    assert [e["epoch"] for e in store.epochs(killed.id)] == [0, 1]
    lines = (store.run_dir(killed.id) / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1]  # no epoch twice after the resume


def test_the_dry_run_counts_only_the_epochs_the_executor_will_resume(tmp_path, capsys):
    cell, store, killed = killed_cell(tmp_path)  # 1 of 2 epochs kept in the store, where the local executor resumes
    catalogue = load_catalogue(tmp_path / "registry.toml")
    (local,) = plan_suite(catalogue, "two", store).cells
    assert (local.status, local.kept_epochs, local.run) == ("running: resumes after epoch 1/2", 1, killed.id)
    assert local.passes == estimate_passes(cell.config, 1) < estimate_passes(cell.config)
    (ray,) = plan_suite(catalogue, "two", store, executor=RayExecutor()).cells
    assert (ray.status, ray.kept_epochs) == ("running: to run again", 0)  # Ray cells resume only their scratch stores

    scratch = Store(store.home / "cells" / cell.config_hash)  # where a local Ray instance's cell keeps its run
    with pytest.raises(KeyboardInterrupt):
        LocalExecutor(reporter=StopAfterFirstEpoch).run([cell], scratch, suite="two")
    (ray,) = plan_suite(catalogue, "two", store, executor=RayExecutor()).cells
    assert (ray.status, ray.kept_epochs) == ("running: resumes after epoch 1/2", 1)
    (cluster,) = plan_suite(catalogue, "two", store, executor=RayExecutor("ray://head:10001")).cells
    assert cluster.kept_epochs == 0  # a cluster's workers keep no scratch store here
    code, out, _ = run_cli(capsys, "suite", "two", "--dry-run", "--executor", "ray", "--store", str(store.home),
                           "--registry", str(tmp_path / "registry.toml"))
    assert code == 0 and "resumes after epoch 1/2" in out and "1 cells, 0 done, 1 to run" in out


def test_a_cell_another_process_is_running_is_left_to_it(tmp_path):
    cell, store, held = killed_cell(tmp_path)
    claim = store.claim(held.id)  # as a live process running the cell holds it
    try:
        (outcome,) = LocalExecutor().run(pending(store, [cell]), store, suite="two")
    finally:
        claim.release()
    assert outcome.status == "in use" and outcome.run_id == held.id and "in use by another process" in outcome.error
    assert [(r.id, r.status) for r in store.runs(status=None)] == [(held.id, "running")]  # no failed run recorded


def test_ctrl_c_names_the_command_that_continues_the_suite(tmp_path, capsys, monkeypatch):
    def interrupted(self, cells, store, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(LocalExecutor, "run", interrupted)
    store = tmp_path / "store"
    code, _, err = run_cli(capsys, "suite", "tiny", "--store", str(store))
    assert code == 130 and "Traceback" not in err
    assert f"energybench: interrupted; continue with `energybench suite tiny --store {store}`" in err
    code, _, err = run_cli(capsys, "suite", "tiny", "--device", "cpu", "--data-root", "my data", "--store", str(store))
    assert code == 130  # the command repeats every option that says where and on what the cells run
    assert f"continue with `energybench suite tiny --data-root 'my data' --device cpu --store {store}`" in err


def test_sigterm_stops_a_suite_as_ctrl_c_does(tmp_path, capsys, monkeypatch):
    def terminated(self, cells, store, **kwargs):
        kwargs["on_epoch"](cells[0], 1)  # how a Ray executor reports a running cell's epochs
        os.kill(os.getpid(), signal.SIGTERM)  # as `kill`, `timeout` or a batch scheduler sends it
        time.sleep(30)

    monkeypatch.setattr(LocalExecutor, "run", terminated)
    before = signal.getsignal(signal.SIGTERM)
    store = tmp_path / "store"
    code, _, err = run_cli(capsys, "suite", "tiny", "--store", str(store))
    assert code == 143 and "Traceback" not in err
    assert f"energybench: terminated; continue with `energybench suite tiny --store {store}`" in err
    assert "    fgsm + none, eps 0.1, seed 0: epoch 1/1\n" in err
    assert signal.getsignal(signal.SIGTERM) is before  # the command's handler is gone with it


TUNED = '''[suites.s]
description = "x"
track = "t"
trainers = ["fgsm"]
regularizers = ["none", { plugin = "der", tune = { beta = [1.0, 3.0, 10.0] } }]
tuning = { seeds = [7] }
'''


def _validation_run(store, cell, pgd, clean, best_pgd=None, worst=None):
    """A finished tuning run: two epochs of validation metrics (the first may have the best PGD); the worst case of
    PGD and margin PGD is ``worst`` in the last epoch (default: PGD's, an unmasked model) and PGD's in the first."""
    run_id = store.create_run(cell.config.model_dump(), cell.config_hash, suite="s")
    first = best_pgd if best_pgd is not None else pgd / 2
    store.add_epoch(run_id, 0, {"val_pgd_acc": first, "val_worst_acc": first, "val_clean_acc": clean})
    store.add_epoch(run_id, 1, {"val_pgd_acc": pgd, "val_worst_acc": pgd if worst is None else worst,
                                "val_clean_acc": clean})
    store.set_status(run_id, "done")
    return run_id


def test_tuning_picks_the_best_validation_pgd_among_candidates_that_pass_the_guard(tmp_path):
    from energybench.suites.tuning import choose, chosen_values

    catalogue = catalogue_with(tmp_path, TUNED)
    suite = load_suite(catalogue, "s")
    tuning = suite.tuning_cells(catalogue)
    assert [(c.regularizer, c.tuned, c.seed) for c in tuning] == [
        ("der", {"beta": 1.0}, 7), ("der", {"beta": 3.0}, 7), ("der", {"beta": 10.0}, 7), ("none", {}, 7)]
    store = Store(tmp_path / "store")
    assert choose(store, suite, catalogue) == {}  # nothing ran yet: nothing chosen, the der cells wait
    assert all(c.pending for c in suite.cells(catalogue) if c.regularizer == "der")
    scores = {1.0: (0.20, 0.78, 0.60), 3.0: (0.30, 0.70, None), 10.0: (0.50, 0.30, None)}  # last PGD, clean, best
    runs = {}
    for cell in tuning[:3]:
        pgd, clean, best = scores[cell.tuned["beta"]]
        runs[cell.tuned["beta"]] = _validation_run(store, cell, pgd, clean, best)
    _validation_run(store, tuning[3], 0.05, 0.80)
    # a test result favouring beta 1 must change nothing: tuning reads validation metrics only
    store.add_results(runs[1.0], "last", {"test_pgd_acc": 0.99, "test_clean_acc": 0.99})
    (selection,) = choose(store, suite, catalogue).values()
    assert selection.values == {"beta": 3.0}  # beta 10 has the best PGD but fails the guard (0.30 < 0.8 * 0.80)
    assert [c.eligible for c in selection.candidates] == [True, True, False] and selection.guarded
    assert selection.reference_clean == pytest.approx(0.80)
    cells = suite.cells(catalogue, chosen=chosen_values(choose(store, suite, catalogue)))
    der = [c for c in cells if c.regularizer == "der"]
    assert der and all(not c.pending and c.config.regularizer_params["beta"] == 3.0 for c in der)
    assert der[0].label == "fgsm + der (beta=3)"

    best_epoch = catalogue_with(tmp_path, TUNED.replace("seeds = [7] }", 'seeds = [7], checkpoint = "best" }'))
    (selection,) = choose(store, load_suite(best_epoch, "s"), best_epoch).values()
    assert selection.values == {"beta": 1.0}  # ranked by each run's best epoch (0.60) instead of its last


def test_tuning_runs_measure_margin_pgd_and_rank_by_the_worst_case_so_a_masked_candidate_loses(tmp_path):
    """A candidate whose cross-entropy is saturated (gradient masking) keeps a high validation PGD accuracy that PGD on
    the CW margin loss breaks: ranked by the point-wise worst case it loses to an honest one; by PGD alone it won."""
    from energybench.suites.tuning import choose

    catalogue = catalogue_with(tmp_path, TUNED)
    suite = load_suite(catalogue, "s")
    tuning = suite.tuning_cells(catalogue)
    assert all(c.config.eval.val_margin and not c.config.eval.test for c in tuning)
    assert not any(c.config.eval.val_margin for c in suite.cells(catalogue))  # evaluation runs: the protocol's own
    store = Store(tmp_path / "store")
    # beta 10: PGD 0.50 but worst case 0.20 (margin PGD breaks most of what CE-PGD left); beta 3: 0.40 and 0.38
    for cell, (pgd, worst) in zip(tuning, [(0.30, 0.29), (0.40, 0.38), (0.50, 0.20)]):
        _validation_run(store, cell, pgd, 0.70, worst=worst)
    _validation_run(store, tuning[3], 0.10, 0.75)
    (selection,) = choose(store, suite, catalogue).values()
    assert selection.values == {"beta": 3.0}
    assert [round(c.robust, 2) for c in selection.candidates] == [0.29, 0.38, 0.20]
    (tmp_path / "pgd").mkdir()
    by_pgd = catalogue_with(tmp_path / "pgd", TUNED.replace("seeds = [7]", 'seeds = [7], measure = "pgd"'))
    assert not any(c.config.eval.val_margin for c in load_suite(by_pgd, "s").tuning_cells(by_pgd))


def test_when_no_candidate_passes_the_guard_the_most_accurate_is_taken_and_said(tmp_path):
    from rich.console import Console

    from energybench.reporting.suite_leaderboard import render_tuning
    from energybench.suites.tuning import choose, chosen_values

    catalogue = catalogue_with(tmp_path, TUNED)
    suite = load_suite(catalogue, "s")
    tuning = suite.tuning_cells(catalogue)
    store = Store(tmp_path / "store")
    runs = [_validation_run(store, cell, pgd, clean)
            for cell, (pgd, clean) in zip(tuning, [(0.4, 0.2), (0.5, 0.3), (0.6, 0.1), (0.1, 0.9)])]
    selections = choose(store, suite, catalogue)
    (selection,) = selections.values()
    assert selection.values == {"beta": 3.0} and not selection.guarded
    assert "no candidate passed the clean-accuracy guard" in selection.describe()
    assert selection.reference_runs == [runs[3]]  # fgsm + none on tuning seed 7: the guard's reference

    # the suite leaderboard marks the value that failed the guard; the tuning table names the reference run
    cells = suite.cells(catalogue, chosen=chosen_values(selections))
    for cell in cells:
        _fake_run(store, cell, test_clean_acc=0.8, test_pgd_acc=0.4, test_aa_acc=0.3, co=0.0)
    def text(table) -> list[str]:
        console = Console(width=300, record=True, color_system=None)
        console.print(table)
        return console.export_text().splitlines()

    board = text(render_suite(group_cells(store, cells, selections), "Suite s"))
    assert "beta=3 (failed guard)" in next(line for line in board if "│ der " in line)
    assert "failed guard" not in next(line for line in board if "│ none " in line)
    chosen_row = next(line for line in text(render_tuning(selections, suite.spec.tuning)) if "<-" in line)
    assert "beta=3" in chosen_row and runs[3] in chosen_row and "<- (failed guard)" in chosen_row


def test_a_diverged_run_finishes_its_cell_is_never_chosen_and_is_counted(tmp_path):
    """A run whose training loss became non-finite is the method's outcome: the executor does not retry it, tuning
    never chooses its candidate (the others still compete) and the boards say 'diverged'."""
    from rich.console import Console

    from energybench.reporting.suite_leaderboard import render_tuning
    from energybench.suites.tuning import choose, chosen_values

    catalogue = catalogue_with(tmp_path, TUNED.replace('track = "t"', 'track = "t"\nsettings = { lr = 1e30 }', 1)
                               .replace("beta = [1.0, 3.0, 10.0]", "beta = [1.0]"))
    suite = load_suite(catalogue, "s")
    store = Store(tmp_path / "store")
    (diverging,) = [c for c in suite.tuning_cells(catalogue) if c.regularizer == "der"]
    (outcome,) = LocalExecutor().run([diverging], store, suite="s")
    assert outcome.status == "diverged" and "training loss became nan" in outcome.error
    assert pending(store, [diverging]) == []  # finished: a re-run skips it
    assert LocalExecutor().run(pending(store, [diverging]), store, suite="s") == []

    catalogue = catalogue_with(tmp_path, TUNED)
    suite = load_suite(catalogue, "s")
    tuning = suite.tuning_cells(catalogue)
    for cell, (pgd, clean) in zip(tuning, [(0.30, 0.70), (0.50, 0.70), (0.20, 0.70), (0.10, 0.75)]):
        run_id = _validation_run(store, cell, pgd, clean)
        if cell.tuned == {"beta": 3.0}:  # the best validation scores, but its training diverged afterwards
            store.set_status(run_id, "diverged", error="training loss became nan in epoch 3")
    assert pending(store, tuning) == []
    selections = choose(store, suite, catalogue)
    (selection,) = selections.values()
    assert selection.values == {"beta": 1.0} and selection.guarded
    assert [(c.diverged, c.eligible) for c in selection.candidates] == [(False, True), (True, False), (False, True)]

    def text(table) -> str:
        console = Console(width=300, record=True, color_system=None)
        console.print(table)
        return console.export_text()

    row = next(line for line in text(render_tuning(selections, suite.spec.tuning)).splitlines() if "beta=3 " in line)
    assert [cell.strip() for cell in row.split("│")][5:7] == ["diverged", "-"] and "<-" not in row
    cells = [c for c in suite.cells(catalogue, chosen=chosen_values(selections)) if c.regularizer == "der"]
    _fake_run(store, cells[0], status="diverged")
    for cell in cells[1:]:
        _fake_run(store, cell, test_clean_acc=0.8, test_pgd_acc=0.4, test_aa_acc=0.3, co=0.0)
    board = text(render_suite(group_cells(store, cells, selections), "Suite s"))
    assert f"{len(cells) - 1}/{len(cells)} (1 diverged)" in board


def test_a_tuned_suite_runs_both_stages_end_to_end_without_touching_the_test_split(tmp_path, capsys, monkeypatch):
    from energybench.training import run as lifecycle

    registry = tmp_path / "registry.toml"
    catalogue_with(tmp_path, TUNED.replace("beta = [1.0, 3.0, 10.0]", "beta = [0.5, 2.0]"))
    evaluated = []
    original = lifecycle.evaluate_checkpoints
    monkeypatch.setattr(lifecycle, "evaluate_checkpoints",
                        lambda run: evaluated.append(run.config.seed) or original(run))
    store = str(tmp_path / "store")
    code, out, err = run_cli(capsys, "suite", "s", "--registry", str(registry), "--store", store)
    assert code == 0, err
    assert "tuning stage: 3 cells, 0 already done, 3 to run" in err and "evaluation stage: 2 cells" in err
    assert evaluated == [0, 0]  # the test split is read by the two evaluation runs only, never while tuning
    assert "Tuning stage" in out and "beta=0.5" in out and "beta=2" in out
    tuned = [r for r in Store(store).runs() if r.seed == 7]
    assert len(tuned) == 3 and all(Store(store).results(r.id) == {} for r in tuned)
    code, out, _ = run_cli(capsys, "leaderboard", "--dataset", "digits", "--store", store)
    assert code == 0 and out.count("│ fgsm") == 2  # the tuning runs are not on the leaderboard
    code, _, err = run_cli(capsys, "suite", "s", "--registry", str(registry), "--store", store)
    assert code == 0 and "3 already done, 0 to run" in err and "2 already done, 0 to run" in err
