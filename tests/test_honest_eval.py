"""Honest evaluation: eval mode everywhere, no attack touches BatchNorm statistics, the test split is
read only by the final evaluation, and AutoAttack-style flags catch masked or randomised models."""

from __future__ import annotations

import pytest
import torch
from datafiles import tiny_config
from torch import nn

from energybench.contracts import registry as reg
from energybench.contracts.model import Classifier
from energybench.data.datasets import Split
from energybench.evaluation.robustness import autoattack_accuracy, robustness
from energybench.evaluation.sanity import evaluation_warnings, model_checks
from energybench.storage.store import Store
from energybench.training import loop as harness
from energybench.training import run as lifecycle
from energybench.training.loop import Run
from energybench.training.progress import Reporter
from energybench.training.run import execute

CPU = torch.device("cpu")


class BNNet(Classifier):
    """A tiny CNN with BatchNorm that logs (phase, training flag) at every forward pass."""

    phase = "init"
    log: list[tuple[str, bool]] = []

    def __init__(self, num_classes: int, in_channels: int, mean, std):
        super().__init__(num_classes, in_channels, mean, std)
        self.body = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, num_classes))

    def logits(self, z: torch.Tensor) -> torch.Tensor:
        type(self).log.append((type(self).phase, self.training))
        return self.body(z)


def _bn_model() -> BNNet:
    torch.manual_seed(0)
    model = BNNet(10, 1, (0.3,), (0.4,))
    with torch.no_grad():  # running statistics that differ from their initial values
        for _ in range(3):
            model(torch.rand(16, 1, 8, 8))
    return model.eval()


def _buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _digits(n: int = 16) -> Split:
    torch.manual_seed(1)
    return Split(torch.randint(0, 256, (n, 1, 8, 8), dtype=torch.uint8), torch.randint(0, 10, (n,)))


@pytest.mark.parametrize("name", reg.list_plugins("attack"))
def test_no_attack_changes_a_buffer_or_the_mode(name):
    model = _bn_model()
    before = _buffers(model)
    split = _digits(8)
    attack = reg.get_plugin("attack", name)(model, eps=0.1, norm="Linf", seed=0)
    x_adv = attack(split.x.float() / 255, split.y)
    assert x_adv.shape == split.x.shape
    assert not any(m.training for m in model.modules())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), name


def test_every_evaluation_runs_in_eval_mode_and_restores_the_callers_mode():
    model = _bn_model().train()
    before = _buffers(model)
    BNNet.log.clear()
    split = _digits(12)
    robustness(model, split, n=None, eps=0.1, norm="Linf", pgd_steps=3, with_fgsm=True, batch_size=5, device=CPU)
    autoattack_accuracy(model, split, n=6, eps=0.1, norm="Linf", version="standard", seed=0, batch_size=6,
                        device=CPU)
    model_checks(model, split, device=CPU)
    assert BNNet.log and not any(training for _, training in BNNet.log)
    assert all(m.training for m in model.modules())  # the caller's train mode is back
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


class _WatchedSplit:
    """A split that records in which phase of a run its images or labels are read."""

    def __init__(self, split: Split, log: list[str]):
        self._split, self._log = split, log

    @property
    def x(self) -> torch.Tensor:
        self._log.append(BNNet.phase)
        return self._split.x

    @property
    def y(self) -> torch.Tensor:
        self._log.append(BNNet.phase)
        return self._split.y

    def __len__(self) -> int:
        return len(self._split)


def test_the_test_split_is_read_only_by_the_final_evaluation_and_evaluations_use_eval_mode(tmp_path, monkeypatch,
                                                                                        scoped_registry):
    reg.get_registry().register("model", "bn-net", BNNet)
    test_reads: list[str] = []
    load = harness.load_dataset

    def watched_load(*args, **kwargs):
        data = load(*args, **kwargs)
        data.test = _WatchedSplit(data.test, test_reads)
        return data

    monkeypatch.setattr(harness, "load_dataset", watched_load)  # a resumed run's data
    monkeypatch.setattr(lifecycle, "load_dataset", watched_load)  # a new run's

    def phase(original, name):
        def phased(*args, **kwargs):
            outer, BNNet.phase = BNNet.phase, name
            try:
                return original(*args, **kwargs)
            finally:
                BNNet.phase = outer
        return phased

    for method in ("fit", "validate"):
        monkeypatch.setattr(Run, method, phase(getattr(Run, method), method))
    monkeypatch.setattr(lifecycle, "evaluate_checkpoints", phase(lifecycle.evaluate_checkpoints, "evaluate"))
    monkeypatch.setattr(BNNet, "phase", "init")
    BNNet.log.clear()
    config = tiny_config(model="bn-net", eval={"aa_points": 0, "val_points": 30, "test_points": 30})
    execute(config, Store(tmp_path))
    assert test_reads and set(test_reads) == {"evaluate"}
    phases = {phase for phase, _ in BNNet.log}
    assert {"fit", "validate", "evaluate"} <= phases
    assert not any(training for phase, training in BNNet.log if phase in ("validate", "evaluate"))
    assert any(training for phase, training in BNNet.log if phase == "fit")


# ----- AutoAttack-style flags ---------------------------------------------------------------------

class _Randomised(BNNet):
    def logits(self, z):
        return super().logits(z + 0.5 * torch.randn_like(z))


class _Probabilities(BNNet):
    def logits(self, z):
        return super().logits(z).softmax(1)


