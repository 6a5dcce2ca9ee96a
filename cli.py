"""The `energybench` command line: a thin layer over the benchmark package."""

from __future__ import annotations

import os
import shlex
import signal
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table

from energybench.errors import ArgumentError, EnergybenchError, Interrupted

if TYPE_CHECKING:
    from energybench.config import RunRequest

#: Piped into a file or a pager, stdout is as wide as a table needs (rich would assume 80 columns and squeeze every
#: cell into wrapped lines); ``COLUMNS`` still sets a width. Lines on stderr wrap where the terminal wraps them.
PIPED_WIDTH = 400
out = Console(width=None if sys.stdout.isatty() or os.environ.get("COLUMNS") else PIPED_WIDTH)
err = Console(stderr=True, soft_wrap=True)


def parse_assignments(pairs: tuple[str, ...], option: str) -> dict[str, Any]:
    """``KEY=VALUE`` pairs to a dict; values are read as TOML (5, 0.1, true, "x", [1, 2]) or kept as text."""
    from energybench.config import tomllib

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
@click.option("--dataset", help="A dataset plugin (fashion-mnist, digits, cifar10, cifar10-jpeg, ...: `energybench "
              "plugins --kind dataset`) or the path of an image folder or archive (train/<class>/*, test/<class>/*).")
@click.option("--model", help="Model plugin, e.g. small-cnn, preact-resnet18, wrn-28-10.")
@click.option("--model-opt", "-M", multiple=True, metavar="KEY=VALUE", help="Model hyper-parameter, e.g. width=16.")
@click.option("--eps", help="Perturbation budget: a number or a fraction such as 8/255.")
@click.option("--norm", type=click.Choice(["Linf", "L2"]), help="Threat model.")
@click.option("--epochs", type=int)
@click.option("--batch-size", type=int)
@click.option("--lr", type=float, help="Peak learning rate.")
@click.option("--seed", type=int)
@click.option("--n-train", type=int, help="Train on a subset of this many points.")
@click.option("--aa-points", type=int, help="Test points attacked by AutoAttack (0 skips it).")
@click.option("--aa-version", type=click.Choice(["standard", "fast", "plus", "rand"]),
              help="AutoAttack's version; fast: APGD-CE and APGD-T only (an upper bound of standard's accuracy).")
@click.option("--trainer-opt", "-T", multiple=True, metavar="KEY=VALUE", help="Trainer hyper-parameter.")
@click.option("--reg-opt", "-R", multiple=True, metavar="KEY=VALUE", help="Regularizer hyper-parameter.")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="TOML file of RunConfig fields.")
@click.option("--data-root", type=click.Path(), help="Folder (or archive) holding the dataset files.")
@click.option("--device", help="auto (default), cpu, cuda or cuda:N.")
@click.option("--fast", type=click.Choice(["auto", "on", "off"]),
              help="Fast path (bf16 autocast, channels_last, cuDNN autotuning, fused SGD); auto: on with CUDA.")
@click.option("--log", "loggers", multiple=True, metavar="NAME",
              help="Training-loop callback to add, e.g. tensorboard (event files in the run folder); repeatable.")
@click.option("--resume", metavar="RUN_ID", help="Continue an interrupted run after its last completed epoch.")
@store_option
@catalogue_option
def run(resume, store_path, registry_path, **options) -> None:
    """Train a classifier with a trainer (+ regularizer), evaluate it, store it, show the leaderboard."""
    from energybench import api
    from energybench.storage.store import Store
    from energybench.training.progress import RichReporter

    if resume:
        ctx = click.get_current_context()
        given = [p.opts[0] for p in ctx.command.params
                 if p.name not in ("resume", "store_path") and ctx.params[p.name] not in (None, ())]
        if given:
            raise EnergybenchError(f"--resume continues run {resume} with the settings it was started with, so "
                                   f"{', '.join(given)} cannot apply; drop them, or start a new run to change them")
    store = Store(store_path)
    if resume:
        run_id = api.resume(resume, store=store, progress=RichReporter(err)).id
    else:
        run_id = api.run(run_request(options), store=store, progress=RichReporter(err),
                         catalogue=registry_path).id
    record = store.get_run(run_id)
    print_board(store, registry_path, record, highlight=run_id)
    out.print(f"run {run_id} stored in {store.run_dir(run_id)}")
    if record.dataset != "cifar10":
        out.print("[dim]Paper-scale protocols (GPU + CIFAR-10 files): energybench run --track cifar10-co "
                  "(catastrophic overfitting) or --track cifar10-ro (robust overfitting).[/]")


