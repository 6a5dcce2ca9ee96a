"""Suites: definition and validation, expansion into cells, skip-if-done, retries, dry run, leaderboard."""

from __future__ import annotations

import json

import pytest
import torch

from energybench.contracts import registry as reg
from energybench.cli import main
from energybench.config import load_catalogue
from energybench.contracts.trainer import Trainer, TrainOutput
from energybench.errors import EnergybenchError
from energybench.reporting.suite_leaderboard import group_cells, render_suite
from energybench.storage.store import Store
from energybench.suites.executors import LocalExecutor
from energybench.suites.spec import AA_PASSES_PER_POINT, _passes_key, _step_passes, estimate_passes, load_suite, pending

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


def run_cli(capsys, *argv):
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_shipped_suites_expand_into_prepared_cells():
    catalogue = load_catalogue()
    sizes = {name: len(load_suite(catalogue, name).cells(catalogue)) for name in catalogue.suites}
    assert sizes == {"tiny": 4, "co-fmnist": 108, "ro-fmnist": 12, "co-cifar10": 180, "ro-cifar10": 6}
    cells = load_suite(catalogue, "co-fmnist").cells(catalogue, data_root="/data", device="cpu")
    joint = [c for c in cells if c.regularizer == "der-j10"][0]
    assert joint.config.regularizer == "der" and joint.config.regularizer_params["terms"] == "joint"
    assert joint.config.regularizer_params["lambda"] == 10.0 and joint.config.data_root == "/data"
    assert {c.eps for c in cells} == {0.1, 0.2, 0.3} and {c.seed for c in cells} == {0, 1, 2}
    assert cells[0].config.n_train == 8000 and cells[0].config.eval.aa_points == 40  # suite settings over the track
    assert cells[0].config.eval.pgd_steps == 20  # the track's, not overridden
    ro = load_suite(catalogue, "ro-fmnist").cells(catalogue)
    trades = [c for c in ro if c.trainer == "trades"][0]
    assert trades.config.trainer_params["steps"] == 5 and trades.config.schedule.kind == "step"
    cifar = load_suite(catalogue, "co-cifar10").cells(catalogue)
    assert cifar[0].eps == pytest.approx(2 / 255) and cifar[0].resources.num_gpus == 1


