"""Progress reporting for runs: a silent base class and the rich terminal version."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

if TYPE_CHECKING:
    from energybench.config import RunConfig


class Reporter:
    """Receives a run's progress; this base ignores everything (library use, tests)."""

    def start(self, run_id: str, config: RunConfig, done: int) -> None: ...
    def start_epoch(self, epoch: int, batches: int) -> None: ...
    def batch_done(self) -> None: ...
    def epoch_done(self, epoch: int, metrics: dict[str, Any]) -> None: ...
    def stage(self, text: str) -> None: ...
    def alert(self, text: str) -> None: ...
    def finish(self) -> None: ...


class RichReporter(Reporter):
    """Rich progress bars for epochs, batches and evaluation stages, and one line per epoch."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), console=self.console, transient=True)
        self._epochs = self._batches = self._stage = None

    def start(self, run_id: str, config: RunConfig, done: int) -> None:
        from energybench.config import format_eps

        model = config.model + "".join(f" {k}={v}" for k, v in config.model_params.items())
        self.console.print(
            f"[bold]energybench run {run_id}[/]: {config.trainer} + {config.regularizer} on {config.dataset} "
            f"({model}), {config.norm} eps {format_eps(config.eps)}, {config.epochs} epochs"
            + (f", track {config.track}" if config.track else "")
            + (f", resuming after epoch {done}" if done else ""))
        self.progress.start()
        self._epochs = self.progress.add_task(f"run {run_id}", total=config.epochs, completed=done)

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
            f"train dE {metrics.get('train_dE_mean', float('nan')):+.3f}  val dE {metrics['val_dE_mean']:+.3f}  "
            f"({metrics['epoch_time']:.0f}s){co}")

    def stage(self, text: str) -> None:
        if self._batches is not None:
            self.progress.remove_task(self._batches)
            self._batches = None
        if self._stage is None:
            self._stage = self.progress.add_task(text, total=None)
        else:
            self.progress.update(self._stage, description=text)

    def alert(self, text: str) -> None:
        self.console.print(f"[bold yellow]warning:[/] {text}")

    def finish(self) -> None:
        if self._epochs is not None:
            self.progress.stop()
