"""Evaluation overhead: energybench's AutoAttack (benchmark.evaluation.autoattack_accuracy) vs a direct
pyautoattack call on the same model, points, seed and batch size. Target: ratio <= 1.02.

The model is untrained and the labels are its own predictions, so every point starts correctly
classified. At the default eps APGD-CE fools every point and the other attacks are skipped: a short
evaluation, where a fixed per-call overhead weighs most. A tiny eps (--eps 0.001) fools no point, so
every attack of the suite runs its full budget (minutes per call on a CPU).

    python bench/eval_overhead.py                         # CPU-sized: 64 points
    python bench/eval_overhead.py --eps 0.001 --points 16 --repeats 3
    python bench/eval_overhead.py --device cuda --points 1000
"""

from __future__ import annotations

import statistics
from unittest import mock

import _timing
import torch
from pyautoattack import AutoAttack

from energybench.config import FastPath
from energybench.contracts.registry import create_model
from energybench.data.datasets import Split
from energybench.evaluation.robustness import as_float, autoattack_accuracy
from energybench.ops.modes import eval_mode
from energybench.training.acceleration import Acceleration


def main() -> None:
    p = _timing.parser(__doc__.splitlines()[0])
    p.add_argument("--points", type=int, default=64, help="points attacked (default 64)")
    p.add_argument("--version", default="standard", choices=["standard", "plus", "rand"])
    p.set_defaults(repeats=5)
    args = _timing.parse(p)
    data = _timing.random_data(args.dataset, args.points, n_test=args.points)
    fast = Acceleration.resolve(FastPath(enabled=args.fast), args.device)
    model = fast.prepare_model(create_model(args.model, dataset=args.dataset).to(args.device).eval())
    x = as_float(data.test.x, args.device)
    with torch.no_grad():
        y = model(x).argmax(1)
    split = Split(data.test.x, y.cpu())

    def energybench() -> None:
        autoattack_accuracy(model, split, n=args.points, eps=args.eps, norm="Linf", version=args.version, seed=0,
                            batch_size=args.batch_size, device=args.device)

    def direct() -> None:
        adversary = AutoAttack(model, device=args.device, eps=args.eps, norm="Linf", seed=0, version=args.version)
        with eval_mode(model):
            adversary.run_standard_evaluation(as_float(split.x, args.device), split.y.to(args.device),
                                              batch_size=args.batch_size)

    result = _timing.ab(energybench, direct, repeats=args.repeats, warmup=args.warmup, device=args.device)
    _timing.report(f"Evaluation overhead: AutoAttack ({args.version}) on {args.points} points", result,
                   "energybench", "pyautoattack", 1.02, args)
    # The wrapper's own work, measured without the attacks (far below the timing noise of a loaded machine).
    with mock.patch.object(AutoAttack, "run_standard_evaluation", lambda self, x, y, **kwargs: (x, y)):
        stubbed = _timing.ab(energybench, direct, repeats=max(args.repeats, 20), warmup=1, device=args.device)
    extra = statistics.median(stubbed.a) - statistics.median(stubbed.b)
    print(f"  energybench's own work per call, attacks stubbed out: {extra * 1e3:+.2f} ms = "
          f"{extra / statistics.median(result.b):+.3%} of a direct call")


if __name__ == "__main__":
    main()
