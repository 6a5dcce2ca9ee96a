"""Built-in attacks: eps-ball and [0, 1] box, train/eval mode untouched, success, agreement with pyautoattack."""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pyautoattack import AutoAttack
from sklearn.datasets import load_digits
from torch import nn

from energybench.contracts.registry import get_plugin

ATTACKS = ["fgsm", "pgd", "rs-fgsm", "n-fgsm", "cw", "apgd-ce", "apgd-t", "fab-t", "square", "autoattack"]
# pyautoattack-backed plugins and the custom attack list each one runs
AUTOATTACK_BACKED = {"apgd-ce": ["apgd-ce"], "apgd-t": ["apgd-t"], "fab-t": ["fab-t"], "square": ["square"]}
SLOW = set(AUTOATTACK_BACKED) | {"autoattack"}
EPS_RANGE = {"Linf": (0.01, 0.5), "L2": (0.1, 4.0), "L1": (0.5, 20.0)}
# pyautoattack's attacks run to their full budget (Square: 5000 queries) while a point stays robust: in the
# property test they get radii at which the random model below loses almost every point quickly; smaller
# radii are covered on digits by the agreement tests.
SLOW_EPS_RANGE = {"Linf": (0.2, 0.5), "L2": (2.0, 4.0), "L1": (8.0, 20.0)}
TOL = 1e-5  # float rounding of (x + delta) - x; the output guard (contracts/guard.py) allows the same


def make(name: str, model: nn.Module, eps: float, norm: str = "Linf", **params):
    """The attack ``name`` through the registry, with pyautoattack's internal batches kept small."""
    if name in SLOW:
        params.setdefault("batch_size", 16)
    return get_plugin("attack", name)(model, eps=eps, norm=norm, seed=0, **params)


def distance(x_adv: torch.Tensor, x: torch.Tensor, norm: str) -> torch.Tensor:
    d = (x_adv - x).flatten(1)
    return {"Linf": d.abs().amax(1), "L2": d.norm(dim=1), "L1": d.abs().sum(1)}[norm]


