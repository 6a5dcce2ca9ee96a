"""`fgsm`: FGSM adversarial training (Goodfellow et al., 2015), zero init and step eps."""

from __future__ import annotations

import torch.nn.functional as F

from energybench import Trainer, TrainOutput
from energybench.ops.perturb import single_step


class FGSMTrainer(Trainer):
    """Train on x + eps * sign(grad) from x itself; collapses (catastrophic overfitting) at large eps.

    The attack's forward pass is at x, so its logits are handed back as the clean logits for free
    (and, detached, as the logits at the attack's starting point).
    """

    single_step = True

    def step(self, model, x, y, *, keep_clean_logits):
        x_adv, logits = single_step(model, x, y, eps=self.eps, step=self.eps, norm=self.norm,
                                    keep_clean_logits=keep_clean_logits)
        logits_adv = model(x_adv)
        return TrainOutput(loss=F.cross_entropy(logits_adv, y), x_adv=x_adv, logits_adv=logits_adv,
                           logits=logits, logits_start=logits.detach(), passes=2.0)
