"""A classifier seen as an energy-based model: energies, delta energy and their statistics.

For logits f(x) over K classes (no temperature):
  marginal energy  E(x)   = -logsumexp_k f(x)[k]
  joint energy     E(x,y) = -f(x)[y]
  delta energy     dE(x)  = E(x) - E(x*)   (and dE(x,y) = E(x,y) - E(x*,y) for the joint terms)
with x* the adversarial counterpart of x (the sign is the paper's).
"""

from __future__ import annotations

import torch

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def marginal_energy(logits: torch.Tensor) -> torch.Tensor:
    """E(x) = -logsumexp_k f(x)[k], one value per row of ``logits``."""
    return -torch.logsumexp(logits, dim=1)


def joint_energy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """E(x, y) = -f(x)[y], one value per row of ``logits``."""
    return -logits.gather(1, y.view(-1, 1)).squeeze(1)


def delta_energy(logits: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
    """dE = E(x) - E(x*) per sample; with labels ``y`` the joint version E(x,y) - E(x*,y)."""
    if y is None:
        return marginal_energy(logits) - marginal_energy(logits_adv)
    return joint_energy(logits, y) - joint_energy(logits_adv, y)


def summarize(values: torch.Tensor, prefix: str = "") -> dict[str, float]:
    """Mean, std and the ``QUANTILES`` of a 1-D tensor, as plain floats keyed ``prefix + stat``."""
    values = values.detach().float().flatten()
    if values.numel() == 0:
        return {}
    qs = torch.quantile(values, torch.tensor(QUANTILES, device=values.device))
    stats = {"mean": values.mean(), "std": values.std(unbiased=False)}
    stats.update({f"q{round(q * 100):02d}": v for q, v in zip(QUANTILES, qs)})
    return {prefix + k: float(v) for k, v in stats.items()}


class EnergyTrace:
    """Collects per-sample energies batch by batch on the device; summarised once per epoch.

    Nothing is copied to the host until ``summary()``, so recording adds no synchronisation.
    """

    def __init__(self) -> None:
        self._parts: dict[str, list[torch.Tensor]] = {}

    def add(self, logits: torch.Tensor, logits_adv: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Record E(x), E(x*), dE and the joint dE of a batch (all detached), and return them by name."""
        logits, logits_adv = logits.detach().float(), logits_adv.detach().float()
        e, e_adv = marginal_energy(logits), marginal_energy(logits_adv)
        values = {"energy": e, "energy_adv": e_adv, "dE": e - e_adv,
                  "dE_joint": joint_energy(logits, y) - joint_energy(logits_adv, y)}
        for key, value in values.items():
            self._parts.setdefault(key, []).append(value)
        return values

    def summary(self, prefix: str = "") -> dict[str, float]:
        """Statistics of everything recorded: ``{prefix}dE_mean``, ``{prefix}dE_q50``, ..."""
        out: dict[str, float] = {}
        for key, parts in self._parts.items():
            out.update(summarize(torch.cat(parts), prefix=f"{prefix}{key}_"))
        return out
