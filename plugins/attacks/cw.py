"""`cw`: the Carlini-Wagner margin loss maximised by PGD (CW-inf, after Carlini and Wagner, 2017)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from energybench.plugins.attacks.pgd import PGD


class CW(PGD):
    """PGD with random start on ``max_{j != y} f_j - f_y``; step ``step_ratio * eps`` unless ``step_size`` is set."""

    class Params(PGD.Params):
        steps: int = Field(20, ge=1, description="gradient steps per restart")
        loss: Literal["margin"] = Field("margin", description="the CW margin (fixed)")
