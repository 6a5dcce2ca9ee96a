"""What the paper looks at: energy histograms under attacks, and per-epoch dE traces beside robust accuracy.

Each view is split into the data (plain arrays, tested directly), a matplotlib figure drawn from
that data (``matplotlib.figure.Figure`` without pyplot: no display, no global state; ``savefig``
writes PNG through Agg) and a rich table for the terminal.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from rich.table import Table
from torch import nn

from energybench.config import select_device
from energybench.contracts.registry import create_attack, get_plugin
from energybench.data.datasets import Split, load_dataset
from energybench.errors import ArgumentError, EnergybenchError
from energybench.evaluation.external import resolve_model
from energybench.evaluation.robustness import as_float
from energybench.ops.energy import QUANTILES, joint_energy, marginal_energy
from energybench.ops.modes import eval_mode
from energybench.storage.store import Store

ENERGIES = ("E(x)", "E(x,y)")
SPARKS = "▁▂▃▄▅▆▇█"

# ----- energies of clean and adversarial points ---------------------------------------------------


@dataclass
class AttackEnergies:
    """Per-point energies ``values[energy][source]``: source "clean" or an attack name, energy in ENERGIES.

    Row i of every array is the same test point (clean, or its adversarial counterpart).
    """

    values: dict[str, dict[str, np.ndarray]] = field(default_factory=lambda: {e: {} for e in ENERGIES})

    @property
    def sources(self) -> list[str]:
        return list(self.values[ENERGIES[0]])


def attack_energies(model: nn.Module, split: Split, *, attacks: list[str], n: int, eps: float, norm: str,
                    device: torch.device, batch_size: int = 250, seed: int = 0,
                    on_attack: Callable[[str], None] | None = None) -> AttackEnergies:
    """E(x) and E(x,y) of the first ``n`` points of ``split`` and of their counterparts under each attack.

    Attacks are registered attack plugins with their default hyper-parameters, built for ``eps``/``norm``.
    """
    n = min(n, len(split))
    x_all, y_all = as_float(split.x[:n], device), split.y[:n].to(device)
    out = AttackEnergies()
    model = model.to(device)
    with eval_mode(model):
        for source in ["clean", *attacks]:
            if on_attack is not None:
                on_attack(source)
            attack = None if source == "clean" else create_attack(source, model, eps=eps, norm=norm, seed=seed)
            parts: dict[str, list[torch.Tensor]] = {e: [] for e in ENERGIES}
            for start in range(0, n, batch_size):
                x, y = x_all[start:start + batch_size], y_all[start:start + batch_size]
                if attack is not None:
                    x = attack(x, y)
                with torch.no_grad():
                    logits = model(x).float()
                parts["E(x)"].append(marginal_energy(logits))
                parts["E(x,y)"].append(joint_energy(logits, y))
            for energy in ENERGIES:
                out.values[energy][source] = torch.cat(parts[energy]).cpu().numpy()
    return out


@dataclass
class HistogramRequest:
    """What `energybench energy histograms` asks for (see ``model_histograms``)."""

    ref: str  # RUN_ID, checkpoint file or robustbench:NAME
    attacks: list[str]
    n: int = 500
    eps: float | None = None  # default: the run's eps
    norm: str | None = None  # default: the run's norm, else Linf
    checkpoint: str = "best"
    dataset: str | None = None
    arch: str | None = None
    model_dir: str | None = None
    data_root: str | None = None
    device: str = "auto"
    seed: int = 0


def model_histograms(request: HistogramRequest, store: Store,
                     on_attack: Callable[[str], None] | None = None) -> tuple[AttackEnergies, str]:
    """Load the model (``energybench.evaluation.external.resolve_model``), attack its test points.

    Returns the energies and a title.
    """
    for name in request.attacks:
        get_plugin("attack", name)  # unknown names fail before any loading
    external = resolve_model(request.ref, store, dataset=request.dataset, arch=request.arch, norm=request.norm,
                             checkpoint=request.checkpoint, model_dir=request.model_dir)
    run = store.get_run(external.source["run"]) if external.source.get("kind") == "run" else None
    eps = request.eps if request.eps is not None else run.eps if run else None
    if eps is None:
        raise ArgumentError(f"{request.ref} is not a run of the store: give eps= (e.g. 0.1 or 8/255)", "eps")
    norm = request.norm or (run.norm if run else "Linf")
    test = load_dataset(external.info.name, data_root=request.data_root, val_size=1).test  # only the test split
    energies = attack_energies(external.model, test, attacks=request.attacks, n=request.n, eps=eps, norm=norm,
                               device=select_device(request.device), seed=request.seed, on_attack=on_attack)
    title = (f"{external.label} ({request.ref}) on {external.info.name} test, {norm} eps {eps:g}, "
             f"{min(request.n, len(test))} points")
    return energies, title


@dataclass
class EnergyStats:
    """One row of the histogram summary: an energy under one source, and its shift from clean."""

    energy: str
    source: str
    quantiles: dict[float, float]  # QUANTILES -> value
    moved: float  # fraction of points whose energy the attack changed (AutoAttack's skip misclassified points)
    median_shift: float  # median of energy(x*) - energy(x) over the moved points; 0 for clean

    @property
    def direction(self) -> str:
        if self.source == "clean":
            return ""
        return "raises" if self.median_shift > 0 else "lowers" if self.median_shift < 0 else "keeps"


def energy_stats(data: AttackEnergies) -> list[EnergyStats]:
    """Quantiles of every (energy, source) and the median per-point shift of the points an attack moved."""
    rows = []
    for energy in ENERGIES:
        clean = data.values[energy]["clean"]
        for source, values in data.values[energy].items():
            shift = values - clean
            moved = np.abs(shift) > 1e-6
            qs = np.quantile(values, QUANTILES)
            rows.append(EnergyStats(energy, source, dict(zip(QUANTILES, qs.tolist())),
                                    float(moved.mean()) if source != "clean" else 0.0,
                                    float(np.median(shift[moved])) if moved.any() else 0.0))
    return rows


def histogram_figure(data: AttackEnergies, bins: int = 40, title: str = "") -> Figure:
    """One panel per energy; each source drawn as a step histogram over bins shared within the panel."""
    fig = Figure(figsize=(6 * len(ENERGIES), 4.2), layout="tight")
    axes = fig.subplots(1, len(ENERGIES), squeeze=False)
    for ax, energy in zip(axes[0], ENERGIES):
        series = data.values[energy]
        edges = np.histogram_bin_edges(np.concatenate(list(series.values())), bins=bins)
        for i, (source, values) in enumerate(series.items()):
            counts, _ = np.histogram(values, bins=edges)
            ax.stairs(counts, edges, label=source, color=f"C{i}", linewidth=2.2 if source == "clean" else 1.4)
        ax.set_title(f"{'marginal' if energy == 'E(x)' else 'joint'} energy {energy}")
        ax.set_xlabel(f"{energy} (lower = more likely under the model)")
        ax.set_ylabel("test points")
        ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return fig


def stats_table(rows: list[EnergyStats], title: str) -> Table:
    table = Table(title=title, title_justify="left", header_style="bold")
    for column in ("energy", "source", "median", *(f"q{round(q * 100):02d}" for q in QUANTILES if q != 0.5),
                   "moved", "median shift", "vs clean"):
        table.add_column(column, justify="left" if column in ("energy", "source", "vs clean") else "right")
    for row in rows:
        colour = {"lowers": "cyan", "raises": "magenta"}.get(row.direction, "")
        others = [f"{v:+.3f}" for q, v in row.quantiles.items() if q != 0.5]
        attacked = row.source != "clean"
        table.add_row(row.energy, row.source, f"{row.quantiles[0.5]:+.3f}", *others,
                      f"{row.moved:.0%}" if attacked else "", f"{row.median_shift:+.3f}" if attacked else "",
                      f"[{colour}]{row.direction}[/]" if colour else row.direction)
    return table


# ----- per-epoch traces of stored runs ------------------------------------------------------------


@dataclass
class RunTrace:
    """A run's per-epoch series (epoch numbers from 1), its CO epochs and the monitor's first alarm."""

    run_id: str
    label: str
    epochs: np.ndarray
    train_dE: np.ndarray
    val_dE: np.ndarray
    val_pgd: np.ndarray
    val_fgsm: np.ndarray
    co_epochs: list[int]
    alarm_epoch: float | None  # fractional epoch of the first CO alarm (e.g. 2.4), None if silent


def _series(history: list[dict], key: str) -> np.ndarray:
    return np.array([float(e.get(key, math.nan)) for e in history])


def load_traces(store: Store, run_ids: list[str]) -> list[RunTrace]:
    """The per-epoch metrics of ``run_ids`` as ``RunTrace``s (a run with no finished epoch is refused)."""
    traces = []
    for run_id in run_ids:
        record = store.get_run(run_id)
        history = store.epochs(run_id)
        if not history:
            raise EnergybenchError(f"run {run_id} has no finished epoch yet (status {record.status})")
        alarm = None
        first_alarm = next((e for e in history if e.get("monitor_alarm")), None)
        if first_alarm is not None and history[0].get("monitor_iters"):
            alarm = first_alarm["monitor_alarm_iter"] / history[0]["monitor_iters"]
        label = f"{run_id} {record.trainer}" + ("" if record.regularizer == "none" else f"+{record.regularizer}")
        traces.append(RunTrace(run_id, f"{label} eps {record.eps:g}", np.arange(1, len(history) + 1),
                               _series(history, "train_dE_mean"), _series(history, "val_dE_mean"),
                               _series(history, "val_pgd_acc"), _series(history, "val_fgsm_acc"),
                               [e["epoch"] + 1 for e in history if e.get("co")], alarm))
    return traces


def trace_figure(traces: list[RunTrace]) -> Figure:
    """dE (train solid, validation dashed) on the left axis, PGD and FGSM validation accuracy on the right.

    One colour per run; a red x marks each CO epoch on the PGD curve and a dotted vertical line the
    monitor's first alarm. ``fig.axes`` is ``[dE axis, accuracy axis]``.
    """
    fig = Figure(figsize=(11, 5), layout="tight")
    ax = fig.subplots()
    acc = ax.twinx()
    for i, t in enumerate(traces):
        colour = f"C{i}"
        ax.plot(t.epochs, t.train_dE, "-", color=colour, label=f"{t.label}: train dE")
        ax.plot(t.epochs, t.val_dE, "--", color=colour, label=f"{t.label}: val dE")
        acc.plot(t.epochs, t.val_pgd, ":o", color=colour, markersize=4, label=f"{t.label}: PGD acc")
        acc.plot(t.epochs, t.val_fgsm, "-.s", color=colour, markersize=3, alpha=0.7, label=f"{t.label}: FGSM acc")
        if t.co_epochs:
            acc.plot(t.co_epochs, t.val_pgd[np.array(t.co_epochs) - 1], "x", color="red", markersize=10,
                     markeredgewidth=2, label=f"{t.label}: CO")
        if t.alarm_epoch is not None:
            ax.axvline(t.alarm_epoch, color=colour, linestyle=":", linewidth=1.2, label=f"{t.label}: dE alarm")
    ax.axhline(0.0, color="grey", linewidth=0.6)
    ax.set_xlabel("epoch")
    ax.set_ylabel("dE = E(x) - E(x*)  (mean over points)")
    acc.set_ylabel("validation accuracy")
    acc.set_ylim(0, 1)
    handles = ax.get_legend_handles_labels()
    more = acc.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], fontsize="x-small", loc="upper left",
              bbox_to_anchor=(1.08, 1.0))
    ax.set_title("delta energy and robust accuracy per epoch")
    return fig


def sparkline(values: np.ndarray) -> str:
    """Values as unicode block heights between their own min and max (blank for NaN)."""
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return " " * len(values)
    low, high = float(finite.min()), float(finite.max())
    span = high - low
    return "".join(" " if not math.isfinite(v) else SPARKS[0 if span == 0 else
                   min(len(SPARKS) - 1, int((v - low) / span * len(SPARKS)))] for v in values)


def trace_table(traces: list[RunTrace]) -> Table:
    table = Table(title="per-epoch traces (each sparkline scaled to its own range: first -> last)",
                  title_justify="left", header_style="bold")
    for column in ("run", "train dE", "val dE", "val PGD", "val FGSM", "CO epochs", "dE alarm"):
        table.add_column(column)

    def cell(values: np.ndarray, fmt: str) -> str:
        return f"{sparkline(values)} {format(values[0], fmt)} -> {format(values[-1], fmt)}"

    for t in traces:
        table.add_row(t.label, cell(t.train_dE, "+.2f"), cell(t.val_dE, "+.2f"), cell(t.val_pgd, ".0%"),
                      cell(t.val_fgsm, ".0%"), ", ".join(map(str, t.co_epochs)) or "-",
                      "-" if t.alarm_epoch is None else f"epoch {t.alarm_epoch:.2f}")
    return table


def save_figure(figure: Figure, path: str | Path) -> Path:
    """Write a matplotlib figure as a PNG file, atomically (a path that cannot be written is one clear line)."""
    import io

    from energybench.storage.checkpoint import atomic_write

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    atomic_write(Path(path), buffer.getvalue())
    return Path(path)
