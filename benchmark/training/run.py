"""The harness: one run of any trainer + regularizer, evaluated and stored the same way for all.

``prepare`` checks a ``RunConfig`` against the registry and completes the plugin
hyper-parameters; ``execute`` trains epoch by epoch (saving everything needed to resume after
each one), evaluates on a fixed validation subset every epoch, then evaluates the best (by
validation PGD accuracy) and last checkpoints on the test set: clean, PGD and AutoAttack.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import nn

from energybench.config import Catalogue, RunConfig
from energybench.contracts.guard import PluginTimeout, deadline, penalty_problem, train_output_problem
from energybench.contracts.params import parse_params
from energybench.contracts.registry import get_registry
from energybench.contracts.regularizer import forward_calls
from energybench.data.datasets import ImageData, load_dataset
from energybench.errors import EnergybenchError, Interrupted, PluginError
from energybench.evaluation.protocol import test_evaluation
from energybench.evaluation.robustness import catastrophic_overfitting, robustness
from energybench.evaluation.sanity import evaluation_warnings
from energybench.ops.energy import EnergyTrace
from energybench.ops.modes import frozen_batchnorm_stats
from energybench.storage.checkpoint import load_checkpoint, save_checkpoint
from energybench.storage.store import Store
from energybench.storage.trained import build
from energybench.training.acceleration import Acceleration
from energybench.training.monitor import COMonitor
from energybench.training.progress import Reporter

#: When a trainer does not compute clean logits itself, the training dE trace computes them on
#: every ``TRACE_INTERVAL``-th batch only (one no-grad forward), to keep its cost negligible.
TRACE_INTERVAL = 4


def prepare(config: RunConfig, catalogue: Catalogue) -> RunConfig:
    """Check plugin names and their combination, and fill in every plugin hyper-parameter."""
    registry = get_registry()
    trainer_cls = registry.load("trainer", config.trainer)
    reg_cls = registry.load("regularizer", config.regularizer)
    registry.load("model", config.model)
    if config.monitor.enabled and config.monitor.action == "rollback":
        registry.load("trainer", config.monitor.fallback_trainer)
    if reg_cls.requires_adversarial and not trainer_cls.adversarial:
        adversarial = [n for n in registry.names("trainer") if n != config.trainer]
        raise EnergybenchError(f"regularizer {config.regularizer!r} needs adversarial examples but trainer "
                               f"{config.trainer!r} makes none; use it with one of: {', '.join(adversarial)}")
    if config.batch_size > config.val_size and config.n_train is not None and config.batch_size > config.n_train:
        raise EnergybenchError(f"batch_size={config.batch_size} is larger than the training set ({config.n_train})")
    trainer_params = parse_params(trainer_cls.Params, catalogue.defaults_for("trainer", config.trainer)
                                  | config.trainer_params, f"trainer {config.trainer!r}")
    reg_params = parse_params(reg_cls.Params, catalogue.defaults_for("regularizer", config.regularizer)
                              | config.regularizer_params, f"regularizer {config.regularizer!r}")
    if reg_cls(**reg_params.model_dump(by_alias=True)).needs_attack_start and not trainer_cls.single_step:
        single = [n for n in registry.names("trainer") if getattr(registry.load("trainer", n), "single_step", False)]
        raise EnergybenchError(f"regularizer {config.regularizer!r} needs the loss at the attack's starting point, "
                               f"which only single-step trainers report; trainer {config.trainer!r} is not one "
                               f"(use one of: {', '.join(single)})")
    return config.model_copy(update={"trainer_params": trainer_params.model_dump(by_alias=True),
                                     "regularizer_params": reg_params.model_dump(by_alias=True)})


def select_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise EnergybenchError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EnergybenchError(f"device {name!r} requested but CUDA is not available here (use auto or cpu)")
    return device


def crop_flip_draws(n: int, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop offsets (row, column) in [0, 2 * pad] and flip flags (0/1) for ``n`` images, shape (n, 3).

    The harness draws a whole epoch's at once and moves them to the device in one copy.
    """
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    flips = (torch.rand(n, 1, generator=generator) < 0.5).long()
    return torch.cat([offsets, flips], dim=1)