def run_request(options: dict[str, Any]) -> RunRequest:
    """The ``RunRequest`` of ``energybench run``'s options: the plugins, their ``KEY=VALUE`` options, the track and
    file the settings start from, and the options that set ``RunConfig`` fields."""
    from energybench.config import RunRequest

    rest = dict(options)
    model_params = parse_assignments(rest.pop("model_opt"), "--model-opt") or None
    trainer_params = parse_assignments(rest.pop("trainer_opt"), "--trainer-opt") or None
    regularizer_params = parse_assignments(rest.pop("reg_opt"), "--reg-opt") or None
    fast = rest.pop("fast")
    protocol = {key: rest.pop(key) for key in ("aa_points", "aa_version")}
    evaluation = {key: value for key, value in protocol.items() if value is not None}
    return RunRequest(rest.pop("trainer"), rest.pop("regularizer"), track=rest.pop("track"),
                      config=rest.pop("config_file"), trainer_params=trainer_params,
                      regularizer_params=regularizer_params, callbacks=list(rest.pop("loggers")),
                      settings=rest | {"model_params": model_params, "fast": {"enabled": fast} if fast else None,
                                       "eval": evaluation or None})


def print_board(store, registry_path, record, *, highlight: str | None = None, only: str | None = None):
    """Print the leaderboard of ``record``'s setting (dataset, threat model, eps: every architecture, the published
    references), with the run in bold (``highlight``) or alone (``only``); return its ranking and entry."""
    from energybench import api
    from energybench.reporting.formats import rich_tables

    board = api.rankings(dataset=record.dataset, eps=record.eps, norm=record.norm, store=store, catalogue=registry_path)
    for table in rich_tables(board, highlight=highlight, only=only):
        out.print(table)
    return board.place(record.id)


@cli.command()
@click.option("--dataset")
@click.option("--model", help="Only this architecture's runs.")
@click.option("--eps", help="A number or a fraction such as 8/255.")
@click.option("--track")
@click.option("--trainer")
@click.option("--generative", is_flag=True, help="Rank sampled models by FID instead (see `energybench sample`).")
@click.option("--norm", type=click.Choice(["Linf", "L2"]))
@click.option("--suite")
@click.option("--sort", metavar="COLUMN", help="Rank by this column (e.g. aa, pgd, clean_best, dE, time, trainer).")
@click.option("--reverse", is_flag=True, help="Reverse the order (numbers ascending, text Z to A).")
@click.option("--group-seeds", is_flag=True, help="One row per configuration: mean and std over seeds.")
@click.option("--per-arch", is_flag=True, help="One ranking per architecture (default: one per dataset, threat model "
              "and eps, the architecture a column, as RobustBench ranks).")
@click.option("--format", "fmt", type=click.Choice(["table", "markdown", "csv", "json", "html"]), default="table",
              show_default=True)
@click.option("-o", "--out", "--output", "output", type=click.Path(dir_okay=False),
              help="Write to this file instead of stdout.")
@click.option("--no-references", is_flag=True, help="Leave out the published reference rows.")
@store_option
@catalogue_option
def leaderboard(dataset, model, eps, track, trainer, generative, norm, suite, sort, reverse, group_seeds, per_arch, fmt,
                output, no_references, store_path, registry_path) -> None:
    """Print the robustness leaderboard of stored runs, or with --generative the generative one."""
    from energybench import api
    from energybench.reporting.formats import export, rich_tables

    if generative:
        from energybench.reporting.generative_leaderboard import generative_tables

        if eps or track or trainer:
            raise EnergybenchError("--eps, --track and --trainer filter runs; with --generative use --dataset/--model")
        board = api.generative_leaderboard(dataset=dataset, model=model, references=not no_references,
                                           store=store_path, catalogue=registry_path)
        for table in generative_tables(board):
            out.print(table)
        return
    board = api.rankings(dataset=dataset, model=model, eps=eps, norm=norm, track=track, suite=suite, trainer=trainer,
                         sort=sort, reverse=reverse, group_seeds=group_seeds, per_arch=per_arch,
                         references=not no_references, store=store_path, catalogue=registry_path).nonempty()
    if output:
        from energybench.storage.checkpoint import atomic_write

        atomic_write(Path(output), export(board, fmt).encode())
        err.print(f"leaderboard ({fmt}) written to {output}")
    elif fmt == "table":
        for table in rich_tables(board):
            out.print(table)
    else:
        click.echo(export(board, fmt), nl=False)


