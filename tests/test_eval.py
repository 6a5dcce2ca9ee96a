"""`energybench eval`: energybench runs and checkpoints, TorchScript and state-dict files, RobustBench names."""

from __future__ import annotations

import json
import shutil
import sys

import pytest
import torch
from datafiles import run_cli, stored_run, trained_digits_run

import energybench
from energybench import Reporter
from energybench.data.datasets import load_dataset
from energybench.errors import EnergybenchError
from energybench.storage.store import Store
from energybench.storage.trained import load_trained

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")


@pytest.fixture(scope="module")
def base_store(tmp_path_factory):
    """One tiny digits run (1 epoch on 512 points), evaluated on 60 test points with AutoAttack on 8."""
    home = tmp_path_factory.mktemp("store")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENERGYBENCH_OFFLINE", "1")
        run_id = trained_digits_run(home, epochs=1, n_train=512,
                                    eval={"aa_points": 8, "val_points": 60, "test_points": 60})
    return home, run_id


@pytest.fixture
def trained(base_store, tmp_path):
    """A private copy of the base store, so that no test sees the runs another one stored; (home, run id)."""
    home = tmp_path / "store"
    shutil.copytree(base_store[0], home)
    return home, base_store[1]


def clean_accuracy(model, n: int, dataset: str = "digits", data_root=None) -> float:
    test = load_dataset(dataset, data_root=data_root, val_size=1).test
    with torch.no_grad():
        return float((model(test.x[:n].float() / 255).argmax(1) == test.y[:n]).float().mean())


def test_eval_of_a_run_repeats_its_test_evaluation_and_joins_the_leaderboard(capsys, trained):
    home, run_id = trained
    code, out, err = run_cli(capsys, "eval", run_id, "--aa-points", 8, "--test-points", 60, "--store", home)
    assert code == 0, err
    new_id = stored_run(out)
    store = Store(home)
    record = store.get_run(new_id)
    assert (record.status, record.trainer, record.model, record.track) == ("done", "external", "small-cnn",
                                                                          "digits-tiny")
    assert record.config["trainer_params"] == {"kind": "run", "run": run_id, "checkpoint": "best",
                                               "trainer": "fgsm", "regularizer": "none"}
    original, evaluated = store.results(run_id)["best"], store.results(new_id)
    assert evaluated["best"] == evaluated["last"]
    # Same weights, seed and protocol: clean and AutoAttack (seeded) repeat exactly; PGD has a random start.
    assert evaluated["last"]["test_clean_acc"] == original["test_clean_acc"]
    assert evaluated["last"]["test_aa_acc"] == original["test_aa_acc"] and evaluated["last"]["test_aa_points"] == 8
    assert abs(evaluated["last"]["test_pgd_acc"] - original["test_pgd_acc"]) <= 0.1
    for metric in ("test_fgsm_acc", "test_dE_mean", "test_energy_q50", "test_energy_adv_q95"):
        assert metric in evaluated["last"], metric
    assert {k for k in evaluated["last"] if k.startswith("test_aa_")} == {k for k in original
                                                                          if k.startswith("test_aa_")}
    for check in ("test_check_randomized", "test_check_probability_outputs", "test_check_zero_grad_frac"):  # the same
        assert evaluated["last"][check] == original[check], check
    code, out, _ = run_cli(capsys, "leaderboard", "--format", "json", "--trainer", "external", "--store", home)
    assert code == 0
    assert [row["id"] for row in json.loads(out)["measured"]] == [new_id]


def test_an_evaluations_stored_config_holds_what_applies_to_it_and_keeps_its_hash(trained):
    """An external evaluation stores its source, setting and test protocol, none of the training settings (epochs,
    lr, schedule, validation, monitor...); its config hash is still computed from what it stores."""
    from energybench.config import RunConfig
    from energybench.evaluation.external import EVALUATION_FIELDS

    home, _ = trained
    result = energybench.evaluate(linear_digits_model(), dataset="digits", test_points=20, aa_points=0, store=home,
                                  progress=False)
    record = Store(home).get_run(result.id)
    stored = json.loads((Store(home).run_dir(result.id) / "config.json").read_text())
    assert stored == record.config and set(stored) <= set(EVALUATION_FIELDS)
    assert not {"epochs", "lr", "batch_size", "schedule", "monitor", "fast", "val_size", "n_train"} & set(stored)
    assert set(stored["eval"]) == {"test_points", "pgd_steps", "pgd_restarts", "aa_points", "aa_version",
                                   "batch_size"}
    assert record.config_hash == RunConfig(**stored).config_hash()


