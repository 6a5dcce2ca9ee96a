"""Energy-descent loop shared by samplers, and the class statistics they start from.

All functions work on images in [0, 1], draw every random number from the ``torch.Generator``
they are given (on the generator's device, then moved), and never touch model parameters:
gradients are taken w.r.t. the input only.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import torch
from torch import nn

from energybench.contracts.sampler import SampleBatch
from energybench.errors import EnergybenchError
from energybench.ops.energy import joint_energy


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's first parameter (or buffer); CPU for a stateless model."""
    for t in itertools.chain(model.parameters(), model.buffers()):
        return t.device
    return torch.device("cpu")


def randn(shape, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Standard normal draws from ``generator`` (on its own device), moved to ``device``."""
    return torch.randn(shape, generator=generator, device=generator.device).to(device)


def rand(shape, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """Uniform [0, 1) draws from ``generator`` (on its own device), moved to ``device``."""
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


@torch.no_grad()
def energies(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """E(x, y) for every row of ``x``, in batches, on the model's device."""
    device = model_device(model)
    parts = [joint_energy(model(xb.to(device).float()), yb.to(device))
             for xb, yb in zip(x.split(batch_size), y.split(batch_size))]
    return torch.cat(parts) if parts else torch.empty(0, device=device)


def class_mean_energy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """mu_c = mean E(x, c) over the images of class c (NaN for a class without images)."""
    e = energies(model, x, y).double()
    y = y.to(e.device)
    total = torch.zeros(num_classes, dtype=e.dtype, device=e.device).index_add_(0, y, e)
    count = torch.bincount(y, minlength=num_classes).to(e.dtype)
    return (total / count).float()


def class_gaussians(x: torch.Tensor, y: torch.Tensor, num_classes: int, ridge: float):
    """Per-class mean (K, D) and Cholesky factor (K, D, D) of covariance + ``ridge`` * I (flattened images)."""
    x = x.flatten(1).double()
    d = x.shape[1]
    means, chols = [], []
    for c in range(num_classes):
        xc = x[y == c]
        if len(xc) < 2:
            raise EnergybenchError(f"class {c} has {len(xc)} training image(s); need at least 2")
        cov = torch.cov(xc.T) + ridge * torch.eye(d, dtype=x.dtype, device=x.device)
        means.append(xc.mean(0))
        chols.append(torch.linalg.cholesky(cov))
    return torch.stack(means).float(), torch.stack(chols).float()


def pca(points: torch.Tensor, variance: float):
    """PCA of ``points`` (..., n, D) keeping the leading components that explain ``variance`` of the total.

    Returns the mean (..., D), the singular values of the centred data (..., r) with the dropped
    components set to zero, and the principal directions (..., r, D); r is trimmed to the largest
    number of components kept in the batch.
    """
    mean = points.mean(-2)
    _, s, vh = torch.linalg.svd(points - mean.unsqueeze(-2), full_matrices=False)
    var = s.pow(2)
    before = (var.cumsum(-1) - var) / var.sum(-1, keepdim=True).clamp_min(1e-12)
    keep = before < variance  # the first component, and each one needed to reach `variance`
    r = max(int(keep.sum(-1).max()), 1)
    return mean, (s * keep)[..., :r], vh[..., :r, :]


def pca_draw(mean: torch.Tensor, scales: torch.Tensor, basis: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """mean + sum_i scales_i * N(0, 1) * basis_i for each row of ``scales`` (n, r); ``mean`` (D) or (n, D),
    ``basis`` (r, D) or (n, r, D)."""
    z = randn(scales.shape, generator, scales.device) * scales
    return mean + (z.unsqueeze(-2) @ basis).squeeze(-2)


def require_fit(sampler, attr: str) -> None:
    """Raise a clear error when ``sample`` is called on a sampler whose ``fit`` has not run."""
    if not hasattr(sampler, attr):
        raise EnergybenchError(f"sampler {sampler.name or type(sampler).__name__!r}: call fit() before sample()")


def class_starts(y: torch.Tensor, dim: int, draw: Callable[[int, int], torch.Tensor]) -> torch.Tensor:
    """Flattened start images, shape (len(y), dim): ``draw(c, k)`` gives the k starts of class c. Classes
    are drawn in ascending order, so a sampler's draws from its generator follow a fixed order."""
    x = torch.empty(len(y), dim, device=y.device)
    for c in y.unique().tolist():
        idx = (y == c).nonzero().squeeze(1)
        x[idx] = draw(c, len(idx))
    return x


def energy_descent(model: nn.Module, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator, *,
                   steps: int, step_size: float, noise_std: float = 0.0, momentum: float = 0.0,
                   target: torch.Tensor | None = None, guidance: float = 1.0, tol: float | None = None) -> SampleBatch:
    """Descend a per-sample objective from the start ``x`` and return the samples and their bookkeeping.

    Update (all samples at once, clamped to [0, 1]):
        v <- momentum * v - step_size * grad_x L(x);   x <- clamp(x + v + noise_std * N(0, 1), 0, 1)
    with L = E(x, y), or with a per-sample ``target`` energy
        L = guidance * (E(x, y) - target)^2 + (1 - guidance) * E(x, y).
    ``momentum=0`` is SGLD. With ``target`` and ``tol``, a sample is frozen (no further updates
    or noise) as soon as (E(x, y) - target)^2 < tol, checked before every step; ``steps`` in
    the result counts the updates each sample received.
    """
    device = model_device(model)
    x = x.to(device).float().clamp(0, 1)
    y = y.to(device)
    target = None if target is None else target.to(device).float()
    velocity = torch.zeros_like(x)
    used = torch.zeros(len(x), dtype=torch.long, device=device)
    active = torch.ones(len(x), dtype=torch.bool, device=device)
    with torch.enable_grad():
        for _ in range(steps):
            idx = active.nonzero().squeeze(1)
            xa = x[idx].requires_grad_(True)
            energy = joint_energy(model(xa), y[idx])
            objective = energy
            if target is not None:
                gap = energy - target[idx]
                if tol is not None:
                    active[idx[gap.detach().pow(2) < tol]] = False
                objective = guidance * gap.pow(2) + (1 - guidance) * energy
            keep = active[idx]
            if not keep.any():
                break
            (grad,) = torch.autograd.grad(objective[keep].sum(), xa)
            idx, grad, xa = idx[keep], grad[keep], xa.detach()[keep]
            v = momentum * velocity[idx] - step_size * grad
            noise = randn(xa.shape, generator, device) * noise_std if noise_std else 0.0
            velocity[idx] = v
            x[idx] = (xa + v + noise).clamp(0, 1)
            used[idx] += 1
    return SampleBatch(x=x, y=y, steps=used, energy=energies(model, x, y))