@cli.command()
@click.argument("model_ref", metavar="RUN_ID|CHECKPOINT")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="Which checkpoint of a run.")
@click.option("--dataset", help="Dataset of a checkpoint file outside a run folder.")
@click.option("--arch", "--model", "model_arch", help="Architecture (model plugin) of a checkpoint file outside a run "
              "folder.")
@click.option("--sampler", help="Sampler plugin, e.g. local-pca (see `energybench plugins --kind sampler`).")
@click.option("--compare", metavar="A,B,...", help="Several samplers on the same model and seeds, "
              "e.g. sgld,class-gaussian,class-pca,local-pca (added to --sampler).")
@click.option("-n", "n", type=int, default=1000, show_default=True, help="Samples per sampler, balanced over classes.")
@click.option("--sampler-opt", "-S", multiple=True, metavar="[SAMPLER.]KEY=VALUE",
              help="Sampler hyper-parameter: plain KEY sets it for every sampler that has it.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--batch-size", type=int, default=250, show_default=True)
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False),
              help="Folder for grids, samples and metrics (default: STORE/generative/<id>).")
@click.option("--features", type=click.Choice(["auto", "domain", "inception", "both"]), default="auto",
              show_default=True, help="Feature space of IS/FID: auto = Inception for colour images when its weights "
              "are here, else the dataset's domain classifier (labelled FID[<dataset>-cnn]).")
@click.option("--inception-weights", type=click.Path(dir_okay=False, exists=True),
              help="Local file of torch-fidelity's Inception-v3 weights.")
