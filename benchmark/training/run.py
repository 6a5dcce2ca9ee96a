"""A run's lifecycle: settings checked and completed, training, test evaluation of its checkpoints, stored.

``prepare`` checks a ``RunConfig`` against the registry and completes the plugin hyper-parameters;
``execute`` creates the run in the store, trains it (``energybench.training.loop.Run``: resumable
after every epoch), then evaluates the best (by validation PGD accuracy) and last checkpoints on the
test set (``energybench.evaluation.protocol``) and records how it ended.
"""

from __future__ import annotations

import statistics
import time

import torch

from energybench.config import Catalogue, RunConfig, cpu_threads
from energybench.contracts.params import parse_params
from energybench.contracts.registry import get_registry
from energybench.data.counts import fit_counts
from energybench.data.datasets import dataset_name, load_dataset
from energybench.errors import Diverged, EnergybenchError, Interrupted
from energybench.evaluation.protocol import test_evaluation
from energybench.evaluation.sanity import evaluation_warnings
from energybench.storage.checkpoint import load_checkpoint
from energybench.storage.store import RunRecord, Store
from energybench.training.loop import Run, attack_start_refused
from energybench.training.progress import Reporter


def prepare(config: RunConfig, catalogue: Catalogue) -> RunConfig:
    """Check plugin names and their combination, fill in every plugin hyper-parameter, and record an image-folder
    dataset by its absolute path."""
    registry = get_registry()
    trainer_cls = registry.load("trainer", config.trainer)
    reg_cls = registry.load("regularizer", config.regularizer)
    registry.load("model", config.model)
    for name in config.callbacks:
        registry.load("callback", name)
    if config.monitor.enabled and config.monitor.action == "rollback":
        registry.load("trainer", config.monitor.fallback_trainer)
    if reg_cls.requires_adversarial and not trainer_cls.adversarial:
        adversarial = [n for n in registry.names("trainer") if n != config.trainer]
        raise EnergybenchError(f"regularizer {config.regularizer!r} needs adversarial examples but trainer "
                               f"{config.trainer!r} makes none; use it with one of: {', '.join(adversarial)}")
    trainer_params = parse_params(trainer_cls.Params, catalogue.defaults_for("trainer", config.trainer)
                                  | config.trainer_params, f"trainer {config.trainer!r}")
    reg_params = parse_params(reg_cls.Params, catalogue.defaults_for("regularizer", config.regularizer)
                              | config.regularizer_params, f"regularizer {config.regularizer!r}")
    if reg_cls.requires_attack_start and not trainer_cls.single_step:  # what hyper-parameters decide: Run checks
        raise attack_start_refused(config.regularizer, config.trainer)
    return config.model_copy(update={"trainer_params": trainer_params.model_dump(by_alias=True),
                                     "regularizer_params": reg_params.model_dump(by_alias=True),
                                     "dataset": dataset_name(config.dataset)})


def evaluate_checkpoints(run: Run) -> dict[str, dict[str, float]]:
    """Test-set evaluation of the best and last checkpoints of a trained ``run`` (once if they are the same
    epoch): the protocol's accuracies, sanity checks and per-point correctness, stored with a summary of
    training (best epoch, CO, final dE, passes per example)."""
    cfg = run.config
    history = run.store.epochs(run.run_id)
    co_epochs = [m["epoch"] for m in history if m.get("co")]
    summary = {"best_epoch": float(run.best_epoch), "co": float(bool(co_epochs)),
               "co_epoch": float(co_epochs[0]) if co_epochs else -1.0,
               "train_dE_mean": history[-1].get("train_dE_mean", float("nan")),
               "val_dE_mean": history[-1]["val_dE_mean"], "passes_per_example": run.passes / run.epoch}
    for key in ("train_reg_penalty", "train_reg_active", "train_reg_acted"):  # what the regularizer did, run means
        if all(key in m for m in history):
            summary[key] = statistics.fmean(m[key] for m in history)
    results: dict[str, dict[str, float]] = {}
    points: dict[str, dict[str, torch.Tensor]] = {}
    for tag in ("last", "best"):
        if tag == "best" and run.best_epoch == run.epoch - 1:
            results["best"], points["best"] = dict(results["last"]), points["last"]
            continue
        run.model.load_state_dict(load_checkpoint(run.dir / f"{tag}.pt", map_location=run.device))
        measured = test_evaluation(run.model, run.data.test, cfg, run.device,
                                   stage=lambda text, tag=tag: run.reporter.stage(f"{text} ({tag})"),
                                   note=lambda text, tag=tag: run.reporter.note(f"{text} ({tag} checkpoint)"))
        results[tag] = measured.metrics | summary
        points[tag] = measured.correct
        for warning in evaluation_warnings(results[tag]):
            run.reporter.alert(f"{tag} checkpoint: {warning}")
    for tag, metrics in results.items():
        run.store.add_results(run.run_id, tag, metrics)
        run.store.add_points(run.run_id, tag, points[tag])
    run.call("on_test_end", run.store.results(run.run_id))
    return results


