"""`weat`: Weighted Energy Adversarial Training (Mirza et al., ECCV 2024), see NOTES.md section 5."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from benchmark.energy import marginal_energy
from benchmark.params import PluginParams
from benchmark.perturb import kl_divergence, kl_pgd
from benchmark.trainer import Trainer, TrainOutput


class WEATTrainer(Trainer):
    """TRADES with every sample's loss weighted by its clean marginal energy.

    With E(x) = -logsumexp_k f(x)[k] from the DETACHED clean logits and w(x) = 1 / log(1 + exp(|E(x)|)):

        loss = (1/B) * sum_i w(x_i) * [CE(f(z_i), y_i) + beta * KL(p(x_i) || p(x*_i))]

    with z = x* for ``variant="adv"`` (WEAT_adv) and z = x for ``variant="nat"`` (WEAT_nat). x* comes from
    TRADES' attack (``steps`` of PGD on the KL from x + ``init_std`` * N(0, 1), step ``step_ratio * eps``).
    This follows the authors' reference code (WEAT_loss.py), which also weights the KL term; there beta
    defaults to 6 and WEAT_nat is the default variant, as here. Our choices: w uses |E| through
    ``softplus`` (the same function, without overflow); the KL uses log-softmaxes rather than
    log(softmax + 1e-12); the clean logits are computed once, in the mode the harness chose (train), and
    serve as the attack's target (the reference recomputes them in eval mode at every attack step).
    """

    class Params(PluginParams):
        variant: Literal["nat", "adv"] = Field("nat", description="cross-entropy on x (WEAT_nat) or on x* (WEAT_adv)")
        beta: float = Field(6.0, ge=0, description="weight of the KL (robustness) term")
        steps: int = Field(10, ge=1, description="PGD steps on the KL per batch")
        step_ratio: float = Field(0.25, gt=0, description="step size as a fraction of eps")
        init_std: float = Field(0.001, ge=0, description="std of the Gaussian start around x")

    def step(self, model, x, y, *, keep_clean_logits):
        p = self.params
        logits = model(x)
        x_adv = kl_pgd(model, x, eps=self.eps, step_size=p.step_ratio * self.eps, steps=p.steps, norm=self.norm,
                       init_std=p.init_std, logits=logits)
        logits_adv = model(x_adv)
        weights = 1.0 / F.softplus(marginal_energy(logits.detach()).abs())
        ce = F.cross_entropy(logits_adv if p.variant == "adv" else logits, y, reduction="none")
        loss = torch.sum(weights * (ce + p.beta * kl_divergence(logits, logits_adv))) / x.shape[0]
        return TrainOutput(loss=loss, x_adv=x_adv, logits_adv=logits_adv, logits=logits, passes=p.steps + 2.0)
