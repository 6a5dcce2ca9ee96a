"""`apgd-t`: APGD-T (Croce and Hein, 2020) through pyautoattack, exactly as AutoAttack runs it."""

from __future__ import annotations

from energybench.evaluation.autoattack import AutoAttackComponent


class APGDT(AutoAttackComponent):
    """Targeted Auto-PGD on the DLR loss: 100 iterations against each of the 9 most likely wrong classes."""

    component = "apgd-t"
