"""`energybench eval`: a track's evaluation protocol on a model that energybench did not train.

A model is named by reference: ``robustbench:NAME`` (RobustBench's model zoo, through
``energybench.evaluation.robustbench_compat``), a TorchScript file, a state-dict file plus a registered model
name, an energybench checkpoint file, or a run id. It is evaluated like a run's final test
evaluation (clean, FGSM and PGD accuracy, AutoAttack, energy statistics) and stored as a run of
trainer ``external`` whose ``trainer_params`` record where the weights came from. Its ``best``
and ``last`` results are the same numbers, so it takes part in every leaderboard. Its stored config holds
what applies to an evaluation (``EVALUATION_FIELDS``), none of the training settings; the same weights under
the same protocol (the same config hash) are evaluated once (``stored_evaluation``).
"""

from __future__ import annotations

import hashlib
import time
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn

from energybench.config import Catalogue, RunConfig, cpu_threads, parse_eps, readable, select_device
from energybench.contracts.dataset import Dataset
from energybench.data.counts import fit_counts
from energybench.data.datasets import Split, get_dataset, load_dataset
from energybench.errors import ArgumentError, EnergybenchError
from energybench.evaluation.protocol import test_evaluation
from energybench.evaluation.robustbench_compat import ZOO_PREFIX, load_zoo_model
from energybench.evaluation.robustness import Measurement, as_float
from energybench.ops.modes import eval_mode
from energybench.storage.store import RunRecord, Store
from energybench.storage.trained import load_trained

#: The trainer name of runs that evaluate a model trained elsewhere.
EXTERNAL = "external"
#: What an evaluation's stored config holds: where the model came from and the test protocol, no training setting
#: (every other field keeps its default, so the config hash is recomputed from what is stored).
EVALUATION_FIELDS: dict[str, Any] = {
    **{k: True for k in ("track", "name", "dataset", "model", "trainer", "trainer_params", "regularizer", "eps",
                         "norm", "seed", "device", "threads", "data_root")},
    "eval": {"test_points", "pgd_steps", "pgd_restarts", "aa_points", "aa_version", "batch_size"}}


@dataclass
class ExternalModel:
    """A model to evaluate: the module (eval mode), its dataset, its label and where it came from."""

    model: nn.Module
    info: Dataset
    label: str  # the leaderboard's model column: an architecture, robustbench:NAME or torchscript:FILE
    source: dict[str, Any]  # stored as the run's trainer_params
    track: str | None = None  # the track of the energybench run it came from
    seed: int = 0  # that run's seed: its evaluation is repeated exactly


