"""The final test-set evaluation of one model under a run's protocol: clean/FGSM/PGD, AutoAttack, sanity checks."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from energybench.config import RunConfig
from energybench.data.datasets import Split
from energybench.evaluation.autoattack import expected_passes
from energybench.evaluation.robustness import Measurement, as_float, autoattack_accuracy, robustness
from energybench.evaluation.sanity import attack_disagreement, model_checks
from energybench.ops.modes import eval_mode

#: An evaluation stage expected to take longer than this many seconds is announced with its estimate first.
ANNOUNCE_SECONDS = 60.0


def pass_seconds(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Seconds of one forward+backward pass per example of ``model`` on the batch ``(x, y)`` (eval mode), timed on
    a second pass after a warm-up one; what the evaluation's estimates multiply."""
    x = x.clone().requires_grad_(True)

    def one_pass() -> None:
        with torch.enable_grad():
            torch.autograd.grad(F.cross_entropy(model(x).float(), y), x)
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)

    with eval_mode(model):
        one_pass()
        start = time.perf_counter()
        one_pass()
    return (time.perf_counter() - start) / len(x)


def duration_text(seconds: float) -> str:
    """``45 s``, ``3 min``, ``1.5 h``: a duration as estimates print it."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _per_pass_text(seconds: float) -> str:
    milliseconds = 1e3 * seconds
    return f"{milliseconds:.0f} ms" if milliseconds >= 1 else f"{milliseconds:.2f} ms"


def test_evaluation(model: nn.Module, test: Split, config: RunConfig, device: torch.device,
                    stage: Callable[[str], None] = lambda text: None,
                    note: Callable[[str], None] = lambda text: None) -> Measurement:
    """Clean, FGSM and PGD-k (with restarts) accuracy on the protocol's test points, AutoAttack on the
    first ``eval.aa_points``, and the sanity checks of ``energybench.evaluation.sanity``; ``stage`` hears
    which part runs, ``note`` an estimate of the time of each part expected to take over ``ANNOUNCE_SECONDS``
    (from the seconds of one forward+backward pass, ``pass_seconds``). The same for runs energybench trained and
    for external models."""
    p = config.eval
    n = min(p.test_points or len(test), len(test))
    probe = min(p.batch_size, n)
    per_pass = pass_seconds(model, as_float(test.x[:probe], device), test.y[:probe].to(device))
    estimate = n * (p.pgd_steps * p.pgd_restarts + 2) * per_pass
    if estimate > ANNOUNCE_SECONDS:
        note(f"clean, FGSM and PGD-{p.pgd_steps} on {n} test points: about {duration_text(estimate)} (estimated "
             f"from {_per_pass_text(per_pass)} per forward+backward pass and point)")
    stage(f"clean, FGSM and PGD-{p.pgd_steps} on {n} test points")
    measured = robustness(model, test, n=p.test_points, eps=config.eps, norm=config.norm, pgd_steps=p.pgd_steps,
                          pgd_restarts=p.pgd_restarts, with_fgsm=True, batch_size=p.batch_size, device=device,
                          prefix="test_")
    measured.metrics["test_points"] = float(n)
    if p.aa_points:
        attacked = min(p.aa_points, len(test))
        m = measured.metrics
        passes = expected_passes(p.aa_version, int(test.y.max()) + 1, correct=m["test_clean_acc"],
                                 robust=m["test_pgd_acc"])
        estimate = attacked * passes * per_pass
        if estimate > ANNOUNCE_SECONDS:
            note(f"AutoAttack ({p.aa_version}) on {attacked} test points: about {duration_text(estimate)} (estimated "
                 f"from PGD's {m['test_pgd_acc']:.0%} robust points and {_per_pass_text(per_pass)} per pass and "
                 "point)")
        stage(f"AutoAttack ({p.aa_version}) on {attacked} test points")
        measured.update(autoattack_accuracy(model, test, n=p.aa_points, eps=config.eps, norm=config.norm,
                                            version=p.aa_version, seed=config.seed, batch_size=p.batch_size,
                                            device=device, on_message=lambda m: stage(f"AutoAttack: {m[:60]}")))
    measured.metrics.update(attack_disagreement(measured.correct))
    measured.metrics.update(model_checks(model, test, device=device))
    return measured