@click.option("--data-root", type=click.Path(), help="Folder (or archive) holding the dataset files.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@store_option
@catalogue_option
def sample(model_ref, checkpoint, dataset, model_arch, sampler, compare, n, sampler_opt, seed, batch_size, out_dir,
           features, inception_weights, data_root, device, store_path, registry_path) -> None:
    """Generate class-conditional samples from a trained classifier: grids, samples, IS/FID, stored results."""
    from energybench import api
    from energybench.generation.generate import sampler_names
    from energybench.reporting.generative_leaderboard import model_names, ranking_table, rankings
    from energybench.storage.store import Store
    from energybench.training.progress import RichReporter

    if not sampler and not compare:
        raise EnergybenchError("name a sampler with --sampler or several with --compare")
    store = Store(store_path)
    records = api.sample(model_ref, sampler=sampler_names(sampler, compare), n=n, seed=seed, checkpoint=checkpoint,
                         params=parse_assignments(sampler_opt, "--sampler-opt"), dataset=dataset, arch=model_arch,
                         data_root=data_root, out_dir=out_dir, features=features, inception_weights=inception_weights,
                         batch_size=batch_size, device=device, store=store, catalogue=registry_path,
                         progress=RichReporter(err), log=err.print)
    for space, group in rankings(records).items():
        out.print(ranking_table(space, group, model_names(store, group)))
    out.print(f"grids, samples (.npz) and metrics (.json) in {records[0].out_dir}")


@cli.command()
@click.option("--kind", type=click.Choice(["attack", "trainer", "regularizer", "sampler", "model", "callback",
                                           "dataset"]))
@catalogue_option
def plugins(kind, registry_path) -> None:
    """List registered plugins by kind, with their source package and effective default hyper-parameters."""
    from energybench import api
    from energybench.contracts.registry import KINDS, get_registry

    found = api.describe_plugins(kind, catalogue=registry_path)
    for name in [kind] if kind else list(KINDS):
        table = Table(title=f"{name}s", title_justify="left", header_style="bold")
        for column in ("name", "source", "facts" if name == "dataset" else "hyper-parameters (default)"):
            table.add_column(column)
        for plugin in (p for p in found if p.kind == name):
            settings = plugin.facts or ", ".join(f"{k}={v!r}" for k, v in plugin.defaults.items()) or "-"
            table.add_row(plugin.name, plugin.source, settings)
        out.print(table)
    for problem in get_registry().problems:
        err.print(f"[yellow]warning:[/] {problem}")


@cli.command()
@catalogue_option
def tracks(registry_path) -> None:
    """List the benchmark tracks of the catalogue."""
    from energybench import api
    from energybench.config import format_eps, load_catalogue

    table = Table(title=f"tracks ({load_catalogue(registry_path).path})", title_justify="left", header_style="bold")
    for column in ("track", "dataset", "model", "trainer", "eps", "epochs", "description"):
        table.add_column(column)
    for name, track in api.tracks(catalogue=registry_path).items():
        cfg = track["settings"]
        table.add_row(f"{name} (default)" if track["default"] else name, cfg["dataset"], cfg["model"], cfg["trainer"],
                      format_eps(cfg["eps"]), str(cfg["epochs"]), track["description"])
    out.print(table)


@cli.command()
@click.argument("name")
@click.option("--dry-run", is_flag=True, help="List the cells, which are done and the estimated cost; run nothing.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: one cell after another here; ray: cells as Ray tasks (pip install 'energybench[ray]').")
@click.option("--ray-address", help="Ray cluster to join, e.g. ray://head:10001 (default: start a local one).")
@click.option("--data-root", type=click.Path(), help="Folder (or archive) holding the dataset files.")
@click.option("--device", help="auto (default), cpu, cuda or cuda:N.")
@store_option
@catalogue_option
def suite(name, dry_run, executor, ray_address, data_root, device, store_path, registry_path) -> None:
    """Run the cells of suite NAME not yet done in the store, then show the suite's leaderboard."""
    from energybench import api
    from energybench.reporting.suite_leaderboard import group_cells, render_suite, render_tuning
    from energybench.storage.store import Store
    from energybench.suites.plan import render_plan
    from energybench.training.progress import RichReporter

    if dry_run:
        table, summary = render_plan(api.suite_plan(name, executor=executor, ray_address=ray_address,
                                                    data_root=data_root, device=device, store=store_path,
                                                    catalogue=registry_path))
        out.print(table)
        out.print(summary)
        return
    finished, stage_size = [], [0]

    def announce(stage: str, cells: int, todo: int) -> None:
        finished.clear()
        stage_size[0] = todo
        err.print(f"[bold]energybench suite {name}[/], {stage} stage: {cells} cells, {cells - todo} already done, "
                  f"{todo} to run ({executor} executor)", soft_wrap=True)

    def report_cell(outcome) -> None:
        finished.append(outcome)
        result = (f"done in {outcome.wall_time:.0f}s, run {outcome.run_id}" if outcome.status == "done"
                  else f"[red]{outcome.status}[/]: {outcome.error}")
        err.print(f"[{len(finished)}/{stage_size[0]}] {outcome.cell.describe()}: {result}", highlight=False)

    def report_epoch(cell, epochs: int) -> None:
        err.print(f"    {cell.describe()}: epoch {epochs}/{cell.config.epochs}", highlight=False)

    given = {"--executor": None if executor == "local" else executor, "--ray-address": ray_address,
             "--data-root": data_root, "--device": device, "--store": store_path, "--registry": registry_path}
    again = shlex.join(["energybench", "suite", name, *(x for flag, v in given.items() if v for x in (flag, v))])
    store = Store(store_path)
    try:
        result = api.run_suite(name, executor=executor, ray_address=ray_address, data_root=data_root, device=device,
                               store=store, catalogue=registry_path, progress=RichReporter(err), on_stage=announce,
                               on_done=report_cell, on_epoch=report_epoch)
    except KeyboardInterrupt:
        raise Interrupted(again) from None
    if result.selections:
        out.print(render_tuning(result.selections, result.suite.spec.tuning))
    first = result.cells[0].config
    out.print(render_suite(group_cells(store, result.cells, result.selections),
                           f"Suite {name}: {first.dataset}, {first.model}, {first.norm}"))
    if result.unfinished():
        raise EnergybenchError(f"{result.unfinished()}; run `{again}` again to retry only the unfinished cells")


@cli.command("eval")
@click.argument("model_ref", metavar="CHECKPOINT|RUN_ID|robustbench:NAME")
@click.option("--name", help="What the leaderboard calls this model (default: external).")
@click.option("--dataset", help="Dataset to evaluate on (files outside run folders need it; robustbench: cifar10).")
@click.option("--eps", help="Perturbation budget: a number or a fraction such as 8/255 (default: the track's).")
@click.option("--arch", "--model", "arch", help="Registered architecture of a state-dict file, e.g. preact-resnet18.")
@click.option("--track", help="Track whose evaluation protocol runs (default: the first track on the dataset).")
@click.option("--norm", type=click.Choice(["Linf", "L2"]), help="Threat model (default: the track's).")
@click.option("--test-points", type=int, help="Test points for clean/FGSM/PGD accuracy (default: the track's).")
@click.option("--aa-points", type=int, help="Test points attacked by AutoAttack (0 skips it).")
@click.option("--aa-version", type=click.Choice(["standard", "fast", "plus", "rand"]),
              help="AutoAttack's version (default: the track's); fast: APGD-CE and APGD-T only.")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True,
              help="Which checkpoint of an energybench run.")
