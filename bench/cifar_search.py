"""The searches for CPU-sized CIFAR-10 (JPEG) settings that show catastrophic (co) or robust (ro) overfitting.

    python bench/cifar_search.py co|ro --store DIR --data-root cifar10-jpeg.tar.gz [--run] [--only TAG ...]
    python bench/cifar_search.py co|ro --store DIR             # print what the store holds

``co``: every setting tried (``CO_SETTINGS``: model, training images, epochs, peak LR, eps, seed) is one
FGSM run (no regularizer, cyclic LR, no augmentation) on the protocol of ``CO_BASE``: validation clean,
FGSM and PGD-10 accuracy on 500 images after every epoch, PGD-20 on 1,000 test images, no AutoAttack.
Printed: the per-epoch validation curves, the CO epochs (today's CO rule, recomputed from the stored
curves), the test PGD of the last checkpoint and the wall time.

``ro``: every setting (``RO_SETTINGS``) is one PGD-AT run (PGD-5, step eps/2, random start) with the LR
divided by 10 at 50% and 75% of the epochs or after the epochs the setting names (``decays``), no
augmentation, every epoch's weights kept, on the protocol of ``RO_BASE``: validation PGD-10 on 500 images
every epoch, PGD-20 on 2,000 test images for the best (by validation PGD) and last checkpoints. Printed: the
per-epoch validation PGD curve, the best epoch, test PGD best and last with 95% Wilson intervals, their gap,
and the wall time. Robust overfitting counts when, on at least 2 of 3 seeds, best beats last by at least 3
points with non-overlapping intervals and the validation curve rises then falls after the first decay.

``--run`` trains the settings the store does not hold yet (same config hash: skipped), in order.
docs/suites.md reports both searches.
"""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

import energybench
from energybench.config import format_eps, load_catalogue, resolve_config
from energybench.evaluation.robustness import catastrophic_overfitting
from energybench.evaluation.statistics import accuracy
from energybench.storage.store import RunRecord, Store
from energybench.training.run import prepare

#: The protocols every run of a search shares (RunConfig fields).
CO_BASE = {"dataset": "cifar10-jpeg", "trainer": "fgsm", "batch_size": 128, "momentum": 0.9, "weight_decay": 5e-4,
           "schedule": {"kind": "cyclic", "peak_at": 0.4}, "val_size": 1000,
           "eval": {"val_points": 500, "val_pgd_steps": 10, "test_points": 1000, "pgd_steps": 20, "aa_points": 0}}
RO_BASE = {"dataset": "cifar10-jpeg", "trainer": "pgd", "trainer_params": {"steps": 5, "step_ratio": 0.5},
           "batch_size": 128, "momentum": 0.9, "weight_decay": 5e-4, "val_size": 1000, "keep_epochs": True,
           "schedule": {"kind": "step", "milestones": [0.5, 0.75], "gamma": 0.1},
           "eval": {"val_points": 500, "val_pgd_steps": 10, "test_points": 2000, "pgd_steps": 20, "aa_points": 0}}


def setting(base: dict, model: str, width: int, n_train: int, epochs: int, lr: float, eps: int,
            seed: int = 0, batch_size: int | None = None, decays: tuple[int, ...] = ()) -> tuple[str, dict]:
    """A tag and the RunConfig fields of one search run (``eps`` in 1/255; the base's batch size and LR decay
    epochs unless given)."""
    short, default_width = {"small-cnn": ("cnn", 32), "preact-resnet18": ("rn", 64)}[model]
    size = f"{n_train // 1000}k" if n_train % 1000 == 0 else f"{n_train / 1000:g}k"
    tag = (f"{short}{width}-{size}-e{epochs}-lr{lr:g}-eps{eps}" + (f"-b{batch_size}" if batch_size else "")
           + (f"-d{'-'.join(map(str, decays))}" if decays else "") + (f"-s{seed}" if seed else ""))
    params = {} if width == default_width else {"width": width}
    fields = base | {"model": model, "model_params": params, "n_train": n_train, "epochs": epochs, "lr": lr,
                     "eps": f"{eps}/255", "seed": seed} | ({"batch_size": batch_size} if batch_size else {})
    if decays:  # decay epochs as fractions of the run, rounded down so that the decay lands on that epoch's start
        fields["schedule"] = base["schedule"] | {"milestones": [int(e / epochs * 1e4) / 1e4 for e in decays]}
    return tag, fields


