"""`square`: Square Attack (Andriushchenko et al., 2020) through pyautoattack, exactly as AutoAttack runs it."""

from __future__ import annotations

from energybench.evaluation.autoattack import AutoAttackComponent


class Square(AutoAttackComponent):
    """Score-based black-box random search with square-shaped updates: 5000 queries, one restart."""

    component = "square"
