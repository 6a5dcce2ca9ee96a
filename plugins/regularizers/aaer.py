"""`aaer`: Abnormal Adversarial Examples Regularization (Lin, Yu and Liu, NeurIPS 2023)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from energybench import PluginParams, Regularizer


class AAER(Regularizer):
    """Penalises abnormal adversarial examples (AAE) of single-step training, after Lin, Yu and Liu (2023).

    With z0 the logits at the attack's starting point (x plus its random start) and z1 those at x*, a
    sample is abnormal when its loss went down after the attack's step: CE(z0, y) > CE(z1, y). With m
    AAEs in a batch of n, the penalty is, when 0 < m < n (else 0)::

        lambda1 * (m / n) * [lambda2 * R_CE + lambda3 * max(R_A - R_N, 0)]

    R_CE is the mean over AAEs of CE(z0) - CE(z1); R_A the mean over AAEs of ||z1 - z0||^2 and R_N the
    same over the other samples. As in the authors' code (tmllab/2023_NeurIPS_AAER, CIFAR10/AAER.py),
    z0, both losses, m and R_N are detached: R_CE sets the value of the penalty but carries no gradient,
    which flows only through z1 in R_A. z0 comes from the trainer's attack pass (``TrainOutput.logits_start``),
    so AAER costs no extra forward pass; it needs a single-step trainer (rs-fgsm and n-fgsm are the
    authors' RS-AAER and N-AAER). Defaults: the authors' README values for RS-FGSM on CIFAR-10 at 8/255.
    """

    requires_attack_start = True
    acts_on = "abnormal adversarial examples"

    class Params(PluginParams):
        lambda1: float = Field(1.0, ge=0, description="weight of the whole penalty")
        lambda2: float = Field(2.5, ge=0, description="weight of the AAEs' loss decrease (no gradient)")
        lambda3: float = Field(1.5, ge=0, description="weight of the AAEs' excess logit variation")

    def penalty(self, model, x, y, out):
        p = self.params
        abnormal = out.abnormal(y)
        m, n = abnormal.sum(), len(y)
        loss_start = F.cross_entropy(out.logits_start, y, reduction="none")
        loss_adv = F.cross_entropy(out.logits_adv.detach(), y, reduction="none")
        variation = (out.logits_adv - out.logits_start).pow(2).sum(1)
        r_ce = torch.where(abnormal, loss_start - loss_adv, 0.0).sum() / m.clamp_min(1)
        r_abnormal = torch.where(abnormal, variation, 0.0).sum() / m.clamp_min(1)
        r_normal = torch.where(abnormal, 0.0, variation.detach()).sum() / (n - m).clamp_min(1)
        value = p.lambda1 * (m / n) * (p.lambda2 * r_ce + p.lambda3 * F.relu(r_abnormal - r_normal))
        active = (m > 0) & (m < n)
        self.report_acted(torch.where(active, m / n, 0.0))
        return torch.where(active, value, 0.0)  # no host synchronisation
