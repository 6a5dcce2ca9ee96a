"""Datasets read from their standard file layouts (tiny files written by the tests)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datafiles import class_images, write_idx, write_mnist_folder

from energybench.data.datasets import load_dataset
from energybench.data.idx import read_idx
from energybench.errors import EnergybenchError


def test_fashion_mnist_from_idx_files(fmnist_dir):
    data = load_dataset("fashion-mnist", data_root=fmnist_dir, val_size=50)
    assert data.train.x.shape == (350, 1, 28, 28) and data.train.x.dtype == torch.uint8
    assert len(data.val) == 50 and len(data.test) == 100
    again = load_dataset("fashion-mnist", data_root=fmnist_dir, val_size=50)
    assert torch.equal(data.val.x, again.val.x), "the validation split must not depend on the run"


def test_validation_is_carved_from_train_and_test_is_untouched(fmnist_dir):
    data = load_dataset("fashion-mnist", data_root=fmnist_dir, val_size=50)
    raw_train = read_idx(fmnist_dir / "train-images-idx3-ubyte.gz")
    raw_test = read_idx(fmnist_dir / "t10k-images-idx3-ubyte.gz")
    train_rows = {bytes(r) for r in data.train.x.numpy().reshape(len(data.train), -1)}
    val_rows = {bytes(r) for r in data.val.x.numpy().reshape(len(data.val), -1)}
    assert not train_rows & val_rows
    assert train_rows | val_rows == {bytes(r) for r in raw_train.reshape(len(raw_train), -1)}
    assert np.array_equal(data.test.x.numpy()[:, 0], raw_test)


def test_env_var_and_subfolder_lookup(fmnist_dir, monkeypatch, tmp_path):
    nested = tmp_path / "data" / "FashionMNIST" / "raw"
    nested.mkdir(parents=True)
    for f in fmnist_dir.iterdir():
        (nested / f.name).write_bytes(f.read_bytes())
    monkeypatch.setenv("ENERGYBENCH_DATA", str(tmp_path / "data"))
    assert len(load_dataset("fashion-mnist", val_size=10).test) == 100


def test_mnist_layout(tmp_path):
    images = class_images(60, 28, 1, 3)
    write_mnist_folder(tmp_path / "MNIST" / "raw", images, images)
    assert load_dataset("mnist", data_root=tmp_path, val_size=10).train.x.shape == (50, 1, 28, 28)


def test_cifar10_from_pickled_batches(cifar10_root):
    data = load_dataset("cifar10", data_root=cifar10_root, val_size=20)
    assert data.train.x.shape == (280, 3, 32, 32) and len(data.test) == 60


def test_cifar_batch_with_code_is_refused(cifar10_root):
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    (cifar10_root / "cifar-10-batches-py" / "test_batch").write_bytes(pickle.dumps({b"data": Evil()}))
    with pytest.raises(EnergybenchError, match="refusing to unpickle builtins.print"):
        load_dataset("cifar10", data_root=cifar10_root, val_size=20)


def test_svhn_from_mat_files(tmp_path):
    from scipy.io import savemat

    for split in ("train", "test"):
        x, y = class_images(40, 32, 3, 5)
        y[y == 0] = 10  # SVHN stores digit 0 as label 10
        savemat(tmp_path / f"{split}_32x32.mat", {"X": x.transpose(2, 3, 1, 0), "y": y.reshape(-1, 1)})
    data = load_dataset("svhn", data_root=tmp_path, val_size=10)
    assert data.test.x.shape == (40, 3, 32, 32) and int(data.test.y.max()) <= 9 and int(data.test.y.min()) >= 0


def test_digits_ships_with_scikit_learn():
    data = load_dataset("digits", val_size=200)
    assert data.train.x.shape[1:] == (1, 8, 8) and len(data.test) == 360 and int(data.train.x.max()) == 255


def test_missing_dataset_offline_says_where_to_put_files(tmp_path):
    with pytest.raises(EnergybenchError) as info:
        load_dataset("cifar10", data_root=tmp_path, val_size=10)
    text = str(info.value)
    assert "cifar-10-batches-py" in text and str(tmp_path) in text and "ENERGYBENCH_OFFLINE" in text


def test_wrong_shape_and_corrupt_files_are_reported(fmnist_dir):
    write_idx(fmnist_dir / "t10k-images-idx3-ubyte.gz", np.zeros((100, 20, 20), np.uint8))
    with pytest.raises(EnergybenchError, match=r"shape \(1, 20, 20\), expected \(1, 28, 28\)"):
        load_dataset("fashion-mnist", data_root=fmnist_dir, val_size=10)
    (fmnist_dir / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8bgarbage")
    with pytest.raises(EnergybenchError, match="not a valid gzip file"):
        load_dataset("fashion-mnist", data_root=fmnist_dir, val_size=10)


def test_unknown_dataset_suggests():
    with pytest.raises(EnergybenchError, match="did you mean 'cifar10'"):
        load_dataset("cifar", val_size=10)
