"""The Python API: train, evaluate, load, leaderboard and sample; the CLI is a thin layer over these.

Every function stores what it measures in the same run store the CLI uses (``store``: a folder, or
by default ``$ENERGYBENCH_HOME`` or ``~/.local/share/energybench``), so runs made from a notebook
show up on ``energybench leaderboard`` and the other way round.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from energybench.config import RunConfig, load_catalogue, resolve_config
from energybench.data.datasets import get_dataset
from energybench.errors import EnergybenchError
from energybench.evaluation.external import ExternalModel, eval_config, evaluate_external, resolve_model
from energybench.storage.store import GenerativeRecord, Store
from energybench.storage.trained import load_trained
from energybench.training.progress import Reporter
from energybench.training.run import execute, prepare


@dataclass
class StoredRun:
    """A run in the store: its settings, status, per-epoch metrics and final test results.

    ``results`` maps ``best`` and ``last`` (the checkpoints) to their test metrics, accuracies as
    fractions (``test_clean_acc``, ``test_pgd_acc``, ``test_aa_acc``, ...: ``energybench.storage.result_keys``);
    ``epochs`` lists each epoch's
    training and validation metrics; ``model()`` loads a checkpoint's weights.
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


def _store(store: str | Path | Store | None) -> Store:
    return store if isinstance(store, Store) else Store(store)


def train(trainer: str | None = None, regularizer: str | None = None, *, track: str | None = None,
          config: str | Path | None = None, trainer_params: dict[str, Any] | None = None,
          regularizer_params: dict[str, Any] | None = None, callbacks: Sequence[str] = (),
          store: str | Path | Store | None = None, reporter: Reporter | None = None,
          registry: str | Path | None = None, **settings: Any) -> StoredRun:
    """Train, evaluate and store one run, exactly as ``energybench run`` does, and return it.

    Settings resolve as on the command line: the track (default: the catalogue's default track),
    then the TOML file ``config``, then ``settings`` (any ``RunConfig`` field: ``dataset``, ``model``,
    ``eps`` (a number or ``"8/255"``), ``epochs``, ``n_train``, ``eval={"aa_points": 0}``, ...).
    ``callbacks`` names extra training-loop callbacks (e.g. ``["tensorboard"]``).
    """
    catalogue = load_catalogue(registry)
    overrides = settings | {"trainer": trainer, "regularizer": regularizer, "trainer_params": trainer_params,
                            "regularizer_params": regularizer_params, "callbacks": list(callbacks) or None}
    resolved = prepare(resolve_config(catalogue, track=track, config_file=config, overrides=overrides), catalogue)
    target = _store(store)
    return StoredRun.of(target, execute(resolved, target, reporter=reporter))


def resume(run_id: str, *, store: str | Path | Store | None = None, reporter: Reporter | None = None) -> StoredRun:
    """Continue an interrupted or failed run after its last completed epoch, as ``energybench run --resume``."""
    target = _store(store)
    return StoredRun.of(target, execute(None, target, reporter=reporter, resume=run_id))


def _module_source(model: nn.Module) -> dict[str, Any]:
    """How an in-memory model is recorded: its class and a fingerprint of its weights (so two different
    models never share a config hash)."""
    buffer = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
    cls = type(model)
    return {"kind": "module", "class": f"{cls.__module__}.{cls.__qualname__}",
            "sha256": hashlib.sha256(buffer.getvalue()).hexdigest()[:16]}


