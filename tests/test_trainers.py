"""Built-in trainers and regularizers: short trainings on digits, x_adv constraints, loss formulas, costs."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from energybench.contracts.registry import create_regularizer, create_trainer, get_plugin, get_registry, list_plugins
from energybench.contracts.trainer import TrainOutput
from energybench.errors import EnergybenchError
from energybench.ops.perturb import kl_divergence, kl_pgd, random_start
from energybench.training.step import StepResult, TrainingStep

EPS = 0.1
TOL = 1e-5  # float rounding of (x + delta) - x


def builtin(kind: str) -> list[str]:
    """The built-in plugins of ``kind`` as the registry lists them (a new one is tested without editing a list)."""
    return [name for name in list_plugins(kind) if get_registry().entry(kind, name).builtin]


# forward+backward passes per example of one step, at the default hyper-parameters
PASSES = {"standard": 1, "fgsm": 2, "rs-fgsm": 2, "n-fgsm": 2, "pgd": 11, "trades": 12, "mart": 12, "weat": 12}
TRAINERS = builtin("trainer")
PROJECTED = [name for name in TRAINERS if name not in ("standard", "n-fgsm")]
REGULARIZERS = builtin("regularizer")
# the trainer each regularizer is tested with (default fgsm; AAER needs a random start, which FGSM lacks), and
# hyper-parameters that keep its penalty active in a short run (DER's default restricts it to abnormal adversarial
# examples, which FGSM at this eps hardly makes; aae="never" puts it on every sample)
REGULARIZER_TRAINER = {"none": "pgd", "aaer": "rs-fgsm"}
REGULARIZER_PARAMS = {"der": {"aae": "never"}}


def test_every_builtin_trainer_has_its_cost_listed():
    assert set(TRAINERS) == set(PASSES)


def regularizer_trainer(name: str) -> str:
    return REGULARIZER_TRAINER.get(name, "fgsm")


@functools.cache
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_digits()
    return torch.tensor(data.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16, torch.tensor(data.target)


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))


def trainer(name: str, eps: float = EPS, norm: str = "Linf", **params):
    return create_trainer(name, eps=eps, norm=norm, **params)


def regularizer(name: str, eps: float = EPS, norm: str = "Linf", **params):
    """Built as the training loop builds it: it learns the trainer's eps and norm."""
    return create_regularizer(name, trainer_eps=eps, trainer_norm=norm, **params)


def harness_step(train, reg=None) -> TrainingStep:
    """The training loop's own step (trainer + regularizer, clean logits, cost); no regularizer is `none`."""
    return TrainingStep(train, reg if reg is not None else regularizer("none"), num_classes=10)


def step(model, x, y, train, reg=None) -> tuple[torch.Tensor, TrainOutput]:
    """One step's total loss and the trainer's output, from the harness's ``TrainingStep``."""
    result = harness_step(train, reg)(model, x, y)
    return result.loss, result.out


def train(train, reg=None, steps: int = 60) -> tuple[list[float], list[tuple[torch.Tensor, StepResult]]]:
    """SGD on digits through the harness's ``TrainingStep``; returns the losses and, per step, the batch and
    the step's result (its ``out`` is the trainer's output, ``passes`` the cost the run records)."""
    x_all, y_all = digits()
    model = mlp().train()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    one_step = harness_step(train, reg)
    losses, batches = [], []
    for _ in range(steps):
        idx = torch.randint(0, 1400, (64,), generator=g)
        x, y = x_all[idx], y_all[idx]
        result = one_step(model, x, y)
        opt.zero_grad()
        result.loss.backward()
        opt.step()
        losses.append(result.loss.item())
        batches.append((x, result))
    return losses, batches


def decreased(losses: list[float]) -> bool:
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    return last < 0.8 * first


def linf(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).flatten(1).abs().amax(1)


@pytest.mark.parametrize("name", TRAINERS)
def test_training_decreases_loss_and_respects_box(name):
    train_ = trainer(name)
    losses, batches = train(train_)
    assert decreased(losses), losses
    for x, result in batches:
        out = result.out
        assert out.passes == PASSES[name] and result.passes == PASSES[name]  # `none` adds no pass
        assert torch.equal(result.loss, out.loss)  # and no penalty
        assert out.loss.dim() == 0
        if not train_.adversarial:
            assert out.x_adv is None
            continue
        assert out.x_adv.shape == x.shape and not out.x_adv.requires_grad
        assert out.logits_adv.grad_fn is not None
        assert out.x_adv.min() >= 0 and out.x_adv.max() <= 1
        bound = 3 * EPS if name == "n-fgsm" else EPS
        assert torch.all(linf(out.x_adv, x) <= bound + TOL)
        assert linf(out.x_adv, x).max() > 0.5 * EPS  # the attack did move the inputs


def test_n_fgsm_goes_beyond_eps():
    """N-FGSM's perturbation is not projected: it reaches past eps (up to (k + alpha) eps)."""
    _, batches = train(trainer("n-fgsm"), steps=3)
    assert max(linf(r.out.x_adv, x).max().item() for x, r in batches) > 1.5 * EPS
    _, batches = train(trainer("n-fgsm", k=0.5, alpha=0.5), steps=3)
    assert all(torch.all(linf(r.out.x_adv, x) <= EPS + TOL) for x, r in batches)