def execute(config: RunConfig, store: Store, *, reporter: Reporter | None = None, resume: str | None = None,
            suite: str | None = None) -> str:
    """Train and evaluate ``config`` (or resume run ``resume``); return the run id.

    A damaged store and bad input (data, batch size, device, plugins) fail before anything is stored;
    counts larger than the dataset's splits are fitted to them (``fit_counts``), so the stored config
    says what ran. The run is stored with status 'running' from the start, 'done' at the end,
    'interrupted' on Ctrl-C, 'diverged' when the training loss became non-finite (an outcome, not retried by
    suites) and 'failed' (with the error) otherwise; a resumed run continues after its
    last completed epoch, once this process holds it: a process killed outright leaves its run
    'running', and it may be resumed as soon as no live process holds it (``Store.claim``).
    """
    reporter = reporter or Reporter()
    store.check_integrity()
    if resume is not None:
        record = store.get_run(resume)
        if record.status == "done":
            raise EnergybenchError(f"run {resume} is already complete")
        config = RunConfig(**record.config)
    with cpu_threads(config.threads):
        return _execute(config, store, reporter, record if resume is not None else None, suite)


def _execute(config: RunConfig, store: Store, reporter: Reporter, record: RunRecord | None,
             suite: str | None) -> str:
    if record is not None:
        claim = store.claim(record.id)  # first: a run in use is refused before its data and state load
        try:
            run = Run(config, store, record.id, reporter)
            if (run.dir / "state.pt").is_file():
                run.restore()  # a damaged or mismatched state file fails here, before the run's record changes
        except BaseException:
            claim.release()
            raise
        # a run killed outright recorded no wall time: its completed epochs' times stand in for it
        elapsed = max(record.wall_time or 0.0, sum(e.get("epoch_time", 0.0) for e in store.epochs(record.id)))
    else:
        data = load_dataset(config.dataset, data_root=config.data_root, val_size=config.val_size,
                            n_train=config.n_train)
        config, warnings = fit_counts(config, data)
        for warning in warnings:
            reporter.alert(warning)
        run = Run(config, store, store.new_run_id(), reporter, data=data)  # bad input fails here, nothing stored
        store.create_run(config.model_dump(), config.config_hash(), suite=suite, run_id=run.run_id)
        claim = store.claim(run.run_id)
        elapsed = 0.0
    run_id = run.run_id
    start = time.perf_counter()
    try:
        store.set_status(run_id, "running")
        run.fit()
        if run.config.eval.test:
            with run.fast.final_evaluation():
                evaluate_checkpoints(run)
    except KeyboardInterrupt as exc:
        run.fail(exc)
        store.set_status(run_id, "interrupted", error="interrupted by the user",
                         wall_time=elapsed + time.perf_counter() - start)
        raise Interrupted(f"energybench run --resume {run_id}") from None
    except Exception as exc:
        run.fail(exc)
        message = str(exc) if isinstance(exc, EnergybenchError) else f"{type(exc).__name__}: {exc}"
        store.set_status(run_id, "diverged" if isinstance(exc, Diverged) else "failed", error=message,
                         wall_time=elapsed + time.perf_counter() - start)
        raise
    finally:
        reporter.finish()
        claim.release()
    store.set_status(run_id, "done", wall_time=elapsed + time.perf_counter() - start)
    return run_id
