"""The final test-set evaluation of one model under a run's protocol: clean/FGSM/PGD, AutoAttack, sanity checks."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from energybench.config import RunConfig
from energybench.data.datasets import Split
from energybench.evaluation.robustness import Measurement, autoattack_accuracy, robustness
from energybench.evaluation.sanity import attack_disagreement, model_checks


def test_evaluation(model: nn.Module, test: Split, config: RunConfig, device: torch.device,
                    stage: Callable[[str], None] = lambda text: None) -> Measurement:
    """Clean, FGSM and PGD-k (with restarts) accuracy on the protocol's test points, AutoAttack on the
    first ``eval.aa_points``, and the sanity checks of ``energybench.evaluation.sanity``; ``stage`` hears
    which part runs. The same for runs energybench trained and for external models."""
    p = config.eval
    stage(f"clean, FGSM and PGD-{p.pgd_steps} on {min(p.test_points or len(test), len(test))} test points")
    measured = robustness(model, test, n=p.test_points, eps=config.eps, norm=config.norm, pgd_steps=p.pgd_steps,
                          pgd_restarts=p.pgd_restarts, with_fgsm=True, batch_size=p.batch_size, device=device,
                          prefix="test_")
    if p.aa_points:
        stage(f"AutoAttack ({p.aa_version}) on {min(p.aa_points, len(test))} test points")
        measured.update(autoattack_accuracy(model, test, n=p.aa_points, eps=config.eps, norm=config.norm,
                                            version=p.aa_version, seed=config.seed, batch_size=p.batch_size,
                                            device=device, on_message=lambda m: stage(f"AutoAttack: {m[:60]}")))
    measured.metrics.update(attack_disagreement(measured.correct))
    measured.metrics.update(model_checks(model, test, device=device))
    return measured
