"""`apgd-ce`: APGD-CE (Croce and Hein, 2020) through pyautoattack, exactly as AutoAttack runs it."""

from __future__ import annotations

from energybench.evaluation.autoattack import AutoAttackComponent


class APGDCE(AutoAttackComponent):
    """Auto-PGD on the cross-entropy: 100 iterations with an adaptive step size, 5 restarts."""

    component = "apgd-ce"
