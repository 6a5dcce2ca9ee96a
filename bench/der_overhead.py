"""DER overhead: energybench's FGSM+DER epoch against the same loop written by hand in PyTorch.

DER in the paper's form with the AAE mask on (plugins/regularizers/der.py, default beta and
gamma) against ``minimal_fgsm_epoch`` with the same penalty written out (bench/harness_overhead.py),
on the same data, model, batch and SGD settings, alternating A/B. Target: ratio <= 1.05. DER's
backward through the clean forward graph is a cost both sides pay; the harness must add nothing to
it. The script also prints DER's own cost in each implementation (FGSM+DER over FGSM).

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
    params = der.regularizer.params
    by_hand = minimal_epoch_of(der, der=params.beta, gamma=params.gamma)
    result = _timing.ab(der.train_epoch, by_hand, repeats=args.repeats, warmup=args.warmup, device=args.device)
    _timing.report(f"FGSM+DER (beta {params.beta:g}, gamma {params.gamma:g}, AAE mask): epoch of {args.n_train} "
                   "images", result, "energybench", "hand-written", 1.05, args)
    fgsm = _timing.make_run(args, data, trainer="fgsm")
    own = _timing.ab(der.train_epoch, fgsm.train_epoch, repeats=args.repeats, warmup=args.warmup,
                     device=args.device)
    plain = _timing.ab(by_hand, minimal_epoch_of(fgsm), repeats=args.repeats, warmup=args.warmup,
                       device=args.device)
    print(f"  DER's own cost (FGSM+DER / FGSM): energybench {own.ratio:.3f}, hand-written {plain.ratio:.3f}")


if __name__ == "__main__":
    main()
