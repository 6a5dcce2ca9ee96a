"""The Python API: every command of the ``energybench`` command line is a function here, and the CLI is a thin layer
over them (it parses arguments and prints what they return).

Every function reads and writes the same run store the CLI uses (``store``: a folder, or by default
``$ENERGYBENCH_HOME`` or ``~/.local/share/energybench``), so runs made from a notebook show up on ``energybench
leaderboard`` and the other way round; ``catalogue`` is the registry.toml of tracks and suites to read (the CLI's
``--registry``; the plugin registry is ``energybench.contracts.registry``). Arguments are named as the command
line's options are (``test_points`` for ``--test-points``, ``arch`` for ``--arch``) and checked against their
annotations as the command line checks its flags: a wrong one raises one ``EnergybenchError`` line, and an error
that names an argument names it as here (``eps=``), which the command line says as its flag (``--eps``).
``train``, ``resume``, ``evaluate``, ``sample`` and ``run_suite`` show progress on stderr unless ``progress=False``
(or take any ``Reporter``, the one progress hook of them all).
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from energybench.config import RunConfig, RunRequest, Seed, eps_value, load_catalogue
from energybench.contracts.params import validated
from energybench.contracts.registry import model_params
from energybench.data.datasets import get_dataset
from energybench.errors import ArgumentError, EnergybenchError, unknown_name
from energybench.evaluation.external import (
    ExternalModel,
    default_track,
    eval_config,
    evaluate_external,
    measure_external,
    resolve_model,
)
from energybench.files import make_folder
from energybench.storage.store import GenerativeRecord, Store, stored_value
from energybench.storage.trained import load_trained
from energybench.training.progress import Reporter, reporter_of
from energybench.training.run import execute, prepare

#: Where the API's functions find the run store: a folder, an open ``Store``, or None for the default one.
StoreLike = str | Path | Store | None


@dataclass
class StoredRun:
    """A run in the store: its settings, status, per-epoch metrics and final test results.

    ``results`` maps ``best`` and ``last`` (the checkpoints) to their test metrics, accuracies as
    fractions (``test_clean_acc``, ``test_pgd_acc``, ``test_aa_acc``, ...: ``energybench.storage.migrations``);
    ``epochs`` lists each epoch's training and validation metrics; ``model()`` loads a checkpoint's weights.
    """

    id: str
    config: RunConfig
    status: str
    results: dict[str, dict[str, float]]
    epochs: list[dict[str, Any]]
    dir: Path
    store: Store

    @classmethod
    def of(cls, store: Store, run_id: str) -> StoredRun:
        record = store.get_run(run_id)
        return cls(record.id, RunConfig(**record.config), record.status, store.results(record.id),
                   store.epochs(record.id), store.run_dir(record.id), store)

    def model(self, checkpoint: str = "best") -> nn.Module:
        """The trained model of checkpoint ``best`` or ``last``, in eval mode."""
        return load_trained(self.id, self.store, checkpoint=checkpoint).model


def _store(store: StoreLike, *, readonly: bool = False) -> Store:
    return store if isinstance(store, Store) else Store(store, readonly=readonly)


@validated
def get_run(run_id: str, *, store: StoreLike = None) -> StoredRun:
    """The stored run ``run_id``: settings, status, per-epoch metrics, test results (``StoredRun``)."""
    return StoredRun.of(_store(store, readonly=True), run_id)


@validated
def train(trainer: str | None = None, regularizer: str | None = None, *, track: str | None = None,
          config: str | Path | None = None, trainer_params: dict[str, Any] | None = None,
          regularizer_params: dict[str, Any] | None = None, callbacks: str | Sequence[str] = (),
          store: StoreLike = None, progress: bool | Reporter = True, catalogue: str | Path | None = None,
          **settings: Any) -> StoredRun:
    """Train, evaluate and store one run, exactly as ``energybench run`` does, and return it.

    Settings resolve as on the command line: the track (default: the catalogue's default track),
    then the TOML file ``config``, then ``settings`` (any ``RunConfig`` field: ``dataset``, ``model``,
    ``eps`` (a number or ``"8/255"``), ``epochs``, ``n_train``, ``eval={"aa_points": 0}``, ...).
    ``callbacks`` names extra training-loop callbacks (e.g. ``"tensorboard"`` or ``["tensorboard"]``).
    """
    request = RunRequest(trainer, regularizer, track=track, config=config, trainer_params=trainer_params,
                         regularizer_params=regularizer_params,
                         callbacks=[callbacks] if isinstance(callbacks, str) else list(callbacks), settings=settings)
    return run(request, store=store, progress=progress, catalogue=catalogue)


@validated
def run(request: RunRequest, *, store: StoreLike = None, progress: bool | Reporter = True,
        catalogue: str | Path | None = None) -> StoredRun:
    """``train`` with its settings gathered in one ``RunRequest`` (what ``energybench run`` calls)."""
    loaded = load_catalogue(catalogue)
    resolved = prepare(request.resolve(loaded), loaded)
    target = _store(store)
    return StoredRun.of(target, execute(resolved, target, reporter=reporter_of(progress)))


@validated
def resume(run_id: str, *, store: StoreLike = None, progress: bool | Reporter = True) -> StoredRun:
    """Continue an interrupted or failed run after its last completed epoch, as ``energybench run --resume``."""
    target = _store(store)
    return StoredRun.of(target, execute(None, target, reporter=reporter_of(progress), resume=run_id))


def _module_source(model: nn.Module) -> dict[str, Any]:
    """How an in-memory model is recorded: its class and a fingerprint of its weights (so two different
    models never share a config hash)."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    cls = type(model)
    return {"kind": "module", "class": f"{cls.__module__}.{cls.__qualname__}",
            "sha256": hashlib.sha256(buffer.getvalue()).hexdigest()[:16]}


@validated
def evaluate(model: nn.Module | str, *, dataset: str | None = None, eps: float | str | None = None,
             norm: str | None = None, test_points: int | None = None, aa_points: int | None = None,
             aa_version: str | None = None, track: str | None = None, seed: Seed | None = None, device: str = "auto",
             checkpoint: str = "best", arch: str | None = None, name: str | None = None,
             model_dir: str | Path | None = None, data_root: str | Path | None = None,
             store: StoreLike | bool = None, progress: bool | Reporter = True,
             catalogue: str | Path | None = None) -> StoredRun | dict[str, float]:
    """Evaluate any model under a track's protocol and store the result: the equivalent of RobustBench's
    ``benchmark(model, dataset=..., threat_model=...)``, with energies; as ``energybench eval``.

    ``model`` is an ``nn.Module`` mapping images in [0, 1] to logits (``dataset`` needed; see ``load_data``), or a
    reference: a run id, a checkpoint file (``arch`` names its registered architecture when it is not in a run
    folder), a TorchScript file, or ``robustbench:NAME``. ``test_points`` for clean/FGSM/PGD and ``aa_points`` (and
    ``aa_version``) for AutoAttack override the protocol of ``track`` (default: the first track on the dataset);
    counts larger than the test set are fitted to it, with a note. ``name`` is what leaderboards call it. Returns
    the stored run (its ``results["last"]`` holds the metrics); the same weights evaluated again under the same
    protocol are not evaluated twice: the run that holds the result is returned (and ``progress`` says so).
    ``store=False`` stores nothing and returns the metrics only.
    """
    reporter = reporter_of(progress)
    target = None if store is False else _store(store)
    if isinstance(model, nn.Module):
        info = get_dataset(dataset) if dataset else None
        if info is None:
            raise ArgumentError("evaluating a module needs dataset= (the data it classifies)", "dataset")
        external = ExternalModel(model.eval(), info, type(model).__name__, _module_source(model))
    elif isinstance(model, str):
        external = resolve_model(model, target or _store(None), dataset=dataset, arch=arch, norm=norm,
                                 checkpoint=checkpoint, model_dir=model_dir)
    else:
        raise EnergybenchError(f"model must be an nn.Module or a reference (run id, file, robustbench:NAME), "
                               f"got {type(model).__name__}")
    config = eval_config(load_catalogue(catalogue), external, track=track, eps=eps, norm=norm, aa_points=aa_points,
                         aa_version=aa_version, test_points=test_points, seed=seed, device=device,
                         data_root=str(data_root) if data_root else None, name=name)
    try:
        if target is None:
            measured = measure_external(external, config, stage=reporter.stage, note=reporter.note)
            return {key: stored_value(value) for key, value in measured.metrics.items()}
        return StoredRun.of(target, evaluate_external(external, config, target, stage=reporter.stage,
                                                      note=reporter.note))
    finally:
        reporter.finish()


@validated
def load(ref: str, *, checkpoint: str = "best", dataset: str | None = None, arch: str | None = None,
         store: StoreLike = None) -> nn.Module:
    """The trained model of a run id (its ``best`` or ``last`` checkpoint) or of a checkpoint file, in eval
    mode; a file outside a run folder needs ``dataset`` and ``arch`` (a registered architecture)."""
    return load_trained(ref, _store(store, readonly=True), checkpoint=checkpoint, dataset=dataset, arch=arch).model


@validated
def load_data(dataset: str, split: str = "test", *, track: str | None = None, data_root: str | Path | None = None,
              catalogue: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The images and labels of one split exactly as runs and evaluations use them: ``x`` float in [0, 1], shape
    (N, C, H, W), unnormalised (models normalise inside), and ``y`` int64 labels.

    ``split`` is ``train`` (what remains after the validation split is carved out, and the track's ``n_train``
    subset), ``val`` (the validation split, for model selection; epochs validate on its first ``val_points``) or
    ``test`` (the final evaluation reads its first ``test_points``, AutoAttack its first ``aa_points``). Train and
    validation depend on the track's ``val_size`` and ``n_train`` (default: the first track on the dataset).
    """
    from energybench.data.datasets import load_dataset

    if split not in ("train", "val", "test"):
        raise EnergybenchError(f"unknown split {split!r} (use train, val or test)")
    loaded = load_catalogue(catalogue)
    name = track or default_track(loaded, get_dataset(dataset).name)
    settings = loaded.track(name).settings if name else {}
    if name and settings.get("dataset") != get_dataset(dataset).name:
        raise EnergybenchError(f"track {name!r} is on {settings.get('dataset')!r}, not {dataset!r}")
    config = RunConfig(**{k: v for k, v in settings.items() if k in ("dataset", "val_size", "n_train")})
    data = load_dataset(dataset, data_root=data_root, val_size=config.val_size, n_train=config.n_train)
    part = getattr(data, split)
    return part.x.float().div_(255), part.y


@validated
def rankings(*, dataset: str | None = None, model: str | None = None, eps: float | str | None = None,
             norm: str | None = None, track: str | None = None, suite: str | None = None, trainer: str | None = None,
             sort: str | None = None, reverse: bool = False, group_seeds: bool = False, per_arch: bool = False,
             references: bool = True, store: StoreLike = None, catalogue: str | Path | None = None):
    """The leaderboard itself (``energybench.reporting.formats.Leaderboard``: one ranking per setting, its rows and
    references), which ``leaderboard`` turns into rows or text and ``energybench leaderboard`` prints as tables;
    the filters and ``sort`` are ``leaderboard``'s."""
    from energybench.reporting.formats import build_leaderboard

    return build_leaderboard(_store(store, readonly=True), load_catalogue(catalogue), dataset=dataset, model=model,
                             eps=eps_value(eps), norm=norm, track=track, suite=suite, trainer=trainer, sort=sort,
                             reverse=reverse, group=group_seeds, per_arch=per_arch, references=references)


@validated
def leaderboard(*, dataset: str | None = None, model: str | None = None, eps: float | str | None = None,
                norm: str | None = None, track: str | None = None, suite: str | None = None,
                trainer: str | None = None, sort: str | None = None, reverse: bool = False, group_seeds: bool = False,
                per_arch: bool = False, references: bool = False, format: str | None = None,
                store: StoreLike = None, catalogue: str | Path | None = None) -> list[dict[str, Any]] | str:
    """The leaderboard, as ``energybench leaderboard`` ranks it: one ranking per (dataset, threat model, eps), the
    architecture a column (``per_arch``: one ranking per architecture too). Returns the ranked rows as plain dicts
    (accuracies as fractions; the fields of ``--format json``, named as the result keys), with
    ``references=True`` also the published reference rows (rank None); ``pandas.DataFrame(rows)`` makes a table. With
    ``format`` (table, markdown, csv, json, html) it returns the text the command prints instead, references
    included unless ``references`` is False."""
    from energybench.reporting.formats import export, records

    board = rankings(dataset=dataset, model=model, eps=eps, norm=norm, track=track, suite=suite, trainer=trainer,
                     sort=sort, reverse=reverse, group_seeds=group_seeds, per_arch=per_arch,
                     references=format is not None or references, store=store, catalogue=catalogue)
    if format is not None:
        return export(board.nonempty(), format)
    measured, refs = records(board)
    return measured + (refs if references else [])


@validated
def generative_leaderboard(*, dataset: str | None = None, model: str | None = None, references: bool = True,
                           store: StoreLike = None, catalogue: str | Path | None = None):
    """The generative leaderboard, as ``energybench leaderboard --generative`` prints it: stored samplings
    (``sample``) ranked by FID per dataset, feature space and sample size, filtered by ``dataset`` and ``model`` (the
    architecture), and the published references (``energybench.reporting.generative_leaderboard.GenerativeBoard``)."""
    from energybench.reporting.generative_leaderboard import build_generative_board

    return build_generative_board(_store(store, readonly=True), load_catalogue(catalogue), dataset=dataset,
                                  model=model, references=references)


@validated
def comparison(ref_a: str, ref_b: str, *, checkpoint: str = "last", margin: float = 1.0, store: StoreLike = None):
    """The comparison ``compare`` returns as a dict and ``energybench compare`` prints as a table
    (``energybench.reporting.compare.RowComparison``)."""
    from energybench.reporting.compare import compare as compare_rows

    return compare_rows(_store(store, readonly=True), ref_a, ref_b, checkpoint=checkpoint, margin=margin / 100)


@validated
def compare(ref_a: str, ref_b: str, *, checkpoint: str = "last", margin: float = 1.0,
            store: StoreLike = None) -> dict[str, Any]:
    """``energybench compare``: per accuracy, A - B with its 95 % interval, the paired test's p-value and a verdict
    (``margin``: the equivalence margin in accuracy points). A REF is a run id or ``group:RUN_ID``; the dict is
    ``--format json``'s."""
    from energybench.reporting.compare import comparison_dict

    return comparison_dict(comparison(ref_a, ref_b, checkpoint=checkpoint, margin=margin, store=store))


@validated
def export(run_id: str, output: str | Path, *, checkpoint: str = "last", name: str | None = None, authors: str = "",
           link: str = "", venue: str = "", store: StoreLike = None) -> dict[str, Any]:
    """``energybench export``: write the run's result as a RobustBench model-info JSON file; return its fields."""
    from energybench.storage.references import export_model_info

    return export_model_info(_store(store, readonly=True), run_id, output, checkpoint=checkpoint, name=name,
                             authors=authors, link=link, venue=venue)


@validated
def import_reference(files: Sequence[str | Path], *, norm: str | None = None,
                     store: StoreLike = None) -> list[dict[str, Any]]:
    """``energybench import-reference``: add RobustBench model-info files as (never ranked) reference rows."""
    from energybench.storage.references import import_model_info

    return [asdict(ref) for ref in import_model_info(list(files), _store(store), norm=norm)]


@validated
def report(refs: Sequence[str], output: str | Path = "report.html", *, title: str | None = None,
           store: StoreLike = None, catalogue: str | Path | None = None) -> Path:
    """``energybench report``: one self-contained HTML page of suites and runs; returns its path."""
    from energybench.reporting.report import write_report

    return write_report(_store(store, readonly=True), load_catalogue(catalogue), list(refs), output, title=title)


@validated
def tracks(*, catalogue: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """``energybench tracks``: every track of the catalogue, its description and settings (the default track first
    is named by ``default``)."""
    loaded = load_catalogue(catalogue)
    return {name: {"description": t.description, "default": name == loaded.default_track,
                   "settings": RunConfig(**t.settings).model_dump()} for name, t in loaded.tracks.items()}


@dataclass
class PluginInfo:
    """A registered plugin as ``energybench plugins`` lists it: kind, name, the distribution it comes from, and its
    effective defaults (``defaults``: its hyper-parameters after the catalogue's ``[defaults.<kind>.<name>]``, what a
    run gets when it sets none; a model's keyword arguments) or, for a dataset, its facts (``facts``)."""

    kind: str
    name: str
    source: str
    defaults: dict[str, Any]
    facts: str | None = None


@validated
def describe_plugins(kind: str | None = None, *, catalogue: str | Path | None = None) -> list[PluginInfo]:
    """``energybench plugins``: every registered plugin (of ``kind``, default all kinds) with its effective defaults;
    plugins that fail to load are left out and named in ``get_registry().problems``."""
    import inspect

    from energybench.contracts.params import parse_params
    from energybench.contracts.registry import KINDS, get_registry

    if kind is not None and kind not in KINDS:
        raise unknown_name("plugin kind", kind, list(KINDS))
    loaded = load_catalogue(catalogue)
    found = []
    for name in [kind] if kind else list(KINDS):
        for entry, cls in get_registry().load_all(name):
            if name == "dataset":
                found.append(PluginInfo(name, entry.name, entry.source, {}, cls().describe()))
                continue
            if name == "model":
                defaults = {p.name: p.default for p in inspect.signature(cls.__init__).parameters.values()
                            if p.name in model_params(cls) and p.default is not inspect.Parameter.empty}
            else:
                params = parse_params(cls.Params, loaded.defaults_for(name, entry.name), f"{name} {entry.name!r}")
                fields = type(params).model_fields.items()
                defaults = {field.alias or key: getattr(params, key) for key, field in fields}
            found.append(PluginInfo(name, entry.name, entry.source, defaults))
    return found


@validated
def suite_plan(name: str, *, executor: Literal["local", "ray"] = "local", ray_address: str | None = None,
               data_root: str | Path | None = None, device: str | None = None, store: StoreLike = None,
               catalogue: str | Path | None = None):
    """``energybench suite NAME --dry-run``: the ``SuitePlan`` (``energybench.suites.plan``), every cell of the suite
    (tuning, then evaluation) in ``cells``, whether the store holds it, the epochs of a killed run that ``executor``
    would resume, its estimated example passes and seconds still to spend (None until a speed is known)."""
    from energybench.suites.plan import plan_suite

    return plan_suite(load_catalogue(catalogue), name, _store(store, readonly=True),
                      data_root=str(data_root) if data_root else None, device=device,
                      executor=_executor(executor, ray_address))


def _executor(executor: Literal["local", "ray"], ray_address: str | None, progress: bool | Reporter = False):
    from energybench.suites.executors import LocalExecutor, RayExecutor

    if ray_address and executor != "ray":
        raise ArgumentError("ray_address= needs executor=ray", "ray_address", "executor")
    return RayExecutor(ray_address) if executor == "ray" else LocalExecutor(lambda: reporter_of(progress))


@validated
def run_suite(name: str, *, executor: Literal["local", "ray"] = "local", ray_address: str | None = None,
              data_root: str | Path | None = None, device: str | None = None, store: StoreLike = None,
              catalogue: str | Path | None = None, progress: bool | Reporter = True,
              on_stage: Callable[[str, int, int], None] = lambda stage, cells, todo: None,
              on_done: Callable[[Any], None] = lambda outcome: None,
              on_epoch: Callable[[Any, int], None] = lambda cell, epochs: None):
    """``energybench suite NAME``: run the cells not done yet (tuning, then evaluation; ``executor`` local or ray);
    returns the ``SuiteResult`` (every cell's outcome, the tuning selections, the evaluation cells).
    ``on_done(outcome)`` hears each cell's end; ``on_epoch(cell, epochs_done)`` the epochs of cells running on a
    local Ray instance (every 30 s; the local executor shows ``progress`` live instead)."""
    from energybench.suites.runner import run_suite as run_cells
    from energybench.suites.spec import load_suite

    runner = _executor(executor, ray_address, progress)
    loaded = load_catalogue(catalogue)
    return run_cells(load_suite(loaded, name), loaded, _store(store), runner,
                     data_root=str(data_root) if data_root else None, device=device, on_stage=on_stage,
                     on_done=on_done, on_epoch=on_epoch)


@validated
def sample(model: str, *, sampler: str | Sequence[str] = "local-pca", n: int = 1000, params: dict | None = None,
           seed: Seed = 0, checkpoint: str = "best", features: str = "auto", dataset: str | None = None,
           arch: str | None = None, inception_weights: str | Path | None = None, out_dir: str | Path | None = None,
           batch_size: int = 250, device: str = "auto", data_root: str | Path | None = None,
           store: StoreLike = None, catalogue: str | Path | None = None, progress: bool | Reporter = True,
           log: Callable[[str], None] | None = None) -> list[GenerativeRecord]:
    """Generate ``n`` class-conditional samples per sampler from a trained classifier (a run id or checkpoint
    file), measure them (IS/FID and the rest, see ``energybench.generation``), store and return the results,
    one record per sampler; ``params`` are sampler hyper-parameters (``KEY`` or ``SAMPLER.KEY``)."""
    from energybench.generation.generate import SampleRequest, generate

    request = SampleRequest(model, [sampler] if isinstance(sampler, str) else list(sampler), n=n, params=params or {},
                            seed=seed, checkpoint=checkpoint, dataset=dataset, arch=arch,
                            data_root=str(data_root) if data_root else None, out_dir=out_dir, features=features,
                            inception_weights=str(inception_weights) if inception_weights else None,
                            batch_size=batch_size, device=device)
    return generate(request, _store(store), load_catalogue(catalogue), reporter=reporter_of(progress),
                    log=log or (lambda line: None))


@dataclass
class EnergyHistograms:
    """``energy_histograms``' result: what was attacked (``title``), per energy and source its quantiles and shift
    from clean (``stats``, ``energybench.reporting.energy_figures.EnergyStats``), and the PNG written."""

    title: str
    stats: list
    figure: Path


@validated
def energy_histograms(model: str, *, attacks: Sequence[str] = ("pgd", "apgd-t", "cw", "square", "fgsm"),
                      n: int = 500, eps: float | str | None = None, norm: str | None = None, checkpoint: str = "best",
                      dataset: str | None = None, arch: str | None = None, model_dir: str | Path | None = None,
                      output: str | Path | None = None, data_root: str | Path | None = None, device: str = "auto",
                      store: StoreLike = None, progress: bool | Reporter = True) -> EnergyHistograms:
    """``energybench energy histograms``: E(x) and E(x,y) of the first ``n`` clean test points and of their attacked
    counterparts under each attack, as a PNG (``output``, default ``energy-histograms-REF.png``) and quantiles."""
    from energybench.reporting.energy_figures import (
        HistogramRequest,
        energy_stats,
        histogram_figure,
        model_histograms,
        save_figure,
    )

    reporter = reporter_of(progress)
    request = HistogramRequest(ref=model, attacks=list(attacks), n=n, eps=eps_value(eps), norm=norm,
                               checkpoint=checkpoint, dataset=dataset, arch=arch,
                               model_dir=str(model_dir) if model_dir else None,
                               data_root=str(data_root) if data_root else None, device=device)
    path = Path(output or f"energy-histograms-{Path(model).stem.replace(':', '-')}.png")
    make_folder(path.parent, path)  # a path that cannot be written fails before the attacks run
    try:
        data, title = model_histograms(request, _store(store, readonly=True), on_attack=lambda name: reporter.stage(
            f"energies under {name}"))
    finally:
        reporter.finish()
    save_figure(histogram_figure(data, title=title), path)
    return EnergyHistograms(title, energy_stats(data), path)


@validated
def energy_trace(run_ids: Sequence[str], output: str | Path = "energy-trace.png", *, store: StoreLike = None) -> list:
    """``energybench energy trace``: per-epoch train and validation dE beside PGD and FGSM validation accuracy of the
    runs, overlaid in a PNG (``output``); returns each run's series (``RunTrace``)."""
    from energybench.reporting.energy_figures import load_traces, save_figure, trace_figure

    traces = load_traces(_store(store, readonly=True), list(run_ids))
    save_figure(trace_figure(traces), output)
    return traces


@validated
def select_epochs(run_ids: Sequence[str], *, store: StoreLike = None) -> dict[str, dict[str, dict[str, float]]]:
    """``energybench energy select``: per run and checkpoint-selection criterion (``val-pgd``: best validation PGD
    accuracy; ``dE``: attack-free, from the CO monitor's alarms; ``last``), the epoch it picks (``epoch``, 0-based)
    and that epoch's validation PGD accuracy (``val_pgd_acc``)."""
    from energybench.evaluation.selection import CRITERIA, select_epoch

    target = _store(store, readonly=True)
    picks = {}
    for run_id in run_ids:
        history = target.epochs(target.get_run(run_id).id)
        epochs = {c: select_epoch(history, c) for c in CRITERIA}
        picks[run_id] = {c: {"epoch": e, "val_pgd_acc": history[e]["val_pgd_acc"]} for c, e in epochs.items()}
    return picks


@validated
def repair_store(store: StoreLike = None) -> str:
    """``energybench store repair``: rebuild a missing, empty or damaged store database from the run folders (the
    old file is kept); returns what was done, in words."""
    from energybench.storage.repair import repair_store as rebuild

    return rebuild(store.home if isinstance(store, Store) else store).summary()