@functools.cache
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_digits()
    return torch.tensor(data.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16, torch.tensor(data.target)


@functools.cache
def undefended() -> nn.Module:
    """A small MLP trained normally on 1400 digits (about 97% clean accuracy on the points below)."""
    x, y = digits()
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        idx = torch.randint(0, 1400, (64,), generator=g)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def held_out(n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = digits()
    return x[1400:1400 + n], y[1400:1400 + n]


@functools.cache
def random_linear() -> nn.Module:
    torch.manual_seed(1)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()


class ModeSpy(nn.Module):
    """Identity that records the train/eval flag it sees at every forward pass."""

    def __init__(self):
        super().__init__()
        self.seen: set[bool] = set()

    def forward(self, x):
        self.seen.add(self.training)
        return x


def bn_model() -> nn.Sequential:
    torch.manual_seed(2)
    return nn.Sequential(ModeSpy(), nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                         nn.Linear(4 * 8 * 8, 10))


@st.composite
def cases(draw, norms, ranges):
    """Random inputs with many pixels exactly on the box faces, labels the model predicts, a norm and eps."""
    norm = draw(st.sampled_from(norms))
    eps = draw(st.floats(*ranges[norm]))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    x = torch.rand(4, 1, 8, 8, generator=g)
    u = torch.rand(x.shape, generator=g)
    x = torch.where(u < 0.2, 0.0, torch.where(u > 0.8, 1.0, x))
    with torch.no_grad():
        y = random_linear()(x).argmax(1)
    return x, y, norm, eps


@pytest.mark.parametrize("name", ATTACKS)
def test_stays_in_ball_and_box(name):
    cls = get_plugin("attack", name)

    @settings(max_examples=3 if name in SLOW else 15, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow])
    @given(cases(cls.norms, SLOW_EPS_RANGE if name in SLOW else EPS_RANGE))
    def check(case):
        x, y, norm, eps = case
        x_adv = make(name, random_linear(), eps, norm)(x, y)
        assert x_adv.shape == x.shape and not x_adv.requires_grad
        assert torch.all(distance(x_adv, x, norm) <= eps * (1 + TOL) + TOL)
        assert x_adv.min() >= -TOL and x_adv.max() <= 1 + TOL  # slack as the guard: Square may land 1 ulp past 1

    check()


def test_norms_supported():
    for name in ATTACKS:
        assert {"Linf", "L2"} <= set(get_plugin("attack", name).norms)


@pytest.mark.parametrize("name", ATTACKS)
def test_train_mode_left_alone(name):
    model = bn_model().train()
    x, y = held_out(8)
    x_adv = make(name, model, 0.5)(x, y)
    assert all(m.training for m in model.modules())
    assert model[0].seen == {True}
    assert x_adv.shape == x.shape


@pytest.mark.parametrize("name", ATTACKS)
def test_eval_mode_and_buffers_left_alone(name):
    model = bn_model()
    model.train()(torch.rand(16, 1, 8, 8))  # non-trivial running statistics
    model.eval()
    model[0].seen.clear()
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    x, y = held_out(8)
    make(name, model, 0.5)(x, y)
    assert not any(m.training for m in model.modules())
    assert model[0].seen == {False}
    for key, value in model.named_buffers():
        assert torch.equal(value, buffers[key]), key


@pytest.mark.parametrize("name", ATTACKS)
def test_fools_an_undefended_model(name):
    model = undefended()
    x, y = held_out(32)
    x_adv = make(name, model, 0.2)(x, y)
    with torch.no_grad():
        clean = (model(x).argmax(1) == y).float().mean().item()
        robust = (model(x_adv).argmax(1) == y).float().mean().item()
    assert clean > 0.9
    assert robust < 0.5 * clean


@pytest.mark.parametrize("name", ["pgd", "cw", "rs-fgsm"])
def test_l2_fools_an_undefended_model(name):
    model = undefended()
    x, y = held_out(32)
    x_adv = make(name, model, 2.0, "L2")(x, y)
    with torch.no_grad():
        robust = (model(x_adv).argmax(1) == y).float().mean().item()
    assert robust < 0.5


def direct_autoattack(model, x, y, eps, **kwargs):
    adversary = AutoAttack(model, eps=eps, seed=0, device="cpu", **kwargs)
    return adversary.run_standard_evaluation(x, y, batch_size=16)


@pytest.mark.parametrize("name", sorted(AUTOATTACK_BACKED))
def test_matches_pyautoattack(name):
    model = undefended()
    x, y = held_out(16)
    eps = 0.1  # some points fall, some stay robust
    x_ref, y_ref = direct_autoattack(model, x, y, eps, attacks=AUTOATTACK_BACKED[name], version="custom")
    x_adv = make(name, model, eps)(x, y)
    assert torch.equal(x_adv, x_ref)
    assert torch.all(distance(x_adv, x, "Linf") <= eps + TOL) and x_adv.min() >= 0 and x_adv.max() <= 1
    with torch.no_grad():
        robust = model(x_adv).argmax(1) == y
    assert torch.equal(robust, y_ref == y)
    assert 0 < robust.float().mean() < (model(x).argmax(1) == y).float().mean()


def test_autoattack_plugin_matches_pyautoattack():
    model = undefended()
    x, y = held_out(16)
    attacks = ["apgd-ce", "apgd-t"]
    x_ref, y_ref = direct_autoattack(model, x, y, 0.1, attacks=attacks, version="custom")
    x_adv = make("autoattack", model, 0.1, attacks=attacks)(x, y)
    assert torch.equal(x_adv, x_ref)
    assert torch.equal(model(x_adv).argmax(1) == y, y_ref == y)
    # the standard version (at an eps where APGD-CE already fools every point, so it stays fast)
    x_ref, y_ref = direct_autoattack(model, x, y, 0.3, version="standard")
    x_adv = make("autoattack", model, 0.3)(x, y)
    assert torch.equal(x_adv, x_ref)
    assert torch.equal(model(x_adv).argmax(1) == y, y_ref == y)


@pytest.mark.parametrize("norm, inside, outside", [
    ("Linf", torch.full((1, 16), 0.1), torch.full((1, 16), 0.12)),
    ("L2", torch.full((1, 16), 0.1), torch.full((1, 16), 0.2)),  # L2 norms 0.4 and 0.8
    ("L1", torch.full((1, 16), 0.05), torch.full((1, 16), 0.1)),  # L1 norms 0.8 and 1.6; L2 only 0.2 and 0.4
])
def test_the_output_guard_measures_each_norm_by_its_own_ball(norm, inside, outside):
    from energybench.contracts.guard import attack_output_problem

    eps = {"Linf": 0.1, "L2": 0.5, "L1": 1.0}[norm]
    x = torch.full((1, 1, 4, 4), 0.5)
    assert attack_output_problem(x, x + inside.view_as(x), eps, norm) is None
    problem = attack_output_problem(x, x + outside.view_as(x), eps, norm)
    assert problem is not None and f"in {norm}, outside the eps-ball (eps={eps:g})" in problem


def test_pgd_restarts_keep_each_points_worst_case():
    """PGD with 3 restarts against its restarts run one at a time from the same random draws: a point is
    fooled when any restart fools it (the first such restart's x* is returned), else the restart with the
    highest loss is kept; at this small budget later restarts fool points the first one missed."""
    model, (x, y) = undefended(), held_out(200)
    eps, steps, restarts = 0.06, 2, 3
    torch.manual_seed(5)
    x_adv = make("pgd", model, eps, steps=steps, restarts=restarts)(x, y)
    torch.manual_seed(5)
    singles = torch.stack([make("pgd", model, eps, steps=steps)(x, y) for _ in range(restarts)])  # (R, N, ...)
    with torch.no_grad():
        logits = torch.stack([model(s) for s in singles])
        loss = torch.stack([F.cross_entropy(z, y, reduction="none") for z in logits])
        fooled = logits.argmax(2) != y
        robust = model(x_adv).argmax(1) == y
    assert torch.equal(robust, ~fooled.any(0))
    assert int((~fooled[0] & fooled.any(0)).sum()) > 0  # restarts matter here
    chosen = torch.where(fooled.any(0), fooled.float().argmax(0), loss.argmax(0))
    assert torch.equal(x_adv, singles[chosen, torch.arange(len(y))])
