"""The SQLite run store and checkpoint files."""

from __future__ import annotations

import json
import os
import pickle
import sqlite3

import numpy as np
import pytest
import torch

from energybench.errors import EnergybenchError
from energybench.storage.checkpoint import load_checkpoint, model_state, save_checkpoint
from energybench.storage.store import SCHEMA_VERSION, Store, pack_points, unpack_points

CONFIG = {"trainer": "fgsm", "regularizer": "der", "dataset": "digits", "model": "small-cnn", "eps": 0.1,
          "norm": "Linf", "seed": 0, "track": "t"}


def test_runs_epochs_and_results_round_trip(tmp_path):
    store = Store(tmp_path)
    run_id = store.create_run(CONFIG, "abc")
    store.add_epoch(run_id, 0, {"val_pgd_acc": 0.5})
    store.add_epoch(run_id, 0, {"val_pgd_acc": 0.6})  # a resumed run may record an epoch again
    store.add_results(run_id, "last", {"test_aa_acc": 0.25})
    store.set_status(run_id, "done", wall_time=3.0)
    again = Store(tmp_path)
    record = again.get_run(run_id)
    assert record.status == "done" and record.config["trainer"] == "fgsm" and record.epochs_done == 1
    assert again.epochs(run_id) == [{"epoch": 0, "val_pgd_acc": 0.6}]
    assert again.results(run_id) == {"last": {"test_aa_acc": 0.25}}
    assert [r.id for r in again.runs(dataset="digits", eps=0.1)] == [run_id]
    assert again.runs(dataset="cifar10") == []
    assert (tmp_path / "runs" / run_id / "config.json").is_file()
    # metrics.jsonl mirrors the epochs table: the epoch recorded again replaced its line
    assert (tmp_path / "runs" / run_id / "metrics.jsonl").read_text() == '{"epoch": 0, "val_pgd_acc": 0.6}\n'


def test_per_point_correctness_round_trips_packed(tmp_path):
    rng = np.random.default_rng(1)
    vectors = {"test_clean": rng.random(1000) < 0.8, "test_pgd": rng.random(1000) < 0.3,
               "test_aa": rng.random(37) < 0.1}
    store = Store(tmp_path)
    run_id = store.create_run(CONFIG, "abc")
    store.add_points(run_id, "last", vectors)
    store.add_points(run_id, "best", {"test_aa": torch.tensor(vectors["test_aa"])})  # tensors from the evaluation, too
    points = Store(tmp_path).points(run_id)
    assert set(points) == {"best", "last"} and set(points["last"]) == set(vectors)
    for metric, vector in vectors.items():
        assert points["last"][metric].dtype == bool and np.array_equal(points["last"][metric], vector)
    assert np.array_equal(points["best"]["test_aa"], vectors["test_aa"])
    n, packed = pack_points(vectors["test_aa"])
    assert (n, len(packed)) == (37, 5) and np.array_equal(unpack_points(n, packed), vectors["test_aa"])

    other = store.create_run(CONFIG, "abc")
    assert store.points(other) == {}  # a run stored before per-point correctness was kept


def test_numbers_are_stored_to_float32s_precision(tmp_path):
    """A float32 accuracy or energy is stored as the number it stands for (0.6), not as the double nearest to the
    float32 (0.6000000238418579); so are epochs; exact values pass unchanged."""
    store = Store(tmp_path)
    run_id = store.create_run(CONFIG, "abc")
    store.add_results(run_id, "last", {"test_pgd_acc": float(torch.tensor(0.6)), "test_aa_points": 40.0})
    store.add_epoch(run_id, 0, {"val_dE_mean": float(torch.tensor(-0.1165311336517334)), "co": False})
    assert store.results(run_id) == {"last": {"test_pgd_acc": 0.6, "test_aa_points": 40.0}}
    assert store.epochs(run_id) == [{"epoch": 0, "val_dE_mean": -0.1165311, "co": False}]
    assert '"val_dE_mean": -0.1165311' in (tmp_path / "runs" / run_id / "metrics.jsonl").read_text()


