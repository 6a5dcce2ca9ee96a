"""Evaluation: clean, FGSM, PGD and AutoAttack accuracy, energy statistics, and the CO rule.

Every evaluation runs the model in eval mode (BatchNorm statistics untouched) and restores the
caller's mode afterwards. PGD uses step size 2.5 * eps / steps (Madry et al.'s rule).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from energybench.config import EvalProtocol
from energybench.contracts.registry import get_plugin
from energybench.data.datasets import Split
from energybench.errors import EnergybenchError
from energybench.evaluation.autoattack import run_autoattack
from energybench.evaluation.statistics import decrease_p
from energybench.ops.energy import EnergyTrace
from energybench.ops.modes import eval_mode

#: What the metric prefixes of ``robustness`` measure, for messages.
SPLIT_NAMES = {"val_": "validation", "test_": "test"}


def as_float(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 images to float in [0, 1] on ``device``."""
    return x.to(device, non_blocking=True).float().div_(255)


def _batches(split: Split, n: int | None, batch_size: int, device: torch.device):
    """The first ``n`` points in batches: copied to ``device`` once (as uint8), made float per batch."""
    n = len(split) if n is None else min(n, len(split))
    x, y = split.x[:n].to(device), split.y[:n].to(device)
    for start in range(0, n, batch_size):
        yield as_float(x[start:start + batch_size], device), y[start:start + batch_size]


def pgd_attack(model: nn.Module, eps: float, norm: str, steps: int, restarts: int = 1, loss: str = "ce"):
    """The registered `pgd` attack with Madry's step-size rule, on cross-entropy or the CW margin ``loss``."""
    return get_plugin("attack", "pgd")(model, eps=eps, norm=norm, steps=steps, step_size=2.5 * eps / steps,
                                        restarts=restarts, loss=loss)


@dataclass
class Measurement:
    """Accuracies and energy statistics (``metrics``) and, per accuracy, which of the evaluated points were
    classified correctly (``correct``: CPU bool vectors over the first n points of the split, keyed like
    the accuracy without ``_acc``, e.g. ``test_pgd``): the per-point data that paired tests need."""

    metrics: dict[str, float]
    correct: dict[str, torch.Tensor] = field(default_factory=dict)

    def update(self, other: Measurement) -> None:
        self.metrics.update(other.metrics)
        self.correct.update(other.correct)


def robustness(model: nn.Module, split: Split, *, n: int | None, eps: float, norm: str, pgd_steps: int,
               pgd_restarts: int = 1, with_fgsm: bool = False, with_margin: bool = False, batch_size: int = 500,
               device: torch.device, prefix: str = "") -> Measurement:
    """Clean, (FGSM,) and PGD accuracy on the first ``n`` points, and dE statistics against PGD. ``with_margin``
    adds PGD on the CW margin loss (``margin_acc``) and the point-wise worst case of both PGDs (``worst_acc``).

    Logits that are not finite (nan, inf) make every accuracy meaningless: they fail the evaluation.
    """
    fgsm = get_plugin("attack", "fgsm")(model, eps=eps, norm=norm) if with_fgsm else None
    pgd = pgd_attack(model, eps, norm, pgd_steps, pgd_restarts)
    margin = pgd_attack(model, eps, norm, pgd_steps, pgd_restarts, loss="margin") if with_margin else None
    names = ("clean", "pgd") + (("fgsm",) if fgsm else ()) + (("margin",) if margin else ())
    correct: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    trace = EnergyTrace()
    with eval_mode(model):
        for x, y in _batches(split, n, batch_size, device):
            with torch.no_grad():
                logits = model(x)
            bad = int((~torch.isfinite(logits).all(1)).sum())  # one host read per batch, as every attack call makes
            if bad:
                raise EnergybenchError(f"the model returns non-finite logits (nan or inf) for {bad} of {len(y)} "
                                       f"{SPLIT_NAMES.get(prefix, 'evaluated')} points: no accuracy can be measured "
                                       "from them")
            x_pgd = pgd(x, y)
            x_fgsm = fgsm(x, y) if fgsm is not None else None
            with torch.no_grad():
                logits_pgd = model(x_pgd)
                correct["clean"].append(logits.argmax(1) == y)  # kept on the device, read once at the end
                correct["pgd"].append(logits_pgd.argmax(1) == y)
                if x_fgsm is not None:
                    correct["fgsm"].append(model(x_fgsm).argmax(1) == y)
            if margin is not None:
                x_margin = margin(x, y)
                with torch.no_grad():
                    correct["margin"].append(model(x_margin).argmax(1) == y)
            trace.add(logits, logits_pgd, y)
    if margin is not None:
        correct["worst"] = [p & m for p, m in zip(correct["pgd"], correct["margin"])]
    vectors = {f"{prefix}{k}": torch.cat(v).cpu() for k, v in correct.items()}
    metrics = {f"{name}_acc": int(v.sum()) / len(v) for name, v in vectors.items()}  # k/n exactly
    metrics.update(trace.summary(prefix=prefix))
    return Measurement(metrics, vectors)


