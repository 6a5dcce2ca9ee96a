"""`mart`: Misclassification Aware adveRsarial Training (Wang et al., 2020)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from energybench import PluginParams, Trainer, TrainOutput
from energybench.ops.perturb import kl_divergence, pgd


class MARTTrainer(Trainer):
    """Loss ``mean_i [BCE(f(x*_i), y_i) + beta * KL(p(x_i) || p(x*_i)) * (1 - p(x_i)_y)]`` with x* from PGD-CE.

    BCE is the boosted cross-entropy ``CE(f(x*), y) - log(1 - max_{j != y} p(x*)_j)``. As in the reference
    code, gradients flow through the weight ``1 - p(x)_y`` too, and ``1.0001``/``1e-12`` guard the log. The
    reference starts PGD from x + 0.001 * N(0, 1); we start from x itself (the CE gradient does not vanish
    there), or uniformly in the eps-ball with ``random_init``.
    """

    class Params(PluginParams):
        beta: float = Field(6.0, ge=0, description="weight of the misclassification-aware KL term")
        steps: int = Field(10, ge=1, description="PGD steps per batch")
        step_ratio: float = Field(0.25, gt=0, description="step size as a fraction of eps")
        random_init: bool = Field(False, description="start PGD uniformly in the eps-ball instead of at x")

    def step(self, model, x, y, *, keep_clean_logits):
        p = self.params
        x_adv = pgd(model, x, y, eps=self.eps, step_size=p.step_ratio * self.eps, steps=p.steps, norm=self.norm,
                    random_init=p.random_init)
        logits, logits_adv = model(x), model(x_adv)
        probs_adv = F.softmax(logits_adv, dim=1)
        top_wrong = probs_adv.masked_fill(F.one_hot(y, probs_adv.shape[1]).bool(), float("-inf")).amax(dim=1)
        bce = F.cross_entropy(logits_adv, y, reduction="none") - torch.log(1.0001 - top_wrong + 1e-12)
        p_true = F.softmax(logits, dim=1).gather(1, y.view(-1, 1)).squeeze(1)
        loss = (bce + p.beta * kl_divergence(logits, logits_adv) * (1.0000001 - p_true)).mean()
        return TrainOutput(loss=loss, x_adv=x_adv, logits_adv=logits_adv, logits=logits, passes=p.steps + 2.0)
