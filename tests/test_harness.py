"""The harness end to end on CPU-sized data: training, evaluation, storage, resume, failures."""

from __future__ import annotations

import copy
import json

import datafiles
import numpy as np
import pytest
import torch
from datafiles import SMALL_EVAL, batchnorm_buffers, same_tensors

from energybench.config import EvalProtocol
from energybench.contracts import registry as reg
from energybench.contracts.callback import Callback
from energybench.contracts.regularizer import Regularizer, forward_calls
from energybench.contracts.trainer import Trainer, TrainOutput
from energybench.data.augment import crop_flip, crop_flip_draws
from energybench.errors import EnergybenchError, PluginError
from energybench.evaluation.robustness import catastrophic_overfitting
from energybench.storage.checkpoint import load_checkpoint
from energybench.storage.store import Store
from energybench.training.progress import Reporter
from energybench.training.run import execute
from energybench.training.step import TrainingStep


def tiny_config(**overrides):
    """digits-tiny (``datafiles.tiny_config``), by default evaluated on 40 points without AutoAttack."""
    return datafiles.tiny_config(**({"eval": {"aa_points": 0, "val_points": 40, "test_points": 40}} | overrides))


def test_a_run_trains_evaluates_and_stores_everything(tmp_path):
    store = Store(tmp_path)
    config = tiny_config(regularizer="der", n_train=1024, eval={"aa_points": 2, "val_points": 60, "test_points": 60})
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
    for metric in ("test_clean_acc", "test_pgd_acc", "test_aa_acc", "test_aa_apgd-ce_acc", "co", "passes_per_example"):
        assert metric in results["last"], metric
    last = results["last"]
    assert 0 <= last["test_aa_acc"] <= last["test_pgd_acc"] + 0.2 and last["test_clean_acc"] > 0.5
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


class _Killed(BaseException):
    """Stands for the process dying: the run's record is not updated (it stays 'running')."""


class _KilledAtBatch(Reporter):
    """Dies after training batch ``at`` of the first epoch, before any epoch completed."""

    def __init__(self, at: int):
        self.at, self.batches = at, 0

    def batch_done(self):
        self.batches += 1
        if self.batches == self.at:
            raise _Killed


def test_resume_after_interruption_or_an_early_kill_matches_an_uninterrupted_run(tmp_path):
    store = Store(tmp_path)
    config = tiny_config(trainer="rs-fgsm", n_train=512,  # random init: RNG state must be restored too
                         eval={"aa_points": 2, "val_points": 40, "test_points": 40})
    reference = store.results(execute(config, store))
    with pytest.raises(KeyboardInterrupt):
        execute(config, store, reporter=_StopAfterFirstEpoch())
    interrupted = [r for r in store.runs(status="interrupted")]
    assert len(interrupted) == 1 and interrupted[0].epochs_done == 1
    with pytest.raises(_Killed):
        execute(config, store, reporter=_KilledAtBatch(3))
    (killed,) = store.runs(status="running")
    assert killed.epochs_done == 0 and not (store.run_dir(killed.id) / "state.pt").exists()
    for run in (interrupted[0], killed):
        run_id = execute(config, store, resume=run.id)
        assert run_id == run.id and store.get_run(run_id).status == "done"
        assert [e["epoch"] for e in store.epochs(run_id)] == [0, 1]  # no epoch stored twice
        resumed = store.results(run_id)
        for tag in ("best", "last"):
            for metric in ("test_clean_acc", "test_pgd_acc", "test_aa_acc", "test_dE_mean", "passes_per_example"):
                assert resumed[tag][metric] == reference[tag][metric], (run.status, tag, metric)


class _NaNAfterSomeSteps(Trainer):
    adversarial = False
    def step(self, model, x, y, *, keep_clean_logits):
        self.calls = getattr(self, "calls", 0) + 1  # per instance (per run): no count carries over between tests
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        return TrainOutput(loss=loss * float("nan") if self.calls > 25 else loss, logits=logits)


class _Raising(Trainer):
    adversarial = False

    def step(self, model, x, y, *, keep_clean_logits):
        raise ValueError("wrong shapes")


