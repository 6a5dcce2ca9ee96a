"""Bad input through the real CLI: each case gives one line on stderr starting 'energybench: error:',
exit code 2, no traceback, and leaves everything already stored exactly as it was."""

from __future__ import annotations

import ctypes
import errno
import gzip
import hashlib
import os
import pickle
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from datafiles import SMALL_EVAL, class_images, tiny_config, write_mnist_folder

import energybench
from energybench import api
from energybench.cli import main
from energybench.config import load_catalogue, resolve_config
from energybench.contracts import registry as reg
from energybench.contracts.registry import create_model
from energybench.contracts.regularizer import Regularizer
from energybench.errors import EnergybenchError
from energybench.plugins.trainers.fgsm import FGSMTrainer
from energybench.storage.checkpoint import load_checkpoint, save_checkpoint
from energybench.storage.store import RunInUse, Store
from energybench.training.progress import Reporter
from energybench.training.run import execute


class _StopAfterFirstEpoch(Reporter):
    def epoch_done(self, epoch, metrics):
        raise KeyboardInterrupt


@pytest.fixture(scope="module")
def populated(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A store holding a completed run and a run interrupted after its first epoch."""
    home = tmp_path_factory.mktemp("populated")
    config = tiny_config(epochs=2, eval={"aa_points": 0, "aa_version": "standard", "val_points": 20, "test_points": 20})
    store = Store(home)
    done = execute(config.model_copy(update={"epochs": 1}), store)
    with pytest.raises(KeyboardInterrupt):
        execute(config, store, reporter=_StopAfterFirstEpoch())
    (interrupted,) = store.runs(status="interrupted")
    store.close()
    return home, {"done": done, "interrupted": interrupted.id}


def snapshot(store: Path) -> tuple[dict[str, list[str]], dict[str, str]]:
    """Every row of every table, and every file's hash (the SQLite files themselves aside)."""
    db = sqlite3.connect(store / "store.sqlite")
    try:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
        rows = {t: sorted(map(repr, db.execute(f"SELECT * FROM {t}"))) for t in tables}
    finally:
        db.close()
    files = {str(p.relative_to(store)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(store.rglob("*")) if p.is_file() and not p.name.startswith("store.sqlite")}
    return rows, files


# ----- setups: each writes the bad file a case needs --------------------------------------------

def _write(name: str, text: str) -> Callable[[Path, Path, dict[str, str]], None]:
    def setup(tmp: Path, store: Path, ids: dict[str, str]) -> None:
        (tmp / name).write_text(text)

    return setup


def _write_bytes(name: str, data: bytes) -> Callable[[Path, Path, dict[str, str]], None]:
    def setup(tmp: Path, store: Path, ids: dict[str, str]) -> None:
        (tmp / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp / name).write_bytes(data)

    return setup


NOT_UTF8 = b"\xff\xfe epochs = 1\n"


def _fmnist(size: int = 28, truncate: bool = False, bad_labels: bool = False):
    def setup(tmp: Path, store: Path, ids: dict[str, str]) -> None:
        xtr, ytr = class_images(300, size, 1, 0)
        root = write_mnist_folder(tmp / "data", (xtr, ytr + 5 if bad_labels else ytr), class_images(50, size, 1, 1))
        if truncate:
            path = root / "train-images-idx3-ubyte.gz"
            path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-100]))

    return setup


def _schema(version: int):
    def setup(tmp: Path, store: Path, ids: dict[str, str]) -> None:
        db = sqlite3.connect(store / "store.sqlite")
        db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(version),))
        db.commit()
        db.close()

    return setup


def _state_of_another_model(tmp: Path, store: Path, ids: dict[str, str]) -> None:
    path = store / "runs" / ids["interrupted"] / "state.pt"
    state = load_checkpoint(path)
    state["model"] = create_model("small-cnn", dataset="cifar100").state_dict()
    save_checkpoint(path, state)


def _weights_for_100_classes(tmp: Path, store: Path, ids: dict[str, str]) -> None:
    save_checkpoint(tmp / "c100.pt", create_model("small-cnn", dataset="cifar100").state_dict())


