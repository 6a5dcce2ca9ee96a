"""`n-fgsm`: N-FGSM (de Jorge et al., 2022) as an evaluation attack, projected to stay in the eps-ball."""

from __future__ import annotations

import torch
from pydantic import Field

from energybench import Attack, PluginParams
from energybench.ops.perturb import single_step


class NFGSM(Attack):
    """Noise uniform in the ``k * eps`` ball, one step of ``alpha * eps``, then projected onto the eps-ball.

    The N-FGSM trainer does not project; an evaluation attack must, so the result is a valid
    eps-bounded adversarial example.
    """

    norms = ("Linf", "L2")

    class Params(PluginParams):
        k: float = Field(2.0, ge=0, description="noise radius as a multiple of eps")
        alpha: float = Field(1.0, gt=0, description="step size as a multiple of eps")

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        p = self.params
        x_adv, _ = single_step(self.model, x, y, eps=self.eps, step=p.alpha * self.eps, init_radius=p.k * self.eps,
                               norm=self.norm)
        return x_adv
