"""The `Callback` base class: hooks of the training loop that observe a run (trace, monitor, logging)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from energybench.contracts.params import PluginParams, parse_params
from energybench.contracts.trainer import TrainOutput

if TYPE_CHECKING:
    from energybench.training.loop import Run


@dataclass
class Batch:
    """One training step as callbacks see it.

    ``index`` counts batches within the epoch and ``iteration`` optimizer steps over the whole run
    (from 1); ``out`` is the trainer's output and ``loss`` the step's total loss (tensors on the
    device). ``energies`` holds the per-sample E(x), E(x*), dE and joint dE of the batch when the
    energy trace recorded it (the built-in trace runs before other callbacks), else None.
    """

    index: int
    iteration: int
    x: torch.Tensor
    y: torch.Tensor
    out: TrainOutput
    loss: torch.Tensor
    energies: dict[str, torch.Tensor] | None = field(default=None)


class Callback:
    """Base class of training-loop callbacks (entry-point group ``energybench.callbacks``).

    The loop (``energybench.training.loop.Run``) calls, in order: ``on_fit_start`` (after a resume has
    restored the state), then per epoch ``on_epoch_start``; per batch ``on_before_backward`` (the step's
    loss is computed and the model still holds the weights it came from) and ``on_train_batch_end``
    (after the optimizer step); ``on_train_epoch_end`` (training metrics of the epoch, before
    validation), ``on_validation_end``
    (the epoch's complete metrics, before they are stored: add keys to store more), ``on_epoch_end``
    (after the epoch and the resume state are saved), and ``on_fit_end``; after the test evaluation of the best and
    last checkpoints, ``on_test_end`` (their stored test results). When the run fails or is interrupted instead,
    ``on_exception`` (close what the callback holds open). A callback observes: it must not
    change the model, the data or the optimizer, so callbacks never change a run's config hash. It may
    ask the run to stop (``run.request_stop``). ``state_dict``/``load_state_dict`` carry its state across a
    resume (plain containers only), saved under ``state_key``. A callback that raises fails its run with a message
    naming it; the run can be resumed. Hyper-parameters are declared as a nested ``Params`` (a ``PluginParams``).
    """

    Params: ClassVar[type[PluginParams]] = PluginParams
    name: ClassVar[str] = ""

    def __init__(self, **params: Any):
        self.params = parse_params(self.Params, params, f"callback {self.name or type(self).__name__!r}")

    def on_fit_start(self, run: Run) -> None:  # noqa: B027
        """Training (re)starts at ``run.epoch``."""

    def on_epoch_start(self, run: Run) -> None:  # noqa: B027
        """Epoch ``run.epoch`` (0-based) starts."""

    def on_before_backward(self, run: Run, batch: Batch) -> None:  # noqa: B027
        """A training step's loss is computed; backward and the update follow."""

    def on_train_batch_end(self, run: Run, batch: Batch) -> None:  # noqa: B027
        """A training step of the epoch ended."""

    def on_train_epoch_end(self, run: Run, metrics: dict[str, float]) -> None:  # noqa: B027
        """The epoch's training steps ended; ``metrics`` holds its training metrics."""

    def on_validation_end(self, run: Run, metrics: dict[str, float]) -> None:  # noqa: B027
        """The epoch is validated; ``metrics`` is what will be stored for it."""

    def on_epoch_end(self, run: Run, metrics: dict[str, float]) -> None:  # noqa: B027
        """The epoch and the state to resume from are saved."""

    def on_fit_end(self, run: Run) -> None:  # noqa: B027
        """Training ended (all epochs, a stop request, or early stopping)."""

    def on_test_end(self, run: Run, results: dict[str, dict[str, float]]) -> None:  # noqa: B027
        """The best and last checkpoints were evaluated on the test set: ``results["best"]``, ``results["last"]``."""

    def on_exception(self, run: Run, error: BaseException) -> None:  # noqa: B027
        """The run failed or was interrupted with ``error`` (which is raised after every callback heard it)."""

    @property
    def state_key(self) -> str:
        """Where the run's resume state keeps this callback's ``state_dict()``: its registered name, else its class's
        qualified name (stable across releases, unlike what messages call it)."""
        return type(self).name or f"{type(self).__module__}.{type(self).__qualname__}"

    def state_dict(self) -> dict[str, Any]:
        """What ``load_state_dict`` needs to continue after a resume (plain containers)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:  # noqa: B027
        """Continue from ``state_dict()``'s output."""