@pytest.fixture
def runtime_registry(scoped_registry):
    return reg.get_registry()


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, runtime_registry):
    runtime_registry.register("trainer", "nan-later", _NaNAfterSomeSteps)
    store = Store(tmp_path)
    with pytest.raises(EnergybenchError, match="training loss became nan in epoch 2"):
        execute(tiny_config(trainer="nan-later"), store)
    record = store.runs(status="diverged")[0]  # an outcome of the method, not a fault: suites do not retry it
    assert "nan" in record.error
    state = load_checkpoint(store.run_dir(record.id) / "last.pt")
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())


def test_a_raising_plugin_fails_its_run_with_its_name(tmp_path, runtime_registry):
    runtime_registry.register("trainer", "raising", _Raising)
    store = Store(tmp_path)
    with pytest.raises(PluginError, match="trainer 'raising' failed: ValueError: wrong shapes"):
        execute(tiny_config(trainer="raising"), store)
    assert store.runs(status="failed")[0].error.startswith("trainer 'raising' failed")


def test_the_stored_co_flags_are_the_rule_over_the_stored_history(tmp_path):
    """The loop flags each epoch from its own running best, not by reading its history back: the same flags."""
    store = Store(tmp_path)
    config = tiny_config(epochs=3, eval=SMALL_EVAL | {"co_gap": 0.0, "co_ratio": 1.0, "co_drop": 1.0,
                                                      "co_drop_min": 0.0, "co_drop_alpha": 1.0})
    history = store.epochs(execute(config, store))
    assert [e["co"] for e in history] == catastrophic_overfitting(history, config.eval, n=config.eval.val_points)


def test_batch_size_larger_than_the_dataset_is_refused(tmp_path):
    with pytest.raises(EnergybenchError, match="batch_size=5000 is larger than the training set"):
        execute(tiny_config(batch_size=5000), Store(tmp_path))


def _co(*epochs: tuple[float, float], n: int = 1000, **protocol) -> list[bool]:
    """CO flags of epochs given as (FGSM, PGD) validation accuracy on ``n`` validation points."""
    history = [{"val_fgsm_acc": fgsm, "val_pgd_acc": pgd} for fgsm, pgd in epochs]
    return catastrophic_overfitting(history, EvalProtocol(**protocol), n)


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


def test_catastrophic_overfitting_drop_clause_needs_a_real_fall_not_noise():
    # a floor: PGD accuracy must fall by at least co_drop_min (5 points), however significant a smaller fall is ...
    assert _co((0.30, 0.04), (0.30, 0.01), n=10000) == [False, False]
    assert _co((0.30, 0.04), (0.30, 0.01), n=10000, co_drop_min=0.02) == [False, True]
    # ... and FGSM must stay that far above PGD: here both sink together, as in standard training (a real fall)
    assert _co((0.09, 0.06), (0.03, 0.00), n=10000) == [False, False]
    assert _co((0.09, 0.06), (0.03, 0.00), n=10000, co_drop_min=0.0) == [False, True]
    # counted in points of the n validation points: 5 points exactly count, whatever the float rounding
    assert _co((0.30, 0.12), (0.12, 0.07), n=100, co_drop_alpha=1.0) == [False, False]  # 0.07 is not below 0.06
    assert _co((0.30, 0.16), (0.25, 0.11), n=100, co_drop_alpha=1.0, co_drop=0.7) == [False, True]  # fall of 5
    lenient = {"n": 100, "co_drop_alpha": 1.0, "co_drop": 0.7, "co_ratio": 1.0}
    assert _co((0.30, 0.16), (0.16, 0.11), **lenient) == [False, True]  # FGSM 5 points above PGD
    assert _co((0.30, 0.16), (0.15, 0.11), **lenient) == [False, False]  # 4
    # a test: on 100 points, 12 -> 2 correct is a significant fall (one-sided Fisher p = 0.005) ...
    assert _co((0.30, 0.12), (0.25, 0.02), n=100) == [False, True]
    # ... 12 -> 5 is not, nor is 12 -> 2 when 12 is the best of 11 earlier epochs (p x 11 = 0.056; x 3 is 0.015)
    assert _co((0.30, 0.12), (0.25, 0.05), n=100) == [False, False]
    assert _co((0.30, 0.12), (0.30, 0.10), (0.30, 0.11), (0.25, 0.02), n=100) == [False] * 3 + [True]
    history = [(0.30, 0.12)] + [(0.30, 0.10)] * 10 + [(0.25, 0.02)]
    assert _co(*history, n=100)[-1] is False
    assert _co(*history, n=100, co_drop_alpha=1.0)[-1] is True  # without the test