class _Quantised(Classifier):
    """Rounds its input to 4 levels: the input gradient is exactly zero almost everywhere."""

    def __init__(self, num_classes, in_channels, mean, std):
        super().__init__(num_classes, in_channels, mean, std)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(64 * in_channels, num_classes))

    def forward(self, x):
        return self.head(torch.round(x * 3) / 3)


@pytest.mark.parametrize(("cls", "check", "value", "warning"), [
    (BNNet, None, None, None),
    (_Randomised, "test_check_randomized", 1.0, "the model is randomised"),
    (_Probabilities, "test_check_probability_outputs", 1.0, "outputs probabilities, not logits"),
    (_Quantised, "test_check_zero_grad_frac", 1.0, "100% of checked points have an exactly zero input gradient"),
])
def test_model_checks_flag_randomised_probability_and_masked_models(cls, check, value, warning):
    torch.manual_seed(0)
    model = cls(10, 1, (0.3,), (0.4,)).eval()
    checks = model_checks(model, _digits(20), device=CPU)
    flags = ("test_check_randomized", "test_check_probability_outputs", "test_check_zero_grad_frac")
    assert set(checks) == {*flags, "test_check_top_class_share", "test_check_top_class_labels"}
    for key in flags:
        assert checks[key] == (value if key == check else 0.0), key
    # untrained, these models also give one class to most points: that warning has its own test below
    warnings = [w for w in evaluation_warnings(checks) if "collapsed toward a constant classifier" not in w]
    assert (warnings == []) if warning is None else (len(warnings) == 1 and warning in warnings[0])


class _Centred(nn.Module):
    """A random linear map of the centred pixels."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(64, 10, bias=False)

    def forward(self, x):
        return self.linear((x - 0.5).flatten(1))


def test_a_model_that_gives_every_input_one_class_is_flagged_as_collapsed():
    split = _digits(40)
    torch.manual_seed(0)
    checks = model_checks(BNNet(10, 1, (0.3,), (0.4,)).eval(), split, device=CPU)  # untrained: one class for all
    assert checks["test_check_top_class_share"] == 1.0 and checks["test_check_top_class_labels"] < 0.3
    (warning,) = [w for w in evaluation_warnings(checks) if "collapsed" in w]
    assert warning.startswith("the model gives one class to 100% of the checked points, which hold ")
    sound = model_checks(_Centred(), split, device=CPU)  # a random linear map spreads its predictions
    assert sound["test_check_top_class_share"] < 0.3 and evaluation_warnings(sound) == []


@pytest.mark.parametrize(("share", "labels", "flagged"), [
    (1.0, 0.1, True), (0.6, 0.1, True), (0.55, 0.1, False), (0.2, 0.1, False),
    (0.95, 0.95, False),  # one class holds most of the data and the model says so: no collapse
])
def test_the_collapse_flag_compares_the_predicted_share_with_the_labels(share, labels, flagged):
    warnings = evaluation_warnings({"test_check_top_class_share": share, "test_check_top_class_labels": labels})
    assert len(warnings) == flagged and all(f"one class to {share:.0%}" in w for w in warnings)


@pytest.mark.parametrize(("metrics", "warning"), [
    ({"test_fgsm_acc": 0.60, "test_pgd_acc": 0.50}, None),  # the weaker attack leaves more: normal
    ({"test_fgsm_acc": 0.10, "test_pgd_acc": 0.05}, None),
    ({"test_fgsm_acc": 0.40, "test_pgd_acc": 0.44}, None),  # within the margin (sampling noise)
    ({"test_fgsm_acc": 0.40, "test_pgd_acc": 0.55}, "PGD leaves a higher accuracy (55.0%) than FGSM (40.0%)"),
    ({"test_aa_apgd-ce_acc": 0.5, "test_aa_apgd-t_acc": 0.45, "test_aa_fab-t_acc": 0.45, "test_aa_square_acc": 0.45},
     None),
    ({"test_aa_apgd-ce_acc": 0.5, "test_aa_apgd-t_acc": 0.45, "test_aa_fab-t_acc": 0.45, "test_aa_square_acc": 0.30},
     "the black-box Square attack lowered accuracy from 45.0% to 30.0%"),
    ({"test_aa_square_acc": 0.30}, None),  # Square alone: nothing to compare with
])
def test_attack_strength_flags(metrics, warning):
    warnings = evaluation_warnings(metrics)
    assert (warnings == []) if warning is None else (len(warnings) == 1 and warning in warnings[0])


class _Alerts(Reporter):
    def __init__(self):
        self.alerts: list[str] = []

    def alert(self, text):
        self.alerts.append(text)


def test_a_masked_model_is_flagged_in_the_stored_results_and_the_report(tmp_path, scoped_registry):
    reg.get_registry().register("model", "quantised", _Quantised)
    config = tiny_config(model="quantised", trainer="standard", epochs=1,
                         eval={"aa_points": 0, "val_points": 30, "test_points": 30})
    store, reporter = Store(tmp_path), _Alerts()
    run_id = execute(config, store, reporter=reporter)
    last = store.results(run_id)["last"]
    assert last["test_check_zero_grad_frac"] == 1.0 and last["test_check_randomized"] == 0.0
    assert "test_fgsm_acc" in last
    assert any("zero input gradient" in a and a.startswith("last checkpoint: ") for a in reporter.alerts)
    assert evaluation_warnings(last) == [a.removeprefix("last checkpoint: ") for a in reporter.alerts
                                         if a.startswith("last checkpoint: ")]
