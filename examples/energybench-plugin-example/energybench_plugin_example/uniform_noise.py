"""`uniform-noise`: uniform random noise in the Linf eps-ball, a sanity baseline for attacks."""

from __future__ import annotations

import torch
from pydantic import Field

from energybench import Attack, PluginParams


class UniformNoise(Attack):
    """Keeps, per point, the first of ``tries`` uniform draws in the eps-ball that fools the model."""

    class Params(PluginParams):
        tries: int = Field(10, ge=1, description="random draws per point")

    def perturb(self, x, y):
        best = x.clone()
        fooled = torch.zeros(len(y), dtype=torch.bool, device=x.device)
        for _ in range(self.params.tries):
            candidate = (x + (torch.rand_like(x) * 2 - 1) * self.eps).clamp(0, 1)
            with torch.no_grad():
                wrong = self.model(candidate).argmax(1) != y
            take = wrong & ~fooled
            best[take] = candidate[take]
            fooled |= wrong
        return best
