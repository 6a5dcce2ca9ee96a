"""The CO monitor against the expensive ground truth: per-epoch validation PGD collapse (the `co` flag).

    python bench/co_monitor_eval.py --store DIR --generate   # train the grid below into DIR (CPU, ~20 min)
    python bench/co_monitor_eval.py --store DIR              # tune on some seeds, report on the others

Every stored run with a ``monitor.json`` (the monitor in ``warn`` mode logs every traced batch's
mean dE) is replayed through ``energybench.training.monitor.replay``, so any rule setting is scored without
training again. For a run whose first CO epoch is ``c`` (0-based, ``bpe`` iterations per epoch),
the collapse is observed at iteration ``(c + 1) * bpe``; an alarm at iteration ``a`` is
- a detection when it falls in epoch ``c - 1`` or ``c`` (lead time ``(c + 1) * bpe - a`` iterations),
- early when it comes before epoch ``c - 1``, late (a miss) after epoch ``c``;
on a run that never collapses, any alarm is a false alarm. The rule is tuned on ``--tune-seeds``
(most detections minus false and early alarms, then the longest median lead) and reported on the
remaining seeds, next to the shipped defaults.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
from dataclasses import dataclass

import torch
from rich.console import Console
from rich.table import Table

from energybench.config import MonitorConfig, load_catalogue, resolve_config
from energybench.evaluation.selection import CRITERIA, select_epoch
from energybench.storage.store import Store
from energybench.suites.spec import cell_labels
from energybench.training.monitor import MonitorLog, read_log, replay
from energybench.training.run import execute, prepare

SUITE = "co-monitor"
GRID = [("fgsm", 0.1), ("fgsm", 0.2), ("fgsm", 0.25), ("fgsm", 0.3), ("rs-fgsm", 0.25), ("rs-fgsm", 0.3),
        ("n-fgsm", 0.3)]
SETTINGS = {"track": "fmnist-co", "n_train": 10000, "epochs": 4, "val_size": 2000,
            "eval": {"val_points": 300, "val_pgd_steps": 10, "test_points": 300, "pgd_steps": 10, "aa_points": 0}}
SEARCH = {"signal": ["dE", "dE_joint"], "check_every": [4, 8, 16], "threshold": [2.0, 3.0, 4.0, 5.0, 6.0, 8.0],
          "patience": [1, 2, 3], "halflife": [4.0, 8.0, 16.0], "warmup": [2, 4, 8], "min_std": [0.02, 0.05, 0.1],
          "direction": ["both", "up"]}


@dataclass
class Case:
    """One stored run as the evaluation sees it."""

    run_id: str
    label: str
    regularizer: str
    seed: int
    co_epoch: int | None  # first epoch flagged CO by validation PGD/FGSM, None if never
    batches_per_epoch: int
    last_iter: int
    log: MonitorLog


def generate(store: Store, seeds: list[int]) -> None:
    """Train the GRID x seeds runs that the store does not hold yet (monitor in warn mode)."""
    torch.set_num_threads(1)
    catalogue = load_catalogue()
    done = {r.config_hash for r in store.runs(suite=SUITE)}
    for seed, (trainer, eps) in itertools.product(seeds, GRID):
        overrides = SETTINGS | {"trainer": trainer, "eps": eps, "seed": seed}
        config = prepare(resolve_config(catalogue, track=overrides.pop("track"), overrides=overrides), catalogue)
        if config.config_hash() in done:
            continue
        run_id = execute(config, store, suite=SUITE)
        co = [e["epoch"] for e in store.epochs(run_id) if e["co"]]
        print(f"{run_id}: {trainer} eps {eps} seed {seed}: CO epochs {co}", flush=True)


def load_cases(store: Store, suite: str) -> list[Case]:
    cases, labels = [], cell_labels(load_catalogue(), suite)
    for record in store.runs(suite=suite):
        log = read_log(store.run_dir(record.id) / "monitor.json")
        history = store.epochs(record.id)
        if log is None or log.rollback_iters or not history or "monitor_iters" not in history[0]:
            continue
        co = [e["epoch"] for e in history if e["co"]]
        label = labels.get(record.config_hash, f"{record.trainer} + {record.regularizer}")
        cases.append(Case(record.id, f"{label} {record.eps:g}", record.regularizer, record.seed, co[0] if co else None,
                          int(history[0]["monitor_iters"]), int(history[-1]["monitor_iters"]), log))
    return cases


@dataclass
class Score:
    """Counts and lead times of one rule setting over a set of cases."""

    collapsed: int = 0
    detected: int = 0
    early: int = 0
    late: int = 0
    healthy: int = 0
    false_alarms: int = 0
    leads: list[int] | None = None

    @property
    def objective(self) -> tuple[int, float]:
        lead = statistics.median(self.leads) if self.leads else 0.0
        return self.detected - self.false_alarms - self.early, lead


def outcome(case: Case, alarm: int | None) -> tuple[str, int | None]:
    """('detected', lead) / ('early', lead) / ('late' or 'missed', None) / ('false alarm' or 'silent', None)."""
    if case.co_epoch is None:
        return ("silent", None) if alarm is None else ("false alarm", None)
    if alarm is None:
        return "missed", None
    bpe, c = case.batches_per_epoch, case.co_epoch
    lead = (c + 1) * bpe - alarm
    if lead < 0:
        return "late", lead
    return ("detected" if alarm > (c - 1) * bpe else "early"), lead


def score(cases: list[Case], settings: MonitorConfig) -> Score:
    result = Score(leads=[])
    for case in cases:
        kind, lead = outcome(case, replay(case.log, settings, case.last_iter))
        if case.co_epoch is None:
            result.healthy += 1
            result.false_alarms += kind == "false alarm"
            continue
        result.collapsed += 1
        result.detected += kind == "detected"
        result.early += kind == "early"
        result.late += kind in ("late", "missed")
        if kind == "detected":
            result.leads.append(lead)
    return result


def tune(cases: list[Case]) -> MonitorConfig:
    """The SEARCH setting with the best objective on ``cases``.

    Ties go to the setting inside the widest plateau (its neighbouring thresholds score as well:
    a margin against seed noise), then to the longest median lead, then to SEARCH order.
    """
    scores = {values: score(cases, MonitorConfig(**dict(zip(SEARCH, values))))
              for values in itertools.product(*SEARCH.values())}
    t = list(SEARCH).index("threshold")
    thresholds = SEARCH["threshold"]

    def plateau(values: tuple) -> int:
        i = thresholds.index(values[t])
        return sum(scores[values[:t] + (thresholds[j],) + values[t + 1:]].objective[0] == scores[values].objective[0]
                   for j in (i - 1, i + 1) if 0 <= j < len(thresholds))

    best = max(scores, key=lambda v: (scores[v].objective[0], plateau(v), scores[v].objective[1]))
    return MonitorConfig(**dict(zip(SEARCH, best)))


def selection(store: Store, cases: list[Case], settings: MonitorConfig) -> str:
    """How often the attack-free ``dE`` choice (alarms replayed with ``settings``) equals the ``val-pgd`` one."""
    same, accs = 0, {c: [] for c in CRITERIA}
    for case in cases:
        alarm = replay(case.log, settings, case.last_iter)
        bpe = case.batches_per_epoch
        history = [h | {"monitor_alarm": float(alarm is not None and e * bpe < alarm <= (e + 1) * bpe)}
                   for e, h in enumerate(store.epochs(case.run_id))]
        picks = {c: select_epoch(history, c) for c in CRITERIA}
        same += picks["dE"] == picks["val-pgd"]
        for c, e in picks.items():
            accs[c].append(history[e]["val_pgd_acc"])
    means = ", ".join(f"{c} {statistics.mean(a):.1%}" for c, a in accs.items())
    return f"dE choice = val-pgd choice in {same}/{len(cases)} runs; mean validation PGD of the chosen epoch: {means}"


def describe(name: str, s: Score) -> str:
    leads = s.leads or []
    lead = (f"lead median {statistics.median(leads):.0f} it (min {min(leads)}, max {max(leads)})"
            if leads else "no lead")
    return (f"{name}: detected {s.detected}/{s.collapsed} collapsing runs (early {s.early}, late/missed {s.late}), "
            f"false alarms {s.false_alarms}/{s.healthy} healthy runs, {lead}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--suite", default=SUITE, help="suite tag of the runs to evaluate")
    parser.add_argument("--generate", action="store_true", help="train the missing runs of the grid first")
    parser.add_argument("--seeds", default="0,1,2,3")
    parser.add_argument("--tune-seeds", default="0,1")
    args = parser.parse_args()
    store = Store(args.store)
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.generate:
        generate(store, seeds)
    cases = load_cases(store, args.suite)
    tune_seeds = {int(s) for s in args.tune_seeds.split(",")}
    tuning = [c for c in cases if c.seed in tune_seeds]
    held_out = [c for c in cases if c.seed not in tune_seeds]
    tuned = tune(tuning)
    default = MonitorConfig()
    console = Console(width=150)
    table = Table(title=f"CO monitor on {len(cases)} runs of suite {args.suite!r}", header_style="bold")
    for column in ("run", "setting", "seed", "split", "first CO epoch", "iters/epoch", "default alarm",
                   "default outcome", "tuned alarm", "tuned outcome"):
        table.add_column(column)
    for case in sorted(cases, key=lambda c: (c.label, c.seed)):
        cells = []
        for settings in (default, tuned):
            alarm = replay(case.log, settings, case.last_iter)
            kind, lead = outcome(case, alarm)
            cells += ["-" if alarm is None else str(alarm), kind + (f" (lead {lead})" if lead is not None else "")]
        table.add_row(case.run_id, case.label, str(case.seed), "tune" if case.seed in tune_seeds else "test",
                      "-" if case.co_epoch is None else str(case.co_epoch), str(case.batches_per_epoch), *cells)
    console.print(table)
    changed = {k: getattr(tuned, k) for k in SEARCH}
    console.print(f"tuned on seeds {sorted(tune_seeds)}: {changed}")
    for name, settings in (("default", default), ("tuned", tuned)):
        console.print(describe(f"{name}, tuning seeds", score(tuning, settings)))
        console.print(describe(f"{name}, held-out seeds", score(held_out, settings)))
        for reg in sorted({c.regularizer for c in held_out}):
            group = [c for c in held_out if c.regularizer == reg]
            console.print(describe(f"  {name}, held-out seeds, regularizer {reg}", score(group, settings)))
    collapsing = [c for c in cases if c.co_epoch is not None]
    console.print(f"checkpoint selection (tuned rule), all runs: {selection(store, cases, tuned)}")
    console.print(f"checkpoint selection (tuned rule), collapsing runs: {selection(store, collapsing, tuned)}")


if __name__ == "__main__":
    main()
