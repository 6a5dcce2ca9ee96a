"""`fgsm`: the Fast Gradient Sign Method (Goodfellow et al., 2015)."""

from __future__ import annotations

import torch

from energybench import Attack
from energybench.ops.perturb import single_step


class FGSM(Attack):
    """One step of size eps along the sign of the input gradient of the cross-entropy."""

    norms = ("Linf", "L2")

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv, _ = single_step(self.model, x, y, eps=self.eps, step=self.eps, norm=self.norm)
        return x_adv
