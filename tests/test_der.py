"""DER in the paper's form, its abnormal-example mask, AAER, and what the harness does around them."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from energybench import TrainOutput, create_regularizer, get_plugin
from energybench.contracts.regularizer import forward_calls
from energybench.contracts.trainer import Trainer
from energybench.errors import EnergybenchError, PluginError
from energybench.storage.migrations import current_config
from energybench.training.step import TrainingStep

LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 0.2], [1.5, 1.5, 0.0], [-0.3, 0.8, 2.2]])
LOGITS_ADV = torch.tensor([[1.0, 1.5, -0.5], [0.3, 0.4, 0.9], [1.4, 1.6, 0.1], [0.5, 0.1, 1.0]])
LOGITS_START = torch.tensor([[2.2, 0.4, -1.0], [0.1, 0.2, 1.5], [1.5, 1.5, 0.0], [0.6, 0.0, 1.2]])
Y = torch.tensor([0, 1, 0, 2])


def der(single_step: bool | None = True, **params):
    """DER as the harness builds it for a single-step trainer (``single_step=False``: a multi-step one)."""
    return create_regularizer("der", trainer_single_step=single_step, **params)


def by_hand(beta: float, gamma: float, mask: list[bool] | None) -> float:
    """The published form written out sample by sample with plain floats."""
    total = 0.0
    for i in range(len(Y)):
        e, e_adv = -torch.logsumexp(LOGITS[i], 0).item(), -torch.logsumexp(LOGITS_ADV[i], 0).item()
        ej, ej_adv = -LOGITS[i, Y[i]].item(), -LOGITS_ADV[i, Y[i]].item()
        norm = ((e - e_adv) ** 2 + (ej - ej_adv) ** 2) ** 0.5
        if mask is None or mask[i]:
            total += max(norm - gamma, 0.0)
    return beta * total / len(Y)


def abnormal_by_hand() -> list[bool]:
    return [F.cross_entropy(LOGITS_ADV[i:i + 1], Y[i:i + 1]).item()
            < F.cross_entropy(LOGITS_START[i:i + 1], Y[i:i + 1]).item() for i in range(len(Y))]


def test_the_published_form_on_hand_computed_logits():
    out = TrainOutput(loss=torch.zeros(()), logits=LOGITS, logits_adv=LOGITS_ADV, logits_start=LOGITS_START)
    mask = abnormal_by_hand()
    assert 0 < sum(mask) < len(Y)  # the example has both kinds of samples
    assert out.abnormal(Y).tolist() == mask
    for beta, gamma in ((1.0, 0.0), (2.5, 0.3), (0.5, 10.0)):
        value = der(beta=beta, gamma=gamma).penalty(None, None, Y, out).item()
        assert value == pytest.approx(by_hand(beta, gamma, mask), rel=1e-6)  # auto: single-step output, masked
        value = der(beta=beta, gamma=gamma, aae="never").penalty(None, None, Y, out).item()
        assert value == pytest.approx(by_hand(beta, gamma, None), rel=1e-6)
    assert der(beta=1.0, gamma=10.0).penalty(None, None, Y, out).item() == 0.0  # every norm below the margin
    multi_step = TrainOutput(loss=torch.zeros(()), logits=LOGITS, logits_adv=LOGITS_ADV)  # no logits_start
    assert der(False, beta=2.0, gamma=0.3).penalty(None, None, Y, multi_step).item() == pytest.approx(
        by_hand(2.0, 0.3, None))


def test_der_and_aaer_report_the_share_of_the_batch_they_acted_on():
    """DER under the mask acts on the abnormal adversarial examples whose dE norm exceeds gamma, on every sample
    with a dE norm above gamma without it, and its ablations on every sample with a non-zero dE; AAER on its AAEs
    (m/n when 0 < m < n); each names what it counts."""
    out = TrainOutput(loss=torch.zeros(()), logits=LOGITS, logits_adv=LOGITS_ADV, logits_start=LOGITS_START)
    mask = abnormal_by_hand()
    masked = der(beta=1.0, gamma=0.0)
    masked.penalty(None, None, Y, out)
    assert float(masked.acted) == sum(mask) / len(Y) and masked.acts_on == "abnormal adversarial examples"
    everywhere = der(beta=1.0, gamma=0.0, aae="never")
    everywhere.penalty(None, None, Y, out)
    assert float(everywhere.acted) == 1.0 and everywhere.acts_on == "samples with a non-zero dE term"
    high_margin = der(beta=1.0, gamma=10.0)
    assert high_margin.penalty(None, None, Y, out).item() == 0.0 and float(high_margin.acted) == 0.0
    ablation = der(form="squared", terms="both")
    ablation.penalty(None, None, Y, out)
    assert float(ablation.acted) == 1.0
    aaer = create_regularizer("aaer")
    aaer.penalty(None, None, Y, out)
    assert float(aaer.acted) == sum(mask) / len(Y) and aaer.acts_on == "abnormal adversarial examples"


def test_der_that_never_acts_in_a_run_is_said_so(capsys, tmp_path):
    """FGSM from zero on digits at eps 0.1 makes no abnormal adversarial example, so DER's penalty stays 0 and the
    run is FGSM alone, bit for bit: each epoch line says DER acted on 0%, the run warns, the leaderboard marks it
    (never acted), and the stored epochs and results say so."""
    from datafiles import run_cli

    from energybench.storage.store import Store

    common = ["--track", "digits-tiny", "--epochs", "1", "--n-train", "512", "--aa-points", "0", "--store", tmp_path]
    code, out, err = run_cli(capsys, "run", "--reg", "der", "-R", "beta=30", *common)
    assert code == 0, err
    assert "der 0 on 0.0% (abnormal adversarial examples)" in err
    assert "warning: regularizer 'der' never acted: its penalty was 0 in every batch of the run, acted on no " \
           "abnormal adversarial examples, so this run trained exactly as 'fgsm' alone would" in " ".join(err.split())
    store = Store(tmp_path)
    (run,) = store.runs()
    first = store.epochs(run.id)[0]
    assert (first["train_reg_penalty"], first["train_reg_acted"], first["train_reg_active"]) == (0.0, 0.0, 0.0)
    assert store.results(run.id)["last"]["train_reg_active"] == 0.0
    assert "│ fgsm + der (never acted) │" in next(line for line in out.splitlines() if run.id in line)
    code, out, err = run_cli(capsys, "run", *common)
    (plain,) = [r for r in store.runs() if r.regularizer == "none"]
    alone, with_der = store.results(plain.id)["last"], store.results(run.id)["last"]
    assert {k: with_der[k] for k in alone} == alone  # every test metric, bit for bit
    assert "train_reg_penalty" not in store.epochs(plain.id)[0]  # no regularizer, nothing to report


def test_auto_decides_on_the_trainers_single_step_not_on_what_its_output_holds():
    # a multi-step trainer that happens to report start logits: auto still means every sample
    out = TrainOutput(loss=torch.zeros(()), logits=LOGITS, logits_adv=LOGITS_ADV, logits_start=LOGITS_START)
    assert der(False, beta=2.0).penalty(None, None, Y, out).item() == pytest.approx(by_hand(2.0, 0.0, None))
    assert der(True, beta=2.0).penalty(None, None, Y, out).item() == pytest.approx(by_hand(2.0, 0.0,
                                                                                           abnormal_by_hand()))
    # built without a trainer, auto cannot decide: refused with one line, not guessed
    with pytest.raises(EnergybenchError, match=r"aae='auto' .* trainer_single_step=True\|False"):
        get_plugin("regularizer", "der")().penalty(None, None, Y, out)
    assert "\n" not in str(pytest.raises(EnergybenchError, der(None).penalty, None, None, Y, out).value)
    assert der(None, aae="never").penalty(None, None, Y, out).item() == pytest.approx(by_hand(30.0, 0.0, None))


class _SingleStepWithoutStart(Trainer):
    """A third-party single-step trainer that does not report the logits at its attack's start."""

    single_step = True

    def step(self, model, x, y, *, keep_clean_logits):
        fgsm = get_plugin("trainer", "fgsm")(eps=self.eps).step(model, x, y, keep_clean_logits=keep_clean_logits)
        return TrainOutput(loss=fgsm.loss, x_adv=fgsm.x_adv, logits_adv=fgsm.logits_adv, logits=fgsm.logits,
                           passes=fgsm.passes)


