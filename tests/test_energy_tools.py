"""Energy views (histograms under attacks, dE traces), their CLI, and attack-free checkpoint selection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datafiles import tiny_config

from energybench.cli import main
from energybench.config import RunConfig
from energybench.errors import EnergybenchError
from energybench.evaluation.selection import select_epoch
from energybench.ops.energy import joint_energy, marginal_energy
from energybench.reporting.energy_figures import (
    ENERGIES,
    AttackEnergies,
    HistogramRequest,
    energy_stats,
    histogram_figure,
    load_traces,
    model_histograms,
    sparkline,
    trace_figure,
    trace_table,
)
from energybench.storage.store import Store
from energybench.training.run import execute


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One digits-tiny run (2 epochs), stored once for the whole module."""
    home = tmp_path_factory.mktemp("store")
    config = tiny_config(eval={"aa_points": 0, "val_points": 60, "test_points": 60})
    store = Store(home)
    return home, execute(config, store)


def fake_run(store: Store, history: list[dict]) -> str:
    config = RunConfig(dataset="digits", trainer="fgsm", eps=0.3)
    run_id = store.create_run(config.model_dump(), config.config_hash())
    for epoch, metrics in enumerate(history):
        store.add_epoch(run_id, epoch, metrics)
    return run_id


def epoch_metrics(train_dE, val_dE, pgd, fgsm, co=False, alarm=-1.0):
    return {"train_dE_mean": train_dE, "val_dE_mean": val_dE, "val_pgd_acc": pgd, "val_fgsm_acc": fgsm, "co": co,
            "monitor_alarm": float(alarm >= 0), "monitor_alarm_iter": alarm, "monitor_iters": 100.0}


# ----- traces -------------------------------------------------------------------------------------


def test_trace_figure_plots_the_stored_series_on_two_axes(tmp_path):
    store = Store(tmp_path)
    healthy = fake_run(store, [epoch_metrics(-0.1, -0.2, 0.4, 0.45), epoch_metrics(-0.5, -0.6, 0.5, 0.55)])
    collapsed = fake_run(store, [epoch_metrics(-0.05, -0.1, 0.3, 0.4),
                                 epoch_metrics(0.6, 0.5, 0.05, 0.7, co=True, alarm=150.0),
                                 epoch_metrics(0.7, 0.6, 0.02, 0.8, co=True)])
    traces = load_traces(store, [healthy, collapsed])
    assert traces[1].co_epochs == [2, 3] and traces[1].alarm_epoch == pytest.approx(1.5)
    assert traces[0].alarm_epoch is None
    fig = trace_figure(traces)
    de_axis, acc_axis = fig.axes
    lines = {line.get_label(): line for line in de_axis.get_lines() + acc_axis.get_lines()}
    label = traces[1].label
    np.testing.assert_allclose(lines[f"{label}: train dE"].get_ydata(), [-0.05, 0.6, 0.7])
    np.testing.assert_allclose(lines[f"{label}: val dE"].get_ydata(), [-0.1, 0.5, 0.6])
    np.testing.assert_allclose(lines[f"{label}: PGD acc"].get_ydata(), [0.3, 0.05, 0.02])
    np.testing.assert_allclose(lines[f"{label}: FGSM acc"].get_ydata(), [0.4, 0.7, 0.8])
    np.testing.assert_allclose(lines[f"{label}: CO"].get_xdata(), [2, 3])
    np.testing.assert_allclose(lines[f"{label}: dE alarm"].get_xdata(), [1.5, 1.5])
    np.testing.assert_allclose(lines[f"{traces[0].label}: PGD acc"].get_xdata(), [1, 2])
    assert f"{traces[0].label}: dE alarm" not in lines
    assert acc_axis.get_ylim() == (0, 1) and "dE" in de_axis.get_ylabel()


