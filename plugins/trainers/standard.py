"""`standard`: plain empirical risk minimisation on clean inputs (no adversarial examples)."""

from __future__ import annotations

import torch.nn.functional as F

from energybench import Trainer, TrainOutput


class StandardTrainer(Trainer):
    """Cross-entropy on the clean batch; the non-robust baseline."""

    adversarial = False

    def step(self, model, x, y, *, keep_clean_logits):
        logits = model(x)
        return TrainOutput(loss=F.cross_entropy(logits, y), logits=logits, passes=1.0)