def test_eval_of_torchscript_and_state_dict_files(capsys, trained, tmp_path):
    home, run_id = trained
    model = load_trained(run_id, Store(home)).model
    expected = clean_accuracy(model, 60)
    script = tmp_path / "scripted.pt"
    torch.jit.script(model).save(str(script))
    code, out, err = run_cli(capsys, "eval", script, "--dataset", "digits", "--eps", "0.1", "--aa-points", 0,
                             "--test-points", 60, "--store", home)
    assert code == 0, err
    record = Store(home).get_run(stored_run(out))
    assert record.model == "torchscript:scripted.pt" and record.config["trainer_params"]["kind"] == "torchscript"
    assert len(record.config["trainer_params"]["sha256"]) == 16
    assert Store(home).results(record.id)["last"]["test_clean_acc"] == pytest.approx(expected)

    weights = tmp_path / "weights.pth"  # a bare state dict: no config.json beside it
    torch.save(model.state_dict(), weights)
    code, _, err = run_cli(capsys, "eval", weights, "--dataset", "digits", "--store", home)
    assert code == 2 and "give --dataset and --arch" in err
    code, out, err = run_cli(capsys, "eval", weights, "--dataset", "digits", "--arch", "small-cnn", "--aa-points", 0,
                             "--test-points", 60, "--store", home)
    assert code == 0, err
    record = Store(home).get_run(stored_run(out))
    assert record.model == "small-cnn" and record.config["trainer_params"]["kind"] == "checkpoint"
    assert record.eps == 0.1 and record.track == "digits-tiny"  # the first track on digits gives the protocol
    assert Store(home).results(record.id)["last"]["test_clean_acc"] == pytest.approx(expected)


def test_eval_refuses_bad_input_in_one_line(capsys, trained, tmp_path):
    home, run_id = trained
    code, _, err = run_cli(capsys, "eval", run_id, "--eps", "8/0", "--store", home)
    assert code == 2 and "eps '8/0' is not a number or a fraction like 8/255" in err
    code, _, err = run_cli(capsys, "eval", run_id, "--norm", "L2", "--store", home)
    assert code == 2 and "track 'digits-tiny' gives an eps for Linf, not L2: pass --eps" in err
    code, _, err = run_cli(capsys, "eval", run_id, "--track", "fmnist-co", "--store", home)
    assert code == 2 and "track 'fmnist-co' is on 'fashion-mnist'" in err
    wrong = tmp_path / "three_classes.pt"
    torch.jit.script(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3))).save(str(wrong))
    stored = Store(home).runs(status=None)
    code, _, err = run_cli(capsys, "eval", wrong, "--dataset", "digits", "--store", home)
    assert code == 2 and "returns (2, 3) for 2 digits images; expected logits of shape (2, 10)" in err
    assert "Traceback" not in err and err.strip().splitlines()[-1].startswith("energybench: error: model torchscript")
    assert Store(home).runs(status=None) == stored  # a refused model stores nothing


@pytest.mark.parametrize("kind", ["checkpoint", "torchscript"])
def test_re_evaluating_a_file_whose_contents_changed_is_refused(capsys, trained, tmp_path, kind):
    home, run_id = trained
    model = load_trained(run_id, Store(home)).model
    path = tmp_path / ("weights.pth" if kind == "checkpoint" else "scripted.pt")

    def write(net) -> None:
        torch.jit.script(net).save(str(path)) if kind == "torchscript" else torch.save(net.state_dict(), path)

    write(model)
    extra = ["--model", "small-cnn"] if kind == "checkpoint" else []
    code, out, err = run_cli(capsys, "eval", path, "--dataset", "digits", *extra, "--aa-points", 0,
                             "--test-points", 20, "--store", home)
    assert code == 0, err
    first = stored_run(out)
    code, out, err = run_cli(capsys, "eval", first, "--aa-points", 0, "--test-points", 20, "--store", home)
    assert code == 0, err  # the same bytes under the same protocol: the result is the first run's
    assert stored_run(out) == first and f"run {first} already holds this result" in " ".join(err.split())
    with torch.no_grad():
        next(model.parameters()).add_(0.5)
    write(model)  # same file name, other weights
    runs_before = len(Store(home).runs(status=None))
    code, _, err = run_cli(capsys, "eval", first, "--aa-points", 0, "--test-points", 20, "--store", home)
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert f"{path} changed since run {first} evaluated it" in err and f"energybench eval {path}" in err
    assert len(Store(home).runs(status=None)) == runs_before  # refused before anything was stored
    path.unlink()
    code, _, err = run_cli(capsys, "eval", first, "--store", home)
    assert code == 2 and f"{path}, which run {first} evaluated, no longer exists" in err


TINY_CIFAR_REGISTRY = """
default_track = "cifar-tiny"

[tracks.cifar-tiny]
description = "CIFAR-10 protocol shrunk for a test"
dataset = "cifar10"
model = "preact-resnet18"
eps = "8/255"
eval = { test_points = 8, pgd_steps = 2, aa_points = 0, batch_size = 8, val_points = 8 }
"""


