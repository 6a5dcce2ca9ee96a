"""Evaluation: clean, FGSM, PGD and AutoAttack accuracy, energy statistics, and the CO rule.

Every evaluation runs the model in eval mode (BatchNorm statistics untouched) and restores the
caller's mode afterwards. PGD uses step size 2.5 * eps / steps (Madry et al.'s rule).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from energybench.config import EvalProtocol
from energybench.contracts.registry import get_plugin
from energybench.data.datasets import Split
from energybench.evaluation.autoattack import run_autoattack
from energybench.ops.energy import EnergyTrace


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block, then restore every submodule's previous mode."""
    modes = [m.training for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in zip(model.modules(), modes):
            module.training = training


def as_float(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 images to float in [0, 1] on ``device``."""
    return x.to(device, non_blocking=True).float().div_(255)


def _batches(split: Split, n: int | None, batch_size: int, device: torch.device):
    """The first ``n`` points in batches: copied to ``device`` once (as uint8), made float per batch."""
    n = len(split) if n is None else min(n, len(split))
    x, y = split.x[:n].to(device), split.y[:n].to(device)
    for start in range(0, n, batch_size):
        yield as_float(x[start:start + batch_size], device), y[start:start + batch_size]


def pgd_attack(model: nn.Module, eps: float, norm: str, steps: int, restarts: int = 1):
    """The registered `pgd` attack with Madry's step-size rule."""
    return get_plugin("attack", "pgd")(model, eps=eps, norm=norm, steps=steps, step_size=2.5 * eps / steps,
                                        restarts=restarts)


def robustness(model: nn.Module, split: Split, *, n: int | None, eps: float, norm: str, pgd_steps: int,
               pgd_restarts: int = 1, with_fgsm: bool = False, batch_size: int = 500,
               device: torch.device, prefix: str = "") -> dict[str, float]:
    """Clean, (FGSM,) and PGD accuracy on the first ``n`` points, and dE statistics against PGD."""
    fgsm = get_plugin("attack", "fgsm")(model, eps=eps, norm=norm) if with_fgsm else None
    pgd = pgd_attack(model, eps, norm, pgd_steps, pgd_restarts)
    counts = {name: torch.zeros((), dtype=torch.long, device=device)  # read once, at the end
              for name in ("clean", "pgd") + (("fgsm",) if fgsm else ())}
    total, trace = 0, EnergyTrace()
    with eval_mode(model):
        for x, y in _batches(split, n, batch_size, device):
            with torch.no_grad():
                logits = model(x)
            x_pgd = pgd(x, y)
            x_fgsm = fgsm(x, y) if fgsm is not None else None
            with torch.no_grad():
                logits_pgd = model(x_pgd)
                counts["clean"] += (logits.argmax(1) == y).sum()
                counts["pgd"] += (logits_pgd.argmax(1) == y).sum()
                if x_fgsm is not None:
                    counts["fgsm"] += (model(x_fgsm).argmax(1) == y).sum()
            trace.add(logits, logits_pgd, y)
            total += len(y)
    metrics = {f"{prefix}{k}_acc": float(v) / total for k, v in counts.items()}
    metrics.update(trace.summary(prefix=prefix))
    return metrics


def autoattack_accuracy(model: nn.Module, split: Split, *, n: int, eps: float, norm: str, version: str,
                        seed: int, batch_size: int, device: torch.device,
                        on_message: Callable[[str], None] | None = None) -> dict[str, float]:
    """AutoAttack robust accuracy on the first ``n`` points (point-wise worst case) and per attack."""
    n = min(n, len(split))
    x, y = as_float(split.x[:n], device), split.y[:n].to(device)
    with eval_mode(model):
        result = run_autoattack(model, x, y, eps=eps, norm=norm, version=version, seed=seed,
                                batch_size=batch_size, on_message=on_message)
    out = {"aa_acc": result.accuracy, "aa_points": float(n)}
    out.update({f"aa_{name}_acc": acc for name, acc in result.per_attack.items()})
    return out


def catastrophic_overfitting(metrics: dict[str, float], protocol: EvalProtocol) -> bool:
    """The CO signature on one epoch's validation metrics.

    Flagged when FGSM accuracy exceeds PGD accuracy by at least ``co_gap`` AND PGD accuracy is
    below ``co_ratio`` times FGSM accuracy: the model resists the single-step attack it trained
    on but not the multi-step one, i.e. its loss surface has become locally non-linear.
    """
    fgsm, pgd = metrics["val_fgsm_acc"], metrics["val_pgd_acc"]
    return fgsm - pgd >= protocol.co_gap and pgd < protocol.co_ratio * fgsm
