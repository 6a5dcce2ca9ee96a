"""Shared fixtures: offline, a private store per test, tiny datasets written in their real formats."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from datafiles import class_images, write_mnist_folder

# One thread: with only 2 cores, intra-op threading of these tiny models costs more than it saves,
# and pyautoattack slows down sharply when its threads compete with another process.
torch.set_num_threads(1)
# The tests read tables as the CLI prints them into a pipe (as wide as a table needs); pytest-xdist's workers would
# otherwise announce an 80-column terminal through COLUMNS.
os.environ.pop("COLUMNS", None)


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """Never download, never touch the user's store, never pick up a user's registry override."""
    monkeypatch.setenv("ENERGYBENCH_OFFLINE", "1")
    monkeypatch.setenv("ENERGYBENCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("ENERGYBENCH_DATA", raising=False)
    monkeypatch.delenv("ENERGYBENCH_REGISTRY", raising=False)
    monkeypatch.delenv("ENERGYBENCH_DISABLE_PLUGIN_AUTOLOAD", raising=False)


@pytest.fixture
def scoped_registry():
    """A freshly discovered plugin registry for this test: what it registers is gone after it."""
    from energybench.contracts.registry import use_registry

    with use_registry() as registry:
        yield registry


@pytest.fixture
def fmnist_dir(tmp_path) -> Path:
    """A tiny Fashion-MNIST folder: the four gzipped IDX files, 400 train and 100 test images."""
    return write_mnist_folder(tmp_path / "fmnist", class_images(400, 28, 1, 0), class_images(100, 28, 1, 1))


@pytest.fixture
def cifar10_root(tmp_path) -> Path:
    """A tiny cifar-10-batches-py folder of pickled batches in torchvision's layout (60 images each)."""
    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        x, y = class_images(60, 32, 3, i)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": x.reshape(60, -1), b"labels": y.tolist()}, f)
    return tmp_path / "cifar"
