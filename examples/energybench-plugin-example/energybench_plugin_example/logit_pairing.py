"""`logit-pairing`: adversarial logit pairing (Kannan et al., 2018) as an energybench regularizer."""

from __future__ import annotations

from pydantic import Field

from energybench import PluginParams, Regularizer


class LogitPairing(Regularizer):
    """``lambda * mean_i ||f(x_i) - f(x*_i)||^2``: pulls adversarial logits toward the clean ones."""

    uses_clean_logits = True

    class Params(PluginParams):
        lam: float = Field(0.5, ge=0, alias="lambda", description="weight of the pairing term")

    def penalty(self, model, x, y, out):
        return self.params.lam * (out.logits - out.logits_adv).pow(2).sum(dim=1).mean()
