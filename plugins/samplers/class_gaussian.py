"""`class-gaussian`: start from a class-conditional Gaussian (Santurkar et al., 2019), then descend E(x, y)."""

from __future__ import annotations

from pydantic import Field

from energybench import PluginParams, SampleBatch, Sampler
from energybench.ops.sampling import class_gaussians, class_starts, energy_descent, model_device, randn, require_fit


class ClassGaussianSampler(Sampler):
    """Start from N(mean_y, cov_y + ridge * I) fitted on the flattened class-y training images, then
    x <- clamp(x - step_size * grad E(x, y) + noise_std * N(0, 1), 0, 1)."""

    class Params(PluginParams):
        steps: int = Field(60, ge=0, description="descent steps per sample")
        step_size: float = Field(1.0, gt=0, description="gradient step on E(x, y)")
        noise_std: float = Field(0.0, ge=0, description="std of the Gaussian noise added at every step")
        ridge: float = Field(1e-3, gt=0, description="added to the diagonal of each class covariance")

    def fit(self, model, x_train, y_train):
        self.shape = tuple(x_train.shape[1:])
        x, y = x_train.to(model_device(model)), y_train.to(model_device(model))
        self.means, self.chols = class_gaussians(x, y, int(y.max()) + 1, self.params.ridge)

    def sample(self, model, y, generator) -> SampleBatch:
        require_fit(self, "means")
        p = self.params
        device = model_device(model)
        y = y.to(device)
        dim = self.means.shape[1]
        x = class_starts(y, dim, lambda c, k: self.means[c] + randn((k, dim), generator, device) @ self.chols[c].T)
        return energy_descent(model, x.view(len(y), *self.shape), y, generator, steps=p.steps,
                              step_size=p.step_size, noise_std=p.noise_std)