def test_a_single_step_trainer_without_start_logits_is_refused_not_given_der_on_every_sample():
    trainer = _SingleStepWithoutStart(eps=0.1)
    trainer.name = "my-fgsm"
    x, y = torch.rand(8, 1, 3, 4), torch.randint(0, 3, (8,))
    step = TrainingStep(trainer, der(trainer.single_step), num_classes=3)
    with pytest.raises(PluginError) as caught:
        step(_net(), x, y)
    message = str(caught.value)
    assert message.startswith("trainer 'my-fgsm' broke its contract: it returned no TrainOutput.logits_start")
    assert "regularizer 'der' needs them" in message and "\n" not in message
    # what needs no start logits still trains with it: DER on every sample, and no regularizer
    for regularizer in (der(True, aae="never"), create_regularizer("none", trainer_single_step=True)):
        assert TrainingStep(trainer, regularizer, num_classes=3)(_net(), x, y).loss.requires_grad


def test_ablation_forms_keep_their_settings_and_refuse_the_papers():
    reg = get_plugin("regularizer", "der")
    assert der().params.model_dump(by_alias=True) == {"form": "hinge", "beta": 30.0, "gamma": 0.0, "aae": "auto"}
    # the settings energybench stored for its earlier default, key for key (so its config hash is unchanged)
    assert der(form="squared").params.model_dump(by_alias=True) == {"lambda": 1.0, "form": "squared",
                                                                    "terms": "marginal", "huber_delta": 1.0}
    with pytest.raises(EnergybenchError, match="lambda does not apply to form='hinge'"):
        der(**{"lambda": 3.0})
    with pytest.raises(EnergybenchError, match="beta, gamma do not apply to form='squared'"):
        der(form="squared", beta=1.0, gamma=0.1)
    assert reg.variant({"form": "squared", "terms": "joint", "lambda": 10.0}) == "squared joint dE, lambda 10"
    before_forms = current_config({"regularizer": "der", "regularizer_params": {"lambda": 1.0, "terms": "marginal"}})
    assert reg.variant(before_forms["regularizer_params"]) == "squared marginal dE, lambda 1"
    assert reg.variant(der().params.model_dump(by_alias=True)) is None
    out = TrainOutput(loss=torch.zeros(()), logits=LOGITS, logits_adv=LOGITS_ADV, logits_start=LOGITS_START)
    squared = (-torch.logsumexp(LOGITS, 1) + torch.logsumexp(LOGITS_ADV, 1)).pow(2).mean()
    value = der(form="squared", **{"lambda": 3.0}).penalty(None, None, Y, out).item()
    assert value == pytest.approx(3 * squared.item())


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 16), nn.Tanh(), nn.Linear(16, 3))


