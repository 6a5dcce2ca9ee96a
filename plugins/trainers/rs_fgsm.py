"""`rs-fgsm`: FGSM with random start (Wong et al., 2020, "Fast is better than free")."""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field

from energybench import PluginParams, Trainer, TrainOutput
from energybench.ops.perturb import single_step


class RSFGSMTrainer(Trainer):
    """Uniform init in the eps-ball, one step of ``alpha * eps``, projected back to the ball."""

    single_step = True

    class Params(PluginParams):
        alpha: float = Field(1.25, gt=0, description="step size as a multiple of eps")

    def step(self, model, x, y, *, keep_clean_logits):
        x_adv, logits_start = single_step(model, x, y, eps=self.eps, step=self.params.alpha * self.eps,
                                          init_radius=self.eps, norm=self.norm)
        logits_adv = model(x_adv)
        return TrainOutput(loss=F.cross_entropy(logits_adv, y), x_adv=x_adv, logits_adv=logits_adv,
                           logits_start=logits_start, passes=2.0)
