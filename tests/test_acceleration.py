"""The fast path (benchmark/training/acceleration.py) on CPU, forward-pass reuse and no host sync in training."""

from __future__ import annotations

import copy

import datafiles
import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from energybench.cli import main
from energybench.config import FastPath, load_catalogue, resolve_config
from energybench.data.augment import crop_flip, crop_flip_draws
from energybench.errors import EnergybenchError
from energybench.plugins.models.small_cnn import SmallCNN
from energybench.storage.store import Store
from energybench.training.acceleration import Acceleration
from energybench.training.callbacks.energy_trace import TRACE_INTERVAL
from energybench.training.loop import Run
from energybench.training.progress import Reporter

CPU = torch.device("cpu")


def tiny_config(**overrides):
    """digits-tiny (``datafiles.tiny_config``) on 256 points, no CO monitor, evaluated on 40 without AutoAttack."""
    return datafiles.tiny_config(**({"eval": {"aa_points": 0, "val_points": 40, "test_points": 40}, "n_train": 256,
                                     "monitor": {"enabled": False}} | overrides))


def tiny_run(tmp_path, reporter: Reporter | None = None, **overrides) -> Run:
    config = tiny_config(**overrides)
    store = Store(tmp_path)
    return Run(config, store, store.create_run(config.model_dump(), config.config_hash()), reporter)


def forced_on(**settings) -> Acceleration:
    return Acceleration.resolve(FastPath(enabled="on", **settings), CPU)


# ----- configuration -----------------------------------------------------------------------------

def test_fast_path_is_off_on_cpu_unless_forced():
    assert Acceleration.resolve(FastPath(), CPU) == Acceleration(CPU)
    assert Acceleration.resolve(FastPath(enabled="off"), CPU) == Acceleration(CPU)
    on = forced_on()
    assert on.amp is torch.bfloat16 and on.channels_last and on.fused_optimizer and not on.compile
    assert not on.cudnn_benchmark  # a CUDA-only switch
    assert forced_on(amp="off", channels_last=False).amp is None


def test_bad_fast_path_settings_are_refused_in_one_line():
    catalogue = load_catalogue()
    with pytest.raises(EnergybenchError, match="fast.amp"):
        resolve_config(catalogue, track="digits-tiny", overrides={"fast": {"amp": "fp16"}})
    with pytest.raises(EnergybenchError, match="unknown setting 'fast.turbo'"):
        resolve_config(catalogue, track="digits-tiny", overrides={"fast": {"turbo": True}})


def test_fast_path_does_not_change_the_config_hash():
    assert tiny_config().config_hash() == tiny_config(fast={"enabled": "off", "compile": True}).config_hash()


# ----- what the fast path does to a model --------------------------------------------------------

def _conv_output_dtypes(model: nn.Module) -> list[torch.dtype]:
    dtypes: list[torch.dtype] = []
    model.features[0].register_forward_hook(lambda m, args, out: dtypes.append(out.dtype))
    return dtypes