@click.option("--model-dir", type=click.Path(file_okay=False),
              help="RobustBench model_dir holding <dataset>/<norm>/<NAME>.pt (default: STORE/robustbench-models).")
@click.option("--seed", type=int, help="Seed of the attacks (default: the run's seed for a run, else 0).")
@click.option("--data-root", type=click.Path(), help="Folder (or archive) holding the dataset files.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--no-store", is_flag=True, help="Print the numbers only; store nothing.")
@store_option
@catalogue_option
def evaluate(model_ref, name, dataset, eps, arch, track, norm, test_points, aa_points, aa_version, checkpoint,
             model_dir, seed, data_root, device, no_store, store_path, registry_path) -> None:
    """Evaluate a model energybench did not train (clean, PGD, AutoAttack, energies) and add it to the leaderboard."""
    from energybench import api
    from energybench.config import format_eps
    from energybench.evaluation.sanity import evaluation_warnings
    from energybench.reporting.leaderboard import evaluation_table
    from energybench.storage.store import Store
    from energybench.training.progress import RichReporter

    store = False if no_store else Store(store_path)
    result = api.evaluate(model_ref, name=name, dataset=dataset, eps=eps, norm=norm, test_points=test_points,
                          aa_points=aa_points, aa_version=aa_version, track=track, seed=seed, device=device,
                          checkpoint=checkpoint, arch=arch, model_dir=model_dir, data_root=data_root, store=store,
                          progress=RichReporter(err), catalogue=registry_path)
    metrics = result if no_store else result.results["last"]
    for warning in evaluation_warnings(metrics):
        err.print(f"[yellow]warning[/]: {warning}", highlight=False)
    if no_store:
        out.print(f"{model_ref}: evaluated, not stored", highlight=False)
        out.print(evaluation_table(metrics))
        return
    record = store.get_run(result.id)
    ranking, entry = print_board(store, registry_path, record, only=result.id)
    out.print(f"run {record.id}: rank {entry.rank if entry.rank is not None else '-'} of {len(ranking.entries)} on "
              f"{ranking.setting.label}, beside {len(ranking.references)} published results (the whole table: "
              f"energybench leaderboard --dataset {record.dataset} --norm {record.norm} --eps {format_eps(record.eps)}"
              f"); share it: energybench export {record.id} -o {record.id}.json", highlight=False)


@cli.command()
@click.argument("ref_a", metavar="REF_A")
@click.argument("ref_b", metavar="REF_B")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="last", show_default=True)
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--margin", type=click.FloatRange(0, 100, max_open=True), default=1.0, show_default=True,
              help="Equivalence margin in accuracy points: 'same within' only when the interval lies inside it.")
@store_option
def compare(ref_a, ref_b, checkpoint, fmt, margin, store_path) -> None:
    """Per accuracy: A - B, its 95% interval, the p-value of a paired test and a verdict (REF: RUN_ID or
    group:RUN_ID)."""
    import json

    from energybench import api
    from energybench.reporting.compare import comparison_dict, comparison_table

    result = api.comparison(ref_a, ref_b, checkpoint=checkpoint, margin=margin, store=store_path)
    if fmt == "json":
        click.echo(json.dumps(comparison_dict(result), indent=2))
    else:
        out.print(comparison_table(result))


@cli.command("export")
@click.argument("run_id")
@click.option("-o", "--out", "--output", "output", required=True, type=click.Path(dir_okay=False),
              help="The JSON file to write.")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="last", show_default=True)