def evaluate(model: nn.Module | str, *, dataset: str | None = None, eps: float | str | None = None,
             norm: str | None = None, n: int | None = None, aa_points: int | None = None, track: str | None = None,
             seed: int | None = None, device: str = "auto", checkpoint: str = "best", arch: str | None = None,
             model_dir: str | Path | None = None, data_root: str | Path | None = None,
             store: str | Path | Store | None = None, registry: str | Path | None = None,
             on_stage: Callable[[str], None] | None = None) -> StoredRun:
    """Evaluate any model under a track's protocol and store the result: the equivalent of RobustBench's
    ``benchmark(model, dataset=..., threat_model=...)``, with energies.

    ``model`` is an ``nn.Module`` mapping images in [0, 1] to logits (``dataset`` needed), or a reference:
    a run id, a checkpoint file (``arch`` names its registered architecture when it is not in a run folder),
    a TorchScript file, or ``robustbench:NAME``. ``n`` test points for clean/FGSM/PGD and ``aa_points`` for
    AutoAttack override the protocol of ``track`` (default: the first track on the dataset). The stored
    run's ``results["last"]`` holds the metrics.
    """
    target = _store(store)
    if isinstance(model, nn.Module):
        info = get_dataset(dataset) if dataset else None
        if info is None:
            raise EnergybenchError("evaluating a module needs dataset= (the data it classifies)")
        external = ExternalModel(model.eval(), info, type(model).__name__, _module_source(model))
    elif isinstance(model, str):
        external = resolve_model(model, target, dataset=dataset, model=arch, norm=norm, checkpoint=checkpoint,
                                 model_dir=model_dir)
    else:
        raise EnergybenchError(f"model must be an nn.Module or a reference (run id, file, robustbench:NAME), "
                               f"got {type(model).__name__}")
    config = eval_config(load_catalogue(registry), external, track=track, eps=eps, norm=norm, aa_points=aa_points,
                         test_points=n, seed=seed, device=device, data_root=str(data_root) if data_root else None)
    return StoredRun.of(target, evaluate_external(external, config, target, on_stage=on_stage))


def load(ref: str, *, checkpoint: str = "best", dataset: str | None = None, arch: str | None = None,
         store: str | Path | Store | None = None) -> nn.Module:
    """The trained model of a run id (its ``best`` or ``last`` checkpoint) or of a checkpoint file, in eval
    mode; a file outside a run folder needs ``dataset`` and ``arch`` (a registered architecture)."""
    return load_trained(ref, _store(store), checkpoint=checkpoint, dataset=dataset, model=arch).model


def leaderboard(*, dataset: str | None = None, model: str | None = None, eps: float | str | None = None,
                norm: str | None = None, track: str | None = None, suite: str | None = None,
                trainer: str | None = None, group_seeds: bool = False, references: bool = False,
                store: str | Path | Store | None = None, registry: str | Path | None = None) -> list[dict[str, Any]]:
    """The leaderboard's rows as plain dicts (ranked; accuracies as fractions; the fields of
    ``energybench leaderboard --format json``). ``pandas.DataFrame(rows)`` makes a table of them.
    ``references=True`` appends the published reference rows (rank None)."""
    from energybench.config import parse_eps
    from energybench.reporting.formats import build_leaderboard, records

    eps_value = parse_eps(eps) if eps is not None else None
    board = build_leaderboard(_store(store), load_catalogue(registry), dataset=dataset, model=model, eps=eps_value,
                              norm=norm, track=track, suite=suite, trainer=trainer, group=group_seeds,
                              references=references)
    measured, refs = records(board)
    return measured + (refs if references else [])


def sample(model: str, *, sampler: str | Sequence[str] = "local-pca", n: int = 1000, params: dict | None = None,
           seed: int = 0, checkpoint: str = "best", features: str = "auto", dataset: str | None = None,
           arch: str | None = None, inception_weights: str | Path | None = None, out_dir: str | Path | None = None,
           batch_size: int = 250, device: str = "auto", data_root: str | Path | None = None,
           store: str | Path | Store | None = None, registry: str | Path | None = None,
           reporter: Reporter | None = None, log: Callable[[str], None] | None = None) -> list[GenerativeRecord]:
    """Generate ``n`` class-conditional samples per sampler from a trained classifier (a run id or checkpoint
    file), measure them (IS/FID and the rest, see ``energybench.generation``), store and return the results,
    one record per sampler; ``params`` are sampler hyper-parameters (``KEY`` or ``SAMPLER.KEY``)."""
    from energybench.generation.generate import generate

    samplers = [sampler] if isinstance(sampler, str) else list(sampler)
    return generate(model, _store(store), load_catalogue(registry), samplers=samplers, n=n,
                    assignments=params or {}, seed=seed, checkpoint=checkpoint, dataset=dataset, model=arch,
                    data_root=data_root, out_dir=out_dir, features=features, inception_weights=inception_weights,
                    batch_size=batch_size, device=device, reporter=reporter, log=log or (lambda line: None))
