"""The CO early-warning monitor: the drift rule, the online monitor, replay, and its place in the harness."""

from __future__ import annotations

import json
import math

import pytest
import torch
from datafiles import class_images, write_mnist_folder

from energybench.config import MonitorConfig, RunConfig, load_catalogue, resolve_config
from energybench.errors import EnergybenchError
from energybench.storage.store import Store
from energybench.training.monitor import COMonitor, DriftRule, read_log, replay
from energybench.training.progress import Reporter
from energybench.training.run import execute, prepare

SETTINGS = MonitorConfig(check_every=4, warmup=4, halflife=8, threshold=4, patience=2, min_std=0.05)


def stable_trace(n: int, seed: int = 0) -> list[float]:
    """Batch-mean dE of healthy training: noise around a slowly falling level."""
    g = torch.Generator().manual_seed(seed)
    return [-0.3 - 0.001 * i + 0.05 * float(torch.randn((), generator=g)) for i in range(n)]


def diverging_trace(n: int, onset: int, seed: int = 0) -> list[float]:
    """The same, until dE shoots up at ``onset`` (catastrophic overfitting)."""
    return [v + (0.05 * (i - onset) if i >= onset else 0.0) for i, v in enumerate(stable_trace(n, seed))]


def feed(monitor: COMonitor, trace: list[float], start: int = 1) -> list[int]:
    """Feed one traced batch per iteration; return the iterations at which the alarm fired."""
    fired = []
    for iteration, value in enumerate(trace, start):
        values = {"dE": torch.full((8,), value), "dE_joint": torch.full((8,), 2 * value)}
        monitor.observe(values, iteration)
        if monitor.step(iteration):
            fired.append(iteration)
    return fired


def test_rule_fires_on_a_diverging_trace_and_stays_silent_on_a_stable_one():
    for seed in range(5):
        assert feed(COMonitor(SETTINGS, torch.device("cpu")), stable_trace(400, seed)) == []
        fired = feed(COMonitor(SETTINGS, torch.device("cpu")), diverging_trace(400, onset=200, seed=seed))
        assert len(fired) == 1 and 200 < fired[0] <= 240, fired


def test_rule_needs_patience_and_warmup():
    rule = DriftRule(threshold=3, patience=2, halflife=4, warmup=3, min_std=0.1)
    assert [rule.update(v) for v in (0.0, 5.0)] == [0.0, 0.0]  # a jump during warm-up only moves the baseline
    rule.reset()
    for _ in range(10):
        rule.update(0.0)
    assert rule.update(1.0) == pytest.approx(10.0) and not rule.fired  # one outlier: no alarm yet
    rule.update(0.0)
    assert rule.streak == 0 and not rule.fired
    rule.update(1.0)
    rule.update(1.0)
    assert rule.fired
    assert rule.mean == pytest.approx(0.0, abs=1e-6)  # the diverging checks were kept out of the baseline
    assert math.isinf(DriftRule(3, 2, 4, 3, 0.1).update(float("nan")))


def test_one_sided_rule_ignores_a_falling_dE():
    falling = [-v for v in diverging_trace(400, onset=200)]
    assert feed(COMonitor(SETTINGS.model_copy(update={"direction": "up"}), torch.device("cpu")), falling) == []
    assert feed(COMonitor(SETTINGS.model_copy(update={"direction": "both"}), torch.device("cpu")), falling)


def test_monitor_state_round_trips_mid_stream_and_replay_matches_online():
    trace = diverging_trace(400, onset=250, seed=3)
    reference = COMonitor(SETTINGS, torch.device("cpu"))
    fired = feed(reference, trace)
    first = COMonitor(SETTINGS, torch.device("cpu"))
    feed(first, trace[:203])  # stop between two checks: pending batches must survive
    state = json.loads(json.dumps(first.state_dict()))  # plain containers only
    resumed = COMonitor(SETTINGS, torch.device("cpu"))
    resumed.load_state_dict(state)
    assert feed(resumed, trace[203:], start=204) == fired
    assert resumed.log == reference.log
    assert replay(reference.log, SETTINGS) == fired[0]
    assert replay(reference.log, SETTINGS.model_copy(update={"threshold": 1e6})) is None


def test_epoch_metrics_report_the_alarm_once():
    monitor = COMonitor(SETTINGS, torch.device("cpu"))
    fired = feed(monitor, diverging_trace(300, onset=150))
    metrics = monitor.epoch_metrics()
    assert metrics["monitor_alarm"] == 1.0 and metrics["monitor_alarm_iter"] == fired[0]
    assert metrics["monitor_iters"] == 300 and metrics["monitor_z_max"] > SETTINGS.threshold
    assert monitor.epoch_metrics()["monitor_alarm"] == 0.0


def test_a_monitor_that_only_warns_does_not_change_the_config_hash():
    base = RunConfig()
    assert base.config_hash() == RunConfig(monitor={"threshold": 9.0}).config_hash()
    assert base.config_hash() == RunConfig(monitor={"enabled": False}).config_hash()
    assert base.config_hash() != RunConfig(monitor={"action": "stop"}).config_hash()


# ----- in the harness, on real tiny runs ------------------------------------------------------------