def test_gradients_flow_through_both_energies_and_never_through_x_adv():
    model = _net()
    x = torch.rand(8, 1, 3, 4)
    y = torch.randint(0, 3, (8,))
    x_adv = (x + 0.1 * torch.randn_like(x)).requires_grad_(True)  # would collect a gradient if one reached it
    params = list(model.parameters())
    reg = der(beta=1.0, gamma=0.0, aae="never")

    def grads(detach_clean: bool, detach_adv: bool) -> list[torch.Tensor]:
        logits, logits_adv = model(x), model(x_adv.detach())
        out = TrainOutput(loss=torch.zeros(()), logits=logits.detach() if detach_clean else logits,
                          logits_adv=logits_adv.detach() if detach_adv else logits_adv)
        return torch.autograd.grad(reg.penalty(model, x, y, out), params, allow_unused=True)

    both = grads(False, False)
    clean_only, adv_only = grads(False, True), grads(True, False)
    assert all(g.abs().sum() > 0 for g in clean_only) and all(g.abs().sum() > 0 for g in adv_only)
    for total, a, b in zip(both, clean_only, adv_only):  # the two paths add up to the whole gradient
        assert torch.allclose(total, a + b, atol=1e-6)
    assert x_adv.grad is None


@pytest.mark.parametrize("trainer", ["fgsm", "rs-fgsm", "n-fgsm"])
def test_abnormal_flags_equal_a_direct_computation_of_both_losses(trainer):
    model = _net()
    x, y = torch.rand(64, 1, 3, 4), torch.randint(0, 3, (64,))
    inputs = []
    hook = model.register_forward_pre_hook(lambda module, args: inputs.append(args[0].detach().clone()))
    torch.manual_seed(1)
    out = get_plugin("trainer", trainer)(eps=0.3).step(model, x, y, keep_clean_logits=False)
    hook.remove()
    start = inputs[0]  # the attack's first forward pass is at its starting point
    if trainer == "fgsm":
        assert torch.equal(start, x)
    with torch.no_grad():
        before = F.cross_entropy(model(start), y, reduction="none")
        after = F.cross_entropy(model(out.x_adv), y, reduction="none")
    assert torch.equal(out.abnormal(y), after < before)
    assert not out.logits_start.requires_grad


def test_single_step_only_regularizers_refuse_multi_step_trainers(tmp_path):
    """AAER is refused as its settings are checked; DER's mask (its hyper-parameters decide) once its run is built,
    before anything is stored."""
    from energybench.config import load_catalogue, resolve_config
    from energybench.storage.store import Store
    from energybench.training.run import execute, prepare

    catalogue = load_catalogue()
    for reg, params in (("der", {"aae": "always"}), ("aaer", {})):
        config = resolve_config(catalogue, track="digits-tiny", overrides={
            "trainer": "pgd", "regularizer": reg, "regularizer_params": params})
        with pytest.raises(EnergybenchError, match=r"only single-step trainers report; trainer 'pgd' is not one "
                                                   r"\(use one of: fgsm, n-fgsm, rs-fgsm\)"):
            execute(prepare(config, catalogue), Store(tmp_path))
    assert not Store(tmp_path).runs(status=None)
    config = resolve_config(catalogue, track="digits-tiny", overrides={"trainer": "pgd", "regularizer": "der"})
    assert prepare(config, catalogue).regularizer_params["aae"] == "auto"  # auto: every sample with pgd


