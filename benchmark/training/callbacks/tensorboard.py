"""`tensorboard`: every epoch's metrics and the test results as TensorBoard events in the run folder
(``--log tensorboard``)."""

from __future__ import annotations

import math

from energybench.contracts.callback import Callback
from energybench.errors import EnergybenchError


def tag(metric: str) -> str:
    """TensorBoard tag of a metric: ``train_dE_mean`` -> ``train/dE_mean``, ``val_pgd_acc`` -> ``val/pgd_acc``,
    ``test_aa_acc`` -> ``test/aa_acc``."""
    for prefix in ("train_", "val_", "test_", "monitor_"):
        if metric.startswith(prefix):
            return f"{prefix[:-1]}/{metric[len(prefix):]}"
    return f"run/{metric}"


def _writer(run):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise EnergybenchError("the tensorboard logger needs the tensorboard package: "
                               "pip install 'energybench[tensorboard]'") from None
    return SummaryWriter(log_dir=str(run.dir / "tensorboard"))


def _write(writer, metrics: dict[str, float], step: int, prefix: str = "") -> None:
    """Every finite number (and flag) of ``metrics`` as a scalar at ``step``."""
    for metric, value in metrics.items():
        if isinstance(value, (int, float)) and (isinstance(value, bool) or math.isfinite(value)):
            writer.add_scalar(prefix + tag(metric), float(value), global_step=step)


class TensorBoardLogger(Callback):
    """Writes each finished epoch's numeric metrics (losses, validation accuracies, energies, LR, CO flags, what the
    regularizer did) with the epoch number as step to ``RUN_DIR/tensorboard`` through ``torch.utils.tensorboard``,
    then the test results of the last checkpoint (``test/...``) and of the best (``best/test/...``) at the last
    epoch's step. View them with ``tensorboard --logdir STORE/runs``. A resumed run appends to the same folder."""

    def on_fit_start(self, run) -> None:
        self.writer = _writer(run)

    def on_epoch_end(self, run, metrics: dict[str, float]) -> None:
        _write(self.writer, metrics, run.epoch)
        self.writer.flush()

    def on_fit_end(self, run) -> None:
        self.writer.close()

    def on_exception(self, run, error: BaseException) -> None:
        if hasattr(self, "writer"):  # the run may fail before training starts
            self.writer.close()

    def on_test_end(self, run, results: dict[str, dict[str, float]]) -> None:
        with _writer(run) as writer:
            for checkpoint, prefix in (("last", ""), ("best", "best/")):
                _write(writer, {k: v for k, v in results[checkpoint].items() if k.startswith("test_")}, run.epoch,
                       prefix)