def autoattack_accuracy(model: nn.Module, split: Split, *, n: int, eps: float, norm: str, version: str,
                        seed: int, batch_size: int, device: torch.device,
                        on_message: Callable[[str], None] | None = None) -> Measurement:
    """AutoAttack robust accuracy on the first ``n`` points (point-wise worst case) and per attack."""
    n = min(n, len(split))
    x, y = as_float(split.x[:n], device), split.y[:n].to(device)
    with eval_mode(model):
        result = run_autoattack(model, x, y, eps=eps, norm=norm, version=version, seed=seed,
                                batch_size=batch_size, on_message=on_message)
    metrics = {"test_aa_acc": result.accuracy, "test_aa_points": float(n)}
    metrics.update({f"test_aa_{name}_acc": acc for name, acc in result.per_attack.items()})
    return Measurement(metrics, {"test_aa": result.robust.cpu()})


def catastrophic_overfitting(history: list[dict[str, float]], protocol: EvalProtocol, n: int) -> list[bool]:
    """The CO flag of every epoch of ``history`` (per-epoch validation metrics, oldest first, measured on ``n``
    validation points).

    An epoch is flagged when its PGD accuracy is below ``co_ratio`` times its FGSM accuracy (the model
    resists the single-step attack it trained on far better than the multi-step one: its loss surface
    has become locally non-linear) AND either FGSM exceeds PGD by at least ``co_gap``, or PGD fell from
    its best value in the k earlier epochs (``_fell``). The second clause catches a collapse when FGSM
    accuracy itself is low (large eps, harder data), which the absolute gap misses.
    """
    flags, best = [], None
    for earlier, metrics in enumerate(history):
        flags.append(co_flag(metrics, best, earlier, protocol, n))
        best = metrics["val_pgd_acc"] if best is None else max(best, metrics["val_pgd_acc"])
    return flags


def co_flag(metrics: dict[str, float], best: float | None, earlier: int, protocol: EvalProtocol, n: int) -> bool:
    """The CO flag of one epoch (``catastrophic_overfitting``) from its validation ``metrics``, the best PGD accuracy
    of the ``earlier`` epochs before it (None when there are none) and the ``n`` validation points."""
    fgsm, pgd = metrics["val_fgsm_acc"], metrics["val_pgd_acc"]
    gap = fgsm - pgd >= protocol.co_gap
    return pgd < protocol.co_ratio * fgsm and (gap or _fell(fgsm, pgd, best, earlier, n, protocol))


def _fell(fgsm: float, pgd: float, best: float | None, earlier: int, n: int, protocol: EvalProtocol) -> bool:
    """The drop clause of the CO flag: PGD accuracy ``pgd`` fell below ``co_drop`` times ``best``, the best of the
    ``earlier`` epochs; by at least ``co_drop_min``, with FGSM still at least ``co_drop_min`` above it (a model that
    never was robust, whose FGSM and PGD accuracy sink together near 0, does not collapse); and significantly: the
    one-sided Fisher exact test of the fall on the n points, Bonferroni-corrected for the earlier epochs ``best`` is
    the best of, gives p x earlier at most ``co_drop_alpha``. Counted in points of the n, so no rounding decides."""
    if best is None or not pgd < protocol.co_drop * best:
        return False
    before, now, lead = round(best * n), round(pgd * n), round(fgsm * n) - round(pgd * n)
    if min(before - now, lead) < protocol.co_drop_min * n - 1e-9:
        return False
    return min(1.0, earlier * decrease_p(before, now, n)) <= protocol.co_drop_alpha