def test_catastrophic_overfitting_rarely_flags_a_model_that_does_not_change():
    """A stationary model measured on 500 validation points (PGD 1% / FGSM 3% over 3 epochs, PGD 2% / FGSM 5% over
    3 and 10 epochs) or on 100 (PGD 10% / FGSM 25% over 6 epochs): binomial noise alone. The earlier rule (no floor,
    no test: co_drop_min 0, co_drop_alpha 1) flagged about 27%, 14%, 70% and 40% of such runs."""
    rng = np.random.default_rng(0)
    for n, pgd, fgsm, epochs, limit in ((500, 0.01, 0.03, 3, 0.0), (500, 0.02, 0.05, 3, 0.01),
                                        (500, 0.02, 0.05, 10, 0.01), (100, 0.10, 0.25, 6, 0.16)):
        runs = [list(zip(rng.binomial(n, fgsm, epochs) / n, rng.binomial(n, pgd, epochs) / n)) for _ in range(400)]
        rate = np.mean([any(_co(*run, n=n)) for run in runs])
        assert rate <= limit, (n, pgd, fgsm, rate)
        earlier_rule = np.mean([any(_co(*run, n=n, co_drop_min=0.0, co_drop_alpha=1.0)) for run in runs])
        assert earlier_rule > 0.1  # the noise the earlier rule flagged is there


def test_standard_training_never_robust_is_never_flagged_and_keeps_its_config_hash(tmp_path):
    """Standard training on digits-tiny (its protocol: 100 validation points) at eps 0.3, 4 epochs: validation PGD
    accuracy stays within a few points of 0; the earlier rule flagged seeds 1, 2, 5 and 7 as collapsing."""
    store = Store(tmp_path)
    protocol = {"val_points": 100, "val_pgd_steps": 5, "batch_size": 100, "aa_points": 0, "test": False}
    for seed in range(8):
        run_id = execute(datafiles.tiny_config(trainer="standard", eps=0.3, epochs=4, seed=seed, eval=protocol), store)
        epochs = store.epochs(run_id)
        assert max(e["val_pgd_acc"] for e in epochs) <= 0.1  # never robust
        assert not any(e["co"] for e in epochs), (seed, [(e["val_fgsm_acc"], e["val_pgd_acc"]) for e in epochs])
    # the new settings enter the config hash only when they differ from their defaults: stored runs keep theirs
    config = tiny_config()
    assert config.config_hash() == config.model_copy(update={"eval": config.eval.model_copy(
        update={"co_drop_min": 0.05, "co_drop_alpha": 0.05})}).config_hash()
    assert config.config_hash() != tiny_config(eval={"co_drop_min": 0.0}).config_hash()
    assert config.config_hash() != tiny_config(eval={"co_drop_alpha": 1.0}).config_hash()


def test_catastrophic_overfitting_custom_thresholds_at_their_boundaries():
    # binary fractions: every product and difference below is exact
    assert _co((0.5, 0.125), co_ratio=0.25) == [False]  # PGD exactly co_ratio * FGSM: not below
    assert _co((0.5, 0.1249), co_ratio=0.25) == [True]
    assert _co((0.75, 0.25), co_gap=0.5) == [True]  # gap exactly co_gap counts
    assert _co((0.75, 0.2501), co_gap=0.5) == [False]
    # drop clause alone (gap unreachable at co_gap=1): PGD exactly co_drop times the best earlier is not below
    assert _co((0.5, 0.25), (0.5, 0.0625), co_gap=1.0, co_drop=0.25) == [False, False]
    assert _co((0.5, 0.25), (0.5, 0.0624), co_gap=1.0, co_drop=0.25) == [False, True]
    assert _co((0.5, 0.25), (0.5, 0.0624), co_gap=1.0, co_drop=0.25, co_ratio=0.0625) == [False, False]  # ratio gates


