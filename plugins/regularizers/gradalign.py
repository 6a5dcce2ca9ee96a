"""`gradalign`: GradAlign (Andriushchenko and Flammarion, 2020), aligning input gradients at x and near x."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from energybench import PluginError, PluginParams, Regularizer
from energybench.ops.perturb import input_gradient, random_start


class GradAlign(Regularizer):
    """Adds ``lam * (1 - mean_i cos(g(x_i), g(x_i + eta_i)))`` with g the input gradient of the cross-entropy.

    eta is random in the ball of radius ``eps`` (uniform per pixel for Linf), x + eta clamped to [0, 1].
    As in the reference code, g(x) is detached and only g(x + eta) is differentiated through
    (``create_graph=True``), and samples with a zero gradient at either point are left out of the mean.
    The radius is the ``eps`` hyper-parameter when set; with the default None it is the attribute
    ``self.eps``, which the harness sets to the trainer's eps before training (as it sets ``self.norm``,
    default Linf as in the paper, to the trainer's norm). It needs only the clean batch, so any trainer
    can use it; it costs about three extra forward+backward passes per example (one plain, one double).
    """

    requires_adversarial = False
    acts_on = "samples with non-zero input gradients"

    class Params(PluginParams):
        lam: float = Field(0.2, ge=0, alias="lambda", description="weight of the penalty")
        eps: float | None = Field(None, gt=0, description="radius of the uniform noise (None: the trainer's eps)")

    def __init__(self, **params):
        super().__init__(**params)
        self.eps: float | None = self.params.eps
        self.norm: str = "Linf"

    def penalty(self, model, x, y, out):
        eps = self.params.eps if self.params.eps is not None else self.eps
        if eps is None:
            raise PluginError(f"regularizer {self.name or 'gradalign'!r} needs eps: set the hyper-parameter "
                              "or let the harness pass the trainer's eps")
        grad, _ = input_gradient(model, x, y)
        x_noisy = (x + random_start(x, eps, self.norm)).clamp(0, 1).detach().requires_grad_(True)
        grad_noisy, = torch.autograd.grad(F.cross_entropy(model(x_noisy), y, reduction="sum"), x_noisy,
                                          create_graph=True)
        grad, grad_noisy = grad.flatten(1), grad_noisy.flatten(1)
        keep = (grad.norm(dim=1) > 0) & (grad_noisy.norm(dim=1) > 0)
        cos = F.cosine_similarity(grad, grad_noisy, dim=1)  # masked, not indexed: no host synchronisation
        self.report_acted(keep.float().mean())
        return self.params.lam * torch.where(keep, 1 - cos, 0.0).sum() / keep.sum().clamp_min(1)
