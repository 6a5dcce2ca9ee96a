"""`n-fgsm`: FGSM with a larger noise and no projection (de Jorge et al., 2022, "Make some noise")."""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field

from energybench import PluginParams, Trainer, TrainOutput
from energybench.ops.perturb import single_step


class NFGSMTrainer(Trainer):
    """Noise uniform in the ``k * eps`` ball, one step of ``alpha * eps``, NOT projected back to the eps-ball.

    x_adv stays in the [0, 1] box but may lie up to ``(k + alpha) * eps`` from x (3 eps by default):
    the stronger noise is what avoids catastrophic overfitting without GradAlign's extra cost.
    """

    single_step = True

    class Params(PluginParams):
        k: float = Field(2.0, ge=0, description="noise radius as a multiple of eps")
        alpha: float = Field(1.0, gt=0, description="step size as a multiple of eps")

    def step(self, model, x, y, *, keep_clean_logits):
        p = self.params
        x_adv, logits_start = single_step(model, x, y, eps=self.eps, step=p.alpha * self.eps,
                                          init_radius=p.k * self.eps, project_to_ball=False, norm=self.norm)
        logits_adv = model(x_adv)
        return TrainOutput(loss=F.cross_entropy(logits_adv, y), x_adv=x_adv, logits_adv=logits_adv,
                           logits_start=logits_start, passes=2.0)