def test_crop_flip_keeps_shape_and_content():
    x = torch.rand(16, 3, 32, 32)
    out = crop_flip(x, crop_flip_draws(16, torch.Generator().manual_seed(0)))
    assert out.shape == x.shape
    assert not torch.equal(out, x)
    same = crop_flip(x, crop_flip_draws(16, torch.Generator().manual_seed(0)))
    assert torch.equal(out, same)


# ----- BatchNorm: only the trainer's own passes move the running statistics -----------------------


def test_a_batchnorm_model_trains_while_trace_and_evaluation_leave_its_running_statistics_alone(tmp_path,
                                                                                                monkeypatch):
    """preact-resnet18 (BatchNorm everywhere) with rs-fgsm, which keeps no clean logits: the energy trace
    makes its own clean pass. Training moves the running statistics; the trace, validation and the test
    evaluation (clean, FGSM, PGD, AutoAttack, sanity checks) leave them exactly as they found them."""
    import energybench.training.callbacks.energy_trace as energy_trace
    import energybench.training.loop as loop
    import energybench.training.run as run_module

    changed: dict[str, list[str]] = {"trace": [], "validation": [], "test evaluation": []}
    moved, traced = [], []

    def watched(phase, real, model_of):
        def wrapper(*args, **kwargs):
            model = model_of(args)
            before = batchnorm_buffers(model)
            result = real(*args, **kwargs)
            changed[phase] += same_tensors(before, batchnorm_buffers(model))
            if phase == "trace" and args[2].energies is not None:
                traced.append(args[2].out.logits is None)  # a batch the trace computed clean logits for
            return result
        return wrapper

    def watched_epoch(self):
        before = batchnorm_buffers(self.model)
        metrics = real_epoch(self)
        moved.extend(same_tensors(before, batchnorm_buffers(self.model)))
        return metrics

    real_epoch = loop.Run.train_epoch
    monkeypatch.setattr(loop.Run, "train_epoch", watched_epoch)
    monkeypatch.setattr(energy_trace.EnergyTraceCallback, "on_before_backward",  # (callback, run, batch)
                        watched("trace", energy_trace.EnergyTraceCallback.on_before_backward, lambda a: a[1].model))
    monkeypatch.setattr(loop.Run, "validate", watched("validation", loop.Run.validate, lambda a: a[0].model))
    monkeypatch.setattr(run_module, "test_evaluation",
                        watched("test evaluation", run_module.test_evaluation, lambda a: a[0]))
    store = Store(tmp_path)
    config = tiny_config(model="preact-resnet18", trainer="rs-fgsm", epochs=1, n_train=64, batch_size=16,
                         monitor={"enabled": False}, eval={"aa_points": 2, "val_points": 8, "test_points": 8,
                                                           "val_pgd_steps": 2, "pgd_steps": 2, "batch_size": 8})
    run_id = execute(config, store)
    assert store.get_run(run_id).status == "done" and "test_aa_acc" in store.results(run_id)["last"]
    assert any(key.endswith("running_mean") for key in moved)  # the trainer's passes do update them
    assert traced and all(traced)  # the trace ran its own clean passes
    assert changed == {"trace": [], "validation": [], "test evaluation": []}