@pytest.mark.slow
def test_default_monitor_fires_before_a_real_fashion_mnist_run_collapses(tmp_path):
    """FGSM at eps 0.3 on 3,000 Fashion-MNIST images collapses in its third epoch; the alarm comes first."""
    catalogue = load_catalogue()
    config = prepare(resolve_config(catalogue, track="fmnist-co", overrides={
        "n_train": 3000, "batch_size": 64, "epochs": 3, "val_size": 1000,
        "eval": {"aa_points": 0, "val_points": 200, "test_points": 50, "val_pgd_steps": 5, "pgd_steps": 5}}),
        catalogue)
    assert config.monitor == MonitorConfig()
    store = Store(tmp_path)
    run_id = execute(config, store)
    history = store.epochs(run_id)
    co_epoch = next(e["epoch"] for e in history if e["co"])
    alarm = next(e for e in history if e["monitor_alarm"])
    assert alarm["epoch"] <= co_epoch and alarm["monitor_alarm_iter"] < history[co_epoch]["monitor_iters"]
    log = read_log(store.run_dir(run_id) / "monitor.json")
    assert log.alarm_iters == [int(alarm["monitor_alarm_iter"])]
    assert len(log.batch_iters) == len(log.batch_dE) > 0


#: Toy images (one bright band per class) under FGSM at eps 0.5: PGD accuracy collapses while FGSM
#: accuracy climbs; there the dE diverges downwards, so this monitor watches both directions.
TOY_CO = {"dataset": "fashion-mnist", "trainer": "fgsm", "eps": 0.5, "lr": 0.1, "epochs": 3, "batch_size": 32,
          "val_size": 200, "monitor": {"check_every": 4, "warmup": 3, "direction": "both", "threshold": 4.0,
                                       "patience": 2, "halflife": 8.0, "min_std": 0.05},
          "eval": {"aa_points": 0, "val_points": 100, "test_points": 50, "val_pgd_steps": 5, "pgd_steps": 5}}


@pytest.fixture
def toy_root(tmp_path):
    """Fashion-MNIST files of 1,000 toy training images (``datafiles.class_images``)."""
    return write_mnist_folder(tmp_path / "toy", class_images(1000, 28, 1, 0), class_images(100, 28, 1, 1))


def toy_co(root, **overrides):
    catalogue = load_catalogue()
    settings = TOY_CO | {"data_root": str(root)} | overrides
    return prepare(resolve_config(catalogue, track="digits-tiny", overrides=settings), catalogue)


class _StopAfterSecondEpoch(Reporter):
    def epoch_done(self, epoch, metrics):
        if epoch == 1:
            raise KeyboardInterrupt


def test_a_resumed_run_continues_the_monitor_where_it_stopped(tmp_path, toy_root):
    store = Store(tmp_path)
    config = toy_co(toy_root)
    run_id = execute(config, store)
    history = store.epochs(run_id)
    log = read_log(store.run_dir(run_id) / "monitor.json")
    assert log.alarm_iters and any(e["co"] for e in history)
    with pytest.raises(KeyboardInterrupt):
        execute(config, store, reporter=_StopAfterSecondEpoch())
    interrupted = store.runs(status="interrupted")[0].id
    execute(config, store, resume=interrupted)
    assert read_log(store.run_dir(interrupted) / "monitor.json") == log
    assert [e["monitor_alarm_iter"] for e in store.epochs(interrupted)] == [e["monitor_alarm_iter"] for e in history]


def test_stop_action_ends_training_at_the_alarm(tmp_path, toy_root):
    store = Store(tmp_path)
    run_id = execute(toy_co(toy_root, epochs=4, monitor=TOY_CO["monitor"] | {"action": "stop"}), store)
    history = store.epochs(run_id)
    assert len(history) < 4 and history[-1]["monitor_alarm"] == 1.0
    assert history[-1]["monitor_iters"] == history[-1]["monitor_alarm_iter"]  # the epoch ended at the alarm
    assert store.get_run(run_id).status == "done" and "test_pgd_acc" in store.results(run_id)["last"]


class _StopAfterEpoch(Reporter):
    def __init__(self, epoch: int):
        self.epoch = epoch

    def epoch_done(self, epoch, metrics):
        if epoch == self.epoch:
            raise KeyboardInterrupt


def _without_times(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if "time" not in k} for row in rows]


def test_rollback_action_restarts_the_epoch_with_the_fallback_trainer_and_resumes_with_it(tmp_path, toy_root):
    store = Store(tmp_path)
    monitor = TOY_CO["monitor"] | {"action": "rollback", "fallback_trainer": "n-fgsm"}
    config = toy_co(toy_root, epochs=4, monitor=monitor)
    run_id = execute(config, store)
    history = store.epochs(run_id)
    assert [e["epoch"] for e in history] == [0, 1, 2, 3]
    log = read_log(store.run_dir(run_id) / "monitor.json")
    assert len(log.rollback_iters) == 1
    rolled = next(e["epoch"] for e in history if e["monitor_rollbacks"])
    assert history[rolled]["monitor_alarm_iter"] == log.rollback_iters[0]
    # the alarmed epoch was trained again from its start: its iterations appear twice in the log
    assert log.batch_iters.count(log.batch_iters[-1]) == 1 and len(set(log.batch_iters)) < len(log.batch_iters)
    # interrupted right after the epoch that rolled back, then resumed: it goes on with the fallback trainer,
    # never rolls back again, and ends exactly as the uninterrupted run
    assert rolled < 3
    with pytest.raises(KeyboardInterrupt):
        execute(config, store, reporter=_StopAfterEpoch(rolled))
    (interrupted,) = store.runs(status="interrupted")
    assert interrupted.epochs_done == rolled + 1
    assert execute(config, store, resume=interrupted.id) == interrupted.id
    assert _without_times(store.epochs(interrupted.id)) == _without_times(history)
    assert read_log(store.run_dir(interrupted.id) / "monitor.json") == log
    assert store.results(interrupted.id)["last"]["test_pgd_acc"] == store.results(run_id)["last"]["test_pgd_acc"]


def test_rollback_needs_a_known_fallback_trainer(toy_root):
    with pytest.raises(EnergybenchError, match="unknown trainer 'nope'"):
        toy_co(toy_root, monitor={"action": "rollback", "fallback_trainer": "nope"})
