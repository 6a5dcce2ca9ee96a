"""`class-pca`: class-wise PCA start with momentum descent (WEAT, Mirza et al.), see docs/references.md."""

from __future__ import annotations

import torch
from pydantic import Field

from energybench import PluginParams, SampleBatch, Sampler
from energybench.ops.sampling import class_starts, energy_descent, model_device, pca, pca_draw, require_fit


class ClassPCASampler(Sampler):
    """Start = mean_y + sum_i s_i * N(0, 1) * sigma * U_i, with U_i, s_i the principal directions and
    singular values of the centred class-y training images (flattened), keeping ``variance`` of the
    total; the scale of s_i therefore grows with sqrt(class size), as in the original.
    Update: v <- momentum * v - step_size * grad E(x, y); x <- clamp(x + v + noise_std * N(0, 1), 0, 1)
    (the original's zeta is ``momentum`` and its eta / 2 is ``step_size``).
    """

    class Params(PluginParams):
        steps: int = Field(100, ge=0, description="descent steps per sample")
        step_size: float = Field(0.5, gt=0, description="gradient step on E(x, y) (eta / 2)")
        momentum: float = Field(0.9, ge=0, lt=1, description="momentum of the update (zeta)")
        noise_std: float = Field(0.01, ge=0, description="std of the Gaussian noise added at every step")
        sigma: float = Field(0.01, gt=0, description="scale of the start's noise, in singular-value units")
        variance: float = Field(0.95, gt=0, le=1, description="fraction of the class variance the PCA keeps")

    def fit(self, model, x_train, y_train):
        self.shape = tuple(x_train.shape[1:])
        x, y = x_train.to(model_device(model)).flatten(1).float(), y_train.to(model_device(model))
        self.pcas = [pca(x[y == c], self.params.variance) for c in range(int(y.max()) + 1)]

    def sample(self, model, y, generator) -> SampleBatch:
        require_fit(self, "pcas")
        p = self.params
        device = model_device(model)
        y = y.to(device)

        def draw(c: int, k: int) -> torch.Tensor:
            mean, s, basis = self.pcas[c]
            return pca_draw(mean, (s * p.sigma).expand(k, -1), basis, generator)

        x = class_starts(y, self.pcas[0][0].numel(), draw)
        return energy_descent(model, x.view(len(y), *self.shape), y, generator, steps=p.steps,
                              step_size=p.step_size, noise_std=p.noise_std, momentum=p.momentum)
