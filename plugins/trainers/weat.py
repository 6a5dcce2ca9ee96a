"""`weat`: Weighted Energy Adversarial Training (Mirza et al., ECCV 2024), see docs/references.md, "WEAT"."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from energybench import TrainOutput
from energybench.ops.energy import marginal_energy
from energybench.ops.perturb import kl_divergence
from energybench.plugins.trainers.trades import TRADESTrainer


class WEATTrainer(TRADESTrainer):
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

    class Params(TRADESTrainer.Params):
        variant: Literal["nat", "adv"] = Field("nat", description="cross-entropy on x (WEAT_nat) or on x* (WEAT_adv)")

    def step(self, model, x, y, *, keep_clean_logits):
        p = self.params
        logits, x_adv, logits_adv = self.attack(model, x)
        weights = 1.0 / F.softplus(marginal_energy(logits.detach()).abs())
        ce = F.cross_entropy(logits_adv if p.variant == "adv" else logits, y, reduction="none")
        loss = torch.sum(weights * (ce + p.beta * kl_divergence(logits, logits_adv))) / x.shape[0]
        return TrainOutput(loss=loss, x_adv=x_adv, logits_adv=logits_adv, logits=logits, passes=p.steps + 2.0)
