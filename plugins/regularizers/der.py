"""`der`: the Delta Energy Regularizer (Mirza et al., 2025), in its published form and energybench's ablations."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_serializer, model_validator

from energybench import PluginParams, Regularizer
from energybench.errors import EnergybenchError
from energybench.ops.energy import delta_energy

#: Hyper-parameters of the published form, and of the ablation forms (squared, absolute, huber).
PAPER_FIELDS = {"beta", "gamma", "aae"}
ABLATION_FIELDS = {"lam", "terms", "huber_delta"}


class DeltaEnergyRegularizer(Regularizer):
    """The Delta Energy Regularizer: penalises the gap between the energies of x and of its attack x*.

    Published form (``form="hinge"``, the default), per sample, averaged over the whole batch::

        beta * max(||(dE(x), dE(x, y))||_2 - gamma, 0)      dE(x) = E(x) - E(x*),  dE(x, y) = E(x, y) - E(x*, y)

    From the first author's write-up of Mirza et al. (2025) (docs/references.md, "The paper"). In single-step
    training the paper applies it only to abnormal adversarial examples (AAE: samples whose loss went
    down after the attack's step, as in AAER). ``aae="auto"`` does that for single-step trainers
    (``Trainer.single_step``, which ``trainer_single_step`` carries; their ``TrainOutput.logits_start``
    gives the loss at the attack's start at no extra forward pass, and the harness stops a run whose
    single-step trainer leaves it out) and applies it to every sample for multi-step ones; ``"always"``
    and ``"never"`` force the choice.
    Our choices where the source is silent: x* is detached (an input), gradients flow through both
    E(x) and E(x*); the norm is per sample; the mean is over the whole batch (samples outside the
    mask count as 0, so the penalty scales with the share of AAEs).

    Defaults: beta 30, gamma 0, the values the co-fmnist suite's tuning chose for FGSM at eps 0.3 (the
    default track's setting; docs/suites.md).

    Ablation forms (energybench's earlier guesses, NOT the paper's): ``lambda * mean_i R(dE_i)`` with
    R squared, absolute or huber, on the marginal, joint or both delta energies, every sample.
    """

    uses_clean_logits = True
    acts_on_energy = True

    class Params(PluginParams):
        form: Literal["hinge", "squared", "absolute", "huber"] = Field(
            "hinge", description="hinge: the published form; squared/absolute/huber: ablations")
        beta: float = Field(30.0, ge=0, description="hinge: weight of the penalty")
        gamma: float = Field(0.0, ge=0, description="hinge: margin below which the dE norm is free")
        aae: Literal["auto", "always", "never"] = Field(
            "auto", description="hinge: only on abnormal adversarial examples (auto: with single-step trainers)")
        lam: float = Field(1.0, ge=0, alias="lambda", description="ablations: weight of the penalty")
        terms: Literal["marginal", "joint", "both"] = Field("marginal", description="ablations: which delta energy")
        huber_delta: float = Field(1.0, gt=0, description="huber ablation: transition point")

        @model_validator(mode="after")
        def _fields_of_form(self):
            foreign = ABLATION_FIELDS if self.form == "hinge" else PAPER_FIELDS
            wrong = sorted(type(self).model_fields[f].alias or f for f in self.model_fields_set & foreign)
            if wrong:
                raise ValueError(f"{', '.join(wrong)} {'does' if len(wrong) == 1 else 'do'} not apply to "
                                 f"form={self.form!r} (the published form, hinge, takes beta, gamma and aae; "
                                 "the ablations squared, absolute and huber take lambda, terms and huber_delta)")
            return self

        @model_serializer(mode="wrap")
        def _only_fields_of_form(self, handler) -> dict[str, Any]:
            # a run's stored settings hold only what its form uses, so the settings (and config hash)
            # of an ablation run are exactly those energybench stored before the published form existed
            data = handler(self)
            foreign = ABLATION_FIELDS if self.form == "hinge" else PAPER_FIELDS
            drop = {type(self).model_fields[f].alias or f for f in foreign} | foreign
            return {k: v for k, v in data.items() if k not in drop}

    @property
    def needs_attack_start(self) -> bool:
        """The abnormal-example mask: published form with ``aae="always"``, or ``"auto"`` and a single-step trainer."""
        p = self.params
        if p.form != "hinge" or p.aae == "never":
            return False
        if p.aae == "auto" and self.trainer_single_step is None:
            raise EnergybenchError("der with aae='auto' masks abnormal examples only with a single-step trainer, but "
                                   "was built without one: use energybench.create_regularizer('der', "
                                   "trainer_single_step=True|False, ...) or set aae to 'always' or 'never'")
        return p.aae == "always" or self.trainer_single_step

    @property
    def acts_on(self) -> str:
        """What it acted on: abnormal adversarial examples under the mask, samples with a penalty term otherwise."""
        if self.params.form == "hinge" and self.needs_attack_start:
            return "abnormal adversarial examples"
        return "samples with a non-zero dE term"

    @classmethod
    def variant(cls, params: dict[str, Any]) -> str | None:
        """``None`` for the published form; the ablation's form, terms and weight otherwise (leaderboard label)."""
        form = params["form"]  # a run stored before DER had forms reads as the ablation (storage.migrations)
        if form == "hinge":
            return None
        return f"{form} {params.get('terms', 'marginal')} dE, lambda {params.get('lambda', 1.0):g}"

    def penalty(self, model, x, y, out):
        p = self.params
        if p.form == "hinge":
            d = torch.stack([delta_energy(out.logits, out.logits_adv), delta_energy(out.logits, out.logits_adv, y)], 1)
            per_sample = F.relu(torch.linalg.vector_norm(d, dim=1) - p.gamma)
            if self.needs_attack_start:
                per_sample = per_sample * out.abnormal(y)
            self.report_acted((per_sample.detach() > 0).float().mean())
            return p.beta * per_sample.mean()
        total, acted = out.loss.new_zeros(()), torch.zeros(len(y), dtype=torch.bool, device=y.device)
        for joint in ((False,) if p.terms == "marginal" else (True,) if p.terms == "joint" else (False, True)):
            d = delta_energy(out.logits, out.logits_adv, y if joint else None)
            total, acted = total + self._ablation(d), acted | (d.detach() != 0)
        self.report_acted(acted.float().mean())
        return p.lam * total

    def _ablation(self, d: torch.Tensor) -> torch.Tensor:
        p = self.params
        if p.form == "squared":
            return d.pow(2).mean()
        if p.form == "absolute":
            return d.abs().mean()
        return F.huber_loss(d, torch.zeros_like(d), delta=p.huber_delta)
