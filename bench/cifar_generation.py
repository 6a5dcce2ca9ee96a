"""Generation on CIFAR-10 (JPEG): every sampler on standard and robust classifiers, in the domain feature space.

    python bench/cifar_generation.py --store DIR --data-root cifar10-jpeg.tar.gz [--run] [-n 500]
    python bench/cifar_generation.py --store DIR --figure docs/images/cifar10-jpeg-samples.png
    python bench/cifar_generation.py --models ro --store RO_SUITE_STORE --data-root cifar10-jpeg.tar.gz [--run]

``MODELS``: five small CNNs trained on the ``cifar10jpeg-co`` track's recipe (10,000 training images,
5 epochs, cyclic LR, seed 0) at eps 8/255, differing only in the training method: standard (no
attack), FGSM, FGSM + DER (published form, the AAE mask, beta 3 as the co-cifar10jpeg suite tuned
it), PGD-5 AT and PGD-5 AT + DER (every sample, beta 0.3: with beta 3 on every sample the classifier
became constant, as docs/generation.md reports; 0.3 is the next decade down, not tuned). Each is
evaluated on 1,000 test images (clean and PGD-20, no AutoAttack) and sampled with every sampler
(``SAMPLERS``, plugin defaults) at one ``n`` and seed; IS/FID/KID/precision/recall are measured in
the ``cifar10-jpeg-cnn`` feature space (the domain classifier energybench trains on first use;
registry.toml's ``[feature_extractors.cifar10-jpeg]``).

``CONTROL`` samples local-pca's starts alone (no descent step) once: what its FID owes to the classifier.
The first row measures ``n`` real test images the same way: what a perfect generator scores at this ``n``.

Every model is sampled at its best checkpoint (by validation PGD), the standard one at its last.

``--models ro`` takes the robust-overfitting track's models instead: the PGD-AT evaluation runs (none and
DER, every seed) of the ``ro-cifar10jpeg`` suite in the store (``energybench suite`` trains them, this
script never does), each sampled at its best checkpoint (the suite's early stopping) with every sampler;
then, per sampler, FID's mean and standard deviation over the seeds per method and DER's paired difference
per seed (same seed, same sampler), "apart" when it exceeds 1.96 times the root of the two bootstrap
variances, and over the seeds (Welch's interval and p, each seed's FID one observation). The domain
extractor is the one energybench trains in the store on first use (same settings and seed in every store).

``--run`` trains what the store lacks (same config hash: skipped) and samples what it lacks (same
model, sampler, n and seed: skipped). Printed: per model and sampler FID ± its bootstrap standard
deviation, KID ± its standard deviation over subsets, IS ± over splits, precision and recall with
95% Wilson intervals over the n samples / n real images, target accuracy, mean steps, samples per second.
``--figure`` draws one image: a row per model, a column per sampler, each cell 10 classes x 3 samples.
docs/generation.md reports the results.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import numpy as np
import torch
from rich.console import Console
from rich.table import Table

import energybench
from energybench.config import load_catalogue, resolve_config
from energybench.data.datasets import Split, get_dataset, load_dataset
from energybench.errors import EnergybenchError
from energybench.evaluation.statistics import accuracy, seed_difference
from energybench.generation.generate import SampleMetrics
from energybench.reporting.generative_leaderboard import sampler_label
from energybench.storage.store import Store
from energybench.suites.spec import load_suite
from energybench.suites.tuning import choose, chosen_values
from energybench.training.run import prepare

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

TRACK = "cifar10jpeg-co"
BASE = {"eps": "8/255", "seed": 0,
        "eval": {"val_points": 500, "val_pgd_steps": 10, "test_points": 1000, "pgd_steps": 20, "aa_points": 0}}
PGD = {"trainer": "pgd", "trainer_params": {"steps": 5}}


def der(beta: float) -> dict:
    return {"regularizer": "der", "regularizer_params": {"gamma": 0.0, "beta": beta}}


MODELS = {
    "standard": BASE | {"trainer": "standard"},
    "fgsm": BASE | {"trainer": "fgsm"},
    "fgsm+der": BASE | {"trainer": "fgsm"} | der(3.0),
    "pgd": BASE | PGD,
    "pgd+der": BASE | PGD | der(0.3),
}
#: The checkpoint sampled: the best by validation robustness, except for the standard model, whose robustness
#: is near zero throughout (its best by PGD is an early, less accurate epoch): its last.
CHECKPOINTS = {"standard": "last"}
SAMPLERS = ["sgld", "class-gaussian", "class-pca", "local-pca"]
#: A control: local-pca's starts alone (no descent step). No classifier shapes them, so one model suffices.
CONTROL = ("standard", "local-pca", {"steps": 0})
SPACE = "[cifar10-jpeg-cnn]"
DATASET = "cifar10-jpeg"
RO_SUITE, RO_TRAINER = "ro-cifar10jpeg", "pgd"


def trained(store: Store, tag: str, data_root: str | None, run: bool) -> str | None:
    """The run id of model ``tag`` in ``store`` (trained first with ``run``), None when absent."""
    catalogue = load_catalogue()
    fields = MODELS[tag]
    config = prepare(resolve_config(catalogue, track=TRACK, overrides=fields | {"data_root": data_root}), catalogue)
    done = store.runs(config_hash=config.config_hash())
    if not done and run:
        energybench.train(track=TRACK, store=store, data_root=data_root, **fields)
        done = store.runs(config_hash=config.config_hash())
    return done[-1].id if done else None


def ro_models(store: Store) -> dict[tuple[str, int], str]:
    """The ``RO_SUITE`` evaluation runs of ``RO_TRAINER`` done in ``store``, by method (``pgd + none``, ``pgd + der
    (beta=0.3)``, ...) and seed, seeds in order within each method."""
    catalogue = load_catalogue()
    suite = load_suite(catalogue, RO_SUITE)
    cells = suite.cells(catalogue, chosen=chosen_values(choose(store, suite, catalogue)))
    models = {}
    for cell in sorted(cells, key=lambda c: (c.regularizer != "none", c.seed)):
        done = store.runs(config_hash=cell.config_hash) if cell.trainer == RO_TRAINER and not cell.pending else []
        if done:
            models[cell.label, cell.seed] = done[-1].id
    return models


def sample_missing(store: Store, console: Console, tag: str, run_id: str, checkpoint: str, jobs, args) -> None:
    """Sample run ``run_id`` at ``checkpoint`` with each (sampler, params) of ``jobs`` the store lacks."""
    have = {sampler_label(r) for r in sampled(store, run_id, checkpoint, args.n, args.seed)}
    for sampler, params in jobs:
        label = " ".join([sampler, *(f"{k}={v}" for k, v in params.items())])
        if label not in have:
            console.print(f"[bold]{tag}[/] ({run_id}): sampling with {label}")
            energybench.sample(run_id, sampler=sampler, params=params, n=args.n, seed=args.seed,
                               checkpoint=checkpoint, features="domain", data_root=args.data_root, store=store,
                               progress=False)


def sampled(store: Store, run_id: str, checkpoint: str, n: int, seed: int) -> list:
    """The generative records of ``run_id`` at ``checkpoint``, ``n`` and ``seed``."""
    return [r for r in store.generative(dataset=DATASET)
            if (r.model_ref, r.checkpoint, r.n, r.seed) == (run_id, checkpoint, n, seed)]


def ro_summary(store: Store, models: dict[tuple[str, int], str], n: int, seed: int) -> Table:
    """Per sampler: FID mean ± SD over seeds per method, DER minus none per seed (apart or not by the two FIDs'
    sampling error), and over seeds (Welch's test, each seed's FID one observation)."""
    fid: dict[tuple[str, str], dict[int, tuple[float, float]]] = {}  # (method, sampler) -> seed -> (FID, SD)
    for (method, training_seed), run_id in models.items():
        for record in sampled(store, run_id, "best", n, seed):
            m = record.metrics
            fid.setdefault((method, sampler_label(record)), {})[training_seed] = (m[f"FID{SPACE}"],
                                                                                 m[f"FID_std{SPACE}"])
    methods = list(dict.fromkeys(key[0] for key in fid))
    table = Table("sampler", *(f"{method}: FID@{n} mean ± SD (seeds)" for method in methods),
                  *(f"{other} minus {methods[0]}, per seed" for other in methods[1:]),
                  *(f"{other} minus {methods[0]}, over seeds [95%], Welch p" for other in methods[1:]),
                  title=f"{RO_SUITE}: {RO_TRAINER} runs at their best checkpoint, FID over training seeds")
    for sampler in SAMPLERS:
        cells = []
        for method in methods:
            values = [v for v, _ in fid.get((method, sampler), {}).values()]
            spread = f" ± {np.std(values, ddof=1):.1f}" if len(values) > 1 else ""
            cells.append(f"{np.mean(values):.1f}{spread} ({len(values)})" if values else "-")
        for other in methods[1:]:
            base, alt = fid.get((methods[0], sampler), {}), fid.get((other, sampler), {})
            pairs = []
            for s in sorted(set(base) & set(alt)):
                diff, sd = alt[s][0] - base[s][0], (alt[s][1] ** 2 + base[s][1] ** 2) ** 0.5
                pairs.append(f"s{s} {diff:+.1f}{'' if abs(diff) > 1.96 * sd else ' (not apart)'}")
            cells.append(", ".join(pairs) or "-")
        for other in methods[1:]:
            base, alt = fid.get((methods[0], sampler), {}), fid.get((other, sampler), {})
            d = seed_difference([v for v, _ in alt.values()], [v for v, _ in base.values()])
            cells.append("-" if d is None else f"{d.value:+.1f} [{d.low:+.1f}, {d.high:+.1f}], p = {d.p:.3f}")
        table.add_row(sampler, *cells)
    return table


def real_reference(store: Store, data_root: str | None, n: int, seed: int) -> dict[str, float]:
    """The same metrics for ``n`` real test images (the first ``n`` of the stratified test order): what a
    perfect generator would score at this ``n`` in this space."""
    data = load_dataset(DATASET, data_root=data_root, val_size=1)
    real = Split(torch.cat([data.train.x, data.val.x]), torch.cat([data.train.y, data.val.y]))
    measure = SampleMetrics(real, get_dataset(DATASET), store.home, n=n, seed=seed, features=["domain"],
                            inception_weights=None, device=torch.device("cpu"), data_root=data_root)
    return measure(data.test.x[:n], data.test.y[:n])


def interval(value: float, n: int) -> str:
    estimate = accuracy(round(value * n), n)
    return f"{estimate.value:.2f} [{estimate.low:.2f}, {estimate.high:.2f}]"


def figure(store: Store, runs: dict[str, str], path: Path, per_class: int = 3) -> None:
    """A row per model, a column per sampler; each cell the first ``per_class`` samples (rows) of every class
    (columns, in class order)."""
    tags = {run_id: tag for tag, run_id in runs.items()}
    records = {(r.model_ref, r.sampler): r for r in store.generative(dataset=DATASET)  # defaults only, no control
               if r.model_ref in tags and sampler_label(r) == r.sampler
               and r.checkpoint == CHECKPOINTS.get(tags[r.model_ref], "best")}
    fig, axes = plt.subplots(len(runs), len(SAMPLERS), figsize=(3.4 * len(SAMPLERS), 1.35 * len(runs)))
    for row, (tag, run_id) in enumerate(runs.items()):
        for col, sampler in enumerate(SAMPLERS):
            ax = axes[row, col]
            ax.axis("off")
            record = records.get((run_id, sampler))
            if record is None:
                continue
            saved = np.load(Path(record.out_dir) / f"{sampler}.npz")
            x, y = saved["x"], saved["y"]
            columns = [np.concatenate(list(x[y == c][:per_class]), axis=1) for c in range(10)]  # C, k*H, W
            ax.imshow(np.concatenate(columns, axis=2).transpose(1, 2, 0), interpolation="nearest")
            fid, sd = record.metrics[f"FID{SPACE}"], record.metrics[f"FID_std{SPACE}"]
            ax.set_title(f"{tag} / {sampler}: FID@{record.n} {fid:.1f}±{sd:.1f}", fontsize=7)
    fig.tight_layout(pad=0.4)
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--data-root", help="cifar10-jpeg.tar.gz or its folder")
    parser.add_argument("--run", action="store_true", help="train and sample what the store lacks")
    parser.add_argument("-n", type=int, default=500, help="samples per sampler")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--figure", type=Path, help="write the grid figure here")
    parser.add_argument("--models", choices=["co", "ro"], default="co",
                        help=f"co: the five models above (trained here); ro: the {RO_SUITE} suite's {RO_TRAINER} runs")
    args = parser.parse_args()
    try:
        study(args)
    except EnergybenchError as exc:  # a dataset not found, a store that cannot be read: one line, no traceback
        parser.error(str(exc))


def study(args: argparse.Namespace) -> None:
    """Train and sample what ``args.run`` asks for, then print the tables (and draw the figure)."""
    store, console = Store(args.store), Console()
    ro_runs = ro_models(store) if args.models == "ro" else {}
    if args.models == "ro":  # never the co models, even when the suite has no runs yet
        runs = {f"{method} s{training_seed}": run_id for (method, training_seed), run_id in ro_runs.items()}
    else:
        runs = {tag: run_id for tag in MODELS if (run_id := trained(store, tag, args.data_root, args.run))}
    for tag, run_id in runs.items():
        jobs = [(s, {}) for s in SAMPLERS] + ([CONTROL[1:]] if tag == CONTROL[0] else [])
        if args.run:
            sample_missing(store, console, tag, run_id, CHECKPOINTS.get(tag, "best"), jobs, args)
    table = Table("model", "checkpoint: test clean / PGD-20 (test points)", "sampler", f"FID@{args.n}", "KID", "IS",
                  "precision [95%]", "recall [95%]", "acc", "steps", "samples/s",
                  title=f"cifar10-jpeg, {args.n} samples per sampler, features {SPACE[1:-1]}")

    def add_row(model: str, robust: str, sampler: str, metrics: dict[str, float], n: int, steps: str, rate: str):
        m = {key.removesuffix(SPACE): value for key, value in metrics.items()}
        table.add_row(model, robust, sampler, f"{m['FID']:.1f} ± {m['FID_std']:.1f}", f"{m['KID']:.3f} ± "
                      f"{m['KID_std']:.3f}", f"{m['IS']:.2f} ± {m['IS_std']:.2f}", interval(m["precision"], n),
                      interval(m["recall"], n), f"{m['acc']:.2f}", steps, rate)

    add_row("real test images", "-", "-", real_reference(store, args.data_root, args.n, args.seed), args.n, "-", "-")
    for tag, run_id in runs.items():
        checkpoint = CHECKPOINTS.get(tag, "best")
        results = store.results(run_id)[checkpoint]
        robust = (f"{checkpoint}: {results['test_clean_acc']:.1%} / {results['test_pgd_acc']:.1%} "
                  f"({store.get_run(run_id).config['eval']['test_points']:,})")
        for record in sampled(store, run_id, checkpoint, args.n, args.seed):
            add_row(tag, robust, sampler_label(record), record.metrics, record.n, f"{record.steps_mean:.0f}",
                    f"{record.n / record.wall_time:.1f}")
    console.print(table)
    if args.models == "ro":
        console.print(ro_summary(store, ro_runs, args.n, args.seed))
    if args.figure:
        figure(store, runs, args.figure)
        console.print(f"figure: {args.figure}")


if __name__ == "__main__":
    main()