def crop_flip(x: torch.Tensor, draws: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip of a batch, on its device (``draws``: crop_flip_draws)."""
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    i, j, flip = draws[:, 0], draws[:, 1], draws[:, 2].bool()
    rows = (i[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (j[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    out = padded[batch, channel, rows, cols]
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def _trace_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Clean logits for the dE trace: no gradient, BatchNorm running statistics left untouched."""
    with frozen_batchnorm_stats(model), torch.no_grad():
        return model(x)


def _call_plugin(kind: str, name: str, fn, *args, timeout: float | None = None,
                 check: Callable[[Any], str | None] | None = None, **kwargs):
    """``fn(*args, **kwargs)`` of plugin ``name``: its exceptions, a call running past ``timeout``
    seconds and a result that ``check`` finds wrong all become a PluginError naming the plugin."""
    try:
        with deadline(timeout):
            result = fn(*args, **kwargs)
    except PluginTimeout:
        raise PluginError(f"{kind} {name!r} did not return within plugin_timeout={timeout:g} s") from None
    except EnergybenchError:
        raise
    except Exception as exc:
        raise PluginError(f"{kind} {name!r} failed: {type(exc).__name__}: {exc}") from exc
    problem = check(result) if check is not None else None
    if problem:
        raise PluginError(f"{kind} {name!r} broke its contract: {problem}")
    return result


class Run:
    """A run in progress: model, optimizer, data and plugins built from a resolved config."""

    def __init__(self, config: RunConfig, store: Store, run_id: str | None, reporter: Reporter | None = None,
                 data: ImageData | None = None):
        self.config, self.store, self.run_id = config, store, run_id  # None until execute stores a new run
        self.reporter = reporter or Reporter()
        self.device = select_device(config.device)
        self.data = data or load_dataset(config.dataset, data_root=config.data_root, val_size=config.val_size,
                                         n_train=config.n_train)
        if config.batch_size > len(self.data.train):
            raise EnergybenchError(f"batch_size={config.batch_size} is larger than the training set "
                                   f"({len(self.data.train)} points)")
        torch.manual_seed(config.seed)
        self.fast = Acceleration.resolve(config.fast, self.device)
        self.model = self.fast.prepare_model(build(config.model, self.data.info).to(self.device))
        registry = get_registry()
        self.trainer = registry.load("trainer", config.trainer)(eps=config.eps, norm=config.norm,
                                                                 **config.trainer_params)
        self.regularizer = registry.load("regularizer", config.regularizer)(**config.regularizer_params)
        self.regularizer.eps, self.regularizer.norm = config.eps, config.norm
        self.optimizer = self.fast.optimizer(self.model.parameters(), lr=config.lr, momentum=config.momentum,
                                             weight_decay=config.weight_decay)
        self.batches_per_epoch = max(1, len(self.data.train) // config.batch_size)
        total = config.epochs * self.batches_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda it: config.schedule.factor(min(it, total) / total))
        self.generator = torch.Generator().manual_seed(config.seed)
        self.epoch, self.best_pgd, self.best_epoch, self.passes = 0, -1.0, -1, 0.0
        self.train_x = self.data.train.x.to(self.device)
        self.train_y = self.data.train.y.to(self.device)
        self.monitor = COMonitor(config.monitor, self.device) if config.monitor.enabled else None
        self.penalty_passes: int | None = None  # forward calls of one penalty, counted on the first step
        self._halt: str | None = None  # "stop" or "rollback" once the monitor's alarm asks for it

    @property
    def dir(self) -> Path:
        return self.store.run_dir(self.run_id)

    # ----- state ----------------------------------------------------------------------------

    def _state(self) -> dict[str, Any]:
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "epoch": self.epoch, "best_pgd": self.best_pgd,
                 "best_epoch": self.best_epoch, "passes": self.passes, "generator": self.generator.get_state(),
                 "torch_rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        if self.monitor is not None:
            state["monitor"] = self.monitor.state_dict()
        return state

    def restore(self) -> None:
        """Continue from the state saved after the last completed epoch."""
        path = self.dir / "state.pt"
        state = load_checkpoint(path, map_location=self.device)
        try:
            self._apply_state(state)
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            detail = " ".join(str(exc).split()).split(". ")[0][:300]  # the first mismatch is enough
            raise EnergybenchError(f"{path} does not fit this run ({self.config.model} on {self.config.dataset}): "
                                   f"{type(exc).__name__}: {detail}") from None
        if self.monitor is not None and "monitor" in state:
            self.monitor.load_state_dict(state["monitor"])
            if self.monitor.rolled_back:
                self._use_fallback_trainer()

    def _apply_state(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.best_pgd, self.best_epoch = state["epoch"], state["best_pgd"], state["best_epoch"]
        self.passes = state["passes"]
        self.generator.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state:
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)

    # ----- training -------------------------------------------------------------------------

    def _penalty(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, out) -> torch.Tensor:
        """The regularizer's penalty; its forward calls are counted once (the cost is the same every step)."""
        call = partial(_call_plugin, "regularizer", self.config.regularizer, self.regularizer.penalty, model, x, y,
                       out, timeout=self.config.plugin_timeout, check=penalty_problem)
        if self.penalty_passes is not None:
            return call()
        with forward_calls(model) as calls:
            penalty = call()
        self.penalty_passes = len(calls)
        return penalty

    def train_epoch(self) -> dict[str, float]:
        cfg, model = self.config, self.model
        model.train()
        trace = EnergyTrace()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        passes = 0.0
        order = torch.randperm(len(self.train_y), generator=self.generator).to(self.device)
        draws = crop_flip_draws(len(order), self.generator).to(self.device) if cfg.augment else None
        self.reporter.start_epoch(self.epoch, self.batches_per_epoch)
        for b in range(self.batches_per_epoch):
            iteration = self.epoch * self.batches_per_epoch + b + 1
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            x, y = self.train_x[idx].float().div_(255), self.train_y[idx]
            if draws is not None:
                x = crop_flip(x, draws[b * cfg.batch_size:(b + 1) * cfg.batch_size])
            out = _call_plugin("trainer", cfg.trainer, self.trainer.step, model, x, y, timeout=cfg.plugin_timeout,
                               check=partial(train_output_problem, x=x, y=y, num_classes=self.data.info.num_classes),
                               keep_clean_logits=self.regularizer.uses_clean_logits)
            step_passes = out.passes
            if self.regularizer.uses_clean_logits and out.logits is None:
                with frozen_batchnorm_stats(model):  # the regularizer's extra pass must not add BN updates
                    out.logits = model(x)
                step_passes += 1
            if out.logits_adv is not None:
                clean = out.logits if out.logits is not None else (
                    _trace_logits(model, x) if b % TRACE_INTERVAL == 0 else None)
                if clean is not None:
                    values = trace.add(clean, out.logits_adv, y)
                    if self.monitor is not None:
                        self.monitor.observe(values, iteration)
            loss = out.loss + self._penalty(model, x, y, out)
            step_passes += self.penalty_passes
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            loss_sum += loss.detach() * len(y)
            seen_logits = out.logits_adv if out.logits_adv is not None else out.logits
            if seen_logits is not None:
                correct += (seen_logits.detach().argmax(1) == y).sum()
            passes += step_passes * len(y)
            self.reporter.batch_done()
            if self.monitor is not None and self.monitor.step(iteration) and self._on_alarm(iteration):
                break
        if self.monitor is not None and self.monitor.end_epoch(iteration):
            self._on_alarm(iteration)
        n = (b + 1) * cfg.batch_size
        self.passes += passes / n
        metrics = {"train_loss": float(loss_sum) / n, "train_acc": float(correct) / n,
                   "lr": self.optimizer.param_groups[0]["lr"]}
        metrics.update(trace.summary(prefix="train_"))
        return metrics

    def validate(self) -> dict[str, float]:
        p = self.config.eval
        return robustness(self.model, self.data.val, n=p.val_points, eps=self.config.eps, norm=self.config.norm,
                          pgd_steps=p.val_pgd_steps, with_fgsm=True, batch_size=p.batch_size, device=self.device,
                          prefix="val_").metrics

    def fit(self) -> None:
        """Train the remaining epochs; after each, store metrics and checkpoints (resumable)."""
        self.reporter.start(self.run_id, self.config, self.epoch)
        if self.monitor is not None and self.regularizer.acts_on_energy:
            self.reporter.alert(f"the CO monitor watches dE, which regularizer {self.config.regularizer!r} steers: "
                                "its alarms are unreliable in this run (docs/energy.md)")
        while self.epoch < self.config.epochs and not self._stopped_early():
            start = time.perf_counter()
            if self.config.monitor.action == "rollback" and self.monitor is not None and not self.monitor.rolled_back:
                healthy = copy.deepcopy(self._state())
            metrics = self.train_epoch()
            if self._halt == "rollback":
                self._roll_back(healthy)
                continue
            if not math.isfinite(metrics["train_loss"]):
                raise EnergybenchError(f"training loss became {metrics['train_loss']} in epoch {self.epoch + 1}; "
                                       f"run stopped, last good checkpoint kept (epoch {self.epoch})")
            metrics.update(self.validate())
            history = [*self.store.epochs(self.run_id), metrics]
            metrics["co"] = catastrophic_overfitting(history, self.config.eval)[-1]
            metrics["epoch_time"] = time.perf_counter() - start
            if self.monitor is not None:
                metrics.update(self.monitor.epoch_metrics())
                self.monitor.write_log(self.dir / "monitor.json")
            save_checkpoint(self.dir / "last.pt", self.model.state_dict())
            if self.config.keep_epochs:
                save_checkpoint(self.dir / f"epoch-{self.epoch}.pt", self.model.state_dict())
            if metrics["val_pgd_acc"] > self.best_pgd:
                self.best_pgd, self.best_epoch = metrics["val_pgd_acc"], self.epoch
                save_checkpoint(self.dir / "best.pt", self.model.state_dict())
            self.store.add_epoch(self.run_id, self.epoch, metrics)
            self.epoch += 1
            save_checkpoint(self.dir / "state.pt", self._state())
            self.reporter.epoch_done(self.epoch - 1, metrics)
            if self._halt == "stop":
                break

    def _stopped_early(self) -> bool:
        """Early stopping: ``early_stop`` epochs have passed without a better validation PGD accuracy
        (derived from the saved state, so a resumed run stops where it would have)."""
        patience = self.config.early_stop
        if patience is None or self.epoch - 1 - self.best_epoch < patience:
            return False
        self.reporter.alert(f"early stopping after epoch {self.epoch}: no better validation PGD accuracy than "
                            f"epoch {self.best_epoch + 1}'s in {patience} epochs")
        return True

    def _on_alarm(self, iteration: int) -> bool:
        """Report the monitor's CO alarm and apply its action; True when this epoch must end now."""
        action = self.config.monitor.action
        if action == "rollback" and self.monitor.rolled_back:
            action = "warn"  # one rollback per run: later alarms only warn
        consequence = {"warn": "", "stop": "; stopping training here",
                       "rollback": f"; rolling back to the start of epoch {self.epoch + 1} and continuing with "
                                   f"trainer {self.config.monitor.fallback_trainer!r}"}[action]
        self.reporter.alert(f"CO alarm at iteration {iteration} (epoch {self.epoch + 1}): the training dE left "
                            f"its recent range{consequence}")
        if action != "warn":
            self._halt = action
        return action != "warn"

    def _roll_back(self, healthy: dict[str, Any]) -> None:
        """Return to ``healthy`` (the state before the alarmed epoch) and switch to the fallback trainer."""
        self._apply_state(healthy)
        self.monitor.rearm()
        self._use_fallback_trainer()
        self._halt = None

    def _use_fallback_trainer(self) -> None:
        self.trainer = get_registry().load("trainer", self.config.monitor.fallback_trainer)(
            eps=self.config.eps, norm=self.config.norm)

    # ----- final evaluation -----------------------------------------------------------------

    def evaluate(self) -> dict[str, dict[str, float]]:
        """Test-set evaluation of the best and last checkpoints (once if they are the same epoch)."""
        cfg = self.config
        history = self.store.epochs(self.run_id)
        co_epochs = [m["epoch"] for m in history if m.get("co")]
        summary = {"best_epoch": float(self.best_epoch), "co": float(bool(co_epochs)),
                   "co_epoch": float(co_epochs[0]) if co_epochs else -1.0,
                   "train_dE_mean": history[-1].get("train_dE_mean", float("nan")),
                   "val_dE_mean": history[-1]["val_dE_mean"], "passes_per_example": self.passes / self.epoch}
        results: dict[str, dict[str, float]] = {}
        points: dict[str, dict[str, torch.Tensor]] = {}
        for tag in ("last", "best"):
            if tag == "best" and self.best_epoch == self.epoch - 1:
                results["best"], points["best"] = dict(results["last"]), points["last"]
                continue
            self.model.load_state_dict(load_checkpoint(self.dir / f"{tag}.pt", map_location=self.device))
            measured = test_evaluation(self.model, self.data.test, cfg, self.device,
                                       stage=lambda text, tag=tag: self.reporter.stage(f"{text} ({tag})"))
            results[tag] = measured.metrics | summary
            points[tag] = measured.correct
            for warning in evaluation_warnings(results[tag]):
                self.reporter.alert(f"{tag} checkpoint: {warning}")
        for tag, metrics in results.items():
            self.store.add_results(self.run_id, tag, metrics)
            self.store.add_points(self.run_id, tag, points[tag])
        return results


def execute(config: RunConfig, store: Store, *, reporter: Reporter | None = None, resume: str | None = None,
            suite: str | None = None) -> str:
    """Train and evaluate ``config`` (or resume run ``resume``); return the run id.

    Bad input (data, batch size, device, plugins) fails before anything is stored. The run is
    stored with status 'running' from the start, 'done' at the end, 'interrupted' on Ctrl-C and
    'failed' (with the error) otherwise; a resumed run continues after its last completed epoch.
    A process killed outright leaves its run 'running': it may be resumed as soon as no live
    process holds the run (``Store.claim``).
    """
    reporter = reporter or Reporter()
    if resume is not None:
        record = store.get_run(resume)
        if record.status == "done":
            raise EnergybenchError(f"run {resume} is already complete")
        config = RunConfig(**record.config)
    run = Run(config, store, resume, reporter)
    if resume is not None and (run.dir / "state.pt").is_file():
        run.restore()  # a damaged or mismatched state file fails here, before the run's record changes
    if resume is None:
        run.run_id = store.create_run(config.model_dump(), config.config_hash(), suite=suite)
    run_id = run.run_id
    claim = store.claim(run_id)
    start = time.perf_counter()
    elapsed = 0.0 if resume is None else (record.wall_time or 0.0)
    try:
        store.set_status(run_id, "running")
        run.fit()
        if config.eval.test:
            with run.fast.final_evaluation():
                run.evaluate()
    except KeyboardInterrupt:
        store.set_status(run_id, "interrupted", error="interrupted by the user",
                         wall_time=elapsed + time.perf_counter() - start)
        raise Interrupted(f"energybench run --resume {run_id}") from None
    except Exception as exc:
        message = str(exc) if isinstance(exc, EnergybenchError) else f"{type(exc).__name__}: {exc}"
        store.set_status(run_id, "failed", error=message, wall_time=elapsed + time.perf_counter() - start)
        raise
    finally:
        reporter.finish()
        claim.release()
    store.set_status(run_id, "done", wall_time=elapsed + time.perf_counter() - start)
    return run_id