def test_a_store_written_with_version_1_result_keys_loads_ranks_and_exports(capsys, tmp_path):
    """A store from before the result keys were unified (AutoAttack as aa_acc, aa_points, aa_<attack>_acc, per point
    aa; checks check_*; disagreement counts shared_*) reads under today's keys everywhere: results, per-point
    correctness, the ranking (AutoAttack on 1000 points ranks, paired), the exports and the sanity warnings."""
    from datafiles import run_cli

    from energybench.config import RunConfig

    store = Store(tmp_path)
    rng = np.random.default_rng(0)
    robust = rng.random(1000) < 0.45
    ids = []
    for trainer, aa in (("pgd", robust), ("fgsm", robust & (rng.random(1000) < 0.5))):
        config = RunConfig(dataset="cifar10", model="preact-resnet18", trainer=trainer, eps=8 / 255,
                           eval={"aa_points": 1000})
        run_id = store.create_run(config.model_dump(), config.config_hash())
        old = {"test_clean_acc": 0.8, "test_pgd_acc": 0.5, "aa_acc": float(aa.mean()), "aa_points": 1000.0,
               "aa_apgd-ce_acc": 0.6, "aa_square_acc": 0.1, "check_randomized": 0.0, "shared_points": 1000.0}
        with sqlite3.connect(tmp_path / "store.sqlite") as db:  # the rows as version 1 wrote them
            db.executemany("INSERT INTO results VALUES (?, ?, ?, ?)",
                           [(run_id, tag, k, v) for tag in ("best", "last") for k, v in old.items()])
            n, packed = pack_points(aa)
            db.executemany("INSERT INTO points VALUES (?, ?, 'aa', ?, ?)",
                           [(run_id, tag, n, packed) for tag in ("best", "last")])
        store.set_status(run_id, "done", wall_time=1.0)
        ids.append(run_id)
    results = Store(tmp_path).results(ids[0])["last"]
    assert results["test_aa_acc"] == robust.mean() and results["test_aa_points"] == 1000.0
    assert {"test_aa_apgd-ce_acc", "test_check_randomized", "test_shared_points"} <= set(results)
    assert not any(k.startswith(("aa", "check_", "shared_")) for k in results)
    assert np.array_equal(Store(tmp_path).points(ids[0])["last"]["test_aa"], robust)
    code, out, err = run_cli(capsys, "leaderboard", "--format", "json", "--no-references", "--store", tmp_path)
    assert code == 0, err
    measured = json.loads(out)["measured"]
    assert [r["id"] for r in measured] == ids and [r["rank"] for r in measured] == [1, 2]
    assert {r["ranked_by"] for r in measured} == {"test_aa_acc"} and measured[1]["test_above"] == "exact McNemar"
    assert measured[0]["test_aa_acc"] == robust.mean() and measured[0]["test_aa_acc_n"] == 1000
    assert measured[0]["warnings"].startswith("best: the black-box Square attack lowered accuracy")
    code, out, _ = run_cli(capsys, "leaderboard", "--format", "csv", "--no-references", "--store", tmp_path)
    assert code == 0 and "test_aa_acc" in out.splitlines()[0] and ",aa," not in out.splitlines()[0]


def test_unknown_run_suggests(tmp_path):
    store = Store(tmp_path)
    run_id = store.create_run(CONFIG, "abc")
    with pytest.raises(EnergybenchError, match=f"did you mean '{run_id}'"):
        store.get_run(run_id[:-1] + "x")


def test_store_from_a_newer_schema_is_refused(tmp_path):
    Store(tmp_path).close()
    db = sqlite3.connect(tmp_path / "store.sqlite")
    db.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    db.commit()
    db.close()
    with pytest.raises(EnergybenchError, match="newer than this energybench understands"):
        Store(tmp_path)


def test_store_path_that_is_a_file(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(EnergybenchError, match="not writable"):
        Store(tmp_path / "afile")


def test_not_a_database(tmp_path):
    (tmp_path / "store.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(EnergybenchError, match="not a usable SQLite database"):
        Store(tmp_path)


def test_checkpoint_round_trip_and_corruption_detected(tmp_path):
    path = tmp_path / "m.pt"
    state = {"w": torch.arange(4.0)}
    save_checkpoint(path, state)
    assert torch.equal(load_checkpoint(path)["w"], state["w"])
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(EnergybenchError, match="corrupted: its SHA-256 does not match"):
        load_checkpoint(path)
    path.write_bytes(path.read_bytes()[:40])
    (tmp_path / "m.pt.sha256").unlink()
    with pytest.raises(EnergybenchError, match="not a readable PyTorch file"):
        load_checkpoint(path)


def test_checkpoint_with_code_is_refused(tmp_path):
    class Payload:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    path.write_bytes(pickle.dumps({"model": Payload()}))
    with pytest.raises(EnergybenchError, match="refusing checkpoint"):
        load_checkpoint(path)


def test_model_state_unwraps_common_layouts():
    sd = {"w": torch.zeros(1)}
    assert model_state(sd) is sd and model_state({"model": sd}) is sd and model_state({"state_dict": sd}) is sd
    with pytest.raises(EnergybenchError):
        model_state({"epoch": 3})


def test_resume_states_of_every_version_read_as_todays():
    """The CO monitor's state, saved at the top (version 1), under its display name (2) or its state_key (3)."""
    from energybench.storage.migrations import current_state
    from energybench.training.callbacks.co_monitor import COMonitorCallback

    today = {"epoch": 2, "callbacks": {COMonitorCallback.state_key: {"z": 1}, "tensorboard": {}}}
    assert current_state({"epoch": 2, "monitor": {"z": 1}, "callbacks": {"tensorboard": {}}}) == today
    assert current_state({"epoch": 2, "callbacks": {"CO monitor": {"z": 1}, "tensorboard": {}}}) == today
    assert current_state(today) == today


def test_metrics_jsonl_gains_a_line_per_epoch_and_stays_the_database_when_an_epoch_is_recorded_again(tmp_path):
    store = Store(tmp_path)
    run_id = store.create_run({"trainer": "fgsm", "regularizer": "none", "dataset": "digits", "model": "small-cnn",
                               "eps": 0.1, "norm": "Linf", "seed": 0}, "h")
    path = store.run_dir(run_id) / "metrics.jsonl"
    for epoch in (0, 1):
        store.add_epoch(run_id, epoch, {"val_pgd_acc": 0.1 * epoch})
    first = path.read_text().splitlines()
    store.add_epoch(run_id, 1, {"val_pgd_acc": 0.5})  # a resumed run records its last epoch again
    lines = path.read_text().splitlines()
    assert len(first) == len(lines) == 2 and lines[0] == first[0]
    assert [json.loads(line) for line in lines] == store.epochs(run_id)
