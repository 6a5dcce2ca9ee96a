"""The `energybench` command line: a thin layer over the benchmark package."""

from __future__ import annotations

import os
import sys
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from benchmark.errors import EnergybenchError

#: Tables keep a readable width when stdout is piped to a file (rich would assume 80 columns).
out = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 150)
err = Console(stderr=True)


def parse_assignments(pairs: tuple[str, ...], option: str) -> dict[str, Any]:
    """``KEY=VALUE`` pairs to a dict; values are read as TOML (5, 0.1, true, "x", [1, 2]) or kept as text."""
    from benchmark.config import tomllib

    values: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip():
            raise EnergybenchError(f"{option} expects KEY=VALUE, got {pair!r}")
        try:
            values[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            values[key.strip()] = raw
    return values


def store_option(f):
    return click.option("--store", "store_path", type=click.Path(file_okay=False),
                        help="Run store folder (default: $ENERGYBENCH_HOME or ~/.local/share/energybench).")(f)


def catalogue_option(f):
    return click.option("--registry", "registry_path", type=click.Path(dir_okay=False),
                        help="Catalogue of tracks (default: the registry.toml shipped with energybench).")(f)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="energybench")
def cli() -> None:
    """energybench: adversarial training through the lens of energy-based models."""


@cli.command()
@click.option("--track", help="Named benchmark setting from registry.toml (see `energybench tracks`).")
@click.option("--trainer", help="Trainer plugin (see `energybench plugins`).")
@click.option("--reg", "--regularizer", "regularizer", help="Regularizer plugin, e.g. der.")
@click.option("--dataset", help="fashion-mnist, digits, mnist, cifar10, cifar100 or svhn.")
@click.option("--model", help="Model plugin, e.g. small-cnn, preact-resnet18, wrn-28-10.")
@click.option("--eps", help="Perturbation budget: a number or a fraction such as 8/255.")
@click.option("--norm", type=click.Choice(["Linf", "L2"]), help="Threat model.")
@click.option("--epochs", type=int)
@click.option("--batch-size", type=int)
@click.option("--lr", type=float, help="Peak learning rate.")
@click.option("--seed", type=int)
@click.option("--n-train", type=int, help="Train on a subset of this many points.")
@click.option("--aa-points", type=int, help="Test points attacked by AutoAttack (0 skips it).")
@click.option("--trainer-opt", "-T", multiple=True, metavar="KEY=VALUE", help="Trainer hyper-parameter.")
@click.option("--reg-opt", "-R", multiple=True, metavar="KEY=VALUE", help="Regularizer hyper-parameter.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML file of RunConfig fields.")
@click.option("--data-root", type=click.Path(file_okay=False), help="Folder holding the dataset files.")
@click.option("--device", help="auto (default), cpu, cuda or cuda:N.")
@click.option("--resume", metavar="RUN_ID", help="Continue an interrupted run after its last completed epoch.")
@store_option
@catalogue_option
def run(track, trainer, regularizer, dataset, model, eps, norm, epochs, batch_size, lr, seed, n_train, aa_points,
        trainer_opt, reg_opt, config_file, data_root, device, resume, store_path, registry_path) -> None:
    """Train a classifier with a trainer (+ regularizer), evaluate it, store it, show the leaderboard."""
    from benchmark.config import load_catalogue, resolve_config
    from benchmark.harness import execute, prepare
    from benchmark.leaderboard import collect, format_eps, render
    from benchmark.progress import RichReporter
    from benchmark.store import Store

    catalogue = load_catalogue(registry_path)
    store = Store(store_path)
    if resume:
        config = None
    else:
        overrides = {"trainer": trainer, "regularizer": regularizer, "dataset": dataset, "model": model,
                     "eps": eps, "norm": norm, "epochs": epochs, "batch_size": batch_size, "lr": lr, "seed": seed,
                     "n_train": n_train, "data_root": data_root, "device": device,
                     "trainer_params": parse_assignments(trainer_opt, "--trainer-opt") or None,
                     "regularizer_params": parse_assignments(reg_opt, "--reg-opt") or None,
                     "eval": {"aa_points": aa_points} if aa_points is not None else None}
        config = prepare(resolve_config(catalogue, track=track, config_file=config_file, overrides=overrides),
                         catalogue)
        err.print(f"[bold]energybench run[/]: {config.trainer} + {config.regularizer} on {config.dataset} "
                  f"({config.model}), eps {config.eps:g}, {config.epochs} epochs"
                  + (f", track {config.track}" if config.track else ""))
    run_id = execute(config, store, reporter=RichReporter(err), resume=resume)
    record = store.get_run(run_id)
    rows = collect(store, dataset=record.dataset, model=record.model, eps=record.eps, norm=record.norm)
    title = f"Leaderboard: {record.dataset}, {record.model}, {record.norm} eps {format_eps(record.eps)}"
    out.print(render(rows, title, highlight=run_id, settings=False))
    out.print(f"run {run_id} stored in {store.run_dir(run_id)}")
    if record.dataset != "cifar10":
        out.print("[dim]Paper-scale protocols (GPU + CIFAR-10 files): energybench run --track cifar10-co "
                  "(catastrophic overfitting) or --track cifar10-ro (robust overfitting).[/]")


