"""The harness's headline numbers against independent references: AutoAttack figures against pyautoattack
called directly, and PGD with restarts against its single restarts run one by one."""

from __future__ import annotations

import logging
import re

import pytest
import torch
import torch.nn.functional as F
from pyautoattack import AutoAttack
from sklearn.datasets import load_digits
from torch import nn

import energybench
from energybench import Arrays, Dataset
from energybench.config import load_catalogue, resolve_config
from energybench.contracts.registry import create_attack
from energybench.data.datasets import Split, load_dataset
from energybench.evaluation.robustness import robustness
from energybench.evaluation.sanity import evaluation_warnings
from energybench.ops.perturb import pgd
from energybench.storage.store import Store, stored_value
from energybench.training.run import execute, prepare

AA_POINTS = 24  # not a divisor of 10,000: a figure read back from a rounded percentage would not be exact
ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")
_PERTURBED = re.compile(r"^([a-z\-]+) - \d+/\d+ - (\d+) out of \d+ successfully perturbed")


class _Messages(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def reference_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str, seed: int,
                         version: str, batch_size: int) -> tuple[float, dict[str, float], torch.Tensor]:
    """pyautoattack run directly, as its README shows: the robust accuracy it reports and, per attack, the
    robust accuracy after it (its own count: correctly classified points minus those it reports perturbed),
    and which points stayed robust.
    With K < 10 classes, APGD-T and FAB-T target the K - 1 other classes (AutoAttack's advice for such data)."""
    num_classes = model(x[:1]).shape[1]
    adversary = AutoAttack(model, eps=eps, norm=norm, seed=seed, version="standard" if version == "fast" else version,
                           device="cpu")
    if version == "fast":  # the standard version's first two attacks, with its settings
        adversary.attacks_to_run = ["apgd-ce", "apgd-t"]
    if num_classes < 10:
        adversary.apgd_targeted.n_target_classes = num_classes - 1
        adversary.fab.n_target_classes = num_classes - 1
    logger, handler = logging.getLogger("auto-attack"), _Messages()
    level, propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    try:
        _, y_adv = adversary.run_standard_evaluation(x, y, batch_size=batch_size)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagate
    with torch.no_grad():
        robust = int((model(x).argmax(1) == y).sum())
    per_attack: dict[str, float] = {}
    for message in handler.messages:
        match = _PERTURBED.match(message)
        if match:
            robust -= int(match.group(2))
            per_attack[match.group(1)] = robust / len(y)
    accuracy = int((y_adv == y).sum()) / len(y)
    assert per_attack and robust / len(y) == accuracy  # the per-attack count ends at the reported figure
    return accuracy, per_attack, y_adv == y


def assert_same_figures(results: dict[str, float], expected: tuple[float, dict[str, float], torch.Tensor]) -> None:
    """The stored ``test_aa_acc`` and ``test_aa_<attack>_acc`` are the reference's k/n, as the store keeps numbers
    (7 significant digits; a figure read back from a percentage with two decimals would be up to 5e-5 off)."""
    accuracy, per_attack, _ = expected
    assert results["test_aa_acc"] == stored_value(accuracy)
    assert {k for k in results if k.startswith("test_aa_") and k not in ("test_aa_acc", "test_aa_points")} == {
        f"test_aa_{name}_acc" for name in per_attack}
    for name, value in per_attack.items():
        assert results[f"test_aa_{name}_acc"] == stored_value(value), name


def test_a_runs_autoattack_figures_are_pyautoattacks(tmp_path):
    """A tiny digits run (10 classes) trained and evaluated by ``execute``: its stored ``test_aa_acc`` and per-attack
    accuracies are what pyautoattack reports on the same model, points, eps, norm, version and seed."""
    catalogue = load_catalogue()
    config = prepare(resolve_config(catalogue, track="digits-tiny", overrides={
        "epochs": 1, "n_train": 256, "eval": {"aa_points": AA_POINTS, "val_points": 20, "test_points": AA_POINTS}}),
        catalogue)
    store = Store(tmp_path / "home")
    run_id = execute(config, store)
    results = store.results(run_id)["last"]
    model = energybench.load(run_id, checkpoint="last", store=store)
    test = load_dataset("digits", val_size=1).test
    x, y = test.x[:AA_POINTS].float() / 255, test.y[:AA_POINTS]
    expected = reference_autoattack(model, x, y, eps=config.eps, norm=config.norm, seed=config.seed,
                                    version=config.eval.aa_version, batch_size=config.eval.batch_size)
    assert results["test_aa_points"] == AA_POINTS
    assert_same_figures(results, expected)
    assert torch.equal(torch.from_numpy(store.points(run_id)["last"]["test_aa"]), expected[2])
    assert 0 < expected[0] < float((model(x).argmax(1) == y).float().mean())  # some points fall, some resist


