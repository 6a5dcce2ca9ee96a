"""Module modes for a block of code: eval mode, and train mode with BatchNorm running statistics frozen."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block, then restore every submodule's previous mode."""
    modes = [m.training for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in zip(model.modules(), modes):
            module.training = training


@contextmanager
def frozen_batchnorm_stats(model: nn.Module) -> Iterator[nn.Module]:
    """Forward passes in the block leave BatchNorm running statistics untouched (momentum 0).

    The module stays in its mode: in train mode BatchNorm still normalises with the batch's own
    statistics, so an extra forward pass (with or without gradient) trains exactly as before while
    the running statistics, which evaluation uses, see only the trainer's own passes.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.num_batches_tracked.clone() if m.num_batches_tracked is not None else None)
             for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield model
    finally:
        for m, (momentum, tracked) in zip(norms, saved):
            m.momentum = momentum
            if tracked is not None:
                m.num_batches_tracked.copy_(tracked)
