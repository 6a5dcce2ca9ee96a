"""Sanity checks of a robustness evaluation, in the spirit of AutoAttack's own flags.

A robustness number can be inflated without any attack being wrong: the model may mask its
gradients, output probabilities instead of logits, or be randomised. The final evaluation of
every run measures the signs of that on a few test points (``model_checks``) and stores them
with its results; ``evaluation_warnings`` turns stored results into warnings, so they can be
printed again for any stored run. The checks and their thresholds follow AutoAttack's
``checks.py`` (Croce & Hein, 2020):

- ``test_check_randomized``: two forward passes on the same inputs differ (eval mode): attacks that
  assume a deterministic model overestimate robustness (use EOT, or AutoAttack's ``rand``).
- ``test_check_probability_outputs``: the outputs lie in [0, 1] and sum to 1: cross-entropy on
  probabilities saturates, which weakens gradient attacks.
- ``test_check_zero_grad_frac``: fraction of points whose input gradient of the loss is exactly zero.
- ``test_check_top_class_share``: the share of the points predicted as the most-predicted class, beside
  ``test_check_top_class_labels``, that class's share of the true labels. A model that gives nearly every
  input one class (a collapse to a constant classifier, which strong regularizers cause) has a robust
  accuracy no greater than that class's share: a number that looks like robustness and is none.
- PGD weaker than FGSM: the multi-step attack leaves a higher accuracy than the single-step one
  it contains (test_pgd_acc above test_fgsm_acc): its steps are misled by the loss surface.
- Square beats white-box: the black-box Square attack lowers AutoAttack's accuracy after the
  white-box attacks have run (test_aa_square_acc below the accuracy before it).
- AutoAttack breaks what PGD left robust (``attack_disagreement``): on the test points both attacks
  share, the points PGD leaves robust that AutoAttack breaks. A few are normal (AutoAttack is the
  stronger attack); many mean the PGD number, and whatever was chosen by it, overstates robustness.

A weaker attack (FGSM) leaving a higher accuracy than PGD is normal, and is not flagged. Logits
that are not finite are no warning here: no accuracy can be measured from them, so they fail the
evaluation itself (``energybench.evaluation.robustness.robustness``) and such a model is never ranked.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from energybench.data.datasets import Split
from energybench.evaluation.robustness import as_float
from energybench.ops.modes import eval_mode

#: Test points the model checks look at.
CHECK_POINTS = 100
#: Accuracy margin (absolute) by which PGD must do worse than FGSM before it is flagged: PGD is not
#: stronger on every single point, and a few hundred test points leave a point or two of noise.
ACC_MARGIN = 0.05
#: AutoAttack's margin for Square's extra success over the white-box attacks.
SQUARE_MARGIN = 0.002
#: Largest difference of two normalised outputs on the same input for a deterministic model.
RANDOM_TOLERANCE = 1e-4
#: Slack when deciding whether outputs are probabilities.
PROBABILITY_TOLERANCE = 1e-5
#: Share of the PGD-robust shared points that AutoAttack may break before the evaluation warns, and the fewest
#: PGD-robust points the warning needs (docs/trust.md says where the values come from).
MASKING_FRACTION = 0.5
MASKING_MIN_POINTS = 20
#: How far the most-predicted class's share of the predictions may exceed its share of the labels before the
#: model counts as collapsed (a constant classifier of a balanced 10-class set: 1.0 against 0.1).
COLLAPSE_EXCESS = 0.5
#: AutoAttack's attacks in the order they run; Square is the black-box one.
WHITE_BOX = ("apgd-ce", "apgd-t", "fab-t", "apgd-dlr", "fab")


def model_checks(model: nn.Module, split: Split, *, device: torch.device, n: int = CHECK_POINTS) -> dict[str, float]:
    """Randomness, probability outputs, zero input gradients and the most-predicted class's share of ``model`` on the
    first ``n`` points.

    Runs in eval mode (BatchNorm statistics untouched) and restores the model's modes.
    """
    n = min(n, len(split))
    x, y = as_float(split.x[:n], device), split.y[:n].to(device)
    with eval_mode(model):
        with torch.no_grad():
            first, second = model(x).float(), model(x).float()
        x = x.clone().requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(x).float(), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x)

    def normalised(out: torch.Tensor) -> torch.Tensor:
        return out / (out.norm(dim=1, keepdim=True) + 1e-10)

    spread = (normalised(first) - normalised(second)).norm(dim=1).max()
    probabilities = ((first.min() > -PROBABILITY_TOLERANCE) & (first.max() < 1 + PROBABILITY_TOLERANCE)
                     & ((first.sum(1) - 1).abs() < PROBABILITY_TOLERANCE).all())
    zero = (grad.flatten(1).abs().sum(1) == 0).float().mean()
    predicted = first.argmax(1)
    top = torch.bincount(predicted).argmax()
    randomized, probs, zero_frac, top_share, top_labels = torch.stack([
        (spread > RANDOM_TOLERANCE).float(), probabilities.float(), zero, (predicted == top).float().mean(),
        (y == top).float().mean()]).tolist()
    return {"test_check_randomized": randomized, "test_check_probability_outputs": probs,
            "test_check_zero_grad_frac": zero_frac, "test_check_top_class_share": top_share,
            "test_check_top_class_labels": top_labels}


def attack_disagreement(correct: dict[str, torch.Tensor], prefix: str = "test_") -> dict[str, float]:
    """Per-point PGD against AutoAttack on the points both evaluated (the first n of the split): how many
    points PGD leaves robust (``test_shared_pgd_robust``), how many of those AutoAttack breaks
    (``test_shared_aa_breaks``), and the other way round (``test_shared_pgd_breaks``); empty without both."""
    pgd, aa = correct.get(f"{prefix}pgd"), correct.get(f"{prefix}aa")
    if pgd is None or aa is None:
        return {}
    n = min(len(pgd), len(aa))
    pgd, aa = pgd[:n].bool(), aa[:n].bool()
    counts = {"points": n, "pgd_robust": pgd.sum(), "aa_breaks": (pgd & ~aa).sum(), "pgd_breaks": (aa & ~pgd).sum()}
    return {f"{prefix}shared_{name}": float(count) for name, count in counts.items()}


def masking_suspected(pgd_robust: float, aa_breaks: float) -> bool:
    """True when AutoAttack broke at least ``MASKING_FRACTION`` of the (at least ``MASKING_MIN_POINTS``)
    shared points PGD left robust: the sign of a PGD figure inflated by gradient masking."""
    return pgd_robust >= MASKING_MIN_POINTS and aa_breaks >= MASKING_FRACTION * pgd_robust


def evaluation_warnings(metrics: dict[str, float]) -> list[str]:
    """Warnings about one checkpoint's stored test metrics (empty when the evaluation looks sound)."""
    out = []
    if metrics.get("test_check_randomized"):
        out.append("the model is randomised (two forward passes on the same input differ): deterministic "
                   "attacks overestimate its robustness; evaluate with EOT or AutoAttack's rand version")
    if metrics.get("test_check_probability_outputs"):
        out.append("the model outputs probabilities, not logits: cross-entropy attacks saturate and "
                   "overestimate robustness")
    if metrics.get("test_check_zero_grad_frac"):
        out.append(f"{metrics['test_check_zero_grad_frac']:.0%} of checked points have an exactly zero input "
                   "gradient: gradient masking makes gradient attacks unreliable")
    share, labels = metrics.get("test_check_top_class_share"), metrics.get("test_check_top_class_labels")
    if share is not None and labels is not None and share - labels >= COLLAPSE_EXCESS:
        out.append(f"the model gives one class to {share:.0%} of the checked points, which hold {labels:.0%} of it: "
                   "it has collapsed toward a constant classifier, whose output no attack can move, so its accuracy "
                   "under attack is not robustness")
    fgsm, pgd = metrics.get("test_fgsm_acc"), metrics.get("test_pgd_acc")
    if fgsm is not None and pgd is not None and pgd > fgsm + ACC_MARGIN:
        out.append(f"PGD leaves a higher accuracy ({pgd:.1%}) than FGSM ({fgsm:.1%}): the stronger attack "
                   "is weaker, a sign of gradient masking")
    square = metrics.get("test_aa_square_acc")
    before = [metrics[f"test_aa_{name}_acc"] for name in WHITE_BOX if f"test_aa_{name}_acc" in metrics]
    if square is not None and before and square < min(before) - SQUARE_MARGIN:
        out.append(f"the black-box Square attack lowered accuracy from {min(before):.1%} to {square:.1%} "
                   "after the white-box attacks: a sign of gradient masking")
    robust, broken = metrics.get("test_shared_pgd_robust"), metrics.get("test_shared_aa_breaks")
    if robust is not None and broken is not None and masking_suspected(robust, broken):
        out.append(f"AutoAttack broke {broken:.0f} of the {robust:.0f} test points PGD left robust "
                   f"({broken / robust:.0%}; at most {MASKING_FRACTION:.0%} is expected): the PGD accuracy "
                   "overstates robustness, a sign of gradient masking")
    return out
