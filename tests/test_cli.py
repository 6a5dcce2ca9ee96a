"""The command line: the main command end to end, listings, and one-line errors."""

from __future__ import annotations

import pytest
from datafiles import run_cli

from energybench.storage.store import Store


def test_run_prints_the_leaderboard_and_leaderboard_reprints_it(capsys, tmp_path):
    store = str(tmp_path / "store")
    code, out, err = run_cli(capsys, "run", "--track", "digits-tiny", "--reg", "der", "-R", "beta=2.5", "-R",
                             "gamma=0.1", "--aa-points", "2", "--n-train", "512", "--store", store)
    assert code == 0, err
    (record,) = Store(store).runs()
    assert (record.trainer, record.regularizer, record.track) == ("fgsm", "der", "digits-tiny")
    assert record.config["regularizer_params"] == {"form": "hinge", "beta": 2.5, "gamma": 0.1, "aae": "auto"}
    config = record.config
    assert config["eval"]["aa_points"] == 2 and config["epochs"] == 2 and config["n_train"] == 512
    results = Store(store).results(record.id)
    assert set(results) == {"best", "last"} and results["last"]["test_aa_points"] == 2
    for metric in ("test_clean_acc", "test_pgd_acc", "test_aa_acc"):
        assert 0 <= results["last"][metric] <= 1
    assert "Leaderboard: digits, Linf eps 0.1" in out and record.id in out
    row = next(line for line in out.splitlines() if record.id in line)
    clean = results["best"]["test_clean_acc"], results["last"]["test_clean_acc"]
    assert "│ fgsm + der (never acted) │ small-cnn │" in row and f"{100 * clean[0]:.1f}/{100 * clean[1]:.1f}" in row
    assert "energybench run --track cifar10-co" in out
    assert "epoch 2:" in err and "PGD" in err
    code, out, _ = run_cli(capsys, "leaderboard", "--dataset", "digits", "--eps", "0.1", "--store", store)
    again = next(line for line in out.splitlines() if record.id in line)
    assert code == 0 and "│ fgsm + der " in again and f"{100 * clean[0]:.1f}/{100 * clean[1]:.1f}" in again
    code, _, err = run_cli(capsys, "leaderboard", "--dataset", "cifar10", "--store", store)
    assert code == 2 and "no completed runs match" in err


def test_run_with_a_der_ablation_stores_its_form_and_terms(capsys, tmp_path):
    store = str(tmp_path / "store")
    code, _, err = run_cli(capsys, "run", "--track", "digits-tiny", "--reg", "der", "-R", "terms=joint",
                           "--store", store)
    assert code == 2 and "terms does not apply to form='hinge'" in err and err.count("\n") == 1
    assert Store(store).runs(status=None) == []  # refused before anything was stored
    code, out, err = run_cli(capsys, "run", "--track", "digits-tiny", "--reg", "der", "-R", "form=squared", "-R",
                             "terms=joint", "-R", "lambda=2", "--epochs", "1", "--n-train", "256", "--aa-points", "0",
                             "--store", store)
    assert code == 0, err
    (record,) = Store(store).runs()
    assert (record.status, record.trainer, record.regularizer) == ("done", "fgsm", "der")
    assert record.config["regularizer_params"] == {"form": "squared", "terms": "joint", "lambda": 2.0,
                                                   "huber_delta": 1.0}
    config = record.config
    assert config["epochs"] == 1 and config["n_train"] == 256 and config["eval"]["aa_points"] == 0
    results = Store(store).results(record.id)["last"]
    assert "test_aa_acc" not in results and 0 <= results["test_pgd_acc"] <= results["test_clean_acc"] + 0.2
    assert results["passes_per_example"] == pytest.approx(2.0)  # FGSM's clean logits serve DER too
    code, out, _ = run_cli(capsys, "leaderboard", "--format", "markdown", "--store", store)
    row = next(line for line in out.splitlines() if record.id in line)
    assert code == 0 and "| fgsm + der [squared joint dE, lambda 2] |" in row  # labelled as the ablation it is


def test_plugins_lists_every_kind_with_source_and_hyper_parameters(capsys):
    code, out, _ = run_cli(capsys, "plugins")
    assert code == 0
    for text in ("attacks", "trainers", "regularizers", "samplers", "models", "der", "lambda=1.0",
                 "energybench 0.1.0", "autoattack", "steps=10", "datasets", "cifar10-jpeg", "width=64"):
        assert text in out, text
    code, out, _ = run_cli(capsys, "plugins", "--kind", "dataset")
    assert code == 0 and "10 classes, 3x32x32, 50000/10000 train/test" in out and "trainers" not in out


def test_tracks_lists_the_catalogue(capsys):
    code, out, _ = run_cli(capsys, "tracks")
    assert code == 0 and "fmnist-co (default)" in out and "cifar10-co" in out and "8/255" in out


@pytest.mark.parametrize("argv,message", [
    (["run", "--trainer", "fgms"], "unknown trainer 'fgms'; did you mean 'fgsm'?"),
    (["run", "--track", "fmnist"], "unknown track 'fmnist'; did you mean"),
    (["run", "--eps", "-0.1"], "eps=-0.1 is outside (0, 1)"),
    (["run", "--reg", "der", "-R", "lambda=big"], "invalid hyper-parameters for regularizer 'der'"),
    (["run", "--trainer-opt", "steps"], "--trainer-opt expects KEY=VALUE"),
    (["run", "--dataset", "cifar10", "--model", "preact-resnet18"], "dataset 'cifar10' not found"),
    (["run", "--dataset", "cifar10-jpeg", "--model", "small-cnn"], "dataset 'cifar10-jpeg' not found"),
    (["run", "--dataset", "cifar", "--model", "small-cnn"], "or give the path of an image folder"),
    (["run", "--nonsense"], "No such option '--nonsense'"),
])
def test_bad_input_is_one_line_exit_2(capsys, tmp_path, argv, message):
    code, out, err = run_cli(capsys, *argv, "--store", str(tmp_path / "s"))
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_a_piped_table_keeps_every_row_on_one_line(capsys, tmp_path):
    """Piped into a file, the leaderboard is as wide as it needs: no cell is wrapped onto a second line, however
    long a method's name (rich alone would squeeze the table into 80 columns)."""
    from energybench.config import RunConfig

    store = Store(tmp_path)
    config = RunConfig(dataset="digits", trainer="external", model="a-rather-long-architecture-name", eps=0.1,
                       name="a model with a long descriptive name, as researchers give them")
    run_id = store.create_run(config.model_dump(), config.config_hash())
    store.add_results(run_id, "last", {"test_clean_acc": 0.9, "test_pgd_acc": 0.5, "test_points": 360.0})
    store.set_status(run_id, "done", wall_time=1.0)
    code, out, _ = run_cli(capsys, "leaderboard", "--store", tmp_path)
    (row,) = [line for line in out.splitlines() if line.startswith("│")]
    assert code == 0 and run_id in row and "a model with a long descriptive name, as researchers give them" in row
