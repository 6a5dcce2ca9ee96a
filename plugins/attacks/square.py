"""`square`: Square Attack (Andriushchenko et al., 2020) through pyautoattack, exactly as AutoAttack runs it."""

from __future__ import annotations

import torch
from pydantic import Field

from benchmark.attack import Attack
from benchmark.autoattack import run_autoattack
from benchmark.params import PluginParams


class Square(Attack):
    """Score-based black-box random search with square-shaped updates: 5000 queries, one restart.

    Runs pyautoattack's ``AutoAttack(version="custom", attacks=["square"])`` with its own settings for a custom
    list; points already misclassified are returned unchanged. ``seed`` None means 0.
    """

    norms = ("Linf", "L2", "L1")

    class Params(PluginParams):
        batch_size: int = Field(250, ge=1, description="batch size inside AutoAttack")

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        result = run_autoattack(self.model, x, y, eps=self.eps, norm=self.norm, attacks=["square"],
                                seed=self.seed or 0, batch_size=self.params.batch_size)
        return result.x_adv
