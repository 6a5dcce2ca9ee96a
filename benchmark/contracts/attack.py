"""The `Attack` base class: inputs in, adversarial inputs inside the eps-ball out."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import nn

from energybench.contracts.guard import attack_output_problem
from energybench.contracts.params import PluginParams, budget, parse_params
from energybench.errors import EnergybenchError, PluginError


class Attack(ABC):
    """Base class of every attack plugin (entry-point group ``energybench.attacks``).

    Contract: ``attack(x, y)`` takes inputs ``x`` in [0, 1] of shape (N, C, H, W) and integer
    labels ``y`` of shape (N,), and returns detached ``x_adv`` of the same shape, inside the
    ``eps``-ball of ``norm`` around ``x`` and inside the [0, 1] box. ``model`` is any module that
    returns logits. The attack uses the model in the mode the caller chose: ``__call__`` restores
    every submodule's train/eval flag afterwards, so a plugin cannot change it behind the caller's back,
    and enables gradients, so attacks also work when called inside ``torch.no_grad()``.

    Subclasses declare hyper-parameters as a nested ``Params`` (a ``PluginParams``), list the
    norms they support in ``norms`` and implement ``perturb``.
    """

    Params: ClassVar[type[PluginParams]] = PluginParams
    norms: ClassVar[tuple[str, ...]] = ("Linf",)
    name: ClassVar[str] = ""

    def __init__(self, model: nn.Module, *, eps: float, norm: str = "Linf", seed: int | None = None, **params):
        if norm not in self.norms:
            raise PluginError(f"attack {self.name or type(self).__name__!r} does not support norm {norm!r} "
                              f"(supported: {', '.join(self.norms)})")
        label = f"attack {self.name or type(self).__name__!r}"
        self.model = model
        self.eps = budget(eps, label)
        self.norm = norm
        self.seed = seed
        self.params = parse_params(self.Params, params, label)

    @abstractmethod
    def perturb(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Return adversarial inputs for the batch ``(x, y)``."""

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``perturb`` with the model's modes restored, its failures and contract breaches named (PluginError)."""
        label = repr(self.name or type(self).__name__)
        modes = [m.training for m in self.model.modules()]
        try:
            with torch.enable_grad():
                x_adv = self.perturb(x, y)
        except EnergybenchError:
            raise
        except Exception as exc:
            raise PluginError(f"attack {label} failed: {type(exc).__name__}: {exc}") from exc
        finally:
            for module, training in zip(self.model.modules(), modes):
                module.training = training
        problem = attack_output_problem(x, x_adv, self.eps, self.norm)
        if problem:
            raise PluginError(f"attack {label} {problem}")
        return x_adv.detach()