def _corrupt_best(tmp: Path, store: Path, ids: dict[str, str]) -> None:
    data = (store / "runs" / ids["done"] / "best.pt").read_bytes()
    folder = tmp / "copy"
    folder.mkdir()
    (folder / "best.pt").write_bytes(data[:200] + bytes([data[200] ^ 0xFF]) + data[201:])
    (folder / "best.pt.sha256").write_text(hashlib.sha256(data).hexdigest())


def _pickle_with_code(tmp: Path, store: Path, ids: dict[str, str]) -> None:
    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {tmp / 'pwned'}",))

    (tmp / "evil.pt").write_bytes(pickle.dumps({"model": Payload()}))


def _file(tmp: Path, store: Path, ids: dict[str, str]) -> None:
    (tmp / "afile").write_text("not a folder")


def _checkpoint_beside_binary_config(tmp: Path, store: Path, ids: dict[str, str]) -> None:
    (tmp / "copy").mkdir()
    shutil.copy(store / "runs" / ids["done"] / "best.pt", tmp / "copy" / "best.pt")
    (tmp / "copy" / "config.json").write_bytes(NOT_UTF8)


def _with_autoattack(tmp: Path, store: Path, ids: dict[str, str]) -> None:
    """The completed run gains an AutoAttack accuracy, so it can be exported."""
    db = sqlite3.connect(store / "store.sqlite")
    db.execute("INSERT INTO results VALUES (?, 'last', 'aa_acc', 0.25)", (ids["done"],))
    db.commit()
    db.close()


def _file_with_autoattack(tmp: Path, store: Path, ids: dict[str, str]) -> None:
    _file(tmp, store, ids)
    _with_autoattack(tmp, store, ids)


def _empty_database(tmp: Path, store: Path, ids: dict[str, str]) -> None:
    """A zero-byte store.sqlite beside complete run folders."""
    for path in store.glob("store.sqlite*"):
        path.unlink()
    (store / "store.sqlite").write_bytes(b"")


def _garbage_store(tmp: Path, store: Path, ids: dict[str, str]) -> None:
    (tmp / "garbage").mkdir()
    (tmp / "garbage" / "store.sqlite").write_bytes(b"this is not sqlite" * 100)


RUN = ["run", "--track", "digits-tiny", "--store", "{store}"]
TINY_FMNIST = ["--dataset", "fashion-mnist", "--data-root", "{tmp}/data"]

