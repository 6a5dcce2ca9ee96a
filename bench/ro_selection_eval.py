"""Attack-free best-checkpoint selection (a dE criterion) against validation PGD, on robust-overfitting runs.

    python bench/ro_selection_eval.py --store DIR --generate   # train ro-fmnist-style runs, one checkpoint per epoch
    python bench/ro_selection_eval.py --store DIR              # compare the criteria of benchmark/selection.py

The generated runs are the `fmnist-ro` track made CPU-sized (5,000 training points, 15 epochs,
step LR decay at 50% and 75%); each epoch's weights are kept as ``epoch-K.pt`` in the run folder,
so the test PGD accuracy of whichever epoch a criterion picks can be measured (PGD-20 on the
first ``--test-points`` test points, computed once per epoch and cached in ``epoch_test.json``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import shutil
import statistics

import torch
from rich.console import Console
from rich.table import Table

from benchmark.config import load_catalogue, resolve_config
from benchmark.datasets import load_dataset
from benchmark.evaluation import robustness
from benchmark.harness import execute, prepare
from benchmark.progress import Reporter
from benchmark.selection import CRITERIA, select_epoch
from benchmark.store import Store
from benchmark.trained import load_trained

SUITE = "ro-selection"
SETTINGS = {"n_train": 5000, "epochs": 15, "val_size": 2000,
            "eval": {"val_points": 300, "val_pgd_steps": 10, "test_points": 300, "pgd_steps": 10, "aa_points": 0}}


class KeepEpochs(Reporter):
    """Copies the run's ``last.pt`` to ``epoch-K.pt`` after every epoch."""

    def __init__(self, store: Store):
        self.store, self.run_id = store, None

    def start(self, run_id, config, done):
        self.run_id = run_id

    def epoch_done(self, epoch, metrics):
        folder = self.store.run_dir(self.run_id)
        shutil.copyfile(folder / "last.pt", folder / f"epoch-{epoch}.pt")


def generate(store: Store, seeds: list[int]) -> None:
    catalogue = load_catalogue()
    done = {r.config_hash for r in store.runs(suite=SUITE)}
    for seed in seeds:
        config = prepare(resolve_config(catalogue, track="fmnist-ro", overrides=SETTINGS | {"seed": seed}), catalogue)
        if config.config_hash() not in done:
            run_id = execute(config, store, reporter=KeepEpochs(store), suite=SUITE)
            print(f"{run_id}: seed {seed} done", flush=True)


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
                             device=torch.device("cpu"))
        accs.append(metrics["pgd_acc"])
    cache.write_text(json.dumps({"test_points": test_points, "pgd_acc": accs}))
    return accs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--generate", action="store_true")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--test-points", type=int, default=1000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    store = Store(args.store)
    if args.generate:
        generate(store, [int(s) for s in args.seeds.split(",")])
    runs = store.runs(suite=SUITE)
    table = Table(title="epoch chosen and its test PGD-20 accuracy, per criterion", header_style="bold")
    for column in ("run", "seed", "test PGD by epoch", "best possible", *CRITERIA):
        table.add_column(column)
    chosen: dict[str, list[float]] = {c: [] for c in CRITERIA}
    matches: dict[str, int] = {c: 0 for c in CRITERIA}
    for record in runs:
        history = store.epochs(record.id)
        accs = epoch_test_accuracy(store, record.id, args.test_points)
        picks = {c: select_epoch(history, c) for c in CRITERIA}
        for c, e in picks.items():
            chosen[c].append(accs[e])
            matches[c] += e == picks["val-pgd"]
        table.add_row(record.id, str(record.seed), " ".join(f"{a:.2f}" for a in accs), f"{max(accs):.1%}",
                      *(f"epoch {picks[c] + 1}: {accs[picks[c]]:.1%}" for c in CRITERIA))
    console = Console(width=160)
    console.print(table)
    for c in CRITERIA:
        if chosen[c]:
            console.print(f"{c}: same epoch as val-pgd in {matches[c]}/{len(runs)} runs, mean test PGD of its choice "
                          f"{statistics.mean(chosen[c]):.1%}")


if __name__ == "__main__":
    main()