def _dataset_info(dataset: str | None, ref: str) -> Dataset:
    if not dataset:
        from energybench.contracts.registry import list_plugins

        raise ArgumentError(f"{ref}: give dataset= (one of {', '.join(list_plugins('dataset'))}, or an image "
                            "folder's path)", "dataset")
    return get_dataset(dataset)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def is_torchscript(path: Path) -> bool:
    """True for a ``torch.jit.save`` archive (a zip holding compiled ``code/``), not a ``torch.save`` file."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def resolve_model(ref: str, store: Store, *, dataset: str | None = None, arch: str | None = None,
                  norm: str | None = None, checkpoint: str = "best",
                  model_dir: str | Path | None = None) -> ExternalModel:
    """Load ``ref``: ``robustbench:NAME``, a TorchScript file, a checkpoint file or a run id of ``store``.

    RobustBench weights are read from ``model_dir`` (default ``STORE/robustbench-models``) in
    RobustBench's layout ``<dataset>/<threat model>/<NAME>.pt``; a bare state-dict file needs
    ``dataset`` and ``arch`` (a registered architecture).
    """
    if ref.startswith(ZOO_PREFIX):
        name = ref[len(ZOO_PREFIX):]
        info = _dataset_info(dataset or "cifar10", ref)
        threat_model = norm or "Linf"
        net = load_zoo_model(name, dataset=info.name, threat_model=threat_model,
                             model_dir=model_dir or store.home / "robustbench-models")
        return ExternalModel(net, info, ref, {"kind": "robustbench", "name": name, "threat_model": threat_model})
    path = Path(ref)
    if path.is_file() and is_torchscript(path):
        info = _dataset_info(dataset, ref)
        try:
            with warnings.catch_warnings():  # torch deprecates TorchScript in favour of torch.export
                warnings.simplefilter("ignore", FutureWarning)
                net = torch.jit.load(str(path), map_location="cpu")
        except Exception as exc:
            raise EnergybenchError(f"cannot load TorchScript file {ref}: {type(exc).__name__}: "
                                   f"{str(exc)[:160]}") from None
        source = {"kind": "torchscript", "path": str(path.resolve()), "sha256": _sha256(path)}
        return ExternalModel(net.eval(), info, f"torchscript:{path.name}", source)
    if not path.is_file() and path.suffix not in (".pt", ".pth", ".ckpt"):
        record = store.get_run(ref)
        if record.trainer == EXTERNAL:  # re-evaluate what an earlier `eval` evaluated
            return _from_source(record.config["trainer_params"], store, record.dataset, record.model,
                                model_dir=model_dir, run_id=record.id)
    trained = load_trained(ref, store, checkpoint=checkpoint, dataset=dataset, arch=arch)
    config = trained.config
    label = arch or config.model
    if path.is_file():
        source = {"kind": "checkpoint", "path": str(path.resolve()), "sha256": _sha256(path), "model": label}
    else:
        source = {"kind": "run", "run": ref, "checkpoint": checkpoint, "trainer": config.trainer,
                  "regularizer": config.regularizer}
    return ExternalModel(trained.model, trained.info, label, source, track=config.track if config else None,
                         seed=config.seed if config else 0)


def _from_source(source: dict[str, Any], store: Store, dataset: str, label: str, *,
                 model_dir: str | Path | None, run_id: str = "") -> ExternalModel:
    """The model an earlier evaluation (run ``run_id``) evaluated; a file must still hold the same bytes."""
    kind = source.get("kind")
    if "path" in source:
        path = Path(source["path"])
        if not path.is_file():
            raise EnergybenchError(f"{path}, which run {run_id} evaluated, no longer exists; evaluate the file "
                                   "where it is now: energybench eval FILE")
        now = _sha256(path) if source.get("sha256") else None
        if now is not None and now != source["sha256"]:
            raise EnergybenchError(f"{path} changed since run {run_id} evaluated it (sha256 {source['sha256']} "
                                   f"then, {now} now); evaluate it as a new model: energybench eval {path}")
    if kind == "robustbench":
        return resolve_model(ZOO_PREFIX + source["name"], store, dataset=dataset, norm=source["threat_model"],
                             model_dir=model_dir)
    if kind == "run":
        return resolve_model(source["run"], store, checkpoint=source["checkpoint"])
    return resolve_model(source["path"], store, dataset=dataset, arch=source.get("model"))


def default_track(catalogue: Catalogue, dataset: str) -> str | None:
    """The first track of the catalogue on ``dataset``, whose protocol evaluates its models."""
    return next((name for name, t in catalogue.tracks.items() if t.settings.get("dataset") == dataset), None)


def eval_config(catalogue: Catalogue, external: ExternalModel, *, track: str | None = None,
                eps: str | float | None = None, norm: str | None = None, aa_points: int | None = None,
                aa_version: str | None = None, test_points: int | None = None, seed: int | None = None,
                device: str = "auto", data_root: str | None = None, name: str | None = None) -> RunConfig:
    """The config of an evaluation: the track's eps, norm, protocol and CPU threads, then explicit options."""
    track = track or external.track or default_track(catalogue, external.info.name)
    settings = catalogue.track(track).settings if track else {}
    if track and settings.get("dataset") != external.info.name:
        raise EnergybenchError(f"track {track!r} is on {settings.get('dataset')!r} but the model is evaluated on "
                               f"{external.info.name!r}; pick a track on that dataset or none")
    protocol = {k: v for k, v in settings.get("eval", {}).items() if k in EVALUATION_FIELDS["eval"]}
    protocol.update({k: v for k, v in {"aa_points": aa_points, "aa_version": aa_version,
                                       "test_points": test_points}.items() if v is not None})
    if eps is None and "eps" not in settings:
        raise ArgumentError(f"no track on {external.info.name!r} gives an eps: pass eps= (e.g. 8/255)", "eps")
    if eps is None and norm is not None and norm != settings.get("norm", "Linf"):
        raise ArgumentError(f"track {track!r} gives an eps for {settings.get('norm', 'Linf')}, not {norm}: "
                            "pass eps= for this threat model", "eps")
    try:
        eps_value = parse_eps(eps if eps is not None else settings["eps"])
        fields = {"track": track, "dataset": external.info.name, "model": external.label, "trainer": EXTERNAL,
                  "trainer_params": external.source, "regularizer": "none", "eps": eps_value,
                  "norm": norm or settings.get("norm", "Linf"), "eval": protocol, "name": name,
                  "seed": external.seed if seed is None else seed, "device": device, "data_root": data_root,
                  "threads": settings.get("threads")}
        return RunConfig(**fields)
    except ValueError as exc:
        message = readable(exc) if isinstance(exc, ValidationError) else str(exc)
        raise EnergybenchError(f"invalid evaluation settings: {message}") from None