def test_robustbench_model_loads_offline_from_a_local_checkpoint_file(capsys, tmp_path, cifar10_root):
    from energybench.evaluation.robustbench_compat import import_robustbench

    rb = import_robustbench()  # robustbench 1.1.1 imports `autoattack`: pyautoattack stands in for it
    import pyautoattack
    from robustbench.eval import AutoAttack

    assert sys.modules["autoattack"] is pyautoattack and AutoAttack is pyautoattack.AutoAttack
    assert rb.load_model is rb.utils.load_model
    registry = tmp_path / "registry.toml"
    registry.write_text(TINY_CIFAR_REGISTRY)
    model_dir, home = tmp_path / "models", tmp_path / "store"
    args = ["eval", "robustbench:Wong2020Fast", "--model-dir", model_dir, "--data-root", cifar10_root,
            "--registry", registry, "--store", home]

    code, _, err = run_cli(capsys, *args)  # no weights yet, downloads disabled: say where to fetch them
    assert code == 2
    assert "fetch the weights of RobustBench model 'Wong2020Fast' first from Google Drive (https://drive.google" in err
    assert str(model_dir / "cifar10" / "Linf" / "Wong2020Fast.pt") in err and "ENERGYBENCH_OFFLINE" in err

    from robustbench.model_zoo.cifar10 import Wong2020FastNet

    torch.manual_seed(0)
    net = Wong2020FastNet().eval()  # RobustBench's own architecture for this name, random weights
    (model_dir / "cifar10" / "Linf").mkdir(parents=True)
    torch.save(net.state_dict(), model_dir / "cifar10" / "Linf" / "Wong2020Fast.pt")
    code, out, err = run_cli(capsys, *args)
    assert code == 0, err
    record = Store(home).get_run(stored_run(out))
    assert (record.model, record.dataset, record.norm, record.track) == ("robustbench:Wong2020Fast", "cifar10",
                                                                         "Linf", "cifar-tiny")
    assert record.eps == pytest.approx(8 / 255)
    assert record.config["trainer_params"] == {"kind": "robustbench", "name": "Wong2020Fast", "threat_model": "Linf"}
    results = Store(home).results(record.id)["last"]
    assert results["test_clean_acc"] == pytest.approx(clean_accuracy(net, 8, "cifar10", cifar10_root))
    assert "test_pgd_acc" in results and "test_dE_mean" in results and "test_aa_acc" not in results

    code, _, err = run_cli(capsys, "eval", "robustbench:Wong2020Fst", "--model-dir", model_dir, "--store", home)
    assert code == 2 and "did you mean 'Wong2020Fast'?" in err
    code, _, err = run_cli(capsys, "eval", "robustbench:Debenedetti2022Light_XCiT-S12", "--store", home)
    assert code == 2 and "is loaded through timm" in err and "downloads are disabled" in err  # and none was tried


# ----- your own model: named, evaluated once, or not stored at all; what it receives -----------------------------

class _Notes(Reporter):
    """A progress hook that keeps the notes it hears."""

    def __init__(self):
        self.notes: list[str] = []

    def note(self, text):
        self.notes.append(text)


def linear_digits_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))


def test_your_module_is_named_evaluated_once_and_ranked_beside_trained_runs(capsys, trained):
    """``evaluate(module, name=...)``: the leaderboard calls it by its name, with its class as the architecture, in
    the same table as a trained run of another architecture; the same weights under the same protocol again add no
    row (the run holding the result is returned and named), another protocol does."""
    home, run_id = trained
    net = linear_digits_model()
    first = energybench.evaluate(net, dataset="digits", name="my-linear", test_points=20, aa_points=0, store=home,
                                 progress=False)
    assert first.config.name == "my-linear" and first.config.model == "Sequential"
    hook = _Notes()
    again = energybench.evaluate(linear_digits_model(), dataset="digits", name="other name", test_points=20,
                                 aa_points=0, store=home, progress=hook)
    assert again.id == first.id and [r.id for r in Store(home).runs(trainer="external")] == [first.id]
    assert hook.notes == [f"run {first.id} (named 'my-linear') already holds this result: the same weights under "
                          "the same protocol (config hash); not evaluated again"]
    other = energybench.evaluate(net, dataset="digits", test_points=30, aa_points=0, store=home, progress=False)
    assert other.id != first.id  # another protocol: another result
    rows = energybench.leaderboard(dataset="digits", store=home)
    assert {r["setting"] for r in rows} == {"digits, Linf eps 0.1"}  # one table: every architecture
    assert {(r["id"], r["method"], r["model"]) for r in rows} == {
        (run_id, "fgsm", "small-cnn"), (first.id, "my-linear", "Sequential"), (other.id, "external", "Sequential")}
    per_arch = energybench.leaderboard(dataset="digits", per_arch=True, store=home)
    assert {r["setting"] for r in per_arch} == {"digits, small-cnn, Linf eps 0.1", "digits, Sequential, Linf eps 0.1"}
    code, out, _ = run_cli(capsys, "leaderboard", "--dataset", "digits", "--store", home)
    row = next(line for line in out.splitlines() if first.id in line)
    assert code == 0 and "│ my-linear │ Sequential │" in row