def test_aaer_on_hand_computed_logits():
    out = TrainOutput(loss=torch.zeros(()), logits_adv=LOGITS_ADV.clone().requires_grad_(True),
                      logits_start=LOGITS_START)
    mask = abnormal_by_hand()
    m, n = sum(mask), len(Y)
    ce_start = [F.cross_entropy(LOGITS_START[i:i + 1], Y[i:i + 1]).item() for i in range(n)]
    ce_adv = [F.cross_entropy(LOGITS_ADV[i:i + 1], Y[i:i + 1]).item() for i in range(n)]
    variation = [(LOGITS_ADV[i] - LOGITS_START[i]).pow(2).sum().item() for i in range(n)]
    r_ce = sum(ce_start[i] - ce_adv[i] for i in range(n) if mask[i]) / m
    r_a = sum(variation[i] for i in range(n) if mask[i]) / m
    r_n = sum(variation[i] for i in range(n) if not mask[i]) / (n - m)
    expected = 1.0 * (m / n) * (2.5 * r_ce + 1.5 * max(r_a - r_n, 0.0))
    assert get_plugin("regularizer", "aaer")().penalty(None, None, Y, out).item() == pytest.approx(expected, rel=1e-6)
    # normal samples that did not move: R_N = 0 < R_A, and the gradient reaches z1 of the abnormal samples only
    moved = torch.tensor(mask)
    logits_adv = torch.where(moved[:, None], LOGITS_ADV, LOGITS_START).requires_grad_(True)
    out = TrainOutput(loss=torch.zeros(()), logits_adv=logits_adv, logits_start=LOGITS_START)
    assert out.abnormal(Y).tolist() == mask
    get_plugin("regularizer", "aaer")().penalty(None, None, Y, out).backward()
    assert logits_adv.grad[moved].abs().sum() > 0 and logits_adv.grad[~moved].abs().sum() == 0
    everyone = TrainOutput(loss=torch.zeros(()), logits_adv=LOGITS_START + 1.0, logits_start=LOGITS_START)
    assert get_plugin("regularizer", "aaer")().penalty(None, None, Y, everyone).item() == 0.0  # m = 0


def test_fgsm_with_der_costs_no_extra_forward_pass():
    model = _net()
    x, y = torch.rand(16, 1, 3, 4), torch.randint(0, 3, (16,))
    trainer = get_plugin("trainer", "fgsm")(eps=0.1)
    counts = {}
    for name in ("none", "der"):
        reg = create_regularizer(name, trainer_single_step=True)
        with forward_calls(model) as calls:
            out = trainer.step(model, x, y, keep_clean_logits=reg.uses_clean_logits)
            (out.loss + reg.penalty(model, x, y, out)).backward()
        counts[name] = len(calls)
    assert counts == {"none": 2, "der": 2}


def test_runs_of_the_earlier_default_keep_their_hash_and_are_labelled_as_what_they_were(tmp_path):
    from energybench.config import load_catalogue, resolve_config
    from energybench.reporting.leaderboard import regularizer_label
    from energybench.storage.store import Store
    from energybench.training.run import prepare

    catalogue = load_catalogue()
    old = prepare(resolve_config(catalogue, track="fmnist-co", overrides={
        "regularizer": "der", "regularizer_params": {"form": "squared"}}), catalogue)
    # the hash energybench computed for `run --reg der` before the published form became the default
    assert old.config_hash() == "264fe53a681f02d0"
    # digits-tiny's protocol before the track moved to AutoAttack's fast subset (and one thread, which is not hashed)
    tiny = resolve_config(catalogue, track="digits-tiny", overrides={"eval": {"aa_version": "standard"}})
    assert prepare(tiny, catalogue).config_hash() == "ef4b644f29b1ea02"
    store = Store(tmp_path)
    run_id = store.create_run(old.model_dump(), old.config_hash())
    assert regularizer_label(store.get_run(run_id)) == "der [squared marginal dE, lambda 1]"
    new = prepare(resolve_config(catalogue, track="fmnist-co", overrides={"regularizer": "der"}), catalogue)
    assert new.config_hash() != old.config_hash()
    assert regularizer_label(store.get_run(store.create_run(new.model_dump(), new.config_hash()))) == "der"