@pytest.mark.parametrize("name", PROJECTED)
def test_l2_trainers_stay_in_ball(name):
    x, y = digits()
    x, y = x[:32], y[:32]
    eps = 1.0
    _, out = step(mlp().train(), x, y, trainer(name, eps=eps, norm="L2"))
    assert torch.all((out.x_adv - x).flatten(1).norm(dim=1) <= eps + TOL)
    assert out.x_adv.min() >= 0 and out.x_adv.max() <= 1


def reference_kl(logits: torch.Tensor, logits_adv: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(p(x) || p(x*)) written the way the TRADES/MART/WEAT reference code writes it."""
    p = F.softmax(logits, dim=1)
    return (p * (torch.log(p) - torch.log(F.softmax(logits_adv, dim=1) + 1e-12))).sum(1)


def formula_case(name: str, **params):
    x, y = digits()
    x, y = x[:64], y[:64]
    model = mlp().train()
    _, out = step(model, x, y, trainer(name, **params))
    with torch.no_grad():
        logits, logits_adv = model(x), model(out.x_adv)
    assert out.logits is not None and out.logits.grad_fn is not None
    assert torch.allclose(out.logits, logits, atol=1e-6)
    return out, x, y, logits, logits_adv


def test_trades_loss_formula():
    out, x, y, logits, logits_adv = formula_case("trades", beta=3.0)
    expected = F.cross_entropy(logits, y) + 3.0 * reference_kl(logits, logits_adv).mean()
    assert torch.isclose(out.loss, expected, atol=1e-5)


def test_mart_loss_formula():
    out, x, y, logits, logits_adv = formula_case("mart")
    probs_adv = F.softmax(logits_adv, dim=1)
    top2 = probs_adv.argsort(dim=1)[:, -2:]
    new_y = torch.where(top2[:, -1] == y, top2[:, -2], top2[:, -1])
    bce = F.cross_entropy(logits_adv, y) + F.nll_loss(torch.log(1.0001 - probs_adv + 1e-12), new_y)
    true_probs = F.softmax(logits, dim=1).gather(1, y.unsqueeze(1)).squeeze(1)
    expected = bce + 6.0 * (reference_kl(logits, logits_adv) * (1.0000001 - true_probs)).mean()
    assert torch.isclose(out.loss, expected, atol=1e-5)


@pytest.mark.parametrize("variant", ["nat", "adv"])
def test_weat_loss_formula(variant):
    out, x, y, logits, logits_adv = formula_case("weat", variant=variant)
    weights = 1 / torch.log(1 + torch.exp(torch.abs(-torch.logsumexp(logits, dim=1))))
    ce = F.cross_entropy(logits if variant == "nat" else logits_adv, y, reduction="none")
    expected = (weights * (ce + 6.0 * reference_kl(logits, logits_adv))).sum() / x.shape[0]
    assert torch.isclose(out.loss, expected, atol=1e-5)


def test_weat_weights_are_detached():
    """Only the loss terms carry gradient, not the weights: compare with a hand-built detached version."""
    x, y = digits()
    x, y = x[:32], y[:32]
    model = mlp().train()
    out = trainer("weat", steps=1).step(model, x, y, keep_clean_logits=True)
    grads = torch.autograd.grad(out.loss, list(model.parameters()))
    logits, logits_adv = model(x), model(out.x_adv)
    weights = (1 / F.softplus(torch.logsumexp(logits, dim=1).abs())).detach()
    loss = (weights * (F.cross_entropy(logits, y, reduction="none") + 6.0 * reference_kl(logits, logits_adv))).mean()
    for a, b in zip(grads, torch.autograd.grad(loss, list(model.parameters()))):
        assert torch.allclose(a, b, atol=1e-6)


def test_kl_pgd_increases_the_kl():
    x, y = digits()
    x = x[:64]
    model = mlp().eval()
    x_star = kl_pgd(model, x, eps=EPS, step_size=EPS / 4, steps=10)
    with torch.no_grad():
        logits = model(x)
        x_rand = (x + random_start(x, EPS, "Linf")).clamp(0, 1)
        assert kl_divergence(logits, model(x_star)).mean() > 2 * kl_divergence(logits, model(x_rand)).mean()
    assert torch.all(linf(x_star, x) <= EPS + TOL) and x_star.min() >= 0 and x_star.max() <= 1


@pytest.mark.parametrize("name", REGULARIZERS)
def test_regularized_training_decreases_loss(name):
    train_, reg = trainer(regularizer_trainer(name)), regularizer(name, **REGULARIZER_PARAMS.get(name, {}))
    losses, batches = train(train_, reg)
    assert decreased(losses), losses
    for x, result in batches:
        out = result.out
        assert torch.all(linf(out.x_adv, x) <= EPS + TOL)
        assert out.x_adv.min() >= 0 and out.x_adv.max() <= 1
        assert result.passes == REGULARIZED_PASSES[name]
    # the penalty was part of what was minimised: the same training without it ends elsewhere (AAER acts only on
    # abnormal adversarial examples, which this short run does not make: test_der.py checks its penalty)
    if name not in ("none", "aaer"):
        plain, _ = train(trainer(regularizer_trainer(name)))
        assert plain != losses


# passes per example of the harness's step with each regularizer (and its trainer above): DER reuses FGSM's
# clean pass and makes no forward call, AAER the attack's start logits; GradAlign makes two (x and x + eta)
REGULARIZED_PASSES = {"none": PASSES["pgd"], "der": PASSES["fgsm"], "aaer": PASSES["rs-fgsm"],
                      "gradalign": PASSES["fgsm"] + 2}


@pytest.mark.parametrize("name, reg_params", [("der", {"aae": "never"}), ("gradalign", {})])
def test_training_step_adds_the_penalty_to_the_trainer_loss(name, reg_params):
    """The loss the loop back-propagates is the trainer's loss plus the regularizer's penalty on the same
    output, and its parameter gradient is their sum (not the trainer's alone)."""
    x, y = digits()
    x, y = x[:64], y[:64]
    model, reg = mlp().train(), regularizer(name, **reg_params)
    torch.manual_seed(0)
    result = harness_step(trainer(regularizer_trainer(name)), reg)(model, x, y)
    params = list(model.parameters())
    torch.manual_seed(1)  # GradAlign's noise is drawn afresh: its value differs, not its order of magnitude
    penalty = reg.penalty(model, x, y, result.out)
    if name == "der":  # deterministic given the trainer's output: exactly the harness's term
        assert torch.allclose(result.loss - result.out.loss, penalty, atol=1e-6)
    assert (result.loss - result.out.loss).item() > 1e-4
    total = torch.autograd.grad(result.loss, params, retain_graph=True)
    trainer_only = torch.autograd.grad(result.out.loss, params, retain_graph=True)
    assert any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(total, trainer_only))
    if name == "der":
        # from scratch, on the attack's x*: FGSM's CE at x* plus DER's published form, both energies live
        logits, logits_adv = model(x), model(result.out.x_adv)
        d = torch.stack([torch.logsumexp(logits_adv, 1) - torch.logsumexp(logits, 1),
                         logits_adv.gather(1, y[:, None])[:, 0] - logits.gather(1, y[:, None])[:, 0]], 1)
        reference = F.cross_entropy(logits_adv, y) + reg.params.beta * d.norm(dim=1).mean()
        for a, b in zip(total, torch.autograd.grad(reference, params)):
            assert torch.allclose(a, b, atol=1e-5)


def test_gradalign_with_a_clean_trainer():
    """GradAlign needs only (x, y): it works with the standard trainer, and its penalty is in [0, 2 lam]."""
    reg = regularizer("gradalign", **{"lambda": 0.5})
    assert reg.requires_adversarial is False
    losses, _ = train(trainer("standard"), reg)
    assert decreased(losses), losses
    x, y = digits()
    model = mlp().train()
    out = trainer("standard").step(model, x[:64], y[:64], keep_clean_logits=False)
    penalty = reg.penalty(model, x[:64], y[:64], out)
    assert 0 <= penalty.item() <= 1.0
    grads = torch.autograd.grad(penalty, list(model.parameters()), allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in grads)  # differentiated through (create_graph)


def test_gradalign_eps():
    reg = get_plugin("regularizer", "gradalign")()
    x, y = digits()
    model = mlp()
    out = trainer("standard").step(model, x[:8], y[:8], keep_clean_logits=False)
    with pytest.raises(EnergybenchError, match="eps"):
        reg.penalty(model, x[:8], y[:8], out)
    reg.eps = EPS  # set by the harness from the trainer
    assert reg.penalty(model, x[:8], y[:8], out).item() >= 0
    fixed = get_plugin("regularizer", "gradalign")(eps=0.05, lam=0.1)
    fixed.eps = 0.3
    assert fixed.params.eps == 0.05 and fixed.params.lam == 0.1
    with pytest.raises(EnergybenchError):
        get_plugin("regularizer", "gradalign")(eps=-1.0)
    l2 = regularizer("gradalign", eps=1.0, norm="L2")
    assert 0 <= l2.penalty(model, x[:8], y[:8], out).item() <= 2 * 0.2


def test_none_regularizer_is_zero():
    reg = regularizer("none")
    assert reg.requires_adversarial is False
    x, y = digits()
    model = mlp()
    out = trainer("standard").step(model, x[:8], y[:8], keep_clean_logits=False)
    assert reg.penalty(model, x[:8], y[:8], out).item() == 0.0


def test_hyper_parameters_validated():
    with pytest.raises(EnergybenchError, match="unknown hyper-parameter"):
        trainer("trades", gamma=1.0)
    with pytest.raises(EnergybenchError):
        trainer("weat", variant="both")
    assert trainer("n-fgsm").params.k == 2.0 and trainer("n-fgsm").params.alpha == 1.0
    assert trainer("trades").params.beta == 6.0 and trainer("mart").params.beta == 6.0
    assert regularizer("gradalign").params.lam == 0.2
