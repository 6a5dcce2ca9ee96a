"""AutoAttack through pyautoattack, with its per-attack log turned into progress and numbers."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from pydantic import Field
from torch import nn

from energybench.contracts.attack import Attack
from energybench.contracts.params import PluginParams

#: The attacks of each AutoAttack version, in the order they run. ``fast`` is energybench's name for the standard
#: version's first two attacks with its settings: cheaper, and an upper bound of standard AutoAttack's accuracy.
VERSIONS = {"standard": ("apgd-ce", "apgd-t", "fab-t", "square"), "fast": ("apgd-ce", "apgd-t"),
            "plus": ("apgd-ce", "apgd-dlr", "fab", "square", "apgd-t", "fab-t"), "rand": ("apgd-ce", "apgd-dlr")}
#: Forward+backward passes per attacked point of each attack with its version's settings, per target class for the
#: targeted ones (APGD: 100 iterations; FAB: 100 iterations of about 2 passes; Square: 5000 queries, a forward pass
#: each, about a third of a forward+backward); ``plus`` restarts APGD and FAB 5 times and ``rand`` averages 20 draws.
ATTACK_PASSES = {"apgd-ce": 100, "apgd-dlr": 100, "apgd-t": 100, "fab": 200, "fab-t": 200, "square": 5000 / 3}
TARGETED = ("apgd-t", "fab-t")
VERSION_FACTOR = {"plus": {"apgd-ce": 5, "apgd-dlr": 5, "fab": 5}, "rand": {"apgd-ce": 20, "apgd-dlr": 20}}


def expected_passes(version: str, num_classes: int, *, correct: float, robust: float) -> float:
    """Expected forward+backward passes per point AutoAttack ``version`` attacks: its first attack runs on the points
    classified correctly (share ``correct``), the others on those still robust (about ``robust``, e.g. the share PGD
    left robust). An estimate for announcing long evaluations, not a measurement."""
    total = 0.0
    for i, attack in enumerate(VERSIONS[version]):
        passes = ATTACK_PASSES[attack] * VERSION_FACTOR.get(version, {}).get(attack, 1)
        if attack in TARGETED:
            passes *= min(9, num_classes - 1)
        total += passes * (correct if i == 0 else robust)
    return total


_AFTER = re.compile(r"robust accuracy after ([A-Z\-]+): ([0-9.]+)%")
_PERTURBED = re.compile(r"^([a-z\-]+) - \d+/\d+ - (\d+) out of \d+ successfully perturbed")


@dataclass
class AutoAttackResult:
    """Point-wise worst case over AutoAttack's attacks, as RobustBench reports it.

    ``robust[i]`` is True when no attack fooled the model on point i; ``per_attack`` maps each
    attack that ran to the robust accuracy after it (cumulative, so the last value equals
    ``accuracy`` unless AutoAttack stopped early because no robust point was left).
    """

    x_adv: torch.Tensor
    robust: torch.Tensor
    per_attack: dict[str, float] = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return int(self.robust.sum()) / max(len(self.robust), 1)  # k/n exactly, as ``per_attack``


class _ProgressLog(logging.Handler):
    """Receives pyautoattack's debug log: passes the messages on, and counts the points each attack fooled.

    The counts come from the per-batch "k out of m successfully perturbed" lines, not from the "robust
    accuracy after ..." lines, whose two-decimal percentages are not exact (1/24 reads 4.17%).
    """

    def __init__(self, on_message: Callable[[str], None] | None):
        super().__init__(logging.DEBUG)
        self.on_message = on_message
        self.fooled: dict[str, int] = {}  # per attack that ran, in order

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        match = _PERTURBED.search(message)
        if match:
            self.fooled[match.group(1)] = self.fooled.get(match.group(1), 0) + int(match.group(2))
        match = _AFTER.search(message)
        if match:
            self.fooled.setdefault(match.group(1).lower(), 0)
        if self.on_message is not None:
            self.on_message(message)

    def per_attack(self, robust: int, n: int) -> dict[str, float]:
        """Robust accuracy after each attack, given the number of points still ``robust`` at the end."""
        left = robust + sum(self.fooled.values())  # correctly classified before the first attack
        out = {}
        for name, fooled in self.fooled.items():
            left -= fooled
            out[name] = left / n
        return out


def run_autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, norm: str = "Linf",
                   version: str = "standard", attacks: Sequence[str] | None = None, seed: int = 0,
                   batch_size: int = 250, on_message: Callable[[str], None] | None = None) -> AutoAttackResult:
    """Run pyautoattack's ``AutoAttack(...).run_standard_evaluation`` on ``(x, y)`` unchanged.

    ``version`` is standard, plus or rand, or fast (the standard version with only its first two attacks,
    ``VERSIONS["fast"]``); pass ``attacks`` (apgd-ce, apgd-t, fab-t, square, apgd-dlr, fab) to run a custom
    list. The model must already be in the mode to attack (eval).
    """
    from pyautoattack import AutoAttack

    device = next((p.device for p in model.parameters()), x.device)
    adversary = AutoAttack(model, attacks=list(attacks) if attacks else None, device=device, eps=eps, norm=norm,
                           seed=seed, version="custom" if attacks else "standard" if version == "fast" else version)
    if version == "fast" and not attacks:
        adversary.attacks_to_run = list(VERSIONS["fast"])
    with torch.no_grad():
        num_classes = model(x[:1].to(device)).shape[1]
    # AutoAttack targets the 9 runner-up classes; with fewer classes there are only K - 1 targets.
    adversary.apgd_targeted.n_target_classes = min(adversary.apgd_targeted.n_target_classes, num_classes - 1)
    adversary.fab.n_target_classes = min(adversary.fab.n_target_classes, num_classes - 1)
    logger = logging.getLogger("auto-attack")
    handler, old_level = _ProgressLog(on_message), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    logger.propagate, old_propagate = False, logger.propagate
    devices = [device] if device.type == "cuda" else []
    try:  # pyautoattack reseeds the global RNG: keep that from leaking into the caller's randomness
        with torch.random.fork_rng(devices=devices):
            x_adv, y_adv = adversary.run_standard_evaluation(x.to(device), y.to(device), batch_size=batch_size)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate
    robust = (y_adv.to(y.device) == y)
    per_attack = handler.per_attack(int(robust.sum()), len(y))
    return AutoAttackResult(x_adv=x_adv.detach(), robust=robust, per_attack=per_attack)


class AutoAttackComponent(Attack):
    """Base of the plugins that run one of AutoAttack's attacks through pyautoattack, exactly as
    ``AutoAttack(version="custom", attacks=[component])`` runs it; points already misclassified are
    returned unchanged and ``seed`` None means 0. Subclasses set ``component``."""

    component: ClassVar[str]
    norms = ("Linf", "L2", "L1")

    class Params(PluginParams):
        batch_size: int = Field(250, ge=1, description="batch size inside AutoAttack")

    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return run_autoattack(self.model, x, y, eps=self.eps, norm=self.norm, attacks=[self.component],
                              seed=self.seed or 0, batch_size=self.params.batch_size).x_adv
