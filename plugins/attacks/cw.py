"""`cw`: the Carlini-Wagner margin loss maximised by PGD (CW-inf, after Carlini and Wagner, 2017)."""

from __future__ import annotations

import torch
from pydantic import Field

from energybench.contracts.attack import Attack
from energybench.contracts.params import PluginParams
from energybench.ops.perturb import pgd


class CW(Attack):
    """PGD with random start on ``max_{j != y} f_j - f_y``; step ``step_ratio * eps`` unless ``step_size`` is set."""

    norms = ("Linf", "L2")

    class Params(PluginParams):
        steps: int = Field(20, ge=1, description="gradient steps per restart")
        step_size: float | None = Field(None, gt=0, description="absolute step size (overrides step_ratio)")
        step_ratio: float = Field(0.25, gt=0, description="step size as a fraction of eps")
        restarts: int = Field(1, ge=1, description="random restarts; the worst case per point is kept")

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        p = self.params
        step = p.step_size if p.step_size is not None else p.step_ratio * self.eps
        return pgd(self.model, x, y, eps=self.eps, step_size=step, steps=p.steps, norm=self.norm,
                   restarts=p.restarts, loss="margin")