def test_eval_prints_its_own_row_with_its_rank(capsys, trained, tmp_path):
    home, run_id = trained
    script = tmp_path / "mlp_ts.pt"
    torch.jit.script(linear_digits_model()).save(str(script))
    code, out, err = run_cli(capsys, "eval", script, "--dataset", "digits", "--name", "my-ts", "--aa-points", 0,
                             "--test-points", 20, "--store", home)
    assert code == 0, err
    new_id = stored_run(out)
    assert new_id in out and run_id not in out  # its own row, not the board
    row = next(line for line in out.splitlines() if new_id in line)
    assert "│ my-ts " in row and "│ torchscript:mlp_ts.pt │" in row
    assert f"run {new_id}: rank " in out and " of 2 on digits, Linf eps 0.1" in out


def test_no_store_returns_the_numbers_only(capsys, trained, tmp_path):
    """``evaluate(..., store=False)`` and ``eval --no-store`` evaluate and store nothing: the numbers come back (the
    command prints them with their intervals and n)."""
    home, _ = trained
    before = [r.id for r in Store(home).runs(status=None)]
    metrics = energybench.evaluate(linear_digits_model(), dataset="digits", test_points=20, aa_points=0, store=False,
                                   progress=False)
    assert isinstance(metrics, dict) and metrics["test_points"] == 20 and 0 <= metrics["test_pgd_acc"] <= 1
    assert "test_dE_mean" in metrics and not Store().runs(status=None)  # not even in the default store
    script = tmp_path / "mlp_ts.pt"
    torch.jit.script(linear_digits_model()).save(str(script))
    code, out, err = run_cli(capsys, "eval", script, "--dataset", "digits", "--no-store", "--aa-points", 0,
                             "--test-points", 20, "--store", home)
    assert code == 0, err
    assert f"{script}: evaluated, not stored" in out and "│ PGD " in out and "│ 20 │" in out
    assert [r.id for r in Store(home).runs(status=None)] == before


def test_a_pickled_whole_module_is_refused_with_what_to_use_instead(capsys, trained, tmp_path):
    """``torch.save(model)`` pickles code: refused in one line that says why and what to use instead, with or without
    --arch, and by ``energybench.load`` too."""
    home, _ = trained
    path = tmp_path / "whole.pt"
    torch.save(linear_digits_model(), path)
    for extra in ([], ["--arch", "small-cnn"]):
        code, _, err = run_cli(capsys, "eval", path, "--dataset", "digits", *extra, "--store", home)
        assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
        assert f"refusing {path}: it holds a whole pickled model (torch.nn.modules." in err
        for advice in ("torch.save(model.state_dict()", "--arch", "TorchScript", "energybench.evaluate(model"):
            assert advice in err, advice
    with pytest.raises(EnergybenchError, match="whole pickled model"):
        energybench.load(str(path), dataset="digits", arch="small-cnn", store=home)


def test_load_data_returns_exactly_what_training_validation_and_evaluation_read(tmp_path):
    """``load_data``: float images in [0, 1], (N, C, H, W), the splits a run carves (the track's val_size); an
    evaluation's model receives exactly the first test points of it."""
    x, y = energybench.load_data("digits", split="test")
    data = load_dataset("digits", val_size=200)  # digits-tiny's validation split
    assert x.dtype == torch.float32 and tuple(x.shape) == (360, 1, 8, 8) and 0 <= x.min() and x.max() <= 1
    assert torch.equal(x, data.test.x.float() / 255) and torch.equal(y, data.test.y)
    for split, part in (("val", data.val), ("train", data.train)):
        xs, ys = energybench.load_data("digits", split=split)
        assert torch.equal(xs, part.x.float() / 255) and torch.equal(ys, part.y), split
    seen: list[torch.Tensor] = []

    class Recording(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = linear_digits_model()

        def forward(self, inputs):
            seen.append(inputs.detach().clone())
            return self.net(inputs)

    energybench.evaluate(Recording(), dataset="digits", test_points=20, aa_points=0, store=False, progress=False)
    assert any(torch.equal(inputs, x[:20]) for inputs in seen)  # the clean pass on the first 20 test points
    with pytest.raises(EnergybenchError, match="unknown split 'validation'"):
        energybench.load_data("digits", split="validation")