@pytest.mark.parametrize("body, message", [
    ('trainers = ["fgsm"]\nbogus = 1', "unknown setting 'bogus'"),
    ('trainers = []', "trainers"),
    ('trainers = ["fgsm"]\nsettings = { eps = 0.2 }', "settings may not set eps"),
    ('trainers = ["fgsm", { plugin = "fgsm", label = "fgsm" }]', "repeated trainer labels: fgsm"),
    ('trainers = ["fgsm"]\neps = ["a lot"]', "eps 'a lot' is not a number"),
    ('trainers = ["fgsm"]\nregularizers = [{ plugin = "der", params = { lambda = -1 } }]', "lambda=-1"),
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

    assert passes("fgsm", "none") == 2 and passes("fgsm", "der-m1") == 2  # DER reuses FGSM's clean logits
    assert passes("rs-fgsm", "der-j10") == 3  # RS-FGSM keeps no clean logits: one more forward
    assert passes("fgsm", "gradalign") == 4  # GradAlign's two forward passes of its own
    config = cells[("fgsm", "none")]
    no_aa = config.model_copy(update={"eval": config.eval.model_copy(update={"aa_points": 0})})
    assert estimate_passes(config) - estimate_passes(no_aa) == 2 * 40 * AA_PASSES_PER_POINT  # best and last
    training, validation = (8000 // 128) * 128 * 3 * 2, 3 * 300 * (10 + 2)
    assert estimate_passes(no_aa) == training + validation + 2 * 500 * (20 + 1)


class _Flaky(Trainer):
    """A trainer that raises while ``broken`` is set."""

    adversarial = False
    broken = True

    def step(self, model, x, y, *, keep_clean_logits):
        if type(self).broken:
            raise ValueError("flaky on purpose")
        logits = model(x)
        return TrainOutput(loss=torch.nn.functional.cross_entropy(logits, y), logits=logits)


def test_a_failing_cell_is_recorded_and_only_it_is_retried(tmp_path, monkeypatch):
    monkeypatch.setattr(reg, "_REGISTRY", reg.Registry())
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

    _Flaky.broken = False
    try:
        again = LocalExecutor().run(pending(store, cells), store, suite="s")
    finally:
        _Flaky.broken = True
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
    assert "4 cells: 1 done, 3 to run" in out and "speed learned from completed runs in the store" in out
    assert len(store.runs(status=None)) == 2  # nothing ran

    code, out, _ = run_cli(capsys, "suite", "co-fmnist", "--dry-run", "--store", str(tmp_path / "empty"))
    assert code == 0 and "108 cells: 0 done, 108 to run" in out and "n-fgsm" in out and "gradalign" in out
    assert "measured on" in out and "about ?" not in out


def test_the_suite_leaderboard_aggregates_seeds(tmp_path):
    catalogue = load_catalogue()
    cells = load_suite(catalogue, "tiny").cells(catalogue)  # fgsm x (none, der) x seeds 0, 1
    store = Store(tmp_path)
    _fake_run(store, cells[0], test_clean_acc=0.8, test_pgd_acc=(0.5, 0.4), aa_acc=0.3, co=1.0, train_dE_mean=0.5,
              passes_per_example=2.0)
    _fake_run(store, cells[1], test_clean_acc=0.9, test_pgd_acc=(0.5, 0.2), aa_acc=0.3, co=0.0, train_dE_mean=0.7,
              passes_per_example=2.0, wall_time=20.0)
    _fake_run(store, cells[2], test_clean_acc=0.7, test_pgd_acc=0.45, aa_acc=0.4, co=0.0, train_dE_mean=0.1,
              passes_per_example=2.0)
    _fake_run(store, cells[3], status="failed")
    groups = group_cells(store, cells)
    assert [(g.regularizer, len(g.rows), g.planned, g.failed) for g in groups] == [("none", 2, 2, 0), ("der", 1, 2, 1)]
    none = groups[0]
    assert none.mean("last", "test_pgd_acc") == pytest.approx(0.3)
    assert none.seeds.sd("last", "test_pgd_acc") == pytest.approx(0.1)
    from rich.console import Console

    console = Console(width=250, record=True, color_system=None)
    console.print(render_suite(groups, "Suite tiny"))
    text = console.export_text()
    none_line = next(line for line in text.splitlines() if "│ none" in line)
    der_line = next(line for line in text.splitlines() if "│ der" in line)
    for expected in ("2/2", "85.0±5.0 / 85.0±5.0", "50.0±0.0 / 30.0±10.0", "1/2", "+20.0", "0.60±0.10", "15s", "2.0"):
        assert expected in none_line, expected
    for expected in ("1/2 (1 failed)", "70.0 / 70.0", "0/1", "+0.0", "0.10"):
        assert expected in der_line, expected


def test_tiny_suite_end_to_end_then_nothing_left_to_run(tmp_path, capsys):
    store = str(tmp_path / "store")
    code, out, err = run_cli(capsys, "suite", "tiny", "--store", store)
    assert code == 0, err
    assert "4 cells, 0 already done, 4 to run (local executor)" in err
    assert "[4/4] fgsm + der, eps 0.1, seed 1: done" in err
    assert "Suite tiny: digits, small-cnn, Linf" in out and "2/2" in out and "±" in out
    runs = Store(store).runs()
    assert len(runs) == 4 and {r.suite for r in runs} == {"tiny"}
    code, out, err = run_cli(capsys, "suite", "tiny", "--store", store)
    assert code == 0 and "4 already done, 0 to run" in err and "Suite tiny" in out
    assert len(Store(store).runs(status=None)) == 4
    code, _, err = run_cli(capsys, "suite", "tiny", "--ray-address", "x:1", "--store", store)
    assert code == 2 and "--ray-address needs --executor ray" in err


class _StopAfterFirstEpoch:
    """A reporter that interrupts the run once its first epoch is stored (like Ctrl-C or a kill)."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None

    def epoch_done(self, epoch, metrics):
        raise KeyboardInterrupt


def killed_cell(tmp_path):
    """A one-cell suite whose run was killed after its first epoch: (cell, store, run left 'running')."""
    catalogue = catalogue_with(tmp_path, '[suites.two]\ndescription = "x"\ntrack = "t"\ntrainers = ["fgsm"]\n'
                                         'settings = { epochs = 2 }\n')
    (cell,) = load_suite(catalogue, "two").cells(catalogue)
    store = Store(tmp_path / "store")
    with pytest.raises(KeyboardInterrupt):
        LocalExecutor(reporter=_StopAfterFirstEpoch).run([cell], store, suite="two")
    (killed,) = store.runs(status=None)
    store.set_status(killed.id, "running")  # what a SIGKILL leaves behind
    return cell, store, killed


def test_rerunning_a_suite_resumes_a_killed_cell_after_its_last_epoch(tmp_path):
    cell, store, killed = killed_cell(tmp_path)
    (outcome,) = LocalExecutor().run(pending(store, [cell]), store, suite="two")
    assert outcome.run_id == killed.id and outcome.status == "done"
    assert [e["epoch"] for e in store.epochs(killed.id)] == [0, 1]
    lines = (store.run_dir(killed.id) / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [0, 1]  # no epoch twice after the resume


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
    def interrupted(self, cells, store, *, suite, on_done):
        raise KeyboardInterrupt

    monkeypatch.setattr(LocalExecutor, "run", interrupted)
    store = tmp_path / "store"
    code, _, err = run_cli(capsys, "suite", "tiny", "--store", str(store))
    assert code == 130 and "Traceback" not in err
    assert f"energybench: interrupted; continue with `energybench suite tiny --store {store}`" in err
