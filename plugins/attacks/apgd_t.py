"""`apgd-t`: APGD-T (Croce and Hein, 2020) through pyautoattack, exactly as AutoAttack runs it."""

from __future__ import annotations

import torch
from pydantic import Field

from benchmark.attack import Attack
from benchmark.autoattack import run_autoattack
from benchmark.params import PluginParams


class APGDT(Attack):
    """Targeted Auto-PGD on the DLR loss: 100 iterations against each of the 9 most likely wrong classes.

    Runs pyautoattack's ``AutoAttack(version="custom", attacks=["apgd-t"])`` with its own settings for a custom
    list; points already misclassified are returned unchanged. ``seed`` None means 0.
    """

    norms = ("Linf", "L2", "L1")

    class Params(PluginParams):
        batch_size: int = Field(250, ge=1, description="batch size inside AutoAttack")

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        result = run_autoattack(self.model, x, y, eps=self.eps, norm=self.norm, attacks=["apgd-t"],
                                seed=self.seed or 0, batch_size=self.params.batch_size)
        return result.x_adv
