"""`energybench report`: one self-contained HTML page about a suite or some runs, to share.

The page holds the leaderboard of the runs (with matching published references), and for each
run its dE traces with validation FGSM/PGD accuracy (``energybench.reporting.energy_figures``), the
distributions of its test-set energies (from the stored quantiles; per-point histograms under
attacks come from ``energybench energy histograms``), its generative results and sample grids
when ``energybench sample`` made some, and its exact config; then the environment that wrote the
page. Figures are PNGs embedded as base64 data URIs, so the file can be mailed or attached as it
is; nothing is fetched when it is opened.
"""

from __future__ import annotations

import base64
import io
import json
import os
import platform
import sys
import time
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from energybench.config import Catalogue, format_eps
from energybench.errors import EnergybenchError
from energybench.ops.energy import QUANTILES
from energybench.reporting.energy_figures import load_traces, trace_figure
from energybench.reporting.formats import Leaderboard, build_leaderboard, template_context
from energybench.reporting.generative_leaderboard import sized_label
from energybench.reporting.templating import render
from energybench.storage.checkpoint import atomic_write
from energybench.storage.store import GenerativeRecord, RunRecord, Store

PACKAGES = ("energybench", "torch", "torchvision", "pyautoattack", "robustbench", "torch-fidelity", "numpy",
            "matplotlib", "rich", "pydantic")

# ----- selection --------------------------------------------------------------------------------

def select_runs(store: Store, catalogue: Catalogue, refs: Sequence[str]) -> list[RunRecord]:
    """The runs named by ``refs``: suite names (every run stored for that suite) and run ids, in order."""
    if not refs:
        raise EnergybenchError("name a suite or at least one run id (see `energybench leaderboard`)")
    chosen: dict[str, RunRecord] = {}
    for ref in refs:
        suite_runs = store.runs(status=None, suite=ref)
        if suite_runs:
            chosen.update((r.id, r) for r in suite_runs)
        elif ref in catalogue.suites:
            raise EnergybenchError(f"suite {ref!r} has no stored runs yet; start it with `energybench suite {ref}`")
        else:
            chosen[ref] = store.get_run(ref)
    return list(chosen.values())


# ----- figures ----------------------------------------------------------------------------------

def _png_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def png_data_uri(fig: Figure) -> str:
    """``fig`` as an embeddable ``data:image/png;base64,...`` URI."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return _png_uri(buffer.getvalue())


def energy_figure(results: dict[str, float], title: str) -> Figure | None:
    """Test-set distributions of E(x), E(x*) and dE from the stored quantiles (box: 25-75 %, whiskers: 5-95 %)."""
    series = [(key, label) for key, label in (("test_energy", "E(x) clean"), ("test_energy_adv", "E(x*) PGD"),
                                               ("test_dE", "dE"), ("test_dE_joint", "dE joint"))
              if all(f"{key}_q{round(q * 100):02d}" in results for q in QUANTILES)]
    if not series:
        return None
    stats = []
    for key, label in series:
        q = [results[f"{key}_q{round(p * 100):02d}"] for p in QUANTILES]
        stats.append({"label": label, "whislo": q[0], "q1": q[1], "med": q[2], "q3": q[3], "whishi": q[4],
                      "mean": results.get(f"{key}_mean", q[2]), "fliers": []})
    fig = Figure(figsize=(6.4, 0.7 + 0.55 * len(stats)))
    ax = fig.add_subplot()
    ax.bxp(stats, orientation="horizontal", showmeans=True, patch_artist=True,
           boxprops={"facecolor": "#dde8f5"}, meanprops={"marker": "D", "markersize": 4})
    ax.axvline(0, color="grey", linewidth=0.5)
    ax.set_xlabel("energy (logit units)")
    ax.set_title(title, fontsize="medium")
    return fig


# ----- page -------------------------------------------------------------------------------------

def environment() -> dict[str, str]:
    """Versions of the packages that produce the numbers, Python, platform and compute device."""
    import torch

    env = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in PACKAGES:
        try:
            env[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            env[name] = "not installed"
    if torch.cuda.is_available():
        env["device"] = f"CUDA: {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    else:
        env["device"] = f"CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    env["torch threads"] = str(torch.get_num_threads())
    return env


def _figure(fig: Figure | None, caption: str) -> dict[str, str] | None:
    return None if fig is None else {"uri": png_data_uri(fig), "caption": caption}


def _file_figure(path: Path, caption: str) -> dict[str, str]:
    return {"uri": _png_uri(path.read_bytes()), "caption": caption}


def _generative(records: list[GenerativeRecord]) -> tuple[list[dict], list[dict[str, str]]]:
    """The run's generative results, one table per sample size n (metrics labelled ``FID@n[...]``), and grids."""
    tables, grids = [], []
    for n in sorted({r.n for r in records}):
        group = [r for r in records if r.n == n]
        keys = sorted({k for r in group for k in r.metrics})
        rows = []
        for r in group:
            rows.append([r.sampler, *(f"{r.metrics[k]:.3f}" if k in r.metrics else "-" for k in keys),
                         f"{r.steps_mean:.1f}", f"{r.wall_time:.1f}s"])
            grid = Path(r.out_dir) / f"{r.sampler}.png" if r.out_dir else None
            if grid is not None and grid.is_file():
                grids.append(_file_figure(grid, f"{r.sampler} samples ({r.id}), one row per class"))
        tables.append({"headers": ["sampler", *(sized_label(k, n) for k in keys), "steps", "time"], "rows": rows})
    return tables, grids