@pytest.mark.parametrize("trainer", ["rs-fgsm", "n-fgsm", "pgd"])
def test_der_after_a_trainer_without_clean_logits_costs_one_pass_and_no_batchnorm_update(trainer):
    """The harness's extra clean pass for DER: counted as one pass per example, with gradient (DER
    trains through E(x)), and invisible to BatchNorm's running statistics: they end the step exactly
    as after the trainer's step alone."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(),
                              torch.nn.Flatten(), torch.nn.Linear(4 * 8 * 8, 10))
    alone, with_der, untouched = net, copy.deepcopy(net), copy.deepcopy(net)
    x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
    plugin = reg.get_plugin("trainer", trainer)(eps=0.1)
    initial = batchnorm_buffers(net)
    torch.manual_seed(1)
    with forward_calls(alone) as trainer_calls:
        out = plugin.step(alone, x, y, keep_clean_logits=True)
    assert out.logits is None  # the case under test: the trainer kept no clean logits
    step = TrainingStep(plugin, reg.create_regularizer("der", trainer_single_step=plugin.single_step), num_classes=10)
    torch.manual_seed(1)
    with forward_calls(with_der) as calls:
        result = step(with_der, x, y)
    assert len(calls) == len(trainer_calls) + 1 and result.passes == out.passes + 1
    assert result.out.logits is not None and result.out.logits.requires_grad
    with torch.no_grad():  # computed in train mode (batch statistics), as the trainer's own passes are
        assert torch.allclose(result.out.logits, untouched.train()(x), atol=1e-5)
    assert same_tensors(initial, batchnorm_buffers(alone))  # the trainer's passes moved them
    assert same_tensors(batchnorm_buffers(alone), batchnorm_buffers(with_der)) == []


def test_the_cost_of_der_after_rs_fgsm_is_three_passes_in_a_run(tmp_path):
    store = Store(tmp_path)
    run_id = execute(tiny_config(trainer="rs-fgsm", regularizer="der", epochs=1, n_train=256, eval=SMALL_EVAL), store)
    # rs-fgsm's attack and training passes, and the clean pass the harness makes for DER
    assert store.results(run_id)["last"]["passes_per_example"] == pytest.approx(3.0)


class _Constant(torch.nn.Module):
    """Logits that always pick class ``label``, whatever the input (zero input gradient)."""

    def __init__(self, label: int):
        super().__init__()
        self.logits = torch.nn.Parameter(5 * torch.nn.functional.one_hot(torch.tensor(label), 10).float())

    def forward(self, x):
        return self.logits.expand(len(x), -1) + 0 * x.flatten(1).sum(1, keepdim=True)


class _Threads(Callback):
    """Records torch's intra-op thread count at every training step."""

    seen: list[int] = []

    def on_train_batch_end(self, run, batch):
        type(self).seen.append(torch.get_num_threads())


def test_the_smoke_track_trains_on_one_thread_and_runs_autoattacks_fast_subset(capsys, tmp_path, runtime_registry):
    """digits-tiny trains and evaluates on one CPU thread (the caller's count is restored after) and attacks with
    AutoAttack's fast subset, APGD-CE and APGD-T: those two are the per-attack figures stored, and the leaderboard
    says so in the AutoAttack cell and in its caption; RobustBench's export refuses it."""
    runtime_registry.register("callback", "threads", _Threads)
    _Threads.seen = []
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        run_id = execute(tiny_config(epochs=1, callbacks=["threads"], eval={"aa_points": 10, "val_points": 20,
                                                                            "test_points": 20}), Store(tmp_path))
        assert set(_Threads.seen) == {1} and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    store = Store(tmp_path)
    assert store.get_run(run_id).config["eval"]["aa_version"] == "fast"
    attacks = {k for k in store.results(run_id)["last"] if k.startswith("test_aa_") and k != "test_aa_points"}
    assert attacks == {"test_aa_acc", "test_aa_apgd-ce_acc", "test_aa_apgd-t_acc"}
    code, out, _ = datafiles.run_cli(capsys, "leaderboard", "--store", tmp_path)
    row = next(line for line in out.splitlines() if run_id in line)
    assert code == 0 and " (fast)" in row and "AA (fast): AutoAttack's fast subset" in " ".join(out.split())
    code, out, _ = datafiles.run_cli(capsys, "leaderboard", "--format", "json", "--store", tmp_path)
    assert json.loads(out)["measured"][0]["aa_version"] == "fast"
    code, _, err = datafiles.run_cli(capsys, "export", run_id, "-o", tmp_path / "x.json", "--store", tmp_path)
    assert code == 2 and "fast subset (APGD-CE, APGD-T), not the standard version RobustBench reports" in err


