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

import _timing
from harness_overhead import minimal_epoch_of


def main() -> None:
    args = _timing.parse(_timing.parser(__doc__.splitlines()[0]))
    data = _timing.random_data(args.dataset, args.n_train)
    der = _timing.make_run(args, data, trainer="fgsm", regularizer="der")
    fgsm = _timing.make_run(args, data, trainer="fgsm")
    result = _timing.ab(der.train_epoch, fgsm.train_epoch, repeats=args.repeats, warmup=args.warmup,
                        device=args.device)
    _timing.report(f"DER overhead: training epoch of {args.n_train} images", result, "fgsm+der", "fgsm", 1.10, args)

    reference = _timing.ab(minimal_epoch_of(fgsm, der=1.0), minimal_epoch_of(fgsm), repeats=args.repeats,
                           warmup=args.warmup, device=args.device)
    print(f"  the same pair written by hand: ratio {reference.ratio:.3f} (DER's own cost, in any implementation)")


if __name__ == "__main__":
    main()