#: id -> (argv, expected fragment of the one error line, setup or None)
CASES: dict[str, tuple[list[str], str, Callable | None]] = {
    "unknown trainer": (RUN + ["--trainer", "fgms"], "unknown trainer 'fgms'; did you mean 'fgsm'?", None),
    "unknown regularizer": (RUN + ["--reg", "dre"], "unknown regularizer 'dre'; did you mean 'der'?", None),
    "unknown track": (["run", "--track", "digit-tiny", "--store", "{store}"],
                      "unknown track 'digit-tiny'; did you mean 'digits-tiny'?", None),
    "unknown dataset": (RUN + ["--dataset", "digts"], "unknown dataset 'digts'; did you mean 'digits'?", None),
    "unknown model": (RUN + ["--model", "small-cn"], "unknown model 'small-cn'; did you mean 'small-cnn'?", None),
    "unknown run": (["run", "--resume", "{done}x", "--store", "{store}"], "unknown run '", None),
    "unknown device": (RUN + ["--device", "tpu"], "unknown device 'tpu'", None),
    "unknown option": (RUN + ["--epoch", "3"], "No such option '--epoch'", None),
    "eps 8/255 is valid": (RUN + ["--eps", "8/255", "--batch-size", "5000"], "batch_size=5000", None),
    "eps 0.031 is valid": (RUN + ["--eps", "0.031", "--batch-size", "5000"], "batch_size=5000", None),
    "eps negative": (RUN + ["--eps", "-0.1"], "eps=-0.1 is outside (0, 1) for the Linf norm", None),
    "eps above 1": (RUN + ["--eps", "1.5"], "eps=1.5 is outside (0, 1) for the Linf norm", None),
    "eps abc": (RUN + ["--eps", "abc"], "eps 'abc' is not a number or a fraction like 8/255", None),
    "eps 8/0": (RUN + ["--eps", "8/0"], "eps '8/0' is not a number or a fraction like 8/255", None),
    "steps = 0": (RUN + ["--trainer", "pgd", "-T", "steps=0"],
                  "invalid hyper-parameters for trainer 'pgd': steps=0: Input should be greater than or equal to 1",
                  None),
    "unknown hyper-parameter": (RUN + ["--trainer", "pgd", "-T", "stepz=3"], "stepz", None),
    "-T without =": (RUN + ["-T", "steps"], "--trainer-opt expects KEY=VALUE, got 'steps'", None),
    "epochs = 0": (RUN + ["--epochs", "0"], "epochs: Input should be greater than or equal to 1 (got 0)", None),
    "batch size larger than the dataset": (RUN + ["--batch-size", "5000"],
                                           "batch_size=5000 is larger than the training set (1237 points)", None),
    "regularizer needing a trainer that makes no adversarial examples": (
        RUN + ["--trainer", "standard", "--reg", "der"], "needs adversarial examples but trainer 'standard'", None),
    "config: unknown key": (RUN + ["--config", "{tmp}/c.toml"], "unknown setting 'foo'", _write("c.toml", "foo = 1\n")),
    "config: wrong type": (RUN + ["--config", "{tmp}/c.toml"], "epochs: Input should be a valid integer",
                           _write("c.toml", 'epochs = "many"\n')),
    "config: nested wrong value": (RUN + ["--config", "{tmp}/c.toml"],
                                   "eval.pgd_steps: Input should be greater than or equal to 1 (got -1)",
                                   _write("c.toml", "eval = { pgd_steps = -1 }\n")),
    "config: negative plugin_timeout": (RUN + ["--config", "{tmp}/c.toml"],
                                        "plugin_timeout: Input should be greater than 0",
                                        _write("c.toml", "plugin_timeout = -1\n")),
    "config: val_size larger than the dataset": (RUN + ["--config", "{tmp}/c.toml"],
                                                 "val_size=5000 must be between 1 and",
                                                 _write("c.toml", "val_size = 5000\n")),
    "config: not TOML": (RUN + ["--config", "{tmp}/c.toml"], "cannot read config file",
                         _write("c.toml", "epochs = = 3\n")),
    "config: missing file": (RUN + ["--config", "{tmp}/none.toml"], "cannot read config file", None),
    "registry: malformed track": (
        ["run", "--registry", "{tmp}/r.toml", "--store", "{store}"],
        "track 'x' is malformed: epochs: Input should be greater than or equal to 1 (got -1)",
        _write("r.toml", '[tracks.x]\ndescription = "d"\ndataset = "digits"\nepochs = -1\n')),
    "registry: track with an unknown key": (
        ["run", "--registry", "{tmp}/r.toml", "--track", "x", "--store", "{store}"],
        "track 'x' is malformed: unknown setting 'epoch'",
        _write("r.toml", '[tracks.x]\ndescription = "d"\nepoch = 3\n')),
    "registry: track without description": (
        ["run", "--registry", "{tmp}/r.toml", "--track", "x", "--store", "{store}"],
        "track 'x' needs a table with a 'description' string", _write("r.toml", '[tracks.x]\ndataset = "digits"\n')),
    "registry: not TOML": (["run", "--registry", "{tmp}/r.toml", "--store", "{store}"], "cannot read catalogue",
                           _write("r.toml", "[tracks.x\n")),
    "resume a completed run": (["run", "--resume", "{done}", "--store", "{store}"], "is already complete", None),
    "resume with the state of another architecture": (
        ["run", "--resume", "{interrupted}", "--store", "{store}"],
        "state.pt does not fit this run (small-cnn on digits): RuntimeError: Error(s) in loading state_dict",
        _state_of_another_model),
    "eval: checkpoint of another architecture": (
        ["eval", "{store}/runs/{done}/best.pt", "--dataset", "digits", "--model", "preact-resnet18",
         "--store", "{store}"], "does not fit model 'preact-resnet18'", None),
    "eval: checkpoint for another number of classes": (
        ["eval", "{tmp}/c100.pt", "--dataset", "cifar10", "--model", "small-cnn", "--store", "{store}"],
        "does not fit model 'small-cnn' for 'cifar10' (10 classes", _weights_for_100_classes),
    "eval: corrupted checkpoint": (
        ["eval", "{tmp}/copy/best.pt", "--dataset", "digits", "--model", "small-cnn", "--store", "{store}"],
        "is corrupted: its SHA-256 does not match best.pt.sha256", _corrupt_best),
    "eval: pickle with code": (
        ["eval", "{tmp}/evil.pt", "--dataset", "digits", "--model", "small-cnn", "--store", "{store}"],
        "refusing checkpoint", _pickle_with_code),
    "dataset: images of the wrong shape": (RUN + TINY_FMNIST,
                                           "dataset 'fashion-mnist' has images of shape (1, 14, 14), expected "
                                           "(1, 28, 28)", _fmnist(size=14)),
    "dataset: truncated file": (RUN + TINY_FMNIST, "is truncated", _fmnist(truncate=True)),
    "dataset: labels out of range": (RUN + TINY_FMNIST, "has labels outside 0..9", _fmnist(bad_labels=True)),
    "store: a file": (["run", "--track", "digits-tiny", "--store", "{tmp}/afile"], "is a file", _file),
    "store: inside a file": (["run", "--track", "digits-tiny", "--store", "{tmp}/afile/sub"], "is not writable",
                             _file),
    "store: newer schema": (RUN, "has schema version 99, newer than this energybench understands", _schema(99)),
    "store: not SQLite": (["run", "--track", "digits-tiny", "--store", "{tmp}/garbage"],
                          "is not a usable SQLite database", _garbage_store),
    # issue #23: files that are not UTF-8, wherever the product reads text
    "config: not UTF-8": (RUN + ["--config", "{tmp}/c.toml"], "cannot read config file {tmp}/c.toml: it is not UTF-8 "
                          "text (byte 0xff at offset 0)", _write_bytes("c.toml", NOT_UTF8)),
    "registry: not UTF-8": (["run", "--registry", "{tmp}/r.toml", "--store", "{store}"],
                            "cannot read catalogue {tmp}/r.toml: it is not UTF-8 text",
                            _write_bytes("r.toml", NOT_UTF8)),
    "import-reference: not UTF-8": (["import-reference", "{tmp}/m.json", "--store", "{store}"],
                                    "cannot read model-info file {tmp}/m.json: it is not UTF-8 text",
                                    _write_bytes("m.json", NOT_UTF8)),
    "eval: run config beside a checkpoint not UTF-8": (
        ["eval", "{tmp}/copy/best.pt", "--store", "{store}"], "cannot read run config {tmp}/copy/config.json: it is "
        "not UTF-8 text", _checkpoint_beside_binary_config),
    # seeds beyond what torch and SQLite hold
    "seed too large": (RUN + ["--seed", "99999999999999999999999"],
                       "seed: Input should be less than or equal to 9223372036854775807", None),
    "seed negative": (RUN + ["--seed", "-1"], "seed: Input should be greater than or equal to 0", None),
    "eval: seed too large": (["eval", "{done}", "--seed", "99999999999999999999999", "--store", "{store}"],
                             "seed: Input should be less than or equal to 9223372036854775807", None),
    "sample: seed too large": (["sample", "{done}", "--sampler", "class-gaussian", "--seed", "99999999999999999999999",
                                "--store", "{store}"], "seed: Input should be less than or equal to", None),
    # user-named outputs under a regular file
    "leaderboard -o under a file": (["leaderboard", "-o", "{tmp}/afile/board.md", "--store", "{store}"],
                                    "cannot write {tmp}/afile/board.md: {tmp}/afile is a file, not a folder", _file),
    "report -o under a file": (["report", "{done}", "-o", "{tmp}/afile/report.html", "--store", "{store}"],
                               "cannot write {tmp}/afile/report.html: {tmp}/afile is a file, not a folder", _file),
    "export -o under a file": (["export", "{done}", "-o", "{tmp}/afile/info.json", "--store", "{store}"],
                               "cannot write {tmp}/afile/info.json: {tmp}/afile is a file, not a folder",
                               _file_with_autoattack),
    "energy trace -o under a file": (["energy", "trace", "{done}", "-o", "{tmp}/afile/trace.png", "--store", "{store}"],
                                     "cannot write {tmp}/afile/trace.png: {tmp}/afile is a file, not a folder", _file),
    "energy histograms -o under a file": (
        ["energy", "histograms", "{done}", "--attacks", "fgsm", "-n", "4", "-o", "{tmp}/afile/h.png", "--store",
         "{store}"], "cannot write {tmp}/afile/h.png: {tmp}/afile is a file, not a folder", _file),
    "sample -o under a file": (["sample", "{done}", "--sampler", "class-gaussian", "-o", "{tmp}/afile/samples",
                                "--store", "{store}"], "cannot write {tmp}/afile/samples: {tmp}/afile is a file",
                               _file),
    # settings that are not finite numbers
    "lr inf": (RUN + ["--lr", "inf"], "lr: Input should be a finite number (got inf)", None),
    "config: weight_decay inf": (RUN + ["--config", "{tmp}/c.toml"], "weight_decay: Input should be a finite number",
                                 _write("c.toml", "weight_decay = inf\n")),
    "config: eps nan": (RUN + ["--config", "{tmp}/c.toml"], "eps: Input should be a finite number",
                        _write("c.toml", "eps = nan\n")),
    "-R beta=inf": (RUN + ["--reg", "der", "-R", "beta=inf"],
                    "invalid hyper-parameters for regularizer 'der': beta=inf: Input should be a finite number", None),
    # resume keeps the settings a run started with
    "resume with changed settings": (
        ["run", "--resume", "{interrupted}", "--epochs", "5", "--lr", "0.5", "--trainer", "pgd", "--store", "{store}"],
        "--trainer, --epochs, --lr cannot apply", None),
    # a database emptied beside complete run folders is never re-initialised
    "store: empty database beside run folders (run)": (
        RUN, "is missing or empty, but {store}/runs holds 2 run folders: rebuild the database from them with "
             "`energybench store repair --store {store}`", _empty_database),
    "store: empty database beside run folders (leaderboard)": (
        ["leaderboard", "--store", "{store}"], "is missing or empty, but {store}/runs holds 2 run folders",
        _empty_database),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_line_exit_2_and_loses_nothing(capsys, tmp_path, populated, case):
    argv, expected, setup = CASES[case]
    source, ids = populated
    store = tmp_path / "store"
    shutil.copytree(source, store)
    if setup is not None:
        setup(tmp_path, store, ids)
    before = snapshot(store)
    values = {"store": str(store), "tmp": str(tmp_path), **ids}
    code = main([arg.format(**values) for arg in argv])
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("energybench: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err and expected.format(**values) in err, err
    assert snapshot(store) == before
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize(("text", "value"), [("8/255", 8 / 255), ("0.031", 0.031), (" 2/255 ", 2 / 255)])
def test_eps_is_read_as_a_fraction_or_a_decimal(text, value):
    config = resolve_config(load_catalogue(), track="digits-tiny", overrides={"eps": text})
    assert config.eps == value


def test_the_error_line_through_the_installed_command_has_no_traceback(tmp_path):
    result = subprocess.run([sys.executable, "-m", "energybench.cli", "run", "--track", "digits-tiny", "--eps", "abc",
                             "--store", str(tmp_path)], capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr == "energybench: error: invalid configuration: eps 'abc' is not a number or a fraction " \
                            "like 8/255\n"


def test_a_failed_check_stores_no_run(tmp_path):
    """Bad data or batch size is found before the run is recorded (no 'failed' clutter)."""
    store = Store(tmp_path)
    config = tiny_config(batch_size=5000)
    with pytest.raises(EnergybenchError, match="batch_size=5000"):
        execute(config, store)
    assert store.runs(status=None) == [] and not any((tmp_path / "runs").iterdir())


# ----- issue #23: bad input that is not one CLI line away from the table above ---------------------

@pytest.fixture
def runtime_registry(scoped_registry):
    return reg.get_registry()


class _BrokenTrainer(FGSMTrainer):
    def __init__(self, **kwargs):
        raise RuntimeError("cannot start")


class _BrokenRegularizer(Regularizer):
    def __init__(self, **params):
        raise ValueError("bad weights file")

    def penalty(self, model, x, y, out):
        raise AssertionError("never called")


@pytest.mark.parametrize(("flag", "name", "cls", "message"), [
    ("--trainer", "broken-trainer", _BrokenTrainer, "trainer 'broken-trainer' failed: RuntimeError: cannot start"),
    ("--reg", "broken-reg", _BrokenRegularizer, "regularizer 'broken-reg' failed: ValueError: bad weights file")])
def test_a_plugin_whose_constructor_raises_is_one_line_naming_it(capsys, tmp_path, runtime_registry, flag, name, cls,
                                                                 message):
    runtime_registry.register("trainer" if flag == "--trainer" else "regularizer", name, cls)
    code = main(["run", "--track", "digits-tiny", flag, name, "--store", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err == f"energybench: error: {message}\n", err
    assert Store(tmp_path).runs(status=None) == []


class _Collecting(Reporter):
    def __init__(self):
        self.alerts = []

    def alert(self, text):
        self.alerts.append(text)


def test_counts_larger_than_the_dataset_are_stored_as_what_ran(tmp_path):
    """n_train and test points above what digits holds train and test on everything there is, say so, and
    store the config (and hash) of the identical run that asked for no more than there is."""
    store = Store(tmp_path)
    reporter = _Collecting()
    asked = execute(tiny_config(epochs=1, n_train=100000, eval={**SMALL_EVAL, "test_points": 5000}), store,
                    reporter=reporter)
    plain = execute(tiny_config(epochs=1, eval={**SMALL_EVAL, "test_points": None}), store)
    assert reporter.alerts == [
        "n_train=100000 is more than the 1237 training points of 'digits' (after its 200-point validation split): "
        "training on all of them, stored as n_train unset",
        "eval.test_points=5000 is more than the 360 test points of 'digits': using all of them, stored as "
        "test_points unset"]
    a, b = store.get_run(asked), store.get_run(plain)
    assert a.config["n_train"] is None and a.config["eval"]["test_points"] is None
    assert a.config_hash == b.config_hash
    assert store.results(asked)["last"]["test_clean_acc"] == store.results(plain)["last"]["test_clean_acc"]


class _NaNLogits(torch.nn.Module):
    """A digits classifier whose logits are finite for its first ``finite_calls`` calls, then nan."""

    def __init__(self, finite_calls: int = 0):
        super().__init__()
        self.linear, self.calls, self.finite_calls = torch.nn.Linear(64, 10), 0, finite_calls

    def forward(self, x):
        self.calls += 1
        logits = self.linear(x.flatten(1))
        return logits if self.calls <= self.finite_calls else logits * float("nan")


def test_a_model_with_non_finite_logits_is_never_a_clean_result(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(EnergybenchError, match=r"returns non-finite logits \(nan or inf\) for digits images"):
        energybench.evaluate(_NaNLogits(), dataset="digits", eps=0.1, test_points=20, aa_points=0, store=store)
    assert store.runs(status=None) == []  # refused before it was stored
    # finite on the two probe images, nan on the test set: the evaluation fails and nothing is ranked
    with pytest.raises(EnergybenchError, match="non-finite logits .* for 20 of 20 test points"):
        energybench.evaluate(_NaNLogits(finite_calls=1), dataset="digits", eps=0.1, test_points=20, aa_points=0,
                             store=store)
    (failed,) = store.runs(status=None)
    assert failed.status == "failed" and "non-finite logits" in failed.error
    assert energybench.leaderboard(dataset="digits", store=store) == []


def test_a_model_refused_by_evaluate_stores_nothing(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(EnergybenchError, match=r"model Linear fails on digits images of shape \(1, 8, 8\)"):
        energybench.evaluate(torch.nn.Linear(64, 10), dataset="digits", eps=0.1, store=store)
    assert store.runs(status=None) == [] and not any((tmp_path / "runs").iterdir())


@pytest.mark.parametrize(("call", "message"), [
    (lambda s: energybench.train(track="digits-tiny", seed=2**70, store=s),
     "seed: Input should be less than or equal to 9223372036854775807"),
    (lambda s: energybench.train(track="digits-tiny", callbacks=5, store=s),
     "invalid argument to train(): callbacks must be str | Sequence[str], got 5"),
    (lambda s: energybench.train(track="digits-tiny", lr=float("inf"), store=s), "lr: Input should be a finite number"),
    (lambda s: energybench.sample("x", sampler=123, store=s),
     "invalid argument to sample(): sampler must be str | Sequence[str], got 123"),
    (lambda s: energybench.leaderboard(eps="abc", store=s), "eps 'abc' is not a number or a fraction like 8/255"),
    (lambda s: energybench.create_trainer("fgsm", eps=float("nan")),
     "invalid argument to create_trainer(): eps: Input should be a finite number"),
    (lambda s: energybench.create_trainer("fgsm", eps=-0.1),
     "trainer 'fgsm': eps=-0.1 must be a finite positive number"),
    (lambda s: energybench.create_model("small-cnn", num_classes=0, in_channels=1),
     "invalid argument to create_model(): num_classes: Input should be greater than or equal to 1 (got 0)"),
    (lambda s: energybench.create_model("small-cnn", num_classes=10, in_channels=3, mean=(0.5,)),
     "model 'small-cnn': mean and std need one value per channel (3), got 1 and 3"),
])
def test_api_arguments_are_checked_like_cli_flags(tmp_path, call, message):
    with pytest.raises(EnergybenchError) as caught:
        call(tmp_path)
    assert message in str(caught.value)
    assert Store(tmp_path).runs(status=None) == []


def test_a_single_callback_name_is_one_callback(tmp_path, monkeypatch):
    """train(callbacks="tensorboard") names one callback, not eleven one-letter ones."""
    seen = []

    def stop(config, store, **kwargs):
        seen.append(config.callbacks)
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "execute", stop)
    with pytest.raises(KeyboardInterrupt):
        energybench.train(track="digits-tiny", callbacks="tensorboard", store=tmp_path)
    assert seen == [["tensorboard"]]


def test_nan_loss_before_any_checkpoint_says_none_was_kept(capsys, tmp_path):
    code = main(["run", "--track", "digits-tiny", "--lr", "1e30", "--aa-points", "0", "--store", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and err.endswith("training loss became nan in epoch 1; run stopped: no epoch completed, so no "
                                      "checkpoint was written\n"), err
    (record,) = Store(tmp_path).runs(status="diverged")
    assert not list(Store(tmp_path).run_dir(record.id).glob("*.pt"))


def test_a_full_disk_leaves_no_sidecar_without_its_checkpoint(tmp_path, monkeypatch):
    import energybench.storage.checkpoint as ckpt

    calls = []

    def fsync(fd):  # 1: the sidecar's temporary file, 2: its folder, 3: the checkpoint's temporary file
        calls.append(fd)
        if len(calls) == 3:
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ckpt.os, "fsync", fsync)
    with pytest.raises(EnergybenchError, match=r"cannot write .*best.pt: No space left on device"):
        save_checkpoint(tmp_path / "best.pt", {"w": torch.zeros(3)})
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_resume_refuses_a_run_in_use_before_loading_anything(tmp_path, populated, monkeypatch):
    source, ids = populated
    shutil.copytree(source, tmp_path / "store")
    store = Store(tmp_path / "store")
    claim = store.claim(ids["interrupted"])  # held elsewhere (flock: another open file description)

    def no_loading(*args, **kwargs):
        raise AssertionError("data loaded before the lock was checked")

    monkeypatch.setattr("energybench.training.loop.load_dataset", no_loading)
    try:
        with pytest.raises(RunInUse, match=f"run {ids['interrupted']} is in use by another process"):
            execute(None, store, resume=ids["interrupted"])
    finally:
        claim.release()


def _damage_results_page(store: Path) -> None:
    """Overwrite the results table's root page: SQLite's header and the other tables stay intact."""
    db = sqlite3.connect(store / "store.sqlite")
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    page = db.execute("PRAGMA page_size").fetchone()[0]
    (root,) = db.execute("SELECT rootpage FROM sqlite_master WHERE name = 'results'").fetchone()
    db.close()
    data = bytearray((store / "store.sqlite").read_bytes())
    data[(root - 1) * page:root * page] = b"\xa5" * page
    (store / "store.sqlite").write_bytes(bytes(data))


def _tables(store: Path) -> dict[str, list[str]]:
    return snapshot(store)[0]


@pytest.mark.parametrize("damage", ["results page", "zero bytes"])
def test_a_damaged_store_is_refused_and_repaired_from_its_run_folders(capsys, tmp_path, populated, damage):
    source, ids = populated
    store = tmp_path / "store"
    shutil.copytree(source, store)
    intact = _tables(store)
    folders = sorted(p.name for p in (store / "runs").iterdir())
    if damage == "results page":
        _damage_results_page(store)
        expected = f"store {store}/store.sqlite is damaged (database disk image is malformed)"
    else:
        _empty_database(tmp_path, store, ids)
        expected = f"store {store}/store.sqlite is missing or empty, but {store}/runs holds 2 run folders"
    hint = f"rebuild the database from them with `energybench store repair --store {store}`"
    for argv in (["leaderboard"], ["compare", ids["done"], ids["done"]], ["run", "--track", "digits-tiny"],
                 ["run", "--resume", ids["interrupted"]]):
        code = main([*argv, "--store", str(store)])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith(f"energybench: error: {expected}") and hint in err, (argv, err)
        assert err.count("\n") == 1 and "Traceback" not in err, err
    assert sorted(p.name for p in (store / "runs").iterdir()) == folders  # nothing ran
    if damage == "zero bytes":
        assert (store / "store.sqlite").stat().st_size == 0  # not re-initialised
    code = main(["store", "repair", "--store", str(store)])
    out = capsys.readouterr().out
    assert code == 0 and "rebuilt from 2 run folders" in out and "the old file is kept as store.sqlite.damaged-" in out
    assert _tables(store) == intact
    assert len([p for p in store.glob("store.sqlite.damaged-*") if not p.name.endswith(("-wal", "-shm"))]) == 1
    code = main(["store", "repair", "--store", str(store)])
    assert code == 0 and "nothing to repair" in capsys.readouterr().out


def test_repair_brings_back_folders_written_before_record_json_as_resumable(capsys, tmp_path, populated):
    source, ids = populated
    store = tmp_path / "store"
    shutil.copytree(source, store)
    (store / "runs" / ids["done"] / "record.json").unlink()
    _empty_database(tmp_path, store, ids)
    assert main(["store", "repair", "--store", str(store)]) == 0
    assert f"1 runs came back without their test results (their folders predate record.json): {ids['done']}" in \
        capsys.readouterr().out
    record = Store(store).get_run(ids["done"])
    assert record.status == "interrupted" and f"energybench run --resume {ids['done']}` evaluates it" in record.error
    assert len(Store(store).epochs(ids["done"])) == 1 and Store(store).results(ids["done"]) == {}


def _without_write_permission():
    """For a child process: lose the root's right to write anywhere (CAP_DAC_OVERRIDE and kin), so a
    read-only folder is read-only for it too."""
    libc = ctypes.CDLL(None, use_errno=True)
    for capability in (1, 2, 3):  # CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER
        if libc.prctl(24, capability, 0, 0, 0) != 0:  # PR_CAPBSET_DROP: gone after exec
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_reading_commands_work_on_a_read_only_store(tmp_path, populated):
    source, ids = populated
    store = tmp_path / "store"
    shutil.copytree(source, store)
    _with_autoattack(tmp_path, store, ids)
    before = snapshot(store)
    out = tmp_path / "out"
    out.mkdir()
    for path in [store, *store.rglob("*")]:
        path.chmod(path.stat().st_mode & ~0o222)
    repo = Path(__file__).resolve().parents[1]
    env = os.environ | {"PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    try:
        api_call = f"import energybench; print([r['id'] for r in energybench.leaderboard(store={str(store)!r})])"
        for argv in (["-m", "energybench.cli", "leaderboard", "--store", str(store)],
                     ["-m", "energybench.cli", "compare", ids["done"], ids["done"], "--store", str(store)],
                     ["-m", "energybench.cli", "export", ids["done"], "-o", str(out / "info.json"), "--store",
                      str(store)], ["-c", api_call]):
            result = subprocess.run([sys.executable, *argv], env=env, capture_output=True, text=True,
                                    preexec_fn=_without_write_permission if os.geteuid() == 0 else None)
            assert result.returncode == 0, (argv, result.stderr)
            assert ids["done"] in result.stdout or "AutoAttack 25.0%" in result.stdout, (argv, result.stdout)
    finally:
        for path in [store, *store.rglob("*")]:
            path.chmod(path.stat().st_mode | 0o200)
    assert snapshot(store) == before and sorted(p.name for p in store.iterdir()) == ["runs", "store.sqlite"]
