"""The search for a CPU-sized CIFAR-10 (JPEG) setting where FGSM adversarial training collapses.

    python bench/cifar_co_search.py --store DIR --data-root cifar10-jpeg.tar.gz [--run] [--only TAG ...]
    python bench/cifar_co_search.py --store DIR                     # print what the store holds

Every setting tried (``SETTINGS``: model, training points, epochs, learning rate, eps, seed) is one
FGSM run (no regularizer, cyclic LR, no augmentation) on the protocol of ``BASE``: validation clean,
FGSM and PGD-10 accuracy on 500 points after every epoch, PGD-20 on 1,000 test points at the end, no
AutoAttack. ``--run`` trains the settings the store does not hold yet (same config hash: skipped), in
order; without it the script only prints, per setting, the per-epoch validation curves, the CO
epochs (the CO flag's rule as it is now, recomputed from the stored curves) and the wall time.
docs/suites.md reports the search.
"""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

import energybench
from energybench.config import format_eps, load_catalogue, resolve_config
from energybench.evaluation.robustness import catastrophic_overfitting
from energybench.storage.store import Store
from energybench.training.run import prepare

#: The protocol every search run shares (RunConfig fields).
BASE = {"dataset": "cifar10-jpeg", "trainer": "fgsm", "batch_size": 128, "momentum": 0.9, "weight_decay": 5e-4,
        "schedule": {"kind": "cyclic", "peak_at": 0.4}, "val_size": 1000,
        "eval": {"val_points": 500, "val_pgd_steps": 10, "test_points": 1000, "pgd_steps": 20, "aa_points": 0}}


def setting(model: str, width: int, n_train: int, epochs: int, lr: float, eps: int, seed: int = 0) -> tuple[str, dict]:
    """A tag and the RunConfig fields of one search run (``eps`` in 1/255)."""
    short, default_width = {"small-cnn": ("cnn", 32), "preact-resnet18": ("rn", 64)}[model]
    tag = f"{short}{width}-{n_train // 1000}k-e{epochs}-lr{lr:g}-eps{eps}" + (f"-s{seed}" if seed else "")
    params = {} if width == default_width else {"width": width}
    return tag, BASE | {"model": model, "model_params": params, "n_train": n_train, "epochs": epochs, "lr": lr,
                        "eps": f"{eps}/255", "seed": seed}


#: The settings tried, in the order they were run.
SETTINGS = dict([
    setting("small-cnn", 32, 10000, 5, 0.05, 8),
    setting("preact-resnet18", 16, 5000, 5, 0.2, 16),
    setting("small-cnn", 32, 10000, 5, 0.2, 16),
    setting("small-cnn", 32, 10000, 5, 0.2, 8),
    setting("small-cnn", 32, 5000, 10, 0.2, 8),
    setting("small-cnn", 32, 5000, 10, 0.2, 16),
    setting("small-cnn", 64, 10000, 5, 0.2, 8),
    setting("small-cnn", 32, 20000, 5, 0.2, 8),
    setting("small-cnn", 32, 10000, 5, 0.2, 12),
    setting("small-cnn", 32, 10000, 5, 0.2, 16, seed=1),
    setting("small-cnn", 32, 10000, 5, 0.2, 16, seed=2),
    setting("small-cnn", 32, 10000, 5, 0.2, 8, seed=1),
])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--data-root", help="cifar10-jpeg.tar.gz or its folder")
    parser.add_argument("--run", action="store_true", help="train the settings the store lacks")
    parser.add_argument("--only", nargs="*", help="these tags only")
    args = parser.parse_args()
    store, catalogue = Store(args.store), load_catalogue()
    console = Console()
    table = Table("setting", "run", "per epoch: val clean / FGSM / PGD %", "CO epochs", "test PGD last", "time",
                  title="FGSM on cifar10-jpeg: validation curves (500 points)")
    for tag, fields in SETTINGS.items():
        if args.only and tag not in args.only:
            continue
        config = prepare(resolve_config(catalogue, overrides=fields | {"data_root": args.data_root}), catalogue)
        done = store.runs(config_hash=config.config_hash())
        if not done and args.run:
            console.print(f"[bold]{tag}[/]")
            energybench.train(store=store, **fields, data_root=args.data_root)
            done = store.runs(config_hash=config.config_hash())
        for record in done:
            history = store.epochs(record.id)
            curve = "  ".join(f"{m['val_clean_acc']:.0%}/{m['val_fgsm_acc']:.0%}/{m['val_pgd_acc']:.0%}"
                              for m in history)
            flags = catastrophic_overfitting(history, config.eval, n=config.eval.val_points)  # today's rule
            co = ",".join(str(m["epoch"] + 1) for m, flag in zip(history, flags) if flag) or "-"
            last = store.results(record.id).get("last", {}).get("test_pgd_acc", float("nan"))
            table.add_row(f"{tag} ({format_eps(record.eps)})", record.id, curve, co, f"{last:.1%}",
                          f"{record.wall_time or 0:.0f}s")
    console.print(table)


if __name__ == "__main__":
    main()
