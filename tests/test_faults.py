"""Faults for real: `energybench run` killed (SIGKILL, SIGINT, SIGTERM) or failed by a third-party plugin's
exception, in a subprocess, then `energybench run --resume RUN_ID`: it continues after the last
completed epoch and ends with exactly the results of an uninterrupted run.

No test here depends on timing: a run is killed where it says it has paused (a third-party callback,
``kill-point``, writes a marker file at the point ``$KILL_POINT`` names and then waits to be killed),
and the points are drawn from a fixed, printed seed."""

from __future__ import annotations

import hashlib
import math
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from datafiles import SMALL_EVAL, tiny_config

from energybench.contracts import registry as reg
from energybench.contracts.attack import Attack
from energybench.contracts.regularizer import Regularizer
from energybench.contracts.trainer import TrainOutput
from energybench.errors import EnergybenchError, PluginError
from energybench.plugins.trainers.fgsm import FGSMTrainer
from energybench.storage.checkpoint import load_checkpoint
from energybench.storage.store import Store
from energybench.training.run import execute

EPOCHS = 3
BATCHES = 8  # per epoch: 512 training points in batches of 64
#: Fixed seed of every drawn kill point and fault step (printed by the tests that use it).
SEED = 20261203


def run_args(trainer: str = "rs-fgsm", kill_point: bool = True) -> list[str]:
    """A short digits-tiny run (AutoAttack off: the slowest part, not the subject); rs-fgsm draws random
    noise at every step, so the RNG state must survive the restart too. With ``kill_point`` the
    `kill-point` callback is added: it pauses where $KILL_POINT says."""
    return (["run", "--track", "digits-tiny", "--trainer", trainer, "--epochs", str(EPOCHS), "--n-train", "512",
             "--aa-points", "0", "--seed", "3"] + (["--log", "kill-point"] if kill_point else []))


PLUGIN = '''
import os
import time
from pathlib import Path

from energybench.contracts.callback import Callback
from energybench.plugins.trainers.rs_fgsm import RSFGSMTrainer

if os.environ.get("FLAKY_IMPORT_MARKER"):
    Path(os.environ["FLAKY_IMPORT_MARKER"]).touch()  # proves this third-party code ran


class FlakyRSFGSM(RSFGSMTrainer):
    """rs-fgsm that raises once, at training step $FLAKY_FAIL_AT of this process (a transient fault)."""

    def step(self, model, x, y, *, keep_clean_logits):
        self.calls = getattr(self, "calls", 0) + 1
        if self.calls == int(os.environ.get("FLAKY_FAIL_AT", "0")):
            raise RuntimeError("injected fault")
        return super().step(model, x, y, keep_clean_logits=keep_clean_logits)


class KillPoint(Callback):
    """Pauses the run where $KILL_POINT says ("iteration:N": after training iteration N, its update done;
    "evaluation": after training, before the test evaluation): writes $KILL_MARKER, then waits to be killed."""

    def _pause(self):
        Path(os.environ["KILL_MARKER"]).write_text(str(os.getpid()))
        time.sleep(600)

    def on_train_batch_end(self, run, batch):
        if os.environ.get("KILL_POINT") == f"iteration:{batch.iteration}":
            self._pause()

    def on_fit_end(self, run):
        if os.environ.get("KILL_POINT") == "evaluation":
            self._pause()
'''


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory) -> Path:
    """A third-party plugin distribution (module + .dist-info with entry_points.txt) for PYTHONPATH."""
    root = tmp_path_factory.mktemp("site")
    (root / "flaky_plugin.py").write_text(PLUGIN)
    info = root / "flaky_plugin-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: flaky-plugin\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[energybench.trainers]\nflaky-rs-fgsm = flaky_plugin:FlakyRSFGSM\n\n"
                                           "[energybench.callbacks]\nkill-point = flaky_plugin:KillPoint\n")
    return root