@cli.command()
@click.option("--dataset")
@click.option("--model")
@click.option("--eps", help="A number or a fraction such as 8/255.")
@click.option("--track")
@click.option("--trainer")
@store_option
def leaderboard(dataset, model, eps, track, trainer, store_path) -> None:
    """Print the robustness leaderboard of stored runs."""
    from benchmark.config import parse_eps
    from benchmark.leaderboard import collect, render
    from benchmark.store import Store

    try:
        eps_value = parse_eps(eps) if eps is not None else None
    except ValueError as exc:
        raise EnergybenchError(str(exc)) from None
    rows = collect(Store(store_path), dataset=dataset, model=model, eps=eps_value, track=track, trainer=trainer)
    if not rows:
        raise EnergybenchError("no completed runs match these filters; start one with `energybench run`")
    out.print(render(rows, "Leaderboard"))


@cli.command()
@click.option("--kind", type=click.Choice(["attack", "trainer", "regularizer", "sampler", "model"]))
def plugins(kind) -> None:
    """List registered plugins by kind, with their source package and hyper-parameters."""
    from benchmark.registry import KINDS, get_registry

    registry = get_registry()
    for name in [kind] if kind else list(KINDS):
        table = Table(title=f"{name}s", title_justify="left", header_style="bold")
        for column in ("name", "source", "hyper-parameters (default)"):
            table.add_column(column)
        for entry, cls in registry.load_all(name):
            params = getattr(cls, "Params", None)
            fields = params.model_fields.items() if params is not None else []
            shown = ", ".join(f"{f.alias or key}={f.default!r}" for key, f in fields) or "-"
            table.add_row(entry.name, entry.source, shown)
        out.print(table)
    for problem in registry.problems:
        err.print(f"[yellow]warning:[/] {problem}")


@cli.command()
@catalogue_option
def tracks(registry_path) -> None:
    """List the benchmark tracks of the catalogue."""
    from benchmark.config import RunConfig, load_catalogue
    from benchmark.leaderboard import format_eps

    catalogue = load_catalogue(registry_path)
    table = Table(title=f"tracks ({catalogue.path})", title_justify="left", header_style="bold")
    for column in ("track", "dataset", "model", "trainer", "eps", "epochs", "description"):
        table.add_column(column)
    for name, track in catalogue.tracks.items():
        cfg = RunConfig(**track.settings)
        label = f"{name} (default)" if name == catalogue.default_track else name
        table.add_row(label, cfg.dataset, cfg.model, cfg.trainer, format_eps(cfg.eps), str(cfg.epochs),
                      track.description)
    out.print(table)


def main(argv: list[str] | None = None) -> int:
    """Entry point: one line on stderr and exit code 2 for bad input, 130 on Ctrl-C, never a traceback."""
    try:
        cli.main(args=argv, prog_name="energybench", standalone_mode=False)
    except EnergybenchError as exc:
        err.print(f"energybench: error: {exc}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        err.print(f"energybench: error: {exc.format_message()}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except (KeyboardInterrupt, click.exceptions.Abort):
        err.print("energybench: interrupted; resume with `energybench run --resume RUN_ID`", markup=False)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
