"""`pgd`: PGD adversarial training (Madry et al., 2018)."""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field

from energybench import PluginParams, Trainer, TrainOutput
from energybench.ops.perturb import pgd


class PGDTrainer(Trainer):
    """Train on PGD-``steps`` adversarial examples with random start (step ``step_ratio * eps``)."""

    class Params(PluginParams):
        steps: int = Field(10, ge=1, description="PGD steps per batch")
        step_ratio: float = Field(0.25, gt=0, description="step size as a fraction of eps (2/255 at 8/255)")

    def step(self, model, x, y, *, keep_clean_logits):
        p = self.params
        x_adv = pgd(model, x, y, eps=self.eps, step_size=p.step_ratio * self.eps, steps=p.steps, norm=self.norm)
        logits_adv = model(x_adv)
        return TrainOutput(loss=F.cross_entropy(logits_adv, y), x_adv=x_adv, logits_adv=logits_adv,
                           passes=p.steps + 1.0)
