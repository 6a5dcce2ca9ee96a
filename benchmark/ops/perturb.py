"""Gradient-based perturbation primitives shared by attack and trainer plugins.

Everything here works on inputs in [0, 1] and keeps ``x + delta`` inside that box.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Norm = Literal["Linf", "L2"]
Loss = Literal["ce", "margin"]


def margin_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Carlini-Wagner margin per sample: max_{j != y} f_j - f_y (positive means misclassified)."""
    true = logits.gather(1, y.view(-1, 1)).squeeze(1)
    other = logits.masked_fill(F.one_hot(y, logits.shape[1]).bool(), float("-inf")).amax(dim=1)
    return other - true


def per_sample_loss(logits: torch.Tensor, y: torch.Tensor, loss: Loss) -> torch.Tensor:
    """The attack objective per sample: cross-entropy or the CW margin."""
    if loss == "ce":
        return F.cross_entropy(logits, y, reduction="none")
    return margin_loss(logits, y)


def _l2(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def project(delta: torch.Tensor, eps: float, norm: Norm) -> torch.Tensor:
    """Project ``delta`` onto the ``norm`` ball of radius ``eps``."""
    if norm == "Linf":
        return delta.clamp(-eps, eps)
    return delta * (eps / _l2(delta)).clamp(max=1.0)


def ascent_direction(grad: torch.Tensor, norm: Norm) -> torch.Tensor:
    """Steepest-ascent direction of unit size for ``norm``: sign for Linf, normalised for L2."""
    return grad.sign() if norm == "Linf" else grad / _l2(grad)


def random_start(x: torch.Tensor, radius: float, norm: Norm, generator: torch.Generator | None = None) -> torch.Tensor:
    """A random ``delta`` in the ``norm`` ball of ``radius`` (uniform per coordinate for Linf)."""
    if norm == "Linf":
        return (torch.rand(x.shape, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1) * radius
    direction = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
    scale = torch.rand((x.shape[0],) + (1,) * (x.dim() - 1), generator=generator, device=x.device, dtype=x.dtype)
    return direction / _l2(direction) * radius * scale


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, loss: Loss = "ce",
                   keep_graph: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradient of the summed attack loss w.r.t. the input, and the logits at ``x``.

    With ``keep_graph`` the logits keep their graph to the parameters (for reuse in a training
    loss); otherwise they are detached.
    """
    x = x.detach().requires_grad_(True)
    logits = model(x)
    grad, = torch.autograd.grad(per_sample_loss(logits, y, loss).sum(), x, retain_graph=keep_graph)
    return grad, (logits if keep_graph else logits.detach())


def single_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, step: float,
                init_radius: float = 0.0, project_to_ball: bool = True, norm: Norm = "Linf",
                keep_clean_logits: bool = False, generator: torch.Generator | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """One signed-gradient step from ``x + init`` with ``init`` uniform in the ``init_radius`` ball.

    FGSM: init_radius 0, step eps. RS-FGSM: init_radius eps, step 1.25 eps. N-FGSM: init_radius
    2 eps, step eps, ``project_to_ball=False``. Returns ``(x_adv, logits_start)``: the logits at the
    starting point ``x + init``, from the forward pass that gave the gradient. Without random init the
    start is x itself, and with ``keep_clean_logits`` these clean logits keep their graph to the
    parameters (for reuse in a training loss); otherwise they are detached.
    """
    delta = random_start(x, init_radius, norm, generator) if init_radius > 0 else torch.zeros_like(x)
    delta = (x + delta).clamp(0, 1) - x
    grad, logits_start = input_gradient(model, x + delta, y, keep_graph=keep_clean_logits and init_radius == 0)
    delta = delta + step * ascent_direction(grad, norm)
    if project_to_ball:
        delta = project(delta, eps, norm)
    x_adv = (x + delta).clamp(0, 1).detach()
    return x_adv, logits_start


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, step_size: float, steps: int,
        norm: Norm = "Linf", restarts: int = 1, loss: Loss = "ce", random_init: bool = True,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Projected gradient ascent (Madry et al.) on ``loss`` inside the ``norm`` ball of ``eps``.

    With several restarts, each sample keeps the first restart that misclassifies it, or else the
    one with the highest final loss; with one, the final iterate is returned (no selection pass).
    """
    best = x.detach()
    best_loss = torch.full((x.shape[0],), float("-inf"), device=x.device)
    fooled = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    for _ in range(max(restarts, 1)):
        delta = random_start(x, eps, norm, generator) if random_init else torch.zeros_like(x)
        delta = (x + delta).clamp(0, 1) - x
        for _ in range(steps):
            grad, _ = input_gradient(model, x + delta, y, loss)
            delta = project(delta + step_size * ascent_direction(grad, norm), eps, norm)
            delta = (x + delta).clamp(0, 1) - x
        x_adv = (x + delta).detach()
        if restarts <= 1:
            return x_adv
        with torch.no_grad():
            logits = model(x_adv)
            value = per_sample_loss(logits, y, loss)
            wrong = logits.argmax(1) != y
        take = (~fooled) & (wrong | (value > best_loss))  # torch.where, not masks: no host synchronisation
        best = torch.where(take.view(-1, *([1] * (x.dim() - 1))), x_adv, best)
        best_loss = torch.where(take, value, best_loss)
        fooled |= wrong
    return best


def kl_divergence(logits: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """KL(p(x) || p(x*)) per sample, with p the softmax of the logits: the TRADES and MART robust term.

    Computed from log-softmaxes (no 1e-12 fudge); gradients flow into both arguments.
    """
    return F.kl_div(F.log_softmax(logits_adv, dim=1), F.log_softmax(logits, dim=1), reduction="none",
                    log_target=True).sum(dim=1)


def kl_pgd(model: nn.Module, x: torch.Tensor, *, eps: float, step_size: float, steps: int, norm: Norm = "Linf",
           init_std: float = 0.001, logits: torch.Tensor | None = None,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """TRADES' inner maximisation (Zhang et al., 2019): projected ascent on KL(p(x) || p(x*)).

    Starts from ``x + init_std * N(0, 1)`` (the KL and its gradient vanish at x itself), then takes
    ``steps`` steps of ``step_size`` along ``ascent_direction``, projecting onto the ``norm`` ball and
    the [0, 1] box after each. p(x) comes from ``logits`` (detached) when the caller has them, else
    from one forward pass without gradient. Returns detached x*.
    """
    if logits is None:
        with torch.no_grad():
            logits = model(x)
    target = logits.detach()
    noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype) * init_std
    delta = (x + project(noise, eps, norm)).clamp(0, 1) - x
    for _ in range(steps):
        x_adv = (x + delta).detach().requires_grad_(True)
        grad, = torch.autograd.grad(kl_divergence(target, model(x_adv)).sum(), x_adv)
        delta = project(delta + step_size * ascent_direction(grad, norm), eps, norm)
        delta = (x + delta).clamp(0, 1) - x
    return (x + delta).detach()
