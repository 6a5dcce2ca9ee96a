"""Bad input through the real CLI: each case gives one line on stderr starting 'energybench: error:',
exit code 2, no traceback, and leaves everything already stored exactly as it was."""

from __future__ import annotations

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
from datafiles import class_images, tiny_config, write_mnist_folder

from energybench.cli import main
from energybench.config import load_catalogue, resolve_config
from energybench.contracts.registry import create_model
from energybench.errors import EnergybenchError
from energybench.storage.checkpoint import load_checkpoint, save_checkpoint
from energybench.storage.store import Store
from energybench.training.progress import Reporter
from energybench.training.run import execute


class _StopAfterFirstEpoch(Reporter):
    def epoch_done(self, epoch, metrics):
        raise KeyboardInterrupt


@pytest.fixture(scope="module")
def populated(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A store holding a completed run and a run interrupted after its first epoch."""
    home = tmp_path_factory.mktemp("populated")
    config = tiny_config(epochs=2, eval={"aa_points": 0, "val_points": 20, "test_points": 20})
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
    assert "Traceback" not in err and expected in err, err
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
