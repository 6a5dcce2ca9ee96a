"""`trades`: TRADES (Zhang et al., 2019), clean cross-entropy plus beta * KL(p(x) || p(x*))."""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field

from energybench import PluginParams, Trainer, TrainOutput
from energybench.ops.perturb import kl_divergence, kl_pgd


class TRADESTrainer(Trainer):
    """Loss ``CE(f(x), y) + beta * mean_i KL(p(x_i) || p(x*_i))`` with x* from ``steps`` of PGD on that KL.

    The attack starts from ``x + init_std * N(0, 1)`` and takes steps of ``step_ratio * eps``. The clean
    logits are computed once, before the attack: detached they are the attack's target, with their graph
    they enter the loss and are handed back as ``TrainOutput.logits``. Like the other trainers, x* is made
    with the model in the mode the harness chose (train); the reference code switches to eval for it.
    """

    class Params(PluginParams):
        beta: float = Field(6.0, ge=0, description="weight of the KL (robustness) term")
        steps: int = Field(10, ge=1, description="PGD steps on the KL per batch")
        step_ratio: float = Field(0.25, gt=0, description="step size as a fraction of eps")
        init_std: float = Field(0.001, ge=0, description="std of the Gaussian start around x")

    def attack(self, model, x):
        """Clean logits (with graph), x* from PGD on the KL, and f(x*): the part TRADES-style losses share."""
        p = self.params
        logits = model(x)
        x_adv = kl_pgd(model, x, eps=self.eps, step_size=p.step_ratio * self.eps, steps=p.steps, norm=self.norm,
                       init_std=p.init_std, logits=logits)
        return logits, x_adv, model(x_adv)

    def step(self, model, x, y, *, keep_clean_logits):
        logits, x_adv, logits_adv = self.attack(model, x)
        loss = F.cross_entropy(logits, y) + self.params.beta * kl_divergence(logits, logits_adv).mean()
        return TrainOutput(loss=loss, x_adv=x_adv, logits_adv=logits_adv, logits=logits,
                           passes=self.params.steps + 2.0)
