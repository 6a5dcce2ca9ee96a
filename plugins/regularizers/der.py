"""`der`: the Delta Energy Regularizer (Mirza et al., 2025), see NOTES.md section 2."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from energybench.contracts.params import PluginParams
from energybench.contracts.regularizer import Regularizer
from energybench.ops.energy import delta_energy


class DeltaEnergyRegularizer(Regularizer):
    """Adds ``lam * mean_i R(dE_i)`` with dE = E(x) - E(x*) (marginal), E(x,y) - E(x*,y) (joint) or both.

    Gradients flow through both energies; x* itself is detached. The clean logits are reused from
    the trainer when it has them (FGSM does), so DER costs no extra forward pass there.
    The paper's exact form is not public: R and the terms are options (see docs).
    """

    uses_clean_logits = True
    acts_on_energy = True

    class Params(PluginParams):
        lam: float = Field(1.0, ge=0, alias="lambda", description="weight of the penalty")
        form: Literal["squared", "absolute", "huber"] = Field("squared", description="penalty R applied to dE")
        terms: Literal["marginal", "joint", "both"] = Field("marginal", description="which delta energy")
        huber_delta: float = Field(1.0, gt=0, description="transition point of the huber form")

    def _penalty(self, d: torch.Tensor) -> torch.Tensor:
        p = self.params
        if p.form == "squared":
            return d.pow(2).mean()
        if p.form == "absolute":
            return d.abs().mean()
        return F.huber_loss(d, torch.zeros_like(d), delta=p.huber_delta)

    def penalty(self, model, x, y, out):
        p = self.params
        total = out.loss.new_zeros(())
        if p.terms in ("marginal", "both"):
            total = total + self._penalty(delta_energy(out.logits, out.logits_adv))
        if p.terms in ("joint", "both"):
            total = total + self._penalty(delta_energy(out.logits, out.logits_adv, y))
        return p.lam * total
