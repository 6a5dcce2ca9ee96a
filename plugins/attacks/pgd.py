"""`pgd`: Projected Gradient Descent (Madry et al., 2018), Linf or L2, CE or margin loss."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from energybench import Attack, PluginParams
from energybench.ops.perturb import pgd


class PGD(Attack):
    """PGD with random start; the step size is ``step_ratio * eps`` unless ``step_size`` is set."""

    norms = ("Linf", "L2")

    class Params(PluginParams):
        steps: int = Field(10, ge=1, description="gradient steps per restart")
        step_size: float | None = Field(None, gt=0, description="absolute step size (overrides step_ratio)")
        step_ratio: float = Field(0.25, gt=0, description="step size as a fraction of eps")
        restarts: int = Field(1, ge=1, description="random restarts; the worst case per point is kept")
        loss: Literal["ce", "margin"] = Field("ce", description="cross-entropy or CW margin")

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        p = self.params
        step = p.step_size if p.step_size is not None else p.step_ratio * self.eps
        return pgd(self.model, x, y, eps=self.eps, step_size=step, steps=p.steps, norm=self.norm,
                   restarts=p.restarts, loss=p.loss)
