"""Harness overhead: energybench's FGSM training epoch vs a minimal hand-written PyTorch FGSM loop.

Both train the same architecture (the minimal loop a copy of the harness's model, so the fast path
is the same) on the same data on the device, with the same batch size, SGD settings and per-batch
LR schedule step. Target: ratio <= 1.05.

    python bench/harness_overhead.py                      # CPU-sized
    python bench/harness_overhead.py --device cuda        # CIFAR-10-shaped data, PreActResNet-18
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import _timing
import torch
import torch.nn.functional as F

from energybench.training.loop import Run


def minimal_fgsm_epoch(model, optimizer, scheduler, x_all, y_all, *, eps: float, batch_size: int,
                       generator: torch.Generator, der: float = 0.0, gamma: float = 0.0) -> None:
    """FGSM adversarial training (zero init, step eps) over one epoch, written out by hand.

    With ``der`` > 0 the loss adds DER in the paper's form with weight ``der``: per sample
    max(||(dE, dE_joint)||_2 - gamma, 0) on the abnormal adversarial examples (loss at x* below the
    loss at x), averaged over the batch, through both energies, reusing the clean logits of the
    attack's forward pass.
    """
    model.train()
    order = torch.randperm(len(y_all), generator=generator).to(x_all.device)
    for b in range(len(y_all) // batch_size):
        idx = order[b * batch_size:(b + 1) * batch_size]
        x, y = x_all[idx].float().div_(255).requires_grad_(True), y_all[idx]
        logits = model(x)
        grad, = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x, retain_graph=der > 0)
        x_adv = (x + eps * grad.sign()).clamp(0, 1).detach()
        logits_adv = model(x_adv)
        loss = F.cross_entropy(logits_adv, y)
        if der > 0:
            delta = torch.stack([torch.logsumexp(logits_adv, 1) - torch.logsumexp(logits, 1),
                                 (logits_adv - logits).gather(1, y[:, None]).squeeze(1)], 1)
            abnormal = (F.cross_entropy(logits_adv.detach(), y, reduction="none")
                        < F.cross_entropy(logits.detach(), y, reduction="none"))
            loss = loss + der * (F.relu(delta.norm(dim=1) - gamma) * abnormal).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()


def minimal_epoch_of(run: Run, der: float = 0.0, gamma: float = 0.0) -> Callable[[], None]:
    """``minimal_fgsm_epoch`` on a copy of ``run``'s model, with its data, batch, eps and SGD settings."""
    model = copy.deepcopy(run.model)
    cfg = run.config
    optimizer = run.fast.optimizer(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                   weight_decay=cfg.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0)
    generator = torch.Generator().manual_seed(0)
    return lambda: minimal_fgsm_epoch(model, optimizer, scheduler, run.train_x, run.train_y, eps=cfg.eps,
                                      batch_size=cfg.batch_size, generator=generator, der=der,
                                      gamma=gamma)


def main() -> None:
    args = _timing.parse(_timing.parser(__doc__.splitlines()[0]))
    run = _timing.make_run(args, _timing.random_data(args.dataset, args.n_train), trainer="fgsm")
    result = _timing.ab(run.train_epoch, minimal_epoch_of(run), repeats=args.repeats, warmup=args.warmup,
                        device=args.device)
    _timing.report(f"Harness overhead: FGSM epoch of {args.n_train} images", result, "energybench", "minimal loop",
                   1.05, args)


if __name__ == "__main__":
    main()
