"""`fab-t`: FAB-T (Croce and Hein, 2020) through pyautoattack, exactly as AutoAttack runs it."""

from __future__ import annotations

from energybench.evaluation.autoattack import AutoAttackComponent


class FABT(AutoAttackComponent):
    """Targeted FAB, a minimum-norm attack: 100 iterations towards each of the 9 most likely wrong classes."""

    component = "fab-t"