class FourClasses(nn.Module):
    """A 4-class model where only the LAST of the 3 runner-up classes can be reached: at every input class 0
    leads, classes 1 and 2 trail it by fixed margins (no input moves them), and class 3's logit grows with
    the image's mean brightness. Logits are scaled by 1000, so the softmax saturates and cross-entropy has
    no gradient: APGD-CE fails, and only a targeted attack aimed at the 3rd runner-up (K - 1 = 3 targets)
    fools the bright images; with fewer targets they fall later (Square) or not at all."""

    def forward(self, x):
        brightness = x.flatten(1).mean(1)
        zero = torch.zeros_like(brightness)
        return 1000 * torch.stack([zero, zero - 1, zero - 2, 40 * (brightness - 0.5) - 3], 1)


class FourClassImages(Dataset):
    """A synthetic 4-class dataset: 8x8 grey images of mean brightness 0.35 to 0.55 (labelled 0) in its test
    split; at eps 0.1 the brighter ones can reach class 3, the darker cannot."""

    num_classes, in_channels, image_size, mean, std = 4, 1, 8, (0.5,), (0.25,)
    needs_files = False

    def read(self, location):
        g = torch.Generator().manual_seed(0)
        level = torch.linspace(0.35, 0.55, AA_POINTS).view(-1, 1, 1, 1)
        x = ((level + 0.1 * (torch.rand(AA_POINTS, 1, 8, 8, generator=g) - 0.5)).clamp(0, 1) * 255).round()
        x, y = x.to(torch.uint8), torch.zeros(AA_POINTS, dtype=torch.long)
        return Arrays(x, y, x, y)


def four_class_images() -> Dataset:
    """``FourClassImages`` registered as dataset ``four-classes`` (the test's registry is ``scoped_registry``)."""
    energybench.register_dataset("four-classes")(FourClassImages)
    return FourClassImages()


def test_autoattack_on_fewer_than_ten_classes_is_pyautoattacks_with_k_minus_1_targets(tmp_path, scoped_registry):
    """``energybench.evaluate`` on a 4-class model: APGD-T and FAB-T aim at the K - 1 = 3 other classes (not
    AutoAttack's 9, which would fail, nor fewer), so the stored figures equal pyautoattack's own with 3
    targets, in a case built so that the count of targets decides them."""
    info = four_class_images()
    test = load_dataset(info.name, val_size=1).test
    model = FourClasses()
    eps, seed = 0.1, 3
    run = energybench.evaluate(model, dataset=info.name, eps=eps, test_points=AA_POINTS, aa_points=AA_POINTS, seed=seed,
                               store=tmp_path / "home")
    x, y = test.x.float() / 255, test.y
    expected = reference_autoattack(model, x, y, eps=eps, norm="Linf", seed=seed, version="standard",
                                    batch_size=run.config.eval.batch_size)
    assert_same_figures(run.results["last"], expected)
    assert torch.equal(torch.from_numpy(run.store.points(run.id)["last"]["test_aa"]), expected[2])
    accuracy, per_attack = expected[:2]
    assert per_attack["apgd-ce"] == 1.0 and 0 < per_attack["apgd-t"] < 1.0  # the 3rd target did the work


@pytest.mark.parametrize("eps, warned", [(0.1, False), (0.3, True)])
def test_points_pgd_leaves_robust_and_autoattack_breaks_are_counted_and_warned(tmp_path, eps, warned, scoped_registry):
    """Saturated cross-entropy fools PGD (it has no gradient to follow), not AutoAttack's targeted attack: the
    stored count of PGD-robust points AutoAttack breaks equals the per-point vectors' count, and the evaluation
    warns once it is at least half of them: at eps 0.3 class 3 is in reach of every image, at 0.1 of 3 in 8."""
    info = four_class_images()
    run = energybench.evaluate(FourClasses(), dataset=info.name, eps=eps, test_points=AA_POINTS, aa_points=AA_POINTS,
                               seed=0, store=tmp_path / "home")
    points = run.store.points(run.id)["last"]
    pgd, aa = torch.from_numpy(points["test_pgd"]), torch.from_numpy(points["test_aa"])
    results = run.results["last"]
    assert results["test_shared_points"] == AA_POINTS and results["test_shared_pgd_robust"] == int(pgd.sum()) >= 20
    assert results["test_shared_aa_breaks"] == int((pgd & ~aa).sum())
    assert results["test_shared_pgd_breaks"] == int((aa & ~pgd).sum()) == 0
    share = results["test_shared_aa_breaks"] / results["test_shared_pgd_robust"]
    assert share >= 0.5 if warned else 0.25 < share < 0.5, share
    warnings = [w for w in evaluation_warnings(results) if w.startswith("AutoAttack broke")]
    assert bool(warnings) == warned


