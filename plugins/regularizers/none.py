"""`none`: no regularizer (a zero penalty), so "no regularizer" is a named, comparable choice."""

from __future__ import annotations

from energybench import Regularizer


class NoRegularizer(Regularizer):
    """Adds nothing; works with any trainer."""

    requires_adversarial = False

    def penalty(self, model, x, y, out):
        return out.loss.new_zeros(())
