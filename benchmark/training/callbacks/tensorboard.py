"""`tensorboard`: every epoch's metrics as TensorBoard events in the run folder (``--log tensorboard``)."""

from __future__ import annotations

import math

from energybench.contracts.callback import Callback
from energybench.errors import EnergybenchError


def tag(metric: str) -> str:
    """TensorBoard tag of a metric: ``train_dE_mean`` -> ``train/dE_mean``, ``val_pgd_acc`` -> ``val/pgd_acc``."""
    for prefix in ("train_", "val_", "monitor_"):
        if metric.startswith(prefix):
            return f"{prefix[:-1]}/{metric[len(prefix):]}"
    return f"run/{metric}"


class TensorBoardLogger(Callback):
    """Writes each finished epoch's numeric metrics (losses, validation accuracies, energies, LR, CO flags)
    with the epoch number as step to ``RUN_DIR/tensorboard`` through ``torch.utils.tensorboard``. View them
    with ``tensorboard --logdir STORE/runs``. A resumed run appends to the same folder."""

    def on_fit_start(self, run) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise EnergybenchError("the tensorboard logger needs the tensorboard package: "
                                   "pip install 'energybench[tensorboard]'") from None
        self.writer = SummaryWriter(log_dir=str(run.dir / "tensorboard"))

    def on_epoch_end(self, run, metrics: dict[str, float]) -> None:
        for metric, value in metrics.items():
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                self.writer.add_scalar(tag(metric), value, global_step=run.epoch)
            elif isinstance(value, bool):
                self.writer.add_scalar(tag(metric), float(value), global_step=run.epoch)
        self.writer.flush()

    def on_fit_end(self, run) -> None:
        self.writer.close()
