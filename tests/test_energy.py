"""Energy definitions and the Delta Energy Regularizer."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from energybench.contracts.registry import create_model, create_regularizer, create_trainer, get_plugin
from energybench.contracts.trainer import TrainOutput
from energybench.ops.energy import EnergyTrace, delta_energy, joint_energy, marginal_energy, summarize


def test_energies_match_their_definitions_and_cross_entropy():
    torch.manual_seed(0)
    logits, y = torch.randn(6, 4), torch.randint(0, 4, (6,))
    assert torch.allclose(marginal_energy(logits), -torch.log(torch.exp(logits).sum(1)))
    assert torch.allclose(joint_energy(logits, y), -logits[torch.arange(6), y])
    ce = F.cross_entropy(logits, y, reduction="none")
    assert torch.allclose(ce, joint_energy(logits, y) - marginal_energy(logits), atol=1e-6)


def test_delta_energy_sign_is_clean_minus_adversarial():
    clean, adv = torch.tensor([[2.0, 0.0]]), torch.tensor([[5.0, 0.0]])  # x* has lower (more negative) energy
    assert delta_energy(clean, adv).item() > 0
    assert torch.allclose(delta_energy(clean, adv, torch.tensor([0])), torch.tensor([3.0]))


def test_summary_and_trace_statistics():
    stats = summarize(torch.arange(101.0), prefix="x_")
    assert stats["x_mean"] == 50 and stats["x_q50"] == 50 and stats["x_q05"] == 5
    trace = EnergyTrace()
    trace.add(torch.zeros(3, 2), torch.ones(3, 2), torch.tensor([0, 1, 0]))
    out = trace.summary(prefix="train_")
    assert abs(out["train_dE_mean"] - 1.0) < 1e-6 and abs(out["train_dE_joint_mean"] - 1.0) < 1e-6


def _out(logits, logits_adv):
    return TrainOutput(loss=torch.zeros(()), x_adv=torch.zeros(1), logits_adv=logits_adv, logits=logits)


def test_der_forms_terms_and_lambda():
    der_cls = get_plugin("regularizer", "der")
    logits = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    logits_adv = torch.tensor([[3.0, 0.0], [0.0, 1.0]], requires_grad=True)
    y = torch.tensor([0, 1])
    d_m = delta_energy(logits, logits_adv)
    d_j = delta_energy(logits, logits_adv, y)
    cases = {("squared", "marginal"): d_m.pow(2).mean(), ("absolute", "marginal"): d_m.abs().mean(),
             ("squared", "joint"): d_j.pow(2).mean(), ("squared", "both"): d_m.pow(2).mean() + d_j.pow(2).mean(),
             ("huber", "joint"): F.huber_loss(d_j, torch.zeros(2))}
    for (form, terms), expected in cases.items():
        der = der_cls(**{"lambda": 2.5, "form": form, "terms": terms})
        assert torch.allclose(der.penalty(None, None, y, _out(logits, logits_adv)), 2.5 * expected)


def test_der_gradient_flows_through_both_energies():
    der = create_regularizer("der", trainer_single_step=False)  # every sample
    logits = torch.randn(4, 3, requires_grad=True)
    logits_adv = torch.randn(4, 3, requires_grad=True)
    der.penalty(None, None, torch.zeros(4, dtype=torch.long), _out(logits, logits_adv)).backward()
    assert logits.grad.abs().sum() > 0 and logits_adv.grad.abs().sum() > 0


def test_fgsm_with_der_reuses_the_clean_forward_pass():
    """FGSM+DER costs the same number of forward passes as FGSM alone (two per step)."""
    from energybench.plugins.models.small_cnn import SmallCNN

    model = SmallCNN(10, 1, [0.5], [0.5])
    calls = []
    model.register_forward_hook(lambda *_: calls.append(1))
    fgsm = get_plugin("trainer", "fgsm")(eps=0.1)
    der = create_regularizer("der", trainer_single_step=fgsm.single_step)
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    out = fgsm.step(model, x, y, keep_clean_logits=der.uses_clean_logits)
    assert out.logits is not None and out.logits.requires_grad
    (out.loss + der.penalty(model, x, y, out)).backward()
    assert len(calls) == 2


def paper_der(model, x, x_adv, y, *, beta, gamma, aae):
    """DER's published form (docs/references.md, "The paper"), written from fresh forward passes of ``model``:
    beta * mean_i 1[AAE_i] * max(||(dE(x_i), dE(x_i, y_i))||_2 - gamma, 0), with E(x) = -logsumexp f(x),
    E(x, y) = -f(x)[y], dE = E(x) - E(x*); AAE: the CE at x* is below the CE at x (FGSM starts at x)."""
    logits, logits_adv = model(x), model(x_adv)
    d_marginal = torch.logsumexp(logits_adv, 1) - torch.logsumexp(logits, 1)
    d_joint = logits_adv[torch.arange(len(y)), y] - logits[torch.arange(len(y)), y]
    norm = torch.sqrt(d_marginal ** 2 + d_joint ** 2)
    per_sample = torch.clamp(norm - gamma, min=0)
    mask = torch.ones_like(norm)
    if aae:
        with torch.no_grad():
            mask = (F.cross_entropy(logits_adv, y, reduction="none") < F.cross_entropy(logits, y, reduction="none"))
        per_sample = per_sample * mask
    return beta * per_sample.mean(), norm.detach(), mask


@pytest.mark.parametrize("aae, eps, gamma", [("never", 0.1, 0.035), ("auto", 1.0, 0.05)])
def test_der_changes_the_gradient_by_exactly_its_penalty_gradient(aae, eps, gamma):
    """On the small CNN: grad(CE + DER) - grad(CE) equals grad of DER's paper form computed on its own,
    and is far from zero. ``auto`` with FGSM keeps only abnormal adversarial examples (eps 1.0: an
    untrained model makes some)."""
    data = load_digits()
    x = torch.tensor(data.data[:64], dtype=torch.float32).view(-1, 1, 8, 8) / 16
    y = torch.tensor(data.target[:64])
    torch.manual_seed(0)
    model = create_model("small-cnn", dataset="digits").train()
    params = list(model.parameters())
    beta = 2.0  # gamma: about the median norm of the two delta energies, so the hinge cuts some samples
    der = create_regularizer("der", beta=beta, gamma=gamma, aae=aae, trainer_single_step=True)  # FGSM
    out = create_trainer("fgsm", eps=eps).step(model, x, y, keep_clean_logits=der.uses_clean_logits)
    ce_grad = torch.autograd.grad(out.loss, params, retain_graph=True)
    total_grad = torch.autograd.grad(out.loss + der.penalty(model, x, y, out), params)

    reference, norm, mask = paper_der(model, x, out.x_adv, y, beta=beta, gamma=gamma, aae=aae == "auto")
    if aae == "auto":
        assert 0 < int(mask.sum()) < len(y)  # some abnormal examples, not all
    counted = norm[mask.bool()]
    assert bool((counted < gamma).any()) and bool((counted > gamma).any())  # both sides of the hinge
    reference_grad = torch.autograd.grad(reference, params)
    difference = [t - c for t, c in zip(total_grad, ce_grad)]
    for d, r in zip(difference, reference_grad):
        assert torch.allclose(d, r, rtol=1e-4, atol=1e-6)
    assert sum(d.abs().sum() for d in difference) > 1e-3 * sum(c.abs().sum() for c in ce_grad)