def _run_section(store: Store, run: RunRecord, generative: list[GenerativeRecord]) -> dict[str, Any]:
    """What the report shows of one run (template report.html)."""
    facts = f"status {run.status}, {run.epochs_done} epochs"
    if run.wall_time is not None:
        facts += f", {run.wall_time:.0f}s"
    if run.error:
        facts += f", error: {run.error}"
    results = store.results(run.id).get("last", {})
    figures = [
        _figure(trace_figure(load_traces(store, [run.id])) if store.epochs(run.id) else None,
                "Mean dE = E(x) - E(x*) per epoch (train: the trainer's adversarial examples; val: PGD) "
                "with validation PGD and FGSM accuracy; a red x marks an epoch with the "
                "catastrophic-overfitting signature."),
        _figure(energy_figure(results, f"run {run.id}: test-set energies (last checkpoint)"),
                "Test-set distributions of the clean energy E(x), the PGD energy E(x*) and dE "
                "(box 25-75 %, whiskers 5-95 %, line median, diamond mean)."),
    ]
    tables, grids = _generative([g for g in generative if g.model_ref == run.id])
    return {"id": run.id,
            "title": (f"{run.trainer} + {run.regularizer} on {run.dataset} ({run.model}), {run.norm} eps "
                      f"{format_eps(run.eps)}, seed {run.seed}"),
            "facts": facts, "figures": [f for f in figures if f], "generative": tables, "grids": grids,
            "config": json.dumps(run.config, indent=2, sort_keys=True)}


def build_report(store: Store, catalogue: Catalogue, refs: Sequence[str], *, title: str | None = None) -> str:
    """The HTML page for the suites and/or run ids ``refs``."""
    runs = select_runs(store, catalogue, refs)
    title = title or f"energybench report: {', '.join(refs)}"
    board: Leaderboard = build_leaderboard(store, catalogue, run_ids={r.id for r in runs}, title="Leaderboard")
    generative = store.generative()
    return render("report.html", title=title, written=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                  board=template_context(board), runs=[_run_section(store, run, generative) for run in runs],
                  environment=environment())


def write_report(store: Store, catalogue: Catalogue, refs: Sequence[str], path: str | Path, *,
                 title: str | None = None) -> Path:
    """Write ``build_report(...)`` to ``path`` atomically; return the path."""
    path = Path(path)
    atomic_write(path, build_report(store, catalogue, refs, title=title).encode())
    return path
