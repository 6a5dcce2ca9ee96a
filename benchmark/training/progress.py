"""Progress reporting, the one hook of training and evaluation: a silent base class and the rich terminal version.

``energybench.train``, ``resume``, ``evaluate`` and ``sample`` take ``progress=``: True (the default) for
``RichReporter`` on stderr, False for none (``Reporter``, silent), or any ``Reporter`` subclass.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

if TYPE_CHECKING:
    from energybench.config import RunConfig


class Reporter:
    """The progress hook of training and evaluation; this base ignores everything (``progress=False``).

    Training calls ``start`` (run id, settings, epochs already done, what the regularizer's ``train_reg_acted``
    counts), per epoch ``start_epoch``, per batch ``batch_done`` and ``epoch_done`` (the epoch's metrics); an
    evaluation (of a run's checkpoints or of any model)
    calls ``stage`` as each part begins (clean/FGSM/PGD, AutoAttack and its attacks) and ``note`` with an estimate
    before a part expected to take over a minute; ``alert`` carries warnings; ``finish`` ends it all.
    """

    def start(self, run_id: str, config: RunConfig, done: int, acts_on: str = "samples") -> None: ...
    def start_epoch(self, epoch: int, batches: int) -> None: ...
    def batch_done(self) -> None: ...
    def epoch_done(self, epoch: int, metrics: dict[str, Any]) -> None: ...
    def stage(self, text: str) -> None: ...
    def note(self, text: str) -> None: ...
    def alert(self, text: str) -> None: ...
    def finish(self) -> None: ...


def reporter_of(progress: bool | Reporter) -> Reporter:
    """The reporter a ``progress=`` argument asks for: rich progress on stderr (True), none (False), or itself."""
    if isinstance(progress, Reporter):
        return progress
    return RichReporter() if progress else Reporter()


class RichReporter(Reporter):
    """Rich progress bars for epochs, batches and evaluation stages, and one line per epoch."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=True)
        self._epochs = self._batches = self._stage = None
        self._started = False
        self._regularizer, self._acts_on = "none", "samples"

    def start(self, run_id: str, config: RunConfig, done: int, acts_on: str = "samples") -> None:
        from energybench.config import format_eps

        self._regularizer, self._acts_on = config.regularizer, acts_on
        model = config.model + "".join(f" {k}={v}" for k, v in config.model_params.items())
        self.console.print(
            f"[bold]energybench run {run_id}[/]: {config.trainer} + {config.regularizer} on {config.dataset} "
            f"({model}), {config.norm} eps {format_eps(config.eps)}, {config.epochs} epochs"
            + (f", track {config.track}" if config.track else "")
            + (f", resuming after epoch {done}" if done else ""))
        self.progress.start()
        self._epochs = self.progress.add_task(f"run {run_id}", total=config.epochs, completed=done)
        self._started = True

    def start_epoch(self, epoch: int, batches: int) -> None:
        if self._batches is not None:
            self.progress.remove_task(self._batches)
        self._batches = self.progress.add_task(f"epoch {epoch + 1}", total=batches)

    def batch_done(self) -> None:
        self.progress.advance(self._batches)

    def epoch_done(self, epoch: int, metrics: dict[str, Any]) -> None:
        self.progress.advance(self._epochs)
        co = " [bold red]CO[/]" if metrics.get("co") else ""
        if metrics.get("monitor_alarm"):
            co += f" [bold yellow]dE alarm @{metrics['monitor_alarm_iter']:.0f}[/]"
        self.console.print(
            f"epoch {epoch + 1}: loss {metrics['train_loss']:.3f}  val clean {metrics['val_clean_acc']:.1%}  "
            f"FGSM {metrics['val_fgsm_acc']:.1%}  PGD {metrics['val_pgd_acc']:.1%}  "
            f"{self._train_dE_text(metrics)}val dE {metrics['val_dE_mean']:+.3f}"
            f"{self._penalty_text(metrics)}  ({metrics['epoch_time']:.0f}s){co}", soft_wrap=True)

    @staticmethod
    def _train_dE_text(metrics: dict[str, Any]) -> str:
        """``train dE -0.012  ``; nothing when the trainer made no adversarial examples (standard training)."""
        value = metrics.get("train_dE_mean")
        return "" if value is None or math.isnan(value) else f"train dE {value:+.3f}  "

    def _penalty_text(self, metrics: dict[str, Any]) -> str:
        """``  der 0.0312 on 4.7% (abnormal adversarial examples)``: what the regularizer did this epoch."""
        if "train_reg_penalty" not in metrics:
            return ""
        acted = metrics.get("train_reg_acted")
        on = "" if acted is None else f" on {acted:.1%} ({self._acts_on})"
        return f"  {self._regularizer} {metrics['train_reg_penalty']:.3g}{on}"

    def stage(self, text: str) -> None:
        if not self._started:  # an evaluation on its own
            self.progress.start()
            self._started = True
        if self._batches is not None:
            self.progress.remove_task(self._batches)
            self._batches = None
        if self._stage is None:
            self._stage = self.progress.add_task(text, total=None)
        else:
            self.progress.update(self._stage, description=text)

    def note(self, text: str) -> None:
        self.console.print(text, highlight=False)

    def alert(self, text: str) -> None:
        self.console.print(f"[bold yellow]warning:[/] {text}")

    def finish(self) -> None:
        if self._started:
            self.progress.stop()
            for task in (self._epochs, self._batches, self._stage):
                if task is not None:
                    self.progress.remove_task(task)
            self._epochs = self._batches = self._stage = None
            self._started = False
