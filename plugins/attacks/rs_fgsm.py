"""`rs-fgsm`: FGSM with random start (Wong et al., 2020, "Fast is better than free")."""

from __future__ import annotations

import torch
from pydantic import Field

from energybench import Attack, PluginParams
from energybench.ops.perturb import single_step


class RSFGSM(Attack):
    """Uniform start in the eps-ball, one step of ``alpha * eps`` along the gradient sign, projected back."""

    norms = ("Linf", "L2")

    class Params(PluginParams):
        alpha: float = Field(1.25, gt=0, description="step size as a multiple of eps")

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv, _ = single_step(self.model, x, y, eps=self.eps, step=self.params.alpha * self.eps,
                               init_radius=self.eps, norm=self.norm)
        return x_adv
