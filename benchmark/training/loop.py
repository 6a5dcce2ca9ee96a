"""The training loop: a run's model, optimizer, data and plugins, trained epoch by epoch with callbacks.

The loop knows the training step, validation, model selection and the state to resume from; the
energy trace, the CO monitor, checkpoint files, progress and loggers are callbacks
(``energybench.contracts.callback``) that it calls without knowing what they do.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch

from energybench.config import RunConfig, select_device
from energybench.contracts.callback import Batch, Callback
from energybench.contracts.guard import call_plugin
from energybench.contracts.registry import (
    create_callback,
    create_model,
    create_regularizer,
    create_trainer,
    get_registry,
)
from energybench.contracts.trainer import Trainer
from energybench.data.augment import crop_flip, crop_flip_draws
from energybench.data.datasets import ImageData, load_dataset
from energybench.errors import Diverged, EnergybenchError
from energybench.evaluation.robustness import co_flag, robustness
from energybench.storage.checkpoint import load_checkpoint, save_checkpoint
from energybench.storage.migrations import current_state
from energybench.storage.store import Store
from energybench.training.acceleration import Acceleration
from energybench.training.callbacks.checkpoints import CheckpointFiles
from energybench.training.callbacks.co_monitor import COMonitorCallback
from energybench.training.callbacks.energy_trace import EnergyTraceCallback
from energybench.training.callbacks.progress import ProgressCallback
from energybench.training.progress import Reporter
from energybench.training.step import PenaltyTally, TrainingStep


def attack_start_refused(regularizer: str, trainer: str) -> EnergybenchError:
    """The error of a regularizer that needs the attack's starting point combined with a trainer that is not
    single-step (only those report it)."""
    registry = get_registry()
    single = [n for n in registry.names("trainer") if getattr(registry.load("trainer", n), "single_step", False)]
    return EnergybenchError(f"regularizer {regularizer!r} needs the loss at the attack's starting point, which only "
                            f"single-step trainers report; trainer {trainer!r} is not one (use one of: "
                            f"{', '.join(single)})")


class Run:
    """A run in progress: model, optimizer, data, plugins and callbacks built from a resolved config.

    Built-in callbacks come first, in this order: progress, the energy trace, the CO monitor (when
    enabled), checkpoint files; then those named in ``config.callbacks`` (registered plugins).
    """

    def __init__(self, config: RunConfig, store: Store, run_id: str, reporter: Reporter | None = None,
                 data: ImageData | None = None):
        self.config, self.store, self.run_id = config, store, run_id
        self.reporter = reporter or Reporter()
        self.device = select_device(config.device)
        self.data = data or load_dataset(config.dataset, data_root=config.data_root, val_size=config.val_size,
                                         n_train=config.n_train)
        if config.batch_size > len(self.data.train):
            raise EnergybenchError(f"batch_size={config.batch_size} is larger than the training set "
                                   f"({len(self.data.train)} points)")
        torch.manual_seed(config.seed)
        self.fast = Acceleration.resolve(config.fast, self.device)
        info = self.data.info
        self.model = self.fast.prepare_model(create_model(
            config.model, num_classes=info.num_classes, in_channels=info.in_channels, mean=info.mean,
            std=info.std, **config.model_params).to(self.device))
        self._train_with(create_trainer(config.trainer, eps=config.eps, norm=config.norm, **config.trainer_params))
        self.optimizer = self.fast.optimizer(self.model.parameters(), lr=config.lr, momentum=config.momentum,
                                             weight_decay=config.weight_decay)
        self.batches_per_epoch = max(1, len(self.data.train) // config.batch_size)
        total = config.epochs * self.batches_per_epoch
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda it: config.schedule.factor(min(it, total) / total))
        self.generator = torch.Generator().manual_seed(config.seed)
        self.epoch, self.best_pgd, self.best_epoch, self.passes = 0, -1.0, -1, 0.0
        self.iteration, self.improved = 0, False
        self.train_x = self.data.train.x.to(self.device)
        self.train_y = self.data.train.y.to(self.device)
        self.callbacks: list[tuple[str, Callback]] = [("progress", ProgressCallback()),
                                                      ("energy trace", EnergyTraceCallback())]
        if config.monitor.enabled:
            self.callbacks.append(("CO monitor", COMonitorCallback(config.monitor, self.device)))
        self.callbacks.append(("checkpoint files", CheckpointFiles()))
        self.callbacks += [(name, create_callback(name)) for name in config.callbacks]
        self._halt: str | None = None  # "stop" or "rollback" once a callback asks for it
        self._rollback: tuple[dict[str, Any], str] | None = None

    @property
    def dir(self) -> Path:
        return self.store.run_dir(self.run_id)

    def call(self, hook: str, *args: Any) -> None:
        """Every callback's ``hook``; a failure fails the run with a message naming the callback."""
        for name, callback in self.callbacks:
            call_plugin("callback", name, getattr(callback, hook), self, *args)

    def fail(self, error: BaseException) -> None:
        """Every callback's ``on_exception``, each one even when another fails there (``error`` is what the run
        raises; a callback's own failure here is an alert)."""
        for name, callback in self.callbacks:
            try:
                call_plugin("callback", name, callback.on_exception, self, error)
            except Exception as exc:
                self.reporter.alert(str(exc))

    # ----- what callbacks may ask for ---------------------------------------------------------

    def request_stop(self) -> None:
        """End the current epoch now; it is validated and stored, then training ends."""
        self._halt = "stop"

    def request_rollback(self, state: dict[str, Any], trainer: str) -> None:
        """End the current epoch now, discard it, return to ``state`` (from ``state()``) and continue with
        trainer ``trainer``."""
        self._halt, self._rollback = "rollback", (state, trainer)

    def use_trainer(self, name: str) -> None:
        """Train with trainer ``name`` (default hyper-parameters) from now on."""
        self._train_with(create_trainer(name, eps=self.config.eps, norm=self.config.norm))

    def _train_with(self, trainer: Trainer) -> None:
        """``trainer``, the run's regularizer built for it (its budget, whether it is single-step) and their step."""
        cfg = self.config
        self.trainer = trainer
        self.regularizer = create_regularizer(cfg.regularizer, trainer_eps=cfg.eps, trainer_norm=cfg.norm,
                                              trainer_single_step=trainer.single_step, **cfg.regularizer_params)
        if self.regularizer.needs_attack_start and not trainer.single_step:
            raise attack_start_refused(cfg.regularizer, trainer.name)
        self.step = TrainingStep(trainer, self.regularizer, num_classes=self.data.info.num_classes,
                                 timeout=cfg.plugin_timeout)

    # ----- state ----------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        """Everything needed to continue after the last completed epoch, callbacks included."""
        state = {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "epoch": self.epoch, "best_pgd": self.best_pgd,
                 "best_epoch": self.best_epoch, "passes": self.passes, "generator": self.generator.get_state(),
                 "torch_rng": torch.get_rng_state()}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        state["callbacks"] = {callback.state_key: callback.state_dict() for _, callback in self.callbacks}
        return state

    def restore(self) -> None:
        """Continue from the state saved after the last completed epoch."""
        path = self.dir / "state.pt"
        state = current_state(load_checkpoint(path, map_location=self.device))
        try:
            self._apply_state(state)
        except (KeyError, RuntimeError, TypeError, ValueError) as exc:
            detail = " ".join(str(exc).split()).split(". ")[0][:300]  # the first mismatch is enough
            raise EnergybenchError(f"{path} does not fit this run ({self.config.model} on {self.config.dataset}): "
                                   f"{type(exc).__name__}: {detail}") from None
        saved = state.get("callbacks", {})
        for _, callback in self.callbacks:
            if saved.get(callback.state_key):
                callback.load_state_dict(saved[callback.state_key])

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

    def train_epoch(self) -> dict[str, float]:
        """One pass over the training set (ends early when a callback asks); the epoch's training metrics."""
        cfg, model = self.config, self.model
        model.train()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), device=self.device, dtype=torch.long)
        passes = 0.0
        tally = PenaltyTally(self.device) if cfg.regularizer != "none" else None
        order = torch.randperm(len(self.train_y), generator=self.generator).to(self.device)
        draws = crop_flip_draws(len(order), self.generator).to(self.device) if cfg.augment else None
        self.call("on_epoch_start")
        for b in range(self.batches_per_epoch):
            self.iteration = self.epoch * self.batches_per_epoch + b + 1
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            x, y = self.train_x[idx].float().div_(255), self.train_y[idx]
            if draws is not None:
                x = crop_flip(x, draws[b * cfg.batch_size:(b + 1) * cfg.batch_size])
            step = self.step(model, x, y)
            batch = Batch(b, self.iteration, x, y, step.out, step.loss)
            self.call("on_before_backward", batch)
            self.optimizer.zero_grad(set_to_none=True)
            step.loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            loss_sum += step.loss.detach() * len(y)
            seen_logits = step.out.logits_adv if step.out.logits_adv is not None else step.out.logits
            if seen_logits is not None:
                correct += (seen_logits.detach().argmax(1) == y).sum()
            passes += step.passes * len(y)
            if tally is not None:
                tally.add(step, len(y))
            self.call("on_train_batch_end", batch)
            if self._halt is not None:
                break
        n = (b + 1) * cfg.batch_size
        self.passes += passes / n
        metrics = {"train_loss": float(loss_sum) / n, "train_acc": float(correct) / n,
                   "lr": self.optimizer.param_groups[0]["lr"]} | (tally.metrics() if tally is not None else {})
        self.call("on_train_epoch_end", metrics)
        return metrics

    def validate(self) -> dict[str, float]:
        """Clean, FGSM and PGD accuracy and dE on the fixed validation subset."""
        p = self.config.eval
        return robustness(self.model, self.data.val, n=p.val_points, eps=self.config.eps, norm=self.config.norm,
                          pgd_steps=p.val_pgd_steps, with_fgsm=True, with_margin=p.val_margin,
                          batch_size=p.batch_size, device=self.device,
                          prefix="val_").metrics

    def fit(self) -> None:
        """Train the remaining epochs; after each, store its metrics and the state to resume from."""
        self.call("on_fit_start")
        while self.epoch < self.config.epochs and not self._stopped_early():
            start = time.perf_counter()
            metrics = self.train_epoch()
            if self._halt == "rollback":
                state, trainer = self._rollback
                self._apply_state(state)
                self.use_trainer(trainer)
                self._halt, self._rollback = None, None
                continue
            if not math.isfinite(metrics["train_loss"]):
                kept = (f"the checkpoints of its {self.epoch} completed epochs are kept" if self.epoch
                        else "no epoch completed, so no checkpoint was written")
                raise Diverged(f"training loss became {metrics['train_loss']} in epoch {self.epoch + 1}; "
                                       f"run stopped: {kept}")
            metrics.update(self.validate())
            metrics["co"] = co_flag(metrics, self.best_pgd if self.epoch else None, self.epoch, self.config.eval,
                                    n=min(self.config.eval.val_points, len(self.data.val)))
            metrics["epoch_time"] = time.perf_counter() - start
            self.improved = metrics["val_pgd_acc"] > self.best_pgd
            if self.improved:
                self.best_pgd, self.best_epoch = metrics["val_pgd_acc"], self.epoch
            self.call("on_validation_end", metrics)
            self.store.add_epoch(self.run_id, self.epoch, metrics)
            self.epoch += 1
            save_checkpoint(self.dir / "state.pt", self.state())
            self.call("on_epoch_end", metrics)
            if self._halt == "stop":
                break
        self._warn_if_regularizer_idle()
        self.call("on_fit_end")

    def _warn_if_regularizer_idle(self) -> None:
        """A regularizer whose penalty was zero in every batch of the run trained nothing: say so (the run is the
        trainer alone, bit for bit)."""
        epochs = self.store.epochs(self.run_id)
        if self.config.regularizer == "none" or not epochs or any(e.get("train_reg_active", 1) for e in epochs):
            return
        acted = "" if "train_reg_acted" not in epochs[-1] else f", acted on no {self.regularizer.acts_on}"
        self.reporter.alert(f"regularizer {self.config.regularizer!r} never acted: its penalty was 0 in every batch "
                            f"of the run{acted}, so this run trained exactly as {self.config.trainer!r} alone would; "
                            "check its hyper-parameters")

    def _stopped_early(self) -> bool:
        """Early stopping: ``early_stop`` epochs have passed without a better validation PGD accuracy
        (derived from the saved state, so a resumed run stops where it would have)."""
        patience = self.config.early_stop
        if patience is None or self.epoch - 1 - self.best_epoch < patience:
            return False
        self.reporter.alert(f"early stopping after epoch {self.epoch}: no better validation PGD accuracy than "
                            f"epoch {self.best_epoch + 1}'s in {patience} epochs")
        return True