def test_trace_of_a_run_without_epochs_is_refused(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(EnergybenchError, match="no finished epoch"):
        load_traces(store, [fake_run(store, [])])


def test_sparkline_spans_its_own_range():
    assert sparkline(np.array([0.0, 0.5, 1.0])) == "▁▅█"
    assert sparkline(np.array([2.0, 2.0])) == "▁▁"
    assert sparkline(np.array([np.nan, 1.0])) == " ▁"


def test_energy_trace_command_writes_the_figure_and_sparklines(tiny_run, tmp_path, capsys):
    home, run_id = tiny_run
    out = tmp_path / "trace.png"
    assert main(["energy", "trace", run_id, "--out", str(out), "--store", str(home)]) == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert run_id in printed and any(c in printed for c in "▁▂▃▄▅▆▇█")
    traces = load_traces(Store(home), [run_id])
    assert len(traces[0].epochs) == 2 and np.isfinite(traces[0].train_dE).all()
    assert trace_table(traces).row_count == 1


# ----- histograms ---------------------------------------------------------------------------------


def test_histograms_hold_the_energies_of_clean_and_attacked_points(tiny_run):
    home, run_id = tiny_run
    store = Store(home)
    data, title = model_histograms(HistogramRequest(ref=run_id, attacks=["fgsm", "pgd"], n=40, device="cpu"), store)
    assert data.sources == ["clean", "fgsm", "pgd"] and "eps 0.1" in title
    for energy in ENERGIES:
        assert all(v.shape == (40,) for v in data.values[energy].values())
    # the clean energies are those of the stored model on the first 40 test points
    from energybench.data.datasets import load_dataset
    from energybench.evaluation.robustness import as_float
    from energybench.storage.trained import load_trained

    model = load_trained(run_id, store).model
    test = load_dataset("digits", val_size=1).test
    with torch.no_grad():
        logits = model(as_float(test.x[:40], torch.device("cpu")))
    np.testing.assert_allclose(data.values["E(x)"]["clean"], marginal_energy(logits).numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(data.values["E(x,y)"]["clean"], joint_energy(logits, test.y[:40]).numpy(),
                               rtol=1e-5, atol=1e-5)
    # PGD maximises the loss E(x,y) - E(x): the joint energy of the true class rises
    assert np.median(data.values["E(x,y)"]["pgd"] - data.values["E(x,y)"]["clean"]) > 0


def test_histogram_figure_and_summary_match_the_data():
    rng = np.random.default_rng(0)
    data = AttackEnergies()
    clean = rng.normal(-5, 1, 200)
    half_moved = np.where(np.arange(200) % 2 == 0, clean, clean + 1.0)  # AutoAttack skips misclassified points
    for energy in ENERGIES:
        data.values[energy] = {"clean": clean, "pgd": clean - 1.0, "apgd-t": clean + 2.0, "square": half_moved}
    fig = histogram_figure(data, bins=20)
    assert len(fig.axes) == len(ENERGIES)
    assert [ax.get_title() for ax in fig.axes] == ["marginal energy E(x)", "joint energy E(x,y)"]
    for ax, energy in zip(fig.axes, ENERGIES):
        assert ax.get_legend_handles_labels()[1] == ["clean", "pgd", "apgd-t", "square"]
        edges = np.histogram_bin_edges(np.concatenate(list(data.values[energy].values())), bins=20)
        for patch, values in zip(ax.patches, data.values[energy].values()):
            counts, patch_edges = patch.get_data()[:2]
            np.testing.assert_array_equal(counts, np.histogram(values, bins=edges)[0])
            np.testing.assert_allclose(patch_edges, edges)
    rows = {(r.energy, r.source): r for r in energy_stats(data)}
    assert rows[("E(x)", "pgd")].direction == "lowers" and rows[("E(x)", "pgd")].median_shift == pytest.approx(-1)
    assert rows[("E(x,y)", "apgd-t")].direction == "raises" and rows[("E(x,y)", "apgd-t")].moved == 1.0
    assert rows[("E(x)", "square")].moved == 0.5 and rows[("E(x)", "square")].median_shift == pytest.approx(1.0)
    assert rows[("E(x)", "clean")].quantiles[0.5] == pytest.approx(np.median(clean))


def test_energy_histograms_command(tiny_run, tmp_path, capsys):
    home, run_id = tiny_run
    out = tmp_path / "hist.png"
    code = main(["energy", "histograms", run_id, "--attacks", "fgsm,pgd", "-n", "30", "--out", str(out),
                 "--store", str(home), "--device", "cpu"])
    assert code == 0 and out.read_bytes()[:4] == b"\x89PNG"
    printed = capsys.readouterr().out
    assert "E(x,y)" in printed and "pgd" in printed and ("lowers" in printed or "raises" in printed)


@pytest.mark.parametrize("args, message", [
    (["--attacks", "fgsm,nope"], "unknown attack 'nope'"),
    (["--eps", "abc"], "is not a number"),
])
def test_energy_histograms_bad_input_is_one_line(tiny_run, capsys, args, message):
    home, run_id = tiny_run
    assert main(["energy", "histograms", run_id, "--store", str(home), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_a_checkpoint_outside_the_store_needs_eps(tiny_run, capsys):
    home, run_id = tiny_run
    path = Store(home).run_dir(run_id) / "best.pt"
    with pytest.raises(EnergybenchError, match="give eps="):
        model_histograms(HistogramRequest(ref=str(path), attacks=["fgsm"], n=10), Store(home))


def test_robustbench_names_fail_offline_with_one_line(tmp_path, capsys):
    code = main(["energy", "histograms", "robustbench:Wong2020Fast", "--eps", "8/255",
                 "--store", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "Wong2020Fast" in err


# ----- attack-free checkpoint selection -----------------------------------------------------------


def test_select_epoch_criteria():
    history = [{"val_pgd_acc": 0.30, "monitor_alarm": 0.0}, {"val_pgd_acc": 0.50, "monitor_alarm": 0.0},
               {"val_pgd_acc": 0.50, "monitor_alarm": 1.0}, {"val_pgd_acc": 0.05, "monitor_alarm": 0.0}]
    assert select_epoch(history, "val-pgd") == 1  # ties: the earliest
    assert select_epoch(history, "last") == 3
    assert select_epoch(history, "dE") == 1  # the epoch before the first alarm
    assert select_epoch([h | {"monitor_alarm": 0.0} for h in history], "dE") == 3  # never fired: the last
    assert select_epoch([{"val_pgd_acc": 0.1, "monitor_alarm": 1.0}], "dE") == 0
    with pytest.raises(EnergybenchError, match="unknown selection criterion 'pgd'"):
        select_epoch(history, "pgd")
    with pytest.raises(EnergybenchError, match="needs the CO monitor"):
        select_epoch([{"val_pgd_acc": 0.3}], "dE")


def test_energy_select_command(tiny_run, capsys):
    home, run_id = tiny_run
    assert main(["energy", "select", run_id, "--store", str(home)]) == 0
    printed = capsys.readouterr().out
    assert run_id in printed and "val-pgd" in printed and "dE" in printed
