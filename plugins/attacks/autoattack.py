"""`autoattack`: AutoAttack (Croce and Hein, 2020) through pyautoattack, standard or a custom list."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from energybench import Attack, PluginParams
from energybench.evaluation.autoattack import run_autoattack


class AutoAttackPlugin(Attack):
    """The AutoAttack ensemble; returns for each point the adversarial example that fooled the model, if any."""

    norms = ("Linf", "L2", "L1")

    class Params(PluginParams):
        version: Literal["standard", "plus", "rand"] = Field("standard", description="AutoAttack version")
        attacks: list[Literal["apgd-ce", "apgd-dlr", "apgd-t", "fab", "fab-t", "square"]] | None = Field(
            None, description="custom list of attacks (overrides version)")
        batch_size: int = Field(250, ge=1, description="batch size inside AutoAttack")

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        p = self.params
        result = run_autoattack(self.model, x, y, eps=self.eps, norm=self.norm, version=p.version,
                                attacks=p.attacks, seed=self.seed or 0, batch_size=p.batch_size)
        return result.x_adv
