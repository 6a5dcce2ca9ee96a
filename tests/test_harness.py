"""The harness end to end on CPU-sized data: training, evaluation, storage, resume, failures."""

from __future__ import annotations

import json

import pytest
import torch

from energybench.config import EvalProtocol, load_catalogue, resolve_config
from energybench.contracts import registry as reg
from energybench.contracts.trainer import Trainer, TrainOutput
from energybench.data.augment import crop_flip, crop_flip_draws
from energybench.errors import EnergybenchError, PluginError
from energybench.evaluation.robustness import catastrophic_overfitting
from energybench.storage.checkpoint import load_checkpoint
from energybench.storage.store import Store
from energybench.training.progress import Reporter
from energybench.training.run import execute, prepare


def tiny_config(**overrides):
    catalogue = load_catalogue()
    settings = {"eval": {"aa_points": 20, "val_points": 60, "test_points": 60}} | overrides
    return prepare(resolve_config(catalogue, track="digits-tiny", overrides=settings), catalogue)


def test_a_run_trains_evaluates_and_stores_everything(tmp_path):
    store = Store(tmp_path)
    config = tiny_config(regularizer="der")
    run_id = execute(config, store)
    record = store.get_run(run_id)
    assert record.status == "done" and record.wall_time > 0 and record.config_hash == config.config_hash()
    epochs = store.epochs(run_id)
    assert [e["epoch"] for e in epochs] == [0, 1]
    for key in ("train_loss", "val_clean_acc", "val_fgsm_acc", "val_pgd_acc", "train_dE_mean", "train_dE_q50",
                "val_dE_mean", "val_dE_q95", "co"):
        assert key in epochs[-1], key
    results = store.results(run_id)
    assert set(results) == {"best", "last"}
    for metric in ("test_clean_acc", "test_pgd_acc", "aa_acc", "aa_apgd-ce_acc", "co", "passes_per_example"):
        assert metric in results["last"], metric
    last = results["last"]
    assert 0 <= last["aa_acc"] <= last["test_pgd_acc"] + 0.2 and last["test_clean_acc"] > 0.5
    assert last["passes_per_example"] == pytest.approx(2.0)  # FGSM+DER: DER reused the clean forward pass
    folder = store.run_dir(run_id)
    assert json.loads((folder / "config.json").read_text())["regularizer_params"]["form"] == "hinge"
    for name in ("best.pt", "last.pt", "state.pt"):
        assert load_checkpoint(folder / name)
    assert len((folder / "metrics.jsonl").read_text().splitlines()) == 2


def test_the_cost_counts_the_forward_passes_a_regularizer_makes(tmp_path):
    store = Store(tmp_path)
    run_id = execute(tiny_config(regularizer="gradalign", epochs=1, eval={"aa_points": 0, "val_points": 20,
                                                                          "test_points": 20}), store)
    # FGSM's two passes plus GradAlign's gradients at x and at x + eta: two forward calls of its own
    assert store.results(run_id)["last"]["passes_per_example"] == pytest.approx(4.0)


class _Alerts(Reporter):
    def __init__(self):
        self.alerts = []

    def alert(self, text):
        self.alerts.append(text)


@pytest.mark.parametrize("regularizer", ["der", "gradalign"])
def test_a_run_says_when_its_regularizer_blinds_the_co_monitor(tmp_path, regularizer):
    reporter = _Alerts()
    execute(tiny_config(regularizer=regularizer, epochs=1, eval={"aa_points": 0, "val_points": 20, "test_points": 20}),
            Store(tmp_path), reporter=reporter)
    blind = [a for a in reporter.alerts if "the CO monitor watches dE" in a]
    assert len(blind) == (regularizer == "der"), reporter.alerts


def test_keep_epochs_keeps_every_epochs_weights(tmp_path):
    store = Store(tmp_path)
    config = tiny_config(keep_epochs=True, eval={"aa_points": 0, "val_points": 20, "test_points": 20})
    assert config.config_hash() != config.model_copy(update={"keep_epochs": False}).config_hash()
    run_id = execute(config, store)
    folder = store.run_dir(run_id)
    assert sorted(p.name for p in folder.glob("epoch-*.pt")) == ["epoch-0.pt", "epoch-1.pt"]
    last = load_checkpoint(folder / "last.pt")
    assert all(torch.equal(last[k], v) for k, v in load_checkpoint(folder / "epoch-1.pt").items())


class _StopAfterFirstEpoch(Reporter):
    def epoch_done(self, epoch, metrics):
        raise KeyboardInterrupt


def test_resume_after_interruption_matches_an_uninterrupted_run(tmp_path):
    store = Store(tmp_path)
    config = tiny_config(trainer="rs-fgsm")  # random init: RNG state must be restored too
    reference = store.results(execute(config, store))
    with pytest.raises(KeyboardInterrupt):
        execute(config, store, reporter=_StopAfterFirstEpoch())
    interrupted = [r for r in store.runs(status="interrupted")]
    assert len(interrupted) == 1 and interrupted[0].epochs_done == 1
    run_id = execute(config, store, resume=interrupted[0].id)
    assert run_id == interrupted[0].id and store.get_run(run_id).status == "done"
    resumed = store.results(run_id)
    for tag in ("best", "last"):
        for metric in ("test_clean_acc", "test_pgd_acc", "aa_acc", "test_dE_mean"):
            assert resumed[tag][metric] == reference[tag][metric], (tag, metric)