def _env(plugin_path: Path, **extra: str) -> dict[str, str]:
    repo = Path(__file__).resolve().parents[1]
    path = os.pathsep.join([str(plugin_path), str(repo), os.environ.get("PYTHONPATH", "")])
    env = {k: v for k, v in os.environ.items()
           if k not in ("ENERGYBENCH_REGISTRY", "ENERGYBENCH_DISABLE_PLUGIN_AUTOLOAD", "ENERGYBENCH_DATA",
                        "KILL_POINT", "KILL_MARKER", "FLAKY_FAIL_AT")}
    return env | {"PYTHONPATH": path, "OMP_NUM_THREADS": "1", "COLUMNS": "200", "ENERGYBENCH_OFFLINE": "1"} | extra


def _start(args: list[str], store: Path | None, env: dict[str, str]) -> subprocess.Popen:
    store_args = ["--store", str(store)] if store is not None else []
    # Ctrl-C as in a terminal, even when pytest itself runs as a background job (which ignores SIGINT)
    return subprocess.Popen([sys.executable, "-m", "energybench.cli", *args, *store_args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _start_paused(store: Path, env: dict[str, str], point: str, marker: Path) -> subprocess.Popen:
    """Start the run and block until it has paused at ``point`` (its marker file appeared)."""
    proc = _start(run_args(), store, env | {"KILL_POINT": point, "KILL_MARKER": str(marker)})
    while not marker.exists():
        if proc.poll() is not None:
            pytest.fail(f"the run ended before pausing at {point}: {proc.communicate()[1][-2000:]}")
        time.sleep(0.01)
    return proc


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=600)
    return proc.returncode, err


def _only_run(store: Path):
    (record,) = Store(store).runs(status=None)
    return record


def _outcome(store: Path, run_id: str) -> tuple[dict, list]:
    """Final results and per-epoch metrics (without timings), NaN made comparable."""
    s = Store(store)

    def clean(d: dict) -> dict:
        return {k: ("nan" if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()
                if "time" not in k}

    return ({tag: clean(m) for tag, m in s.results(run_id).items()}, [clean(e) for e in s.epochs(run_id)])


@pytest.fixture(scope="module")
def reference(tmp_path_factory, plugin_path):
    """The outcome of the uninterrupted run."""
    store = tmp_path_factory.mktemp("reference")
    code, err = _finish(_start(run_args(), store, _env(plugin_path)))
    assert code == 0, err
    return _outcome(store, _only_run(store).id)


def _resume(store: Path, run_id: str, env: dict[str, str]) -> int:
    """Resume ``run_id`` and check it continued after its last saved epoch; return that epoch."""
    done = load_checkpoint(store / "runs" / run_id / "state.pt")["epoch"]
    code, err = _finish(_start(["run", "--resume", run_id], store, env))
    assert code == 0, err
    assert f"resuming after epoch {done}" in err
    assert f"epoch {done}:" not in err and (done == EPOCHS or f"epoch {done + 1}:" in err)  # no epoch redone
    return done


def kill_point(phase: str, sig: signal.Signals) -> str:
    """Where the run is killed: any training iteration after the first epoch (drawn from SEED), or between
    training and the test evaluation (what a run killed during its evaluation leaves behind: every epoch
    stored, no result)."""
    if phase == "evaluation":
        return "evaluation"
    return f"iteration:{random.Random(f'{SEED}-{sig.name}').randrange(BATCHES + 1, EPOCHS * BATCHES + 1)}"


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["training", "evaluation"])
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM], ids=["SIGKILL", "SIGINT", "SIGTERM"])
def test_a_killed_run_resumes_to_the_same_results(tmp_path, plugin_path, reference, sig, phase):
    point = kill_point(phase, sig)
    print(f"seed {SEED}: {sig.name} at {point}")
    env = _env(plugin_path)
    store = tmp_path / "store"
    proc = _start_paused(store, env, point, tmp_path / "paused")
    proc.send_signal(sig)
    code, err = _finish(proc)
    record = _only_run(store)
    assert code == {signal.SIGKILL: -signal.SIGKILL, signal.SIGINT: 130, signal.SIGTERM: 143}[sig], (point, err)
    assert "Traceback" not in err, (point, err)
    assert record.status == ("running" if sig == signal.SIGKILL else "interrupted"), point
    if sig != signal.SIGKILL:  # SIGTERM (kill, timeout, a batch scheduler) stops the run as Ctrl-C does
        word = "interrupted" if sig == signal.SIGINT else "terminated"
        assert f"energybench: {word}; continue with `energybench run --resume {record.id}`" in err, err
    stored = len(Store(store).epochs(record.id))
    assert stored == (EPOCHS if phase == "evaluation" else (int(point.split(":")[1]) - 1) // BATCHES)
    assert Store(store).results(record.id) == {}
    done = _resume(store, record.id, env)
    assert done == stored and Store(store).get_run(record.id).status == "done"
    assert _outcome(store, record.id) == reference, point


@pytest.mark.slow
def test_a_plugin_exception_fails_its_run_and_resume_finishes_it_identically(tmp_path, plugin_path, reference):
    fail_at = random.Random(SEED).randrange(BATCHES + 1, EPOCHS * BATCHES + 1)  # a step after the first epoch
    print(f"seed {SEED}: plugin fault at training step {fail_at}")
    store = tmp_path / "store"
    code, err = _finish(_start(run_args("flaky-rs-fgsm"), store,
                               _env(plugin_path, FLAKY_FAIL_AT=str(fail_at))))
    assert code == 2 and "Traceback" not in err, err
    assert "energybench: error: trainer 'flaky-rs-fgsm' failed: RuntimeError: injected fault" in err
    record = _only_run(store)
    assert record.status == "failed" and record.error.startswith("trainer 'flaky-rs-fgsm' failed")
    assert _resume(store, record.id, _env(plugin_path)) == (fail_at - 1) // BATCHES
    assert _outcome(store, record.id) == reference, f"fault at step {fail_at}"  # trainer name aside, same run


@pytest.mark.slow
def test_resume_refuses_a_run_that_another_process_is_running(tmp_path, plugin_path):
    store = tmp_path / "store"
    env = _env(plugin_path)
    proc = _start_paused(store, env, f"iteration:{BATCHES + 1}", tmp_path / "paused")  # holds the run, paused
    try:
        run_id = _only_run(store).id
        code, err = _finish(_start(["run", "--resume", run_id], store, env))
        assert code == 2 and err.startswith(f"energybench: error: run {run_id} is in use by another process "
                                            f"(pid {proc.pid})"), err
    finally:
        proc.kill()
        proc.communicate()


def test_disabling_autoload_keeps_third_party_plugin_code_out(tmp_path, plugin_path):
    marker = tmp_path / "imported"
    env = _env(plugin_path, FLAKY_IMPORT_MARKER=str(marker))
    code, err = _finish(_start(["plugins", "--kind", "trainer"], None, env | {
        "ENERGYBENCH_DISABLE_PLUGIN_AUTOLOAD": "1"}))
    assert code == 0 and not marker.exists()
    code, err = _finish(_start(run_args("flaky-rs-fgsm", kill_point=False), tmp_path / "s", env | {
        "ENERGYBENCH_DISABLE_PLUGIN_AUTOLOAD": "1"}))
    assert code == 2 and err.startswith("energybench: error: unknown trainer 'flaky-rs-fgsm'"), err
    assert not marker.exists()
    code, err = _finish(_start(["plugins", "--kind", "trainer"], None, env))
    assert code == 0 and marker.exists()  # autoload on: the installed plugin is imported, by design


@pytest.fixture(scope="module")
def killed_store(tmp_path_factory, plugin_path) -> Path:
    """A store whose run was SIGKILLed at the first iteration after its first epoch."""
    store = tmp_path_factory.mktemp("killed")
    proc = _start_paused(store / "store", _env(plugin_path), f"iteration:{BATCHES + 1}", store / "paused")
    proc.kill()
    proc.communicate()
    return store / "store"


def _pickle_with_code(path: Path, marker: Path) -> None:
    """Write a torch.save file whose unpickling would run ``touch marker``, plus a matching sidecar."""
    code = ("import os, torch\n"
            "class Payload:\n"
            "    def __reduce__(self):\n"
            f"        return (os.system, ('touch {marker}',))\n"
            f"torch.save({{'model': Payload()}}, {str(path)!r})\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    path.with_name(path.name + ".sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest())


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "bit flip", "pickle with code"])
def test_resume_with_a_damaged_state_file_says_so_and_loses_nothing(tmp_path, plugin_path, killed_store, damage):
    store = tmp_path / "store"
    shutil.copytree(killed_store, store)
    run_id = _only_run(store).id
    state = store / "runs" / run_id / "state.pt"
    data = state.read_bytes()
    if damage == "truncated":
        state.write_bytes(data[: len(data) // 2])
    elif damage == "bit flip":
        state.write_bytes(data[:100] + bytes([data[100] ^ 1]) + data[101:])
    else:  # an attacker who rewrites the sidecar too: weights_only loading must still refuse it
        _pickle_with_code(state, tmp_path / "pwned")
    before = Store(store).epochs(run_id)
    code, err = _finish(_start(["run", "--resume", run_id], store, _env(plugin_path)))
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    expected = {"truncated": "is corrupted", "bit flip": "is corrupted", "pickle with code": "refusing checkpoint"}
    assert err.startswith("energybench: error: ") and expected[damage] in err, err
    assert not (tmp_path / "pwned").exists()
    assert Store(store).epochs(run_id) == before


# ----- plugin fault isolation, in process ------------------------------------------------------

def small_config(**overrides):
    """One epoch of digits-tiny, evaluated on 20 points without AutoAttack."""
    return tiny_config(epochs=1, eval=SMALL_EVAL, **overrides)


@pytest.fixture
def registry(scoped_registry):
    return reg.get_registry()


class _Hanging(FGSMTrainer):
    """Hangs at its third step, in Python (a busy loop) or in a blocking call (sleep); counts its steps."""

    how = "loop"

    def step(self, model, x, y, *, keep_clean_logits):
        self.calls = getattr(self, "calls", 0) + 1  # per instance: nothing carries over between tests
        _Hanging.last = self
        if self.calls == 3:
            if self.how == "sleep":
                time.sleep(600)
            while True:
                try:
                    pass
                except Exception:  # a plugin swallowing errors must not swallow the timeout
                    pass
        return super().step(model, x, y, keep_clean_logits=keep_clean_logits)


@pytest.mark.parametrize("how", ["loop", "sleep"])
def test_a_hanging_plugin_fails_its_run_after_the_timeout(tmp_path, registry, how):
    registry.register("trainer", "hanging", type("Hanging", (_Hanging,), {"how": how}))
    store = Store(tmp_path)
    with pytest.raises(PluginError, match=r"trainer 'hanging' did not return within plugin_timeout=1 s"):
        execute(small_config(trainer="hanging", plugin_timeout=1), store)
    assert _Hanging.last.calls == 3  # stopped in the step that hung, never past it
    (record,) = store.runs(status="failed")
    assert "trainer 'hanging' did not return" in record.error
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)  # the alarm is disarmed afterwards


def _output(kind: str, model, x, y) -> TrainOutput:
    logits = model(x)
    loss = F.cross_entropy(logits, y)
    if kind == "per-example loss":
        return TrainOutput(loss=F.cross_entropy(logits, y, reduction="none"), logits=logits)
    if kind == "loss without graph":
        return TrainOutput(loss=loss.detach(), logits=logits)
    if kind == "logits_adv of another batch size":
        return TrainOutput(loss=loss, x_adv=x.detach(), logits_adv=logits[:-1])
    if kind == "logits_adv flattened":
        return TrainOutput(loss=loss, x_adv=x.detach(), logits_adv=logits.flatten())
    if kind == "x_adv of the wrong shape":
        return TrainOutput(loss=loss, x_adv=x[:, :, :4].detach(), logits_adv=logits)
    if kind == "a tuple":
        return (loss, logits)
    raise AssertionError(kind)


BAD_OUTPUTS = {
    "per-example loss": "TrainOutput.loss must be a scalar float tensor, got a torch.float32 tensor of shape (64,)",
    "loss without graph": "TrainOutput.loss has no graph",
    "logits_adv of another batch size": "TrainOutput.logits_adv must have shape (64, 10), got a torch.float32 "
                                        "tensor of shape (63, 10)",
    "logits_adv flattened": "TrainOutput.logits_adv must have shape (64, 10)",
    "x_adv of the wrong shape": "TrainOutput.x_adv must have the batch's shape (64, 1, 8, 8)",
    "a tuple": "step returned tuple",
}


@pytest.mark.parametrize("kind", list(BAD_OUTPUTS))
def test_a_trainer_returning_wrong_shapes_fails_its_run_with_its_name(tmp_path, registry, kind):
    class Wrong(FGSMTrainer):
        def step(self, model, x, y, *, keep_clean_logits):
            return _output(kind, model, x, y)

    registry.register("trainer", "wrong", Wrong)
    store = Store(tmp_path)
    with pytest.raises(PluginError) as caught:
        execute(small_config(trainer="wrong"), store)
    assert str(caught.value).startswith("trainer 'wrong' broke its contract: " + BAD_OUTPUTS[kind])
    assert store.runs(status="failed")[0].error == str(caught.value)


def test_a_regularizer_returning_a_vector_fails_its_run_with_its_name(tmp_path, registry):
    class VectorPenalty(Regularizer):
        def penalty(self, model, x, y, out):
            return (out.logits_adv ** 2).mean(1)

    registry.register("regularizer", "vector", VectorPenalty)
    with pytest.raises(PluginError, match=r"regularizer 'vector' broke its contract: penalty must be a scalar "
                                          r"float tensor, got a torch.float32 tensor of shape \(64,\)"):
        execute(small_config(regularizer="vector"), Store(tmp_path))


class _Cheating(Attack):
    """Returns what ``mode`` says: a wrong shape, a step outside the eps-ball or the box, or an error."""

    mode = "shape"

    def perturb(self, x, y):
        if self.mode == "shape":
            return x[:-1]
        if self.mode == "ball":
            return (x + 2 * self.eps * (0.5 - x).sign()).clamp(0, 1)
        if self.mode == "box":
            return x + self.eps
        if self.mode == "nan":
            return x * float("nan")
        raise ValueError("broken attack")


@pytest.mark.parametrize(("mode", "message"), [
    ("shape", r"attack 'cheat' returned a torch.float32 tensor of shape \(3, 1, 8, 8\) for inputs of shape "
              r"\(4, 1, 8, 8\)"),
    ("ball", r"attack 'cheat' moved an input by 0.2 in Linf, outside the eps-ball \(eps=0.1\)"),
    ("box", r"attack 'cheat' returned values in \[0.1, 1.1\], outside the \[0, 1\] box"),
    ("nan", r"attack 'cheat' returned non-finite values"),
    ("raise", r"attack 'cheat' failed: ValueError: broken attack"),
])
def test_an_attack_breaking_its_contract_is_named(registry, mode, message):
    registry.register("attack", "cheat", type("Cheat", (_Cheating,), {"mode": mode}))
    x = torch.zeros(4, 1, 8, 8)
    x[0, 0, 0, 0] = 1.0
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    attack = reg.get_plugin("attack", "cheat")(model, eps=0.1)
    with pytest.raises(PluginError, match=message):
        attack(x, torch.zeros(4, dtype=torch.long))


# ----- checkpoint writes interrupted at any instant ----------------------------------------------

class _Killed(BaseException):
    """Stands for the process dying: nothing after it runs, not even cleanup code."""


@pytest.mark.parametrize("fatal_write", [0, 1, 2])
@pytest.mark.parametrize("when", ["before", "after"])
def test_a_checkpoint_interrupted_at_any_step_of_its_write_still_verifies(tmp_path, monkeypatch, fatal_write, when):
    import energybench.storage.checkpoint as ckpt

    path = tmp_path / "state.pt"
    ckpt.save_checkpoint(path, {"w": torch.zeros(3)})
    real, calls = ckpt.atomic_write, []

    def dying_write(target, data):
        calls.append(target)
        if len(calls) - 1 == fatal_write and when == "before":
            raise _Killed
        real(target, data)
        if len(calls) - 1 == fatal_write:
            raise _Killed

    monkeypatch.setattr(ckpt, "atomic_write", dying_write)
    with pytest.raises(_Killed):
        ckpt.save_checkpoint(path, {"w": torch.ones(3)})
    monkeypatch.undo()
    loaded = ckpt.load_checkpoint(path)["w"]  # the old or the new state, never "corrupted"
    assert torch.equal(loaded, torch.zeros(3)) or torch.equal(loaded, torch.ones(3))
    path.write_bytes(path.read_bytes()[:-10])  # while a real corruption is still caught
    with pytest.raises(EnergybenchError, match="is corrupted"):
        ckpt.load_checkpoint(path)


WRITER = '''
import os, sys, time
import torch
import energybench.storage.checkpoint as ckpt

path, pause_at = sys.argv[1], int(sys.argv[2])
ckpt.save_checkpoint(path, {"w": torch.zeros(1_000_000)})
calls = 0


def pausing(real):
    def call(*args):
        global calls
        calls += 1
        if calls == pause_at:  # a point inside the next write: announce it and wait to be killed there
            print("paused", flush=True)
            time.sleep(600)
        return real(*args)
    return call


ckpt.os.fsync, ckpt.os.replace = pausing(os.fsync), pausing(os.replace)
ckpt.save_checkpoint(path, {"w": torch.ones(1_000_000)})
print("finished", flush=True)
'''

#: The second save makes three atomic writes (sidecar with both hashes, data, sidecar with the new hash), each
#: an fsync of the temporary file (calls 1, 4, 7), a rename (2, 5, 8) and an fsync of the folder (3, 6, 9).
#: Killed before call 3 (first sidecar in place), 5 (data written, not renamed), 6 (data renamed, old sidecar
#: listing both hashes) and 9 (every rename done); the in-process test above covers every write boundary.
PAUSE_POINTS = (3, 5, 6, 9)


def test_sigkill_during_checkpoint_writes_never_leaves_a_corrupt_checkpoint(tmp_path):
    repo = str(Path(__file__).resolve().parents[1])
    env = os.environ | {"PYTHONPATH": repo, "OMP_NUM_THREADS": "1"}
    procs = {k: subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path / f"c{k}.pt"), str(k)],
                                 stdout=subprocess.PIPE, text=True, env=env) for k in [*PAUSE_POINTS, 10]}
    for k, proc in procs.items():
        line = proc.stdout.readline().strip()
        assert line == ("paused" if k in PAUSE_POINTS else "finished"), (k, line)  # 10: no tenth call
        proc.kill()
        proc.communicate()
        value = load_checkpoint(tmp_path / f"c{k}.pt")["w"]
        assert value.unique().tolist() == ([0.0] if k <= 5 else [1.0]), k  # the new data is in place from call 6