def test_forced_fast_path_runs_convolutions_in_bf16_and_returns_float32_logits():
    accel = forced_on()
    model = accel.prepare_model(SmallCNN(10, 1, [0.5], [0.5]))
    dtypes = _conv_output_dtypes(model)
    assert model.features[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(4, 1, 8, 8, requires_grad=True)
    logits = model(x)
    assert dtypes == [torch.bfloat16] and logits.dtype == torch.float32
    grad, = torch.autograd.grad(logits.logsumexp(1).sum(), x)  # attacks: input gradients in float32
    assert grad.dtype == torch.float32 and grad.shape == x.shape
    with accel.final_evaluation():
        model(x)
    assert dtypes[-1] == torch.float32  # the final test evaluation stays in float32 by default
    assert set(model.state_dict()) == set(SmallCNN(10, 1, [0.5], [0.5]).state_dict())


def test_a_deep_copy_of_a_prepared_model_runs_its_own_weights():
    model = forced_on().prepare_model(SmallCNN(10, 1, [0.5], [0.5]))
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.parameters():
            p.zero_()
    x = torch.rand(2, 1, 8, 8)
    assert not torch.equal(model(x), twin(x))


def test_plain_path_leaves_the_model_alone():
    model = SmallCNN(10, 1, [0.5], [0.5])
    assert Acceleration(CPU).prepare_model(model) is model and "forward" not in vars(model)
    dtypes = _conv_output_dtypes(model)
    model(torch.rand(2, 1, 8, 8))
    assert dtypes == [torch.float32]


def test_optimizer_is_fused_only_when_asked(monkeypatch):
    params = list(SmallCNN(10, 1, [0.5], [0.5]).parameters())
    assert forced_on().optimizer(params, lr=0.1, momentum=0.9).defaults["fused"]
    assert not Acceleration(CPU).optimizer(params, lr=0.1).defaults["fused"]


def test_compile_switch_compiles_the_model_in_place(monkeypatch):
    compiled = []
    monkeypatch.setattr(nn.Module, "compile", lambda self, *a, **k: compiled.append(self))
    model = SmallCNN(10, 1, [0.5], [0.5])
    forced_on(compile=True).prepare_model(model)
    assert compiled == [model]


def test_a_run_with_the_fast_path_forced_on_from_the_command_line_trains_and_evaluates(tmp_path, capsys):
    code = main(["run", "--track", "digits-tiny", "--fast", "on", "--aa-points", "0", "--store", str(tmp_path)])
    assert code == 0, capsys.readouterr().err
    store = Store(tmp_path)
    record = store.runs()[0]
    assert record.config["fast"]["enabled"] == "on" and record.status == "done"
    assert store.results(record.id)["last"]["test_clean_acc"] > 0.5


def test_crop_flip_draws_are_applied_as_drawn():
    x = torch.rand(2, 3, 8, 8)
    centred = torch.tensor([[4, 4, 0], [4, 4, 1]])
    assert torch.equal(crop_flip(x, centred), torch.stack([x[0], x[1].flip(2)]))
    shifted = crop_flip(x, torch.tensor([[0, 4, 0], [4, 4, 0]]))  # first image moved down by 4 rows
    assert torch.equal(shifted[0, :, 4:], x[0, :, :4]) and not shifted[0, :, :4].any()
    draws = crop_flip_draws(1000, torch.Generator().manual_seed(0))
    assert draws[:, :2].min() == 0 and draws[:, :2].max() == 8 and set(draws[:, 2].tolist()) == {0, 1}


# ----- forward-pass reuse ------------------------------------------------------------------------

class _CountForwards(Reporter):
    """Model forward calls per training batch."""

    def __init__(self, model: nn.Module):
        self.per_batch: list[int] = []
        self._calls = 0
        model.register_forward_hook(self._count)

    def _count(self, *_):
        self._calls += 1

    def batch_done(self):
        self.per_batch.append(self._calls)
        self._calls = 0


def _forwards_per_batch(tmp_path, **overrides) -> list[int]:
    run = tiny_run(tmp_path, **overrides)
    counter = _CountForwards(run.model)
    run.reporter = counter
    run.train_epoch()
    return counter.per_batch


def test_der_and_the_energy_trace_add_no_forward_pass_to_fgsm(tmp_path):
    fgsm = _forwards_per_batch(tmp_path / "a", trainer="fgsm")
    assert fgsm == [2] * len(fgsm)  # the attack's forward pass at x is the trace's clean forward
    assert _forwards_per_batch(tmp_path / "b", trainer="fgsm", regularizer="der") == fgsm


def test_pgd_training_costs_steps_plus_one_forwards_and_a_sparse_trace(tmp_path):
    steps = 3
    counts = _forwards_per_batch(tmp_path, trainer="pgd", trainer_params={"steps": steps})
    # steps attack passes + 1 training pass; the trace's no-grad clean pass every TRACE_INTERVAL batches
    assert counts == [steps + 1 + (b % TRACE_INTERVAL == 0) for b in range(len(counts))]


# ----- no host synchronisation inside the training step ------------------------------------------

class _NoHostSync(TorchDispatchMode):
    """Fails on the aten ops that wait for a CUDA device: a value read on the host (item, bool, int,
    float) or an output whose size depends on values (nonzero, boolean-mask indexing, unique)."""

    SYNCING = ("aten::_local_scalar_dense", "aten::nonzero", "aten::masked_select", "aten::_unique2",
               "aten::unique_consecutive", "aten::repeat_interleave")
    INDEXING = ("aten::index.Tensor", "aten::index_put_", "aten::index_put", "aten::_index_put_impl_")

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        overload = f"{name}.{func._overloadname}" if func._overloadname != "default" else name
        masks = overload in self.INDEXING and any(
            i is not None and i.dtype in (torch.bool, torch.uint8) for i in args[1])
        if name in self.SYNCING or masks:
            raise AssertionError(f"host synchronisation in the training loop: {overload}")
        return func(*args, **(kwargs or {}))


def _one_hot_as_on_cuda(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """F.one_hot checks the label range with a host read on CPU only; on CUDA it relies on device asserts."""
    return torch.zeros(*y.shape, num_classes, dtype=torch.long, device=y.device).scatter_(-1, y.unsqueeze(-1), 1)


class _GuardBatches(Reporter):
    """Forbids host syncs from the start of an epoch's batch loop to its last batch."""

    def __init__(self):
        self.mode: _NoHostSync | None = None
        self._left = 0

    def start_epoch(self, epoch, batches):
        self._left, self.mode = batches, _NoHostSync()
        self.mode.__enter__()

    def batch_done(self):
        self._left -= 1
        if self._left == 0:
            self.release()

    def release(self):
        if self.mode is not None:
            self.mode.__exit__(None, None, None)
            self.mode = None


@pytest.mark.parametrize("settings", [
    {"trainer": "fgsm"}, {"trainer": "fgsm", "regularizer": "der", "augment": True},
    {"trainer": "pgd", "trainer_params": {"steps": 2}}, {"trainer": "rs-fgsm"}, {"trainer": "n-fgsm"},
    {"trainer": "trades", "trainer_params": {"steps": 2}}, {"trainer": "mart", "trainer_params": {"steps": 2}},
    {"trainer": "weat", "trainer_params": {"steps": 2}}, {"trainer": "standard", "regularizer": "gradalign"},
    {"trainer": "fgsm", "fast": {"enabled": "on"}},
], ids=lambda s: "+".join(str(v) for k, v in s.items() if k in ("trainer", "regularizer", "augment", "fast")))
def test_the_training_loop_never_waits_for_the_device(tmp_path, monkeypatch, settings):
    monkeypatch.setattr(torch.nn.functional, "one_hot", _one_hot_as_on_cuda)
    guard = _GuardBatches()
    run = tiny_run(tmp_path, guard, **settings)
    try:
        metrics = run.train_epoch()
    finally:
        guard.release()
    assert guard._left == 0 and torch.isfinite(torch.tensor(metrics["train_loss"]))


def test_the_guard_catches_syncs():
    x = torch.rand(4, 3)
    with _NoHostSync():
        x[torch.tensor([0, 2])] = x[torch.tensor([1, 3])]  # index tensors: no sync
        with pytest.raises(AssertionError, match="_local_scalar_dense"):
            x.sum().item()
        with pytest.raises(AssertionError, match="aten::index"):
            x[x[:, 0] > 0.5]
        with pytest.raises(AssertionError, match="aten::index_put"):
            x[x[:, 0] > 0.5] = 0