@click.option("--name", help="Title of the paper or method (RobustBench's `name`).")
@click.option("--authors", default="", help="Comma-separated authors.")
@click.option("--link", default="", help="Link to the paper or code.")
@click.option("--venue", default="", help="Venue, e.g. ICLR 2026 (empty: unpublished).")
@store_option
def export_run(run_id, output, checkpoint, name, authors, link, venue, store_path) -> None:
    """Write a run's result as a RobustBench model-info JSON file (their field names), ready to submit."""
    from energybench import api

    info = api.export(run_id, output, checkpoint=checkpoint, name=name, authors=authors, link=link, venue=venue,
                      store=store_path)
    out.print(f"{output}: clean {info['clean_acc']}%, AutoAttack {info['autoattack_acc']}% ({info['dataset']}, "
              f"eps {info['eps']})")


@cli.command("import-reference")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--norm", type=click.Choice(["Linf", "L2"]),
              help="Threat model (default: the file's folder name when Linf or L2, as in RobustBench's model_info).")
@store_option
def import_reference(files, norm, store_path) -> None:
    """Add RobustBench-style model-info JSON files to the leaderboard as (unranked) reference rows."""
    from energybench import api
    from energybench.config import format_eps
    from energybench.reporting.numbers import number

    for ref in api.import_reference(files, norm=norm, store=store_path):
        clean = number(ref["clean"], ".2f", scale=100, suffix="%")
        out.print(f"reference {ref['id']}: {ref['dataset']} {ref['norm']} eps {format_eps(ref['eps'])}, clean {clean}, "
                  f"AutoAttack {100 * ref['aa']:.2f}%")


@cli.command()
@click.argument("refs", nargs=-1, required=True, metavar="SUITE|RUN_ID...")
@click.option("-o", "--out", "--output", "output", default="report.html", show_default=True,
              type=click.Path(dir_okay=False))
@click.option("--title", help="Page title (default: the suites and runs named).")
@store_option
@catalogue_option
def report(refs, output, title, store_path, registry_path) -> None:
    """Write one self-contained HTML page: leaderboard, dE traces, energies, samples, configs, environment."""
    from energybench import api

    with err.status("writing the report"):
        path = api.report(refs, output, title=title, store=store_path, catalogue=registry_path)
    out.print(f"report written to {path} ({path.stat().st_size / 1024:.0f} KiB)")


@cli.group("store")
def store_group() -> None:
    """Look after a run store."""


@store_group.command()
@store_option
def repair(store_path) -> None:
    """Rebuild a missing, empty or damaged store database from the run folders (the old file is kept)."""
    from energybench import api

    out.print(api.repair_store(store_path), highlight=False, soft_wrap=True)


@cli.group()
def energy() -> None:
    """Energy views of models and runs: histograms under attacks, dE traces, attack-free checkpoint choice."""


@energy.command()
@click.argument("model_ref", metavar="RUN_ID|CHECKPOINT|robustbench:NAME")
@click.option("--attacks", default="pgd,apgd-t,cw,square,fgsm", show_default=True, metavar="A,B,...",
              help="Attack plugins (default hyper-parameters), see `energybench plugins --kind attack`.")
@click.option("-n", "n", type=int, default=500, show_default=True, help="Test points (the first n).")
@click.option("--eps", help="Perturbation budget (default: the run's).")
@click.option("--norm", type=click.Choice(["Linf", "L2"]), help="Threat model (default: the run's, else Linf).")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best", show_default=True)
@click.option("--dataset", help="Dataset of a checkpoint file outside a run folder.")
@click.option("--arch", "--model", "model_arch", help="Architecture (model plugin) of a checkpoint file outside a run "
              "folder.")
@click.option("--model-dir", type=click.Path(file_okay=False), help="RobustBench model_dir (see `energybench eval`).")
@click.option("-o", "--out", "out_path", type=click.Path(dir_okay=False),
              help="PNG file (default: energy-histograms-REF.png).")
