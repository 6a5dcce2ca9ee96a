"""`local-pca`: local class-wise PCA start, energy guidance and adaptive stopping (the 2025 paper's method).

The paper's exact rules are not public (docs/references.md, "Generating images"); the choices made here are documented
on the class.
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from energybench import PluginParams, SampleBatch, Sampler
from energybench.ops.sampling import (
    class_mean_energy,
    class_starts,
    energy_descent,
    model_device,
    pca,
    pca_draw,
    rand,
    require_fit,
)


class LocalPCASampler(Sampler):
    """Local PCA start, descent toward the class's typical energy, per-sample adaptive stopping.

    Start: for each sample draw a seed image uniformly among the class-y training images, take its
    ``k`` nearest class-y neighbours in pixel space (L2, the seed included), fit a PCA on them
    keeping ``variance`` of their variance, and draw mean + sum_i sd_i * N(0, 1) * scale * U_i with
    sd_i the neighbours' standard deviation along U_i (``scale=1``: a draw from the local Gaussian).
    Guidance: descend L = guidance * (E(x, y) - mu_y)^2 + (1 - guidance) * E(x, y), where mu_y is
    the mean E(x, y) of the real class-y training images under the same model (from ``fit``);
    ``guidance=1`` pulls each sample to the typical energy from either side, ``guidance=0`` is
    plain energy descent. The gradient of the squared gap is 2 (E - mu_y) grad E, so a stable
    ``step_size`` is below about 1 / (2 |grad E|^2): smaller for non-robust models.
    Stopping: a sample is frozen once (E(x, y) - mu_y)^2 < ``tol`` (checked before every step);
    ``SampleBatch.steps`` holds the updates each sample used (at most ``steps``).
    """

    class Params(PluginParams):
        steps: int = Field(100, ge=0, description="maximum descent steps per sample")
        step_size: float = Field(0.01, gt=0, description="gradient step on the guided objective")
        momentum: float = Field(0.0, ge=0, lt=1, description="momentum of the update")
        noise_std: float = Field(0.0, ge=0, description="std of the Gaussian noise added at every step")
        k: int = Field(50, ge=2, description="neighbours of the seed image the local PCA is fitted on")
        variance: float = Field(0.95, gt=0, le=1, description="fraction of the local variance the PCA keeps")
        scale: float = Field(1.0, ge=0, description="scale of the start's noise, in local standard deviations")
        guidance: float = Field(1.0, ge=0, le=1, description="weight of (E - mu_y)^2 against plain E in the objective")
        tol: float = Field(0.1, ge=0, description="freeze a sample once (E - mu_y)^2 < tol (0: never)")

    def fit(self, model, x_train, y_train):
        self.shape = tuple(x_train.shape[1:])
        device = model_device(model)
        y, order = y_train.to(device).sort(stable=True)
        self.data = x_train.to(device)[order].flatten(1).float()
        self.counts = torch.bincount(y).tolist()
        self.offsets = [0, *torch.tensor(self.counts).cumsum(0).tolist()]
        self.mu = class_mean_energy(model, self.data.view(-1, *self.shape), y, len(self.counts))

    def sample(self, model, y, generator) -> SampleBatch:
        require_fit(self, "mu")
        p = self.params
        device = model_device(model)
        y = y.to(device)

        def draw(c: int, n: int) -> torch.Tensor:
            data = self.data[self.offsets[c]:self.offsets[c + 1]]
            k = min(p.k, len(data))
            seeds = (rand(n, generator, device) * len(data)).long().clamp_max(len(data) - 1)
            near = torch.cdist(data[seeds], data).topk(k, largest=False).indices
            mean, s, basis = pca(data[near], p.variance)
            return pca_draw(mean, s * (p.scale / math.sqrt(k - 1)), basis, generator)

        x = class_starts(y, self.data.shape[1], draw)
        return energy_descent(model, x.view(len(y), *self.shape), y, generator, steps=p.steps,
                              step_size=p.step_size, noise_std=p.noise_std, momentum=p.momentum,
                              target=self.mu[y], guidance=p.guidance, tol=p.tol)