#: The settings tried, in the order they were run.
CO_SETTINGS = dict(setting(CO_BASE, *args, **kw) for args, kw in [
    (("small-cnn", 32, 10000, 5, 0.05, 8), {}),
    (("preact-resnet18", 16, 5000, 5, 0.2, 16), {}),
    (("small-cnn", 32, 10000, 5, 0.2, 16), {}),
    (("small-cnn", 32, 10000, 5, 0.2, 8), {}),
    (("small-cnn", 32, 5000, 10, 0.2, 8), {}),
    (("small-cnn", 32, 5000, 10, 0.2, 16), {}),
    (("small-cnn", 64, 10000, 5, 0.2, 8), {}),
    (("small-cnn", 32, 20000, 5, 0.2, 8), {}),
    (("small-cnn", 32, 10000, 5, 0.2, 12), {}),
    (("small-cnn", 32, 10000, 5, 0.2, 16), {"seed": 1}),
    (("small-cnn", 32, 10000, 5, 0.2, 16), {"seed": 2}),
    (("small-cnn", 32, 10000, 5, 0.2, 8), {"seed": 1}),
])
RO_SETTINGS = dict(setting(RO_BASE, *args, **kw) for args, kw in [
    (("small-cnn", 32, 2000, 40, 0.1, 8), {}),
    (("small-cnn", 64, 2000, 40, 0.1, 8), {}),
    (("small-cnn", 32, 5000, 40, 0.1, 8), {}),
    (("small-cnn", 32, 1000, 40, 0.05, 8), {"batch_size": 32}),
    (("small-cnn", 64, 1000, 40, 0.05, 8), {"batch_size": 32}),
    (("small-cnn", 64, 1000, 80, 0.05, 8), {"batch_size": 32}),
    (("small-cnn", 64, 1000, 60, 0.05, 8), {"batch_size": 32, "decays": (20, 50)}),
    (("small-cnn", 64, 1000, 60, 0.05, 8), {"batch_size": 32, "decays": (20, 50), "seed": 1}),
    (("small-cnn", 64, 1000, 60, 0.05, 8), {"batch_size": 32, "decays": (20, 50), "seed": 2}),
])
SEARCHES = {"co": CO_SETTINGS, "ro": RO_SETTINGS}


def co_row(tag: str, record: RunRecord, store: Store, config) -> list[str]:
    history = store.epochs(record.id)
    curve = "  ".join(f"{m['val_clean_acc']:.0%}/{m['val_fgsm_acc']:.0%}/{m['val_pgd_acc']:.0%}" for m in history)
    flags = catastrophic_overfitting(history, config.eval, n=config.eval.val_points)  # today's rule
    co = ",".join(str(m["epoch"] + 1) for m, flag in zip(history, flags) if flag) or "-"
    last = store.results(record.id).get("last", {}).get("test_pgd_acc", float("nan"))
    return [f"{tag} ({format_eps(record.eps)})", record.id, curve, co, f"{last:.1%}", f"{record.wall_time or 0:.0f}s"]


def ro_row(tag: str, record: RunRecord, store: Store, config) -> list[str]:
    history = store.epochs(record.id)
    curve = " ".join(f"{m['val_pgd_acc']:.0%}" for m in history)
    results, n = store.results(record.id), config.eval.test_points
    best, last = (results.get(tag_, {}).get("test_pgd_acc", float("nan")) for tag_ in ("best", "last"))
    intervals = [accuracy(round(v * n), n) for v in (best, last)]
    apart = intervals[0].low > intervals[1].high
    return [f"{tag} ({format_eps(record.eps)})", record.id, curve, str(int(results["last"]["best_epoch"]) + 1),
            " / ".join(f"{e.value:.1%} [{e.low:.1%}, {e.high:.1%}]" for e in intervals),
            f"{100 * (best - last):+.1f}" + (" apart" if apart else ""), f"{record.wall_time or 0:.0f}s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("search", choices=sorted(SEARCHES))
    parser.add_argument("--store", required=True)
    parser.add_argument("--data-root", help="cifar10-jpeg.tar.gz or its folder")
    parser.add_argument("--run", action="store_true", help="train the settings the store lacks")
    parser.add_argument("--only", nargs="*", help="these tags only")
    args = parser.parse_args()
    store, catalogue = Store(args.store), load_catalogue()
    console = Console()
    if args.search == "co":
        table = Table("setting", "run", "per epoch: val clean / FGSM / PGD %", "CO epochs", "test PGD last", "time",
                      title="FGSM on cifar10-jpeg: validation curves (500 images)")
        row = co_row
    else:
        table = Table("setting", "run", "per epoch: val PGD-10 %", "best epoch", "test PGD-20 best / last [95%]",
                      "gap", "time", title="PGD-AT on cifar10-jpeg: validation curve (500 images), test (2,000)")
        row = ro_row
    for tag, fields in SEARCHES[args.search].items():
        if args.only and tag not in args.only:
            continue
        config = prepare(resolve_config(catalogue, overrides=fields | {"data_root": args.data_root}), catalogue)
        done = store.runs(config_hash=config.config_hash())
        if not done and args.run:
            console.print(f"[bold]{tag}[/]")
            energybench.train(store=store, **fields, data_root=args.data_root)
            done = store.runs(config_hash=config.config_hash())
        for record in done:
            table.add_row(*row(tag, record, store, config))
    console.print(table)


if __name__ == "__main__":
    main()
