"""Augmentation on the device: random crop with zero padding and horizontal flip, drawn a whole epoch at once."""

from __future__ import annotations

import torch


def crop_flip_draws(n: int, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop offsets (row, column) in [0, 2 * pad] and flip flags (0/1) for ``n`` images, shape (n, 3).

    The harness draws a whole epoch's at once and moves them to the device in one copy.
    """
    offsets = torch.randint(0, 2 * pad + 1, (n, 2), generator=generator)
    flips = (torch.rand(n, 1, generator=generator) < 0.5).long()
    return torch.cat([offsets, flips], dim=1)


def crop_flip(x: torch.Tensor, draws: torch.Tensor, pad: int = 4) -> torch.Tensor:
    """Random crop with zero padding and horizontal flip of a batch, on its device (``draws``: crop_flip_draws)."""
    n, c, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    i, j, flip = draws[:, 0], draws[:, 1], draws[:, 2].bool()
    rows = (i[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (j[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    batch = torch.arange(n, device=x.device)[:, None, None, None]
    channel = torch.arange(c, device=x.device)[None, :, None, None]
    out = padded[batch, channel, rows, cols]
    return torch.where(flip[:, None, None, None], out.flip(3), out)
