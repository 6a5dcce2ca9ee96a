"""How often the CO flag fires on a model that does not change: binomial noise on the validation points alone.

    python bench/co_flag_noise.py [--runs 2000] [--seed 0]

Each simulated run draws its per-epoch validation FGSM and PGD accuracy from fixed binomials (a stationary
model: nothing collapses) and is flagged if any epoch is (``energybench.evaluation.robustness.
catastrophic_overfitting``), with the shipped rule and with the earlier one (no floor and no test on the
drop clause: ``co_drop_min = 0``, ``co_drop_alpha = 1``). The gap clause cannot fire at these accuracies
(FGSM never reaches 30 points above PGD), so the rates are the drop clause's. Prints one line per
setting: validation points, PGD and FGSM accuracy, epochs, and the share of runs flagged (with its 95 %
Wilson interval).
"""

from __future__ import annotations

import argparse

import numpy as np

from energybench.config import EvalProtocol
from energybench.evaluation.robustness import catastrophic_overfitting
from energybench.evaluation.statistics import wilson

#: (validation points, PGD accuracy, FGSM accuracy, epochs)
SETTINGS = [(500, 0.01, 0.03, 3), (500, 0.02, 0.05, 3), (500, 0.02, 0.05, 10), (500, 0.05, 0.12, 10),
            (100, 0.05, 0.15, 6), (100, 0.10, 0.25, 6)]
RULES = {"shipped": EvalProtocol(), "earlier": EvalProtocol(co_drop_min=0.0, co_drop_alpha=1.0)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"{args.runs} simulated runs per setting; share flagged in any epoch [95% Wilson interval]")
    for n, pgd, fgsm, epochs in SETTINGS:
        histories = [[{"val_fgsm_acc": f, "val_pgd_acc": p}
                      for f, p in zip(rng.binomial(n, fgsm, epochs) / n, rng.binomial(n, pgd, epochs) / n)]
                     for _ in range(args.runs)]
        cells = []
        for name, rule in RULES.items():
            flagged = sum(any(catastrophic_overfitting(h, rule, n)) for h in histories)
            low, high = wilson(flagged, args.runs)
            cells.append(f"{name} {100 * flagged / args.runs:.1f}% [{100 * low:.1f}, {100 * high:.1f}]")
        print(f"n={n}, PGD {100 * pgd:g}%, FGSM {100 * fgsm:g}%, {epochs} epochs: " + "; ".join(cells))


if __name__ == "__main__":
    main()
