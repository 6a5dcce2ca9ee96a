"""DER overhead: an FGSM+DER training epoch vs an FGSM epoch in the harness (same data, model, batch).

DER reuses the clean logits of FGSM's attack pass, so it adds no forward pass; its gradient
through E(x) does add a backward pass through that clean forward graph, which no implementation
can avoid. The script also times the same pair written out by hand (bench/harness_overhead.py's
minimal loop, with and without the penalty) to separate that cost from the harness's.
Target: ratio <= 1.10.

    python bench/der_overhead.py                          # CPU-sized
    python bench/der_overhead.py --device cuda            # CIFAR-10-shaped data, PreActResNet-18
"""

from __future__ import annotations

import copy

import _timing
import torch
from harness_overhead import minimal_fgsm_epoch


def main() -> None:
    args = _timing.parse(_timing.parser(__doc__.splitlines()[0]))
    data = _timing.random_data(args.dataset, args.n_train)
    der = _timing.make_run(args, data, trainer="fgsm", regularizer="der")
    fgsm = _timing.make_run(args, data, trainer="fgsm")
    result = _timing.ab(der.train_epoch, fgsm.train_epoch, repeats=args.repeats, warmup=args.warmup,
                        device=args.device)
    _timing.report(f"DER overhead: training epoch of {args.n_train} images", result, "fgsm+der", "fgsm", 1.10, args)

    def hand_written(der_weight: float):
        model = copy.deepcopy(fgsm.model)
        cfg = fgsm.config
        optimizer = fgsm.fast.optimizer(model.parameters(), lr=cfg.lr, momentum=cfg.momentum,
                                        weight_decay=cfg.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda it: 1.0)
        generator = torch.Generator().manual_seed(0)
        return lambda: minimal_fgsm_epoch(model, optimizer, scheduler, fgsm.train_x, fgsm.train_y, eps=cfg.eps,
                                          batch_size=cfg.batch_size, generator=generator, der=der_weight)

    reference = _timing.ab(hand_written(1.0), hand_written(0.0), repeats=args.repeats, warmup=args.warmup,
                           device=args.device)
    print(f"  the same pair written by hand: ratio {reference.ratio:.3f} (DER's own cost, in any implementation)")


if __name__ == "__main__":
    main()
