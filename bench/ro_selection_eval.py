"""Attack-free best-checkpoint selection (a dE criterion) against validation PGD, on robust-overfitting runs.

    energybench suite ro-fmnist                        # the runs: keep_epochs keeps every epoch's weights
    python bench/ro_selection_eval.py --store DIR      # compare the criteria of benchmark/evaluation/selection.py

Every run of ``--suite`` (default ro-fmnist) that kept its epochs (``keep_epochs = true`` in the suite's
settings: ``epoch-K.pt`` in the run folder) is scored: the test PGD-20 accuracy of every epoch on the
first ``--test-points`` test points (cached in ``epoch_test.json``), then the epoch each criterion picks.
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics

import torch
from rich.console import Console
from rich.table import Table

from energybench.config import load_catalogue
from energybench.data.datasets import load_dataset
from energybench.evaluation.robustness import robustness
from energybench.evaluation.selection import CRITERIA, select_epoch
from energybench.storage.store import Store
from energybench.storage.trained import load_trained
from energybench.suites.spec import cell_labels


def epoch_test_accuracy(store: Store, run_id: str, test_points: int) -> list[float]:
    """Test PGD-20 accuracy of every kept epoch checkpoint (cached in the run folder)."""
    folder = store.run_dir(run_id)
    cache = folder / "epoch_test.json"
    cached = json.loads(cache.read_text()) if cache.is_file() else {}
    if cached.get("test_points") == test_points:
        return cached["pgd_acc"]
    record = store.get_run(run_id)
    test = load_dataset(record.dataset, val_size=1).test
    accs = []
    for epoch in itertools.count():
        path = folder / f"epoch-{epoch}.pt"
        if not path.is_file():
            break
        model = load_trained(str(path), store).model
        metrics = robustness(model, test, n=test_points, eps=record.eps, norm=record.norm, pgd_steps=20,
                             device=torch.device("cpu")).metrics
        accs.append(metrics["pgd_acc"])
    cache.write_text(json.dumps({"test_points": test_points, "pgd_acc": accs}))
    return accs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--suite", default="ro-fmnist")
    parser.add_argument("--test-points", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    store = Store(args.store)
    runs = [r for r in store.runs(suite=args.suite) if (store.run_dir(r.id) / "epoch-0.pt").is_file()]
    table = Table(title=f"epoch chosen and its test PGD-20 accuracy, per criterion ({len(runs)} runs of "
                        f"{args.suite!r})", header_style="bold")
    for column in ("run", "setting", "seed", "test PGD by epoch", "best possible", *CRITERIA):
        table.add_column(column)
    chosen: dict[str, list[float]] = {c: [] for c in CRITERIA}
    matches: dict[str, int] = {c: 0 for c in CRITERIA}
    best = []
    labels = cell_labels(load_catalogue(), args.suite)
    for record in sorted(runs, key=lambda r: (labels.get(r.config_hash, r.trainer), r.seed)):
        history = store.epochs(record.id)
        accs = epoch_test_accuracy(store, record.id, args.test_points)
        picks = {c: select_epoch(history, c) for c in CRITERIA}
        for c, e in picks.items():
            chosen[c].append(accs[e])
            matches[c] += e == picks["val-pgd"]
        best.append(max(accs))
        label = labels.get(record.config_hash, f"{record.trainer} + {record.regularizer}")
        table.add_row(record.id, label, str(record.seed), " ".join(f"{100 * a:.0f}" for a in accs), f"{max(accs):.1%}",
                      *(f"epoch {picks[c] + 1}: {accs[picks[c]]:.1%}" for c in CRITERIA))
    console = Console(width=200)
    console.print(table)
    if not runs:
        console.print(f"no run of suite {args.suite!r} in {args.store} kept its epochs")
        return
    console.print(f"test PGD-20 of the best epoch in hindsight (oracle), mean over {len(runs)} runs: "
                  f"{statistics.mean(best):.1%}")
    for c in CRITERIA:
        console.print(f"{c}: same epoch as val-pgd in {matches[c]}/{len(runs)} runs, mean test PGD of its choice "
                      f"{statistics.mean(chosen[c]):.1%}")


if __name__ == "__main__":
    main()
