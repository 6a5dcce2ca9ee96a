"""The GPU fast path: bf16 autocast, channels_last, cuDNN autotuning, fused SGD and torch.compile.

``FastPath`` (a ``RunConfig`` field) says what to use; ``Acceleration.resolve`` decides what applies
on the run's device (by default everything on CUDA and nothing on CPU). ``prepare_model`` applies
it to the model once, in place, by wrapping the model's ``forward`` (as Hugging Face Accelerate
does): every caller in a run (trainers, regularizers, attacks, AutoAttack) then gets the fast
forward pass without knowing about it, and checkpoints keep their plain parameter names. The
autocast region is the forward pass only and logits leave it in float32, so losses, energies and
attack steps are computed in float32 while the convolutions run in bfloat16.
"""

from __future__ import annotations

import types
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from energybench.config import FastPath
from energybench.errors import EnergybenchError


@dataclass
class Acceleration:
    """The fast-path features in effect on ``device`` (all off: the plain float32 path)."""

    device: torch.device
    amp: torch.dtype | None = None
    amp_test: bool = False
    channels_last: bool = False
    cudnn_benchmark: bool = False
    fused_optimizer: bool = False
    compile: bool = False
    autocast_active: bool = True

    @classmethod
    def resolve(cls, fast: FastPath, device: torch.device) -> Acceleration:
        """What ``fast`` turns on for ``device``; bf16 is dropped in auto mode on a GPU without it."""
        if fast.enabled == "off" or (fast.enabled == "auto" and device.type != "cuda"):
            return cls(device)
        amp = torch.bfloat16 if fast.amp == "bf16" else None
        if amp is not None and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            if fast.enabled == "on":
                raise EnergybenchError(f"fast.amp='bf16' needs a GPU with bfloat16 support (Ampere or newer), "
                                       f"and {device} has none; set fast.amp='off'")
            amp = None
        return cls(device, amp=amp, amp_test=fast.amp_test, channels_last=fast.channels_last,
                   cudnn_benchmark=fast.cudnn_benchmark and device.type == "cuda",
                   fused_optimizer=fast.fused_optimizer, compile=fast.compile)

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Apply the fast path to ``model`` in place (memory format, forward wrapper, compile); return it."""
        if self.cudnn_benchmark:
            torch.backends.cudnn.benchmark = True
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        if self.channels_last or self.amp is not None:
            # Bound to the model, so a deep copy of the model gets a forward bound to the copy.
            model.forward = types.MethodType(_fast_forward(type(model).forward, self), model)
        if self.compile:
            model.compile()
        return model

    def optimizer(self, params: Iterable[torch.Tensor], **settings) -> torch.optim.SGD:
        """SGD with ``settings``; fused kernels when asked for and the device has them."""
        params = list(params)
        if self.fused_optimizer:
            try:
                return torch.optim.SGD(params, fused=True, **settings)
            except RuntimeError:  # this device or torch build has no fused SGD
                pass
        return torch.optim.SGD(params, **settings)

    @contextmanager
    def final_evaluation(self) -> Iterator[None]:
        """Around the final test evaluation: forward passes in float32 unless ``amp_test``."""
        previous, self.autocast_active = self.autocast_active, self.amp_test
        try:
            yield
        finally:
            self.autocast_active = previous


def _fast_forward(forward, acceleration: Acceleration):
    """``forward`` with channels_last inputs and bf16 autocast, returning float32 outputs."""

    def fast_forward(module: nn.Module, x: torch.Tensor, *args, **kwargs):
        if acceleration.channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if acceleration.amp is None or not acceleration.autocast_active:
            return forward(module, x, *args, **kwargs)
        with torch.autocast(acceleration.device.type, dtype=acceleration.amp):
            out = forward(module, x, *args, **kwargs)
        return out.float()

    return fast_forward
