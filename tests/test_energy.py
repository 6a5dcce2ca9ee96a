"""Energy definitions and the Delta Energy Regularizer."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from energybench.contracts.registry import get_plugin
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
    der = get_plugin("regularizer", "der")()
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
    der = get_plugin("regularizer", "der")()
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    out = fgsm.step(model, x, y, keep_clean_logits=der.uses_clean_logits)
    assert out.logits is not None and out.logits.requires_grad
    loss = out.loss + der.penalty(model, x, y, out)
    loss.backward()
    assert len(calls) == 2
    assert all(p.grad is not None for p in model.parameters())
