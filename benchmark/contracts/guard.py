"""Plugin fault isolation: a deadline for plugin calls, and checks of what plugins hand back.

A plugin that hangs, or returns something that breaks its contract, must fail its own run with a
message naming it, instead of stalling the harness or crashing it later with an obscure error.
Trainer and regularizer outputs are checked on shapes and dtypes only (free: no device
synchronisation per batch); an attack's output is also checked against the [0, 1] box and its
eps-ball (one host read per attack call).
"""

from __future__ import annotations

import math
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from energybench.errors import EnergybenchError, PluginError

#: Slack for floating-point rounding when checking the [0, 1] box and the eps-ball.
TOLERANCE = 1e-5


class PluginTimeout(BaseException):
    """Raised inside a plugin call that ran past its deadline.

    A ``BaseException``, so that a plugin's own ``except Exception`` cannot swallow it.
    """


def deadline_supported() -> bool:
    """True where ``deadline`` can interrupt a call: Unix (SIGALRM), in the main thread."""
    return hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()


@contextmanager
def deadline(seconds: float | None) -> Iterator[None]:
    """Raise ``PluginTimeout`` in the block once ``seconds`` have passed (None: no limit).

    Implemented with SIGALRM and ``setitimer``, so it only acts on Unix in the main thread;
    elsewhere the block runs without a limit. A plugin stuck inside one long native call (a
    huge matrix product, a blocking read) is interrupted when that call returns to Python.
    """
    if seconds is None or not deadline_supported():
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise PluginTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def call_plugin(kind: str, name: str, fn: Callable[..., Any], *args: Any, timeout: float | None = None,
                check: Callable[[Any], str | None] | None = None, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` of plugin ``name`` of ``kind``: its exceptions, a call running past ``timeout``
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


def _describe(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    return f"{type(value).__name__} {value!r}"[:80]


def _logits_problem(field: str, logits: Any, n: int, num_classes: int) -> str | None:
    if logits is None:
        return None
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (n, num_classes):
        return f"TrainOutput.{field} must have shape ({n}, {num_classes}), got {_describe(logits)}"
    return None


def train_output_problem(out: Any, x: torch.Tensor, y: torch.Tensor, num_classes: int,
                         start_needed_by: str | None = None) -> str | None:
    """What breaks the ``TrainOutput`` contract (benchmark.trainer) in a step's output, or None; with
    ``start_needed_by`` (a regularizer's name), missing ``logits_start`` breaks it too."""
    from energybench.contracts.trainer import TrainOutput

    if not isinstance(out, TrainOutput):
        return f"step returned {_describe(out)}, not a TrainOutput"
    loss = out.loss
    if not isinstance(loss, torch.Tensor) or loss.dim() != 0 or not loss.is_floating_point():
        return f"TrainOutput.loss must be a scalar float tensor, got {_describe(loss)}"
    if not loss.requires_grad:
        return "TrainOutput.loss has no graph to back-propagate (requires_grad is False)"
    if out.x_adv is not None and (not isinstance(out.x_adv, torch.Tensor) or out.x_adv.shape != x.shape):
        return f"TrainOutput.x_adv must have the batch's shape {tuple(x.shape)}, got {_describe(out.x_adv)}"
    for field in ("logits_adv", "logits", "logits_start"):
        problem = _logits_problem(field, getattr(out, field), len(y), num_classes)
        if problem:
            return problem
    if start_needed_by is not None and out.logits_start is None:
        return (f"it returned no TrainOutput.logits_start (the logits at its attack's starting point, which a "
                f"single-step trainer reports), and regularizer {start_needed_by!r} needs them to find abnormal "
                "adversarial examples")
    if isinstance(out.passes, bool) or not isinstance(out.passes, (int, float)) or out.passes < 0:
        return f"TrainOutput.passes must be a non-negative number, got {_describe(out.passes)}"
    return None


def penalty_problem(value: Any) -> str | None:
    """What is wrong with a regularizer's penalty (it must be a scalar float tensor), or None."""
    if not isinstance(value, torch.Tensor) or value.dim() != 0 or not value.is_floating_point():
        return f"penalty must be a scalar float tensor, got {_describe(value)}"
    return None


def attack_output_problem(x: torch.Tensor, x_adv: Any, eps: float, norm: str) -> str | None:
    """What breaks the attack contract (same shape, in [0, 1], in the eps-ball of ``norm``), or None."""
    if not isinstance(x_adv, torch.Tensor) or x_adv.shape != x.shape:
        return f"returned {_describe(x_adv)} for inputs of shape {tuple(x.shape)}"
    if x.numel() == 0:
        return None
    delta = (x_adv.detach() - x.detach()).flatten(1).float()
    size = {"Linf": delta.abs().amax(1), "L1": delta.abs().sum(1)}.get(norm, delta.norm(dim=1))
    low, high, largest = torch.stack([x_adv.detach().min().float(), x_adv.detach().max().float(),
                                      size.max()]).tolist()
    if not all(math.isfinite(v) for v in (low, high, largest)):
        return "returned non-finite values"
    if low < -TOLERANCE or high > 1 + TOLERANCE:
        return f"returned values in [{low:.4g}, {high:.4g}], outside the [0, 1] box"
    if largest > eps + TOLERANCE * max(1.0, eps):
        return f"moved an input by {largest:.4g} in {norm}, outside the eps-ball (eps={eps:g})"
    return None