# ----- PGD with restarts: a point is robust only if it survives every restart -----------------------------

def digits_mlp() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    data = load_digits()
    x = torch.tensor(data.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16
    y = torch.tensor(data.target)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(200):
        idx = torch.randint(0, 1400, (64,))
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval(), x[1400:], y[1400:]


def test_harness_pgd_with_restarts_is_the_worst_case_over_its_restarts():
    """``robustness`` with 3 restarts marks a point correct exactly when each restart, run alone from the same
    random draws, leaves it correct; on these points a later restart fools some that the first one missed."""
    model, x, y = digits_mlp()
    n, eps, steps, restarts = 200, 0.06, 2, 3
    split = Split((x[:n] * 255).round().to(torch.uint8), y[:n])
    x = split.x.float() / 255

    torch.manual_seed(5)
    measured = robustness(model, split, n=n, eps=eps, norm="Linf", pgd_steps=steps, pgd_restarts=restarts,
                          batch_size=n, device=torch.device("cpu"))
    harness = measured.correct["pgd"]

    torch.manual_seed(5)  # the same random starts, one restart at a time
    survives = []
    for _ in range(restarts):
        x_adv = pgd(model, x, y[:n], eps=eps, step_size=2.5 * eps / steps, steps=steps, norm="Linf")
        with torch.no_grad():
            survives.append(model(x_adv).argmax(1) == y[:n])
    worst = torch.stack(survives).all(0)
    assert torch.equal(harness, worst)
    assert measured.metrics["pgd_acc"] == pytest.approx(float(worst.float().mean()))
    assert int((survives[0] & ~worst).sum()) > 0  # restarts matter here


def test_harness_margin_pgd_and_the_worst_case_of_both_pgds():
    """``with_margin``: PGD on the CW margin loss, run right after cross-entropy PGD on each batch, equals
    ``ops.perturb.pgd(loss="margin")`` from the same random state, and ``worst`` is the point-wise AND of both."""
    model, x, y = digits_mlp()
    n, eps, steps = 200, 0.06, 5
    split = Split((x[:n] * 255).round().to(torch.uint8), y[:n])
    x = split.x.float() / 255

    torch.manual_seed(3)
    measured = robustness(model, split, n=n, eps=eps, norm="Linf", pgd_steps=steps, with_margin=True,
                          batch_size=n, device=torch.device("cpu"), prefix="val_")
    torch.manual_seed(3)
    by_hand = []
    for loss in ("ce", "margin"):
        x_adv = pgd(model, x, y[:n], eps=eps, step_size=2.5 * eps / steps, steps=steps, norm="Linf", loss=loss)
        with torch.no_grad():
            by_hand.append(model(x_adv).argmax(1) == y[:n])
    assert torch.equal(measured.correct["val_pgd"], by_hand[0])
    assert torch.equal(measured.correct["val_margin"], by_hand[1])
    assert torch.equal(measured.correct["val_worst"], by_hand[0] & by_hand[1])
    assert measured.metrics["val_worst_acc"] <= min(measured.metrics["val_pgd_acc"], measured.metrics["val_margin_acc"])


@pytest.mark.parametrize("name", ["apgd-t", "fab-t"])
def test_targeted_attack_plugins_aim_at_k_minus_1_classes(name, scoped_registry):
    """The `apgd-t` and `fab-t` attack plugins on the 4-class model return pyautoattack's own adversarial
    examples with 3 targets, and fool the bright images (only the 3rd target can)."""
    info = four_class_images()
    test = load_dataset(info.name, val_size=1).test
    x, y, model = test.x.float() / 255, test.y, FourClasses()
    adversary = AutoAttack(model, attacks=[name], eps=0.1, seed=0, version="custom", device="cpu")
    adversary.apgd_targeted.n_target_classes = adversary.fab.n_target_classes = 3
    x_ref, y_ref = adversary.run_standard_evaluation(x, y, batch_size=AA_POINTS)
    x_adv = create_attack(name, model, eps=0.1, seed=0, batch_size=AA_POINTS)(x, y)
    assert torch.equal(x_adv, x_ref)
    robust = model(x_adv).argmax(1) == y
    assert torch.equal(robust, y_ref == y) and 0 < robust.float().mean() < 1
