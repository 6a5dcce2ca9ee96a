"""The SQLite run store and checkpoint files."""

from __future__ import annotations

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
    store.add_results(run_id, "last", {"aa_acc": 0.25})
    store.set_status(run_id, "done", wall_time=3.0)
    again = Store(tmp_path)
    record = again.get_run(run_id)
    assert record.status == "done" and record.config["trainer"] == "fgsm" and record.epochs_done == 1
    assert again.epochs(run_id) == [{"epoch": 0, "val_pgd_acc": 0.6}]
    assert again.results(run_id) == {"last": {"aa_acc": 0.25}}
    assert [r.id for r in again.runs(dataset="digits", eps=0.1)] == [run_id]
    assert again.runs(dataset="cifar10") == []
    assert (tmp_path / "runs" / run_id / "config.json").is_file()
    # metrics.jsonl mirrors the epochs table: the epoch recorded again replaced its line
    assert (tmp_path / "runs" / run_id / "metrics.jsonl").read_text() == '{"epoch": 0, "val_pgd_acc": 0.6}\n'


def test_per_point_correctness_round_trips_packed(tmp_path):
    rng = np.random.default_rng(1)
    vectors = {"test_clean": rng.random(1000) < 0.8, "test_pgd": rng.random(1000) < 0.3, "aa": rng.random(37) < 0.1}
    store = Store(tmp_path)
    run_id = store.create_run(CONFIG, "abc")
    store.add_points(run_id, "last", vectors)
    store.add_points(run_id, "best", {"aa": torch.tensor(vectors["aa"])})  # tensors from the evaluation, too
    points = Store(tmp_path).points(run_id)
    assert set(points) == {"best", "last"} and set(points["last"]) == set(vectors)
    for metric, vector in vectors.items():
        assert points["last"][metric].dtype == bool and np.array_equal(points["last"][metric], vector)
    assert np.array_equal(points["best"]["aa"], vectors["aa"])
    n, packed = pack_points(vectors["aa"])
    assert (n, len(packed)) == (37, 5) and np.array_equal(unpack_points(n, packed), vectors["aa"])

    other = store.create_run(CONFIG, "abc")
    assert store.points(other) == {}  # a run stored before per-point correctness was kept


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