def _check_outputs(model: nn.Module, x: torch.Tensor, info: Dataset, label: str) -> None:
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:
        raise EnergybenchError(f"model {label} fails on {info.name} images of shape {tuple(x.shape[1:])}: "
                               f"{type(exc).__name__}: {str(exc)[:160]}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (len(x), info.num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise EnergybenchError(f"model {label} returns {shape} for {len(x)} {info.name} images; expected logits "
                               f"of shape ({len(x)}, {info.num_classes})")
    if not torch.isfinite(out).all():
        raise EnergybenchError(f"model {label} returns non-finite logits (nan or inf) for {info.name} images: "
                               "no accuracy can be measured from them")


def stored_evaluation(store: Store, config: RunConfig) -> RunRecord | None:
    """The completed evaluation of the same weights under the same protocol (``config``'s hash), if ``store`` has one
    (the latest)."""
    done = store.runs(config_hash=config.config_hash())
    return done[-1] if done else None


@dataclass
class Prepared:
    """What an evaluation runs on once its input is accepted: the config with its counts fitted to the test set,
    the model on its device, the test split."""

    config: RunConfig
    model: nn.Module
    test: Split
    device: torch.device


def prepare_external(external: ExternalModel, config: RunConfig, *,
                     note: Callable[[str], None] = lambda text: None) -> Prepared:
    """The checks a refused input fails before anything is stored: the device, the data and the model's outputs on
    two test images; counts larger than the test set are fitted to it (``fit_counts``), each with a ``note``."""
    device = select_device(config.device)
    model = external.model.to(device)
    data = load_dataset(config.dataset, data_root=config.data_root, val_size=1)  # only its test split is used
    with eval_mode(model):
        _check_outputs(model, as_float(data.test.x[:2], device), external.info, external.label)
    config, warnings = fit_counts(config, data, validation=False)
    for warning in warnings:
        note(warning)
    return Prepared(config, model, data.test, device)


def measure(prepared: Prepared, *, stage: Callable[[str], None] = lambda text: None,
            note: Callable[[str], None] = lambda text: None) -> Measurement:
    """The protocol's test evaluation (``test_evaluation``) of a prepared model; nothing is stored."""
    torch.manual_seed(prepared.config.seed)
    return test_evaluation(prepared.model, prepared.test, prepared.config, prepared.device, stage, note)


def measure_external(external: ExternalModel, config: RunConfig, *, stage: Callable[[str], None] = lambda text: None,
                     note: Callable[[str], None] = lambda text: None) -> Measurement:
    """Evaluate ``external`` with ``config``'s protocol on the test set, on its CPU threads; nothing is stored."""
    with cpu_threads(config.threads):
        return measure(prepare_external(external, config, note=note), stage=stage, note=note)


def evaluate_external(external: ExternalModel, config: RunConfig, store: Store, *,
                      stage: Callable[[str], None] = lambda text: None,
                      note: Callable[[str], None] = lambda text: None) -> str:
    """Evaluate ``external`` and store it as a run (its config: ``EVALUATION_FIELDS``); return its id.

    A damaged store and a refused input (``prepare_external``) store nothing; the same weights under the same
    protocol already evaluated in ``store`` are not evaluated again: the run that holds the result is returned
    (with a ``note``)."""
    store.check_integrity()
    with cpu_threads(config.threads):
        prepared = prepare_external(external, config, note=note)
        config = prepared.config
        done = stored_evaluation(store, config)
        if done is not None:
            named = f" (named {done.config['name']!r})" if done.config.get("name") else ""
            note(f"run {done.id}{named} already holds this result: the same weights under the same protocol "
                 "(config hash); not evaluated again")
            return done.id
        run_id = store.create_run(config.model_dump(include=EVALUATION_FIELDS), config.config_hash())
        start = time.perf_counter()
        try:
            measured = measure(prepared, stage=stage, note=note)
            for tag in ("last", "best"):
                store.add_results(run_id, tag, measured.metrics)
                store.add_points(run_id, tag, measured.correct)
        except KeyboardInterrupt:
            store.set_status(run_id, "interrupted", error="interrupted by the user",
                             wall_time=time.perf_counter() - start)
            raise
        except Exception as exc:
            message = str(exc) if isinstance(exc, EnergybenchError) else f"{type(exc).__name__}: {exc}"
            store.set_status(run_id, "failed", error=message, wall_time=time.perf_counter() - start)
            raise
        store.set_status(run_id, "done", wall_time=time.perf_counter() - start)
    return run_id