class _NaNAfterSomeSteps(Trainer):
    adversarial = False
    calls = 0

    def step(self, model, x, y, *, keep_clean_logits):
        type(self).calls += 1
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        return TrainOutput(loss=loss * float("nan") if type(self).calls > 25 else loss, logits=logits)


class _Raising(Trainer):
    adversarial = False

    def step(self, model, x, y, *, keep_clean_logits):
        raise ValueError("wrong shapes")


@pytest.fixture
def runtime_registry(monkeypatch):
    monkeypatch.setattr(reg, "_REGISTRY", reg.Registry())
    return reg.get_registry()


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, runtime_registry):
    runtime_registry.register("trainer", "nan-later", _NaNAfterSomeSteps)
    store = Store(tmp_path)
    with pytest.raises(EnergybenchError, match="training loss became nan in epoch 2"):
        execute(tiny_config(trainer="nan-later"), store)
    record = store.runs(status="failed")[0]
    assert "nan" in record.error
    state = load_checkpoint(store.run_dir(record.id) / "last.pt")
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_a_raising_plugin_fails_its_run_with_its_name(tmp_path, runtime_registry):
    runtime_registry.register("trainer", "raising", _Raising)
    store = Store(tmp_path)
    with pytest.raises(PluginError, match="trainer 'raising' failed: ValueError: wrong shapes"):
        execute(tiny_config(trainer="raising"), store)
    assert store.runs(status="failed")[0].error.startswith("trainer 'raising' failed")


def test_batch_size_larger_than_the_dataset_is_refused(tmp_path):
    with pytest.raises(EnergybenchError, match="batch_size=5000 is larger than the training set"):
        execute(tiny_config(batch_size=5000), Store(tmp_path))


def _co(*epochs: tuple[float, float], **protocol) -> list[bool]:
    """CO flags of epochs given as (FGSM, PGD) validation accuracy."""
    history = [{"val_fgsm_acc": fgsm, "val_pgd_acc": pgd} for fgsm, pgd in epochs]
    return catastrophic_overfitting(history, EvalProtocol(**protocol))


def test_catastrophic_overfitting_gap_clause_and_its_boundaries():
    assert _co((0.70, 0.07)) == [True]
    assert _co((0.75, 0.65)) == [False]  # healthy adversarial training
    assert _co((0.05, 0.00)) == [False]  # standard training: FGSM does not beat PGD by the gap
    # boundaries, with binary fractions so that the differences are exact
    assert _co((0.5, 0.25), co_gap=0.25, co_ratio=0.625) == [True]  # gap exactly co_gap counts
    assert _co((0.5, 0.25), co_gap=0.2501, co_ratio=0.625) == [False]
    assert _co((0.875, 0.4375)) == [False]  # gap 0.44 but PGD exactly half of FGSM: the ratio clause fails
    assert _co((0.875, 0.4374)) == [True]


def test_catastrophic_overfitting_drop_clause_catches_a_collapse_at_low_fgsm_accuracy():
    # large eps: FGSM accuracy itself is low, so the 0.3 gap can never be reached, but PGD collapsed
    assert _co((0.30, 0.12), (0.25, 0.02)) == [False, True]
    assert _co((0.25, 0.02)) == [False]  # no earlier epoch: nothing to drop from
    assert _co((0.25, 0.125), (0.25, 0.0625)) == [False, False]  # exactly half the best earlier PGD: not below
    assert _co((0.25, 0.125), (0.25, 0.0624)) == [False, True]
    assert _co((0.30, 0.12), (0.03, 0.02)) == [False, False]  # FGSM fell as far (divergence, not CO)
    assert _co((0.30, 0.12), (0.30, 0.06), (0.25, 0.05)) == [False, False, True]  # best earlier, not previous


def test_catastrophic_overfitting_thresholds_are_settings():
    assert _co((0.50, 0.24), co_gap=0.2) == [True]
    assert _co((0.50, 0.24), co_gap=0.2, co_ratio=0.4) == [False]
    assert _co((0.50, 0.24)) == [False]
    assert _co((0.30, 0.12), (0.25, 0.05), co_drop=0.3) == [False, False]
    assert _co((0.30, 0.12), (0.25, 0.03), co_drop=0.3) == [False, True]


def test_crop_flip_keeps_shape_and_content():
    x = torch.rand(16, 3, 32, 32)
    out = crop_flip(x, crop_flip_draws(16, torch.Generator().manual_seed(0)))
    assert out.shape == x.shape
    assert not torch.equal(out, x)
    same = crop_flip(x, crop_flip_draws(16, torch.Generator().manual_seed(0)))
    assert torch.equal(out, same)
