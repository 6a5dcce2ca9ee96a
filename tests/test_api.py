"""The package people import: the walkthrough of docs/python-api.md, callbacks, TensorBoard, the wheel."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from datafiles import SMALL_EVAL

import energybench
from energybench.cli import main
from energybench.errors import PluginError
from energybench.storage.store import Store

REPO = Path(__file__).resolve().parents[1]


def energybench_version() -> str:
    from importlib.metadata import version

    return version("energybench")


def test_the_python_api_walkthrough_runs_as_written_in_a_store_that_holds_other_runs(tmp_path, scoped_registry):
    """The walkthrough's code, in order, in a store that already holds a digits run of its setting (its claims hold
    in any store, not only an empty one); it registers a callback, in a registry scoped to this test."""
    from energybench.config import RunConfig

    store = Store(tmp_path / "home")
    config = RunConfig(dataset="digits", trainer="pgd", eps=0.1, eval={"test_points": 100, "aa_points": 0})
    earlier = store.create_run(config.model_dump(), config.config_hash())
    store.add_results(earlier, "last", {"test_clean_acc": 0.9, "test_pgd_acc": 0.7})
    store.set_status(earlier, "done", wall_time=1.0)
    text = (REPO / "docs" / "python-api.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) >= 8
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "docs/python-api.md", "exec"), namespace)  # noqa: S102 - the documentation's code
    rows = namespace["rows"]
    assert earlier in {row["id"] for row in rows}
    assert [row["rank"] for row in rows] == sorted(row["rank"] for row in rows)
    assert store.get_run(namespace["run"].id).status == "done"


def test_a_run_request_trains_what_train_and_the_cli_train(tmp_path):
    """``energybench.run(RunRequest)`` is the one path: the same request gives the same config hash as ``train``'s
    keywords, and a bad field is one line naming it."""
    request = energybench.RunRequest(trainer="fgsm", regularizer="der", track="digits-tiny",
                                     regularizer_params={"beta": 3.0}, settings={"epochs": 1, "eval": SMALL_EVAL})
    run = energybench.run(request, store=tmp_path, progress=False)
    assert run.config.regularizer_params["beta"] == 3.0 and len(run.epochs) == 1
    again = energybench.train("fgsm", "der", track="digits-tiny", regularizer_params={"beta": 3.0}, epochs=1,
                              eval=SMALL_EVAL, store=tmp_path / "other", progress=False)
    assert again.config.config_hash() == run.config.config_hash()
    with pytest.raises(energybench.EnergybenchError, match="epochs"):
        energybench.run(energybench.RunRequest(track="digits-tiny", settings={"epochs": 0}), store=tmp_path)


def test_the_tensorboard_logger_writes_every_epochs_metrics(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = energybench.train("fgsm", track="digits-tiny", callbacks=["tensorboard"], eval={"aa_points": 0},
                            store=tmp_path)
    events = EventAccumulator(str(run.dir / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    for tag in ("val/pgd_acc", "val/clean_acc", "train/loss", "train/dE_mean", "run/lr"):
        assert tag in scalars, tag
    logged = [(e.step, e.value) for e in events.Scalars("val/pgd_acc")]
    assert logged == [(i + 1, pytest.approx(e["val_pgd_acc"])) for i, e in enumerate(run.epochs)]


def test_an_unknown_logger_is_one_line(capsys, tmp_path):
    code = main(["run", "--track", "digits-tiny", "--log", "tensorbord", "--store", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "unknown callback 'tensorbord'; did you mean 'tensorboard'?" in err
    assert err.count("\n") == 1 and not Store(tmp_path).runs(status=None)


class _Explodes(energybench.Callback):
    """Raises at the end of the second epoch, once."""

    armed = True

    def on_validation_end(self, run, metrics):
        if run.epoch == 1 and type(self).armed:
            type(self).armed = False
            raise RuntimeError("logger lost its connection")


def test_a_failing_callback_fails_its_run_naming_it_and_resume_finishes_it(monkeypatch, tmp_path, scoped_registry):
    energybench.register_callback("explodes")(_Explodes)
    monkeypatch.setattr(_Explodes, "armed", True)
    with pytest.raises(PluginError, match="callback 'explodes' failed: RuntimeError: logger lost its connection"):
        energybench.train("fgsm", track="digits-tiny", callbacks=["explodes"], eval={"aa_points": 0},
                          store=tmp_path)
    (failed,) = Store(tmp_path).runs(status=None)
    assert failed.status == "failed" and "callback 'explodes'" in failed.error
    assert [e["epoch"] for e in Store(tmp_path).epochs(failed.id)] == [0]  # the first epoch was kept
    finished = energybench.resume(failed.id, store=tmp_path)
    assert finished.status == "done" and [e["epoch"] for e in finished.epochs] == [0, 1]


def test_a_failing_run_closes_the_tensorboard_writer(monkeypatch, tmp_path, scoped_registry):
    from energybench.training.callbacks.tensorboard import TensorBoardLogger

    loggers, opened = [], TensorBoardLogger.on_fit_start

    def opening(self, run):
        loggers.append(self)
        opened(self, run)

    monkeypatch.setattr(TensorBoardLogger, "on_fit_start", opening)
    energybench.register_callback("explodes")(_Explodes)
    monkeypatch.setattr(_Explodes, "armed", True)
    with pytest.raises(PluginError, match="callback 'explodes' failed"):
        energybench.train("fgsm", track="digits-tiny", callbacks=["tensorboard", "explodes"], eval={"aa_points": 0},
                          store=tmp_path)
    (logger,) = loggers
    assert logger.writer.all_writers is None  # closed: its event file is complete


def test_the_wheel_installs_energybench_alone(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
                    "-q", "-w", str(tmp_path), str(REPO)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("energybench-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names}
    assert top == {"energybench", f"energybench-{energybench_version()}.dist-info"}
    for expected in ("energybench/__init__.py", "energybench/cli.py", "energybench/registry.toml",
                     "energybench/plugins/regularizers/der.py", "energybench/training/loop.py",
                     "energybench/reporting/templates/report.html", "energybench/py.typed",
                     "energybench/__main__.py"):
        assert expected in names, expected
    assert not any("__pycache__" in name for name in names)
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "energybench = energybench.cli:main" in entry_points
    assert "der = energybench.plugins.regularizers.der:DeltaEnergyRegularizer" in entry_points


def test_the_installed_package_is_importable_as_energybench_only(tmp_path):
    probe = ("import importlib.util, energybench, energybench.plugins, energybench.cli; "
             "print(energybench.__file__); "
             "print([importlib.util.find_spec(n) is None for n in ('benchmark', 'plugins', 'cli')])")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, check=True)
    where, missing = result.stdout.splitlines()
    assert Path(where).parent.name in ("benchmark", "energybench") and missing == "[True, True, True]"


def test_python_m_energybench_is_the_command():
    result = subprocess.run([sys.executable, "-m", "energybench", "--version"], capture_output=True, text=True,
                            check=True)
    assert result.stdout.startswith("energybench, version")


@pytest.mark.parametrize("name", ["benchmark", "plugins"])
def test_importing_the_checkout_folders_by_their_own_names_fails_at_once(name):
    """A second copy of every module (``benchmark.contracts.attack.Attack`` beside ``energybench``'s) would make
    the registry reject every plugin: the import fails with one line saying what to import."""
    result = subprocess.run([sys.executable, "-c", f"import {name}"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("ImportError: import energybench")


def test_train_and_evaluate_show_progress_by_default_and_progress_false_silences_them(capsys, monkeypatch, tmp_path):
    """One progress hook (``energybench.Reporter``) for both: by default rich progress on stderr (the run's header and
    epoch lines; an evaluation's estimates), nothing with ``progress=False``, and a custom reporter hears both."""
    from datafiles import SMALL_EVAL

    from energybench.evaluation import protocol

    settings = {"track": "digits-tiny", "epochs": 1, "n_train": 256, "eval": SMALL_EVAL, "store": tmp_path}
    run = energybench.train("fgsm", **settings)
    err = capsys.readouterr().err
    assert f"energybench run {run.id}: fgsm + none on digits" in err and "epoch 1: loss" in err
    energybench.train("fgsm", progress=False, **settings)
    assert capsys.readouterr().err == ""
    energybench.train("standard", **settings)  # no attack in training: no train dE (never "nan")
    err = capsys.readouterr().err
    assert "epoch 1: loss" in err and "train dE" not in err and "nan" not in err
    monkeypatch.setattr(protocol, "pass_seconds", lambda *args: 1.0)  # as slow as a big model: estimates are noted
    net = run.model()
    energybench.evaluate(net, dataset="digits", test_points=20, aa_points=0, store=tmp_path)
    assert "clean, FGSM and PGD-10 on 20 test points: about 4 min" in capsys.readouterr().err
    energybench.evaluate(net, dataset="digits", test_points=20, aa_points=0, store=False, progress=False)
    assert capsys.readouterr().err == ""

    class Heard(energybench.Reporter):
        def __init__(self):
            self.heard: list[str] = []

        def epoch_done(self, epoch, metrics):
            self.heard.append(f"epoch {epoch + 1}")

        def stage(self, text):
            self.heard.append(text)

    hook = Heard()
    energybench.train("fgsm", progress=hook, **settings)
    energybench.evaluate(net, dataset="digits", test_points=10, aa_points=0, store=False, progress=hook)
    assert "epoch 1" in hook.heard and "clean, FGSM and PGD-10 on 10 test points" in hook.heard


#: Each command of the CLI and the function of the API that does its work.
COMMAND_FUNCTIONS = {"run": "train", "leaderboard": "leaderboard", "sample": "sample", "plugins": "describe_plugins",
                     "tracks": "tracks", "suite": "run_suite", "eval": "evaluate", "compare": "compare",
                     "export": "export", "import-reference": "import_reference", "report": "report",
                     "energy histograms": "energy_histograms", "energy trace": "energy_trace",
                     "energy select": "select_epochs", "store repair": "repair_store"}


def test_every_command_is_a_function_of_the_api():
    import click

    from energybench.cli import cli

    commands = {f"{name} {sub}" if isinstance(command, click.Group) else name
                for name, command in cli.commands.items()
                for sub in (command.commands if isinstance(command, click.Group) else [None])}
    assert commands == set(COMMAND_FUNCTIONS)
    for function in [*COMMAND_FUNCTIONS.values(), "resume", "run", "generative_leaderboard", "suite_plan", "get_run",
                     "load", "load_data"]:
        assert callable(getattr(energybench, function)) and function in energybench.__all__, function
    assert energybench.__version__ == energybench_version()


def test_errors_below_the_cli_name_api_parameters_and_the_cli_names_its_flags(capsys, tmp_path):
    from energybench.errors import ArgumentError

    with pytest.raises(ArgumentError, match=r"^ray_address= needs executor=ray$"):
        energybench.run_suite("tiny", ray_address="x:1", store=tmp_path)
    with pytest.raises(energybench.EnergybenchError, match=r"executor: .* 'local' or 'ray' \(got 'slurm'\)"):
        energybench.suite_plan("tiny", executor="slurm", store=tmp_path)  # not silently the local executor
    assert main(["suite", "tiny", "--ray-address", "x:1", "--store", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == "energybench: error: --ray-address needs --executor ray"
    error = ArgumentError("n=0 is too small; give dataset= (one of a, b)", "n", "dataset")
    assert error.naming({"n": "-n", "dataset": "--dataset"}) == "-n 0 is too small; give --dataset (one of a, b)"
