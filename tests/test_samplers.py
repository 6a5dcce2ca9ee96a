"""Sampler plugins and the shared energy-descent loop, on sklearn's 8x8 digits and a small CNN."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from energybench.contracts.registry import get_plugin
from energybench.errors import EnergybenchError
from energybench.ops.energy import joint_energy
from energybench.ops.sampling import energy_descent

NAMES = ["sgld", "class-gaussian", "class-pca", "local-pca"]
# local-pca with guidance=0 is plain energy descent; its guided default is tested on its own below.
PLAIN = {"sgld": {}, "class-gaussian": {}, "class-pca": {}, "local-pca": {"guidance": 0.0, "tol": 0.0}}


@pytest.fixture(scope="module")
def digits():
    """The digits in [0, 1] and a small CNN trained on them for a few seconds (eval mode)."""
    torch.manual_seed(0)
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16
    y = torch.tensor(d.target)
    model = get_plugin("model", "small-cnn")(num_classes=10, in_channels=1, mean=[0.3], std=[0.4], width=8)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(5):
        for idx in torch.randperm(len(x)).split(128):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    opt.zero_grad()
    return model.eval(), x, y


def make(name, digits, **params):
    model, x, y = digits
    sampler = get_plugin("sampler", name)(**params)
    sampler.fit(model, x, y)
    return sampler


def draw(sampler, model, y, seed=0):
    return sampler.sample(model, y, torch.Generator().manual_seed(seed))


LABELS = torch.arange(10).repeat(4)


@pytest.mark.parametrize("name", NAMES)
def test_sampler_lowers_energy_and_keeps_the_contract(name, digits):
    model, _, _ = digits
    start = draw(make(name, digits, steps=0, **PLAIN[name]), model, LABELS)
    batch = draw(make(name, digits, steps=30, **PLAIN[name]), model, LABELS)
    assert batch.x.shape == (len(LABELS), 1, 8, 8) and batch.x.min() >= 0 and batch.x.max() <= 1
    assert torch.equal(batch.y, LABELS)
    assert batch.steps.shape == (len(LABELS),) and not batch.steps.is_floating_point()
    assert (batch.steps == 30).all() and (start.steps == 0).all()
    with torch.no_grad():
        assert torch.allclose(batch.energy, joint_energy(model(batch.x), LABELS), atol=1e-5)
    assert batch.energy.mean() < start.energy.mean() - 1


@pytest.mark.parametrize("name", NAMES)
def test_sampler_is_reproducible_under_a_seed(name, digits):
    model, _, _ = digits
    sampler = make(name, digits, steps=10)
    a, b, c = draw(sampler, model, LABELS, 1), draw(sampler, model, LABELS, 1), draw(sampler, model, LABELS, 2)
    assert torch.equal(a.x, b.x) and torch.equal(a.steps, b.steps) and torch.equal(a.energy, b.energy)
    assert not torch.equal(a.x, c.x)


@pytest.mark.parametrize("name", NAMES)
def test_sampler_leaves_the_model_alone(name, digits):
    model, _, _ = digits
    before = {k: v.clone() for k, v in model.state_dict().items()}
    draw(make(name, digits, steps=3), model, LABELS)
    assert not model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_sample_before_fit_is_a_clear_error(digits):
    model, _, _ = digits
    with pytest.raises(EnergybenchError, match="fit"):
        get_plugin("sampler", "sgld")().sample(model, LABELS, torch.Generator())
    with pytest.raises(EnergybenchError, match="steps"):
        get_plugin("sampler", "local-pca")(steps=-1)


def test_adaptive_stopping_freezes_samples_at_the_class_energy(digits):
    model, _, _ = digits
    sampler = make("local-pca", digits, steps=60, tol=0.1)
    start = draw(make("local-pca", digits, steps=0), model, LABELS)
    batch = draw(sampler, model, LABELS)
    mu = sampler.mu[LABELS]
    assert (batch.steps < 60).any() and (batch.steps > 0).any() and batch.steps.max() <= 60
    stopped = batch.steps < 60
    assert ((batch.energy[stopped] - mu[stopped]) ** 2 < 0.1).all()  # frozen only once within tolerance
    assert ((batch.energy - mu) ** 2).mean() < ((start.energy - mu) ** 2).mean()


def test_class_mean_energy_is_the_mean_over_real_images(digits):
    model, x, y = digits
    sampler = make("local-pca", digits)
    with torch.no_grad():
        e = joint_energy(model(x[y == 3]), y[y == 3])
    assert sampler.mu[3].item() == pytest.approx(e.mean().item(), abs=1e-4)


def test_pca_start_reproduces_the_class_mean_on_average(digits):
    model, x, y = digits
    start = draw(make("class-pca", digits, steps=0), model, torch.full((2000,), 3))
    assert (start.x.mean(0) - x[y == 3].mean(0)).abs().max() < 0.01
    assert start.x.std(0).mean() > 0.005  # a distribution, not the mean image repeated


def test_local_pca_start_without_noise_is_the_neighbourhood_mean(digits):
    model, x, y = digits
    whole_class = int((y == 3).sum())
    start = draw(make("local-pca", digits, steps=0, scale=0.0, k=whole_class), model, torch.full((5,), 3))
    assert torch.allclose(start.x, x[y == 3].mean(0).expand(5, -1, -1, -1), atol=1e-5)


def test_energy_descent_applies_the_documented_update():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    x0, y = torch.rand(5, 1, 2, 2) * 0.5 + 0.25, torch.tensor([0, 1, 2, 0, 1])
    out = energy_descent(model, x0, y, torch.Generator(), steps=2, step_size=0.1, momentum=0.5)
    grad = -model[1].weight[y].view(5, 1, 2, 2).detach()  # E = -f_y is linear in x
    v1 = -0.1 * grad
    expected = (x0 + v1 + (0.5 * v1 - 0.1 * grad)).clamp(0, 1)
    assert torch.allclose(out.x, expected, atol=1e-6) and (out.steps == 2).all()