def test_an_evaluation_stage_expected_to_take_over_a_minute_is_announced_with_its_estimate(monkeypatch):
    """``test_evaluation`` times one forward+backward pass and, before clean/FGSM/PGD and before AutoAttack, notes
    the estimated time of a stage expected to take over a minute; a quick one is not announced."""
    from energybench.data.datasets import load_dataset
    from energybench.evaluation import protocol

    config = tiny_config(eval={"aa_points": 4, "test_points": 8, "aa_version": "fast"})
    test = load_dataset("digits", val_size=200).test
    model = _Constant(int(test.y[0]))  # right on the points of the first point's class, and robust there
    share = float((test.y[:8] == test.y[0]).float().mean())  # of the 8 points clean and PGD accuracy saw
    notes: list[str] = []
    protocol.test_evaluation(model, test, config, torch.device("cpu"), note=notes.append)
    assert notes == []  # a linear model on 8 points: well under a minute
    monkeypatch.setattr(protocol, "pass_seconds", lambda *args: 2.0)  # two seconds per pass and point
    protocol.test_evaluation(model, test, config, torch.device("cpu"), note=notes.append)
    assert notes[0] == ("clean, FGSM and PGD-10 on 8 test points: about 3 min (estimated from 2000 ms per "
                        "forward+backward pass and point)")  # 8 points x (10 + 2) passes x 2 s
    minutes = 4 * share * (100 + 9 * 100) * 2.0 / 60  # APGD-CE on the right points, APGD-T's 9 targets on the robust
    assert notes[1].startswith(f"AutoAttack (fast) on 4 test points: about {minutes:.0f} min (estimated from PGD's ")
    assert len(notes) == 2


class _SilentPenalty(Regularizer):
    """A third-party regularizer that reports nothing: half the squared logits' mean, on every batch."""

    requires_adversarial = False

    def penalty(self, model, x, y, out):
        return 0.01 * model(x).pow(2).mean()


def test_every_regularizers_penalty_is_recorded_per_epoch_shown_stored_exported_and_logged(capsys, tmp_path,
                                                                                           runtime_registry):
    """What the regularizer did, per epoch: its mean penalty, the share of batches where it acted and (when it reports
    it) the share of samples, in the epoch line, the stored epochs (metrics.jsonl too), the run's results and the
    leaderboard's export, and TensorBoard, which also gets the test results; one that does not report still runs."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    code, out, err = datafiles.run_cli(capsys, "run", "--track", "digits-tiny", "--reg", "der", "-R", "aae=never",
                                       "-R", "beta=1", "--epochs", "2", "--n-train", "512", "--aa-points", "0",
                                       "--log", "tensorboard", "--store", tmp_path)
    assert code == 0, err
    store = Store(tmp_path)
    (run,) = store.runs()
    epochs = store.epochs(run.id)
    for e in epochs:
        assert e["train_reg_penalty"] > 0 and e["train_reg_active"] == 1.0 and e["train_reg_acted"] == 1.0
        assert f"der {e['train_reg_penalty']:.3g} on 100.0% (samples with a non-zero dE term)" in err
    assert '"train_reg_penalty"' in (store.run_dir(run.id) / "metrics.jsonl").read_text()
    last = store.results(run.id)["last"]
    assert last["train_reg_penalty"] == pytest.approx(sum(e["train_reg_penalty"] for e in epochs) / 2, rel=1e-6)
    code, out, _ = datafiles.run_cli(capsys, "leaderboard", "--format", "json", "--store", tmp_path)
    (row,) = json.loads(out)["measured"]
    assert row["train_reg_penalty"] == last["train_reg_penalty"] and row["train_reg_acted"] == 1.0
    events = EventAccumulator(str(store.run_dir(run.id) / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert [e.value for e in events.Scalars("train/reg_penalty")] == pytest.approx(
        [e["train_reg_penalty"] for e in epochs])
    for tag, key in (("test/pgd_acc", "test_pgd_acc"), ("test/clean_acc", "test_clean_acc"),
                     ("best/test/pgd_acc", "test_pgd_acc")):
        checkpoint = "best" if tag.startswith("best") else "last"
        assert tag in scalars and events.Scalars(tag)[-1].value == pytest.approx(store.results(run.id)[checkpoint][key])

    runtime_registry.register("regularizer", "silent", _SilentPenalty)
    run_id = execute(tiny_config(regularizer="silent", epochs=1), store)
    (epoch,) = store.epochs(run_id)
    assert epoch["train_reg_penalty"] > 0 and epoch["train_reg_active"] == 1.0 and "train_reg_acted" not in epoch
