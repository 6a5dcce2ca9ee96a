"""Attack-free best-checkpoint selection (a dE criterion) against validation PGD, on robust-overfitting runs.

    energybench suite ro-fmnist                        # the runs: keep_epochs keeps every epoch's weights
    python bench/ro_selection_eval.py --store DIR      # compare the criteria of benchmark/evaluation/selection.py
    python bench/ro_selection_eval.py --store DIR --runs ID ID   # any runs that kept their epochs (a search's)

Every evaluation run of ``--suite`` (default ro-fmnist; not its tuning runs), or every run named by
``--runs``, that kept its epochs (``keep_epochs``: ``epoch-K.pt`` in the run folder) is scored: the
epoch each criterion picks and the test PGD-20 accuracy of that epoch on the first ``--test-points``
test points (cached per epoch in ``epoch_test.json``). ``--every-epoch`` tests every kept epoch, for
the test curve and the best epoch in hindsight (60 PGD-20 evaluations per 60-epoch run instead of at
most 3).
"""

from __future__ import annotations

import argparse
import json
import statistics

import torch
from rich.console import Console
from rich.table import Table

from energybench.config import load_catalogue
from energybench.data.datasets import load_dataset
from energybench.errors import EnergybenchError
from energybench.evaluation.robustness import robustness
from energybench.evaluation.selection import CRITERIA, select_epoch
from energybench.storage.store import RunRecord, Store
from energybench.storage.trained import load_trained
from energybench.suites.spec import cell_labels


class EpochTests:
    """Test PGD-20 accuracy of a run's kept epoch checkpoints, computed on demand and cached in the run folder."""

    def __init__(self, store: Store, record: RunRecord, test_points: int):
        self.store, self.record, self.test_points = store, record, test_points
        self.cache = store.run_dir(record.id) / "epoch_test.json"
        cached = json.loads(self.cache.read_text()) if self.cache.is_file() else {}
        self.accs: dict[str, float] = cached.get("pgd_acc", {}) if cached.get("test_points") == test_points else {}
        self._test = None

    def __getitem__(self, epoch: int) -> float:
        if str(epoch) not in self.accs:
            if self._test is None:
                self._test = load_dataset(self.record.dataset, data_root=self.record.config.get("data_root"),
                                          val_size=1).test
            path = self.store.run_dir(self.record.id) / f"epoch-{epoch}.pt"
            model = load_trained(str(path), self.store).model
            metrics = robustness(model, self._test, n=self.test_points, eps=self.record.eps, norm=self.record.norm,
                                 pgd_steps=20, device=torch.device("cpu")).metrics
            self.accs[str(epoch)] = metrics["pgd_acc"]
            self.cache.write_text(json.dumps({"test_points": self.test_points, "pgd_acc": self.accs}))
        return self.accs[str(epoch)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--suite", default="ro-fmnist")
    parser.add_argument("--runs", nargs="+", metavar="ID", help="these runs instead of a suite's")
    parser.add_argument("--test-points", type=int, default=1000)
    parser.add_argument("--every-epoch", action="store_true", help="test every epoch: the curve and the oracle")
    args = parser.parse_args()
    torch.set_num_threads(1)
    store = Store(args.store)
    # a suite's evaluation cells (with the values its tuning stage chose), not its tuning runs
    labels = {} if args.runs else cell_labels(load_catalogue(), args.suite, store)
    try:
        candidates = ([store.get_run(i) for i in args.runs] if args.runs else
                      [r for r in store.runs(suite=args.suite) if r.config_hash in labels])
    except EnergybenchError as exc:  # an unknown run id: one line, no traceback
        parser.error(str(exc))
    runs = [r for r in candidates if (store.run_dir(r.id) / "epoch-0.pt").is_file()]
    source = f"runs {', '.join(args.runs)}" if args.runs else f"the evaluation cells of suite {args.suite!r}"
    table = Table(title=f"epoch chosen and its test PGD-20 accuracy ({args.test_points} points), per criterion "
                        f"({len(runs)} runs of {source})", header_style="bold")
    oracle = ("test PGD by epoch", "best possible") if args.every_epoch else ()
    columns = ("run", "setting", "seed", *oracle, *CRITERIA)
    for column in columns:
        table.add_column(column)
    chosen: dict[str, list[float]] = {c: [] for c in CRITERIA}
    matches: dict[str, int] = {c: 0 for c in CRITERIA}
    best = []
    for record in sorted(runs, key=lambda r: (labels.get(r.config_hash, r.trainer), r.seed)):
        history = store.epochs(record.id)
        tests = EpochTests(store, record, args.test_points)
        picks = {c: select_epoch(history, c) for c in CRITERIA}
        for c, e in picks.items():
            chosen[c].append(tests[e])
            matches[c] += e == picks["val-pgd"]
        curve = []
        if args.every_epoch:
            accs = [tests[e] for e in range(len(history))]
            best.append(max(accs))
            curve = [" ".join(f"{100 * a:.0f}" for a in accs), f"{max(accs):.1%}"]
        label = labels.get(record.config_hash, f"{record.trainer} + {record.regularizer}")
        table.add_row(record.id, label, str(record.seed), *curve,
                      *(f"epoch {picks[c] + 1}: {tests[picks[c]]:.1%}" for c in CRITERIA))
    console = Console(width=200)
    console.print(table)
    if not runs:
        console.print(f"no run of {source} in {args.store} kept its epochs")
        return
    if best:
        console.print(f"test PGD-20 of the best epoch in hindsight (oracle), mean over {len(runs)} runs: "
                      f"{statistics.mean(best):.1%}")
    for c in CRITERIA:
        console.print(f"{c}: same epoch as val-pgd in {matches[c]}/{len(runs)} runs, mean test PGD of its choice "
                      f"{statistics.mean(chosen[c]):.1%}")


if __name__ == "__main__":
    main()