@click.option("--data-root", type=click.Path(), help="Folder (or archive) holding the dataset files.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@store_option
def histograms(model_ref, attacks, n, eps, norm, checkpoint, dataset, model_arch, model_dir, out_path, data_root,
               device, store_path) -> None:
    """E(x) and E(x,y) of clean test points and of their adversarial counterparts under each attack."""
    from energybench import api
    from energybench.reporting.energy_figures import stats_table
    from energybench.training.progress import RichReporter

    result = api.energy_histograms(model_ref, attacks=[a.strip() for a in attacks.split(",") if a.strip()], n=n,
                                   eps=eps, norm=norm, checkpoint=checkpoint, dataset=dataset, arch=model_arch,
                                   model_dir=model_dir, output=out_path, data_root=data_root, device=device,
                                   store=store_path, progress=RichReporter(err))
    out.print(stats_table(result.stats, result.title))
    out.print(f"figure written to {result.figure}")


@energy.command()
@click.argument("run_ids", nargs=-1, required=True, metavar="RUN_ID...")
@click.option("-o", "--out", "out_path", default="energy-trace.png", show_default=True,
              type=click.Path(dir_okay=False))
@store_option
def trace(run_ids, out_path, store_path) -> None:
    """Per-epoch train and validation dE beside PGD and FGSM validation accuracy, several runs overlaid."""
    from energybench import api
    from energybench.reporting.energy_figures import trace_table

    out.print(trace_table(api.energy_trace(run_ids, out_path, store=store_path)))
    out.print(f"figure written to {out_path}")


@energy.command()
@click.argument("run_ids", nargs=-1, required=True, metavar="RUN_ID...")
@store_option
def select(run_ids, store_path) -> None:
    """The epoch each criterion picks (val-pgd needs an attack per epoch, dE none) and its validation PGD."""
    from energybench import api
    from energybench.evaluation.selection import CRITERIA

    table = Table(title="checkpoint selection: epoch (validation PGD accuracy)", title_justify="left",
                  header_style="bold")
    for column in ("run", *CRITERIA, "dE = val-pgd"):
        table.add_column(column)
    for run_id, picks in api.select_epochs(run_ids, store=store_path).items():
        table.add_row(run_id, *(f"{picks[c]['epoch'] + 1} ({picks[c]['val_pgd_acc']:.1%})" for c in CRITERIA),
                      "yes" if picks["dE"]["epoch"] == picks["val-pgd"]["epoch"] else "no")
    out.print(table)


#: API parameters whose option is named otherwise here (API name: the option's parameter name).
API_NAMES = {"arch": "model_arch", "params": "sampler_opt", "output": "out_path", "store": "store_path",
             "catalogue": "registry_path"}


def flags(argv: list[str]) -> dict[str, str]:
    """The options of the command ``argv`` runs by the API parameter each one sets, as the user wrote them (else
    their first name): what an ``ArgumentError`` from below says instead of the API's names."""
    command: click.Command = cli
    for word in argv:
        if not isinstance(command, click.Group) or word not in command.commands:
            break
        command = command.commands[word]
    parameter = {option: api for api, option in API_NAMES.items()}
    return {parameter.get(p.name, p.name): next((o for o in p.opts + p.secondary_opts if o in argv), p.opts[0])
            for p in command.params if isinstance(p, click.Option)}


def main(argv: list[str] | None = None) -> int:
    """Entry point: one line on stderr and exit code 2 for bad input, never a traceback. Ctrl-C (exit 130) and
    SIGTERM (exit 143, as sent by ``kill``, ``timeout`` or a batch scheduler) stop a long job the same way: the
    current epoch is given up, the run is marked interrupted and the command that continues it is printed."""
    argv = sys.argv[1:] if argv is None else argv
    terminated: list[int] = []

    def on_sigterm(signum, frame):
        terminated.append(signum)
        raise KeyboardInterrupt

    in_main_thread = threading.current_thread() is threading.main_thread()  # only there can handlers be set
    previous = signal.signal(signal.SIGTERM, on_sigterm) if in_main_thread else None
    try:
        cli.main(args=argv, prog_name="energybench", standalone_mode=False)
    except EnergybenchError as exc:
        message = exc.naming(flags(argv)) if isinstance(exc, ArgumentError) else str(exc)
        err.print(f"energybench: error: {message}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.ClickException as exc:
        err.print(f"energybench: error: {exc.format_message()}", markup=False, highlight=False, soft_wrap=True)
        return 2
    except (KeyboardInterrupt, click.exceptions.Abort) as exc:
        cause = exc if isinstance(exc, Interrupted) else exc.__cause__  # click wraps Ctrl-C in Abort
        hint = f"; continue with `{cause.resume_command}`" if isinstance(cause, Interrupted) else ""
        err.print(f"energybench: {'terminated' if terminated else 'interrupted'}{hint}", markup=False,
                  highlight=False, soft_wrap=True)
        return 128 + terminated[0] if terminated else 130
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
