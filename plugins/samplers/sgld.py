"""`sgld`: JEM-style SGLD from uniform noise (Grathwohl et al., 2020), see docs/references.md, "Generating images"."""

from __future__ import annotations

from pydantic import Field

from energybench import PluginParams, SampleBatch, Sampler
from energybench.ops.sampling import energy_descent, model_device, rand, require_fit


class SGLDSampler(Sampler):
    """Start from U[0, 1] noise; x <- clamp(x - step_size * grad E(x, y) + noise_std * N(0, 1), 0, 1).

    ``fit`` only records the image shape.
    """

    class Params(PluginParams):
        steps: int = Field(100, ge=0, description="SGLD steps per sample")
        step_size: float = Field(1.0, gt=0, description="gradient step on E(x, y)")
        noise_std: float = Field(0.01, ge=0, description="std of the Gaussian noise added at every step")

    def fit(self, model, x_train, y_train):
        self.shape = tuple(x_train.shape[1:])

    def sample(self, model, y, generator) -> SampleBatch:
        require_fit(self, "shape")
        p = self.params
        x = rand((len(y), *self.shape), generator, model_device(model))
        return energy_descent(model, x, y, generator, steps=p.steps, step_size=p.step_size, noise_std=p.noise_std)
