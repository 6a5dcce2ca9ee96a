"""Cheap attacks against AutoAttack on stored runs: which one recovers what PGD misses (gradient masking).

    python bench/masking_check_eval.py --store DIR [--restarts 2] [--square-queries 300]

For every completed run of the store evaluated with AutoAttack, on the test points PGD and AutoAttack
share (the first n of the test split, as stored), per checkpoint ``last``: the points PGD-CE (the
run's own test PGD) leaves robust that AutoAttack breaks, and how many of those a cheap attack breaks
too: the CW margin loss maximised by PGD (``cw``, 20 steps, ``--restarts``) and the black-box Square
attack with ``--square-queries`` queries. A check that recovers most of AutoAttack's extra breaks at a
fraction of its cost can guard a selection made on validation PGD (docs/suites.md).
Per-run lines, then the sums per (trainer, regularizer, eps).
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict

import torch
from rich.console import Console
from rich.table import Table

from energybench.contracts.registry import create_attack
from energybench.data.datasets import load_dataset
from energybench.evaluation.robustness import as_float
from energybench.ops.modes import eval_mode
from energybench.storage.store import Store
from energybench.storage.trained import load_trained
from energybench.suites.spec import format_values


def robust_under(model: torch.nn.Module, attack, x: torch.Tensor, y: torch.Tensor, batch: int = 200) -> torch.Tensor:
    """Per point: still classified correctly after ``attack``."""
    out = []
    with eval_mode(model):
        for start in range(0, len(y), batch):
            xb, yb = x[start:start + batch], y[start:start + batch]
            x_adv = attack(xb, yb)
            with torch.no_grad():
                out.append(model(x_adv).argmax(1) == yb)
    return torch.cat(out)


def robust_under_square(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str,
                        queries: int) -> torch.Tensor:
    """Per point: still classified correctly after pyautoattack's Square attack with ``queries`` queries."""
    from pyautoattack import AutoAttack

    adversary = AutoAttack(model, attacks=["square"], version="custom", eps=eps, norm=norm, seed=0, device="cpu")
    adversary.square.n_queries = queries
    with eval_mode(model), torch.random.fork_rng():
        _, y_adv = adversary.run_standard_evaluation(x, y, batch_size=500)
    return y_adv == y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--square-queries", type=int, default=300, help="0 skips Square")
    parser.add_argument("--data-root")
    args = parser.parse_args()
    store = Store(args.store)
    console = Console()
    table = Table("run", "method", "eps", "n", "PGD robust", "AA breaks", "margin finds", "square finds",
                  "either", "s margin", "s square", title="per run (last checkpoint)")
    sums: dict[tuple, list[int]] = defaultdict(lambda: [0, 0, 0, 0, 0, 0])
    tests: dict[str, object] = {}
    for record in store.runs():
        points = store.points(record.id).get("last", {})
        if "test_aa" not in points or "test_pgd" not in points:
            continue
        n = min(len(points["test_aa"]), len(points["test_pgd"]))
        pgd, aa = torch.from_numpy(points["test_pgd"][:n]), torch.from_numpy(points["test_aa"][:n])
        if record.dataset not in tests:
            tests[record.dataset] = load_dataset(record.dataset, data_root=record.config.get("data_root")
                                                 or args.data_root, val_size=1).test
        test = tests[record.dataset]
        x, y = as_float(test.x[:n], torch.device("cpu")), test.y[:n]
        model = load_trained(record.id, store, checkpoint="last").model
        start = time.perf_counter()
        margin = robust_under(model, create_attack("cw", model, eps=record.eps, norm=record.norm, seed=0,
                                                   steps=20, restarts=args.restarts), x, y)
        margin_s = time.perf_counter() - start
        if args.square_queries:
            start = time.perf_counter()
            square = robust_under_square(model, x, y, eps=record.eps, norm=record.norm, queries=args.square_queries)
            square_s = time.perf_counter() - start
        else:
            square, square_s = torch.ones_like(margin), 0.0
        extra = pgd & ~aa
        found_margin, found_square = int((extra & ~margin).sum()), int((extra & ~square).sum())
        either = int((extra & ~(margin & square)).sum())
        params = {k: record.config["regularizer_params"][k] for k in ("aae", "beta", "lambda", "lambda3")
                  if k in record.config["regularizer_params"]}
        method = f"{record.trainer}+{record.regularizer}" + (f" ({format_values(params)})" if params else "")
        table.add_row(record.id, method, f"{record.eps:g}", str(n), str(int(pgd.sum())), str(int(extra.sum())),
                      str(found_margin), str(found_square), str(either), f"{margin_s:.0f}", f"{square_s:.0f}")
        total = sums[(method, record.eps)]
        for i, v in enumerate((n, int(pgd.sum()), int(extra.sum()), found_margin, found_square, either)):
            total[i] += v
    console.print(table)
    summary = Table("method", "eps", "points", "PGD robust", "AA breaks (share)", "margin finds", "square finds",
                    "either", title="sums over seeds")
    for (method, eps), (n, robust, extra, fm, fs, fe) in sorted(sums.items()):
        share = f"{extra} ({extra / robust:.0%})" if robust else str(extra)
        summary.add_row(method, f"{eps:g}", str(n), str(robust), share, str(fm), str(fs), str(fe))
    console.print(summary)


if __name__ == "__main__":
    main()
