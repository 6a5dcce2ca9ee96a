"""Image-folder datasets: a folder or archive of train/<class>/*, test/<class>/*, decoded once and cached."""

from __future__ import annotations

import hashlib
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from datafiles import SMALL_EVAL, class_images, run_cli, tar_folder, write_image_folder

from energybench.data.datasets import load_dataset, read_arrays, stratified_order
from energybench.data.image_folder import ImageFolderDataset, decode
from energybench.errors import EnergybenchError

CLASSES = ["cat", "airplane", "dog"]  # written in this order; read in sorted order: airplane, cat, dog
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-jpeg"


def three_classes(n: int, seed: int, channels: int = 3, size: int = 8) -> tuple[np.ndarray, np.ndarray]:
    x, y = class_images(n, size, channels, seed)
    return x, y % 3


@pytest.fixture
def tree(tmp_path) -> Path:
    """A class-sorted image folder: 3 classes, 60 train and 30 test 8x8 RGB PNGs."""
    return write_image_folder(tmp_path / "mydata", {"train": three_classes(60, 0), "test": three_classes(30, 1)},
                              CLASSES)


def cache_files() -> list[Path]:
    return sorted((Path(os.environ["ENERGYBENCH_HOME"]) / "datasets").glob("*.pt"))


def test_classes_in_sorted_folder_order_and_pixels_exact(tree):
    data = decode(tree)
    assert data.classes == ["airplane", "cat", "dog"]
    x, y = three_classes(60, 0)
    # class folder "cat" holds the images labelled 0 when written; it is class 1 when read (sorted order)
    written_cats = x[y == 0]
    read_cats = data.arrays.x_train[data.arrays.y_train == 1].numpy()
    assert np.array_equal(read_cats, written_cats)
    assert data.arrays.x_train.dtype == torch.uint8 and data.arrays.x_train.shape == (60, 3, 8, 8)
    assert len(data.mean) == 3 and all(0 < s < 1 for s in data.std)


def test_grayscale_images_give_one_channel(tmp_path):
    root = write_image_folder(tmp_path / "gray", {"train": three_classes(30, 0, 1), "test": three_classes(9, 1, 1)},
                              CLASSES)
    assert decode(root).arrays.x_train.shape == (30, 1, 8, 8)


def test_archive_and_folder_give_the_same_tensors(tree, tmp_path):
    folder = decode(tree)
    for name in ("mydata.tar.gz", "mydata.tar"):
        packed = decode(tar_folder(tree, tmp_path / name))
        assert packed.classes == folder.classes
        for a, b in zip(packed.arrays, folder.arrays):
            assert torch.equal(a, b)


def test_second_load_comes_from_the_cache_and_a_changed_source_is_decoded_again(tree, monkeypatch):
    import energybench.data.image_folder as image_folder

    first = load_dataset(str(tree), val_size=10)
    assert len(cache_files()) == 1
    calls = []
    real_decode = image_folder.decode
    monkeypatch.setattr(image_folder, "decode", lambda *a, **k: calls.append(a) or real_decode(*a, **k))
    monkeypatch.setattr(image_folder, "_LAST", {})  # as in a new process: nothing read yet
    again = load_dataset(str(tree), val_size=10)
    assert calls == [] and torch.equal(first.test.x, again.test.x)
    # change one image: the source's fingerprint changes, so it is decoded again (a new cache file)
    image = next((tree / "test" / "dog").iterdir())
    from PIL import Image

    Image.fromarray(np.full((8, 8, 3), 255, np.uint8)).save(image)
    os.utime(image, ns=(1, 1))
    changed = load_dataset(str(tree), val_size=10)
    assert len(calls) == 1 and not torch.equal(first.test.x, changed.test.x)
    assert len(cache_files()) == 2


def test_a_damaged_cache_file_is_decoded_again(tree, monkeypatch):
    import energybench.data.image_folder as image_folder

    first = load_dataset(str(tree), val_size=10)
    (cache,) = cache_files()
    cache.write_bytes(b"garbage")
    monkeypatch.setattr(image_folder, "_LAST", {})  # as in a new process: nothing read yet
    assert torch.equal(load_dataset(str(tree), val_size=10).train.x, first.train.x)
    assert cache.read_bytes() != b"garbage"


def test_class_sorted_source_gets_a_stratified_random_order(tree):
    data = load_dataset(str(tree), val_size=6)
    raw = decode(tree).arrays
    assert raw.y_test[:6].tolist() == [0] * 6  # on disk: sorted by class
    counts = torch.bincount(data.test.y[:6], minlength=3)
    assert counts.tolist() == [2, 2, 2], "the first 6 test points hold every class equally"
    assert not torch.equal(data.test.y[:6], raw.y_test[:6])
    # the same points for every run of the dataset: pairing across runs keeps working
    assert torch.equal(load_dataset(str(tree), val_size=6).test.x, data.test.x)


def test_stratified_order_prefixes_are_proportional():
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)
    order = stratified_order(y, seed=3)
    assert sorted(order.tolist()) == list(range(100))
    for n in (10, 25, 50):
        counts = torch.bincount(y[order[:n]], minlength=3).float()
        assert (counts - n * torch.tensor([0.5, 0.3, 0.2])).abs().max() <= 1
    assert not torch.equal(order, stratified_order(y, seed=4))


def test_named_subclass_finds_folder_or_archive_under_data_root(tree, tmp_path):
    class Mine(ImageFolderDataset):
        name = "mine"
        num_classes, in_channels, image_size, mean, std = 3, 3, 8, (0.5,) * 3, (0.25,) * 3
        classes = ("airplane", "cat", "dog")
        subdirs = ("mydata", "mydata.tar.gz")

    by_folder = read_arrays(Mine(), tree.parent)
    packed = tmp_path / "elsewhere"
    packed.mkdir()
    tar_folder(tree, packed / "mydata.tar.gz")
    by_archive = read_arrays(Mine(), packed / "mydata.tar.gz")
    assert torch.equal(by_folder.x_train, by_archive.x_train)

    class Wrong(Mine):
        classes = ("a", "b", "c")

    with pytest.raises(EnergybenchError, match="needs the class folders a, b, c; found airplane, cat, dog"):
        read_arrays(Wrong(), tree.parent)


@pytest.mark.parametrize("damage, message", [
    ("no_test", "holds no test/<class>/ image folders"),
    ("no_train", "holds no train/<class>/ image folders"),
    ("class_sets", r"different classes \(only in train: -; only in test: horse\)"),
    ("empty_class", "class folder train/dog/ holds no images"),
    ("unreadable", "cannot read image train/cat/0000.png"),
    ("sizes", "is 4x4 pixels, the ones before it 8x8"),
])
def test_bad_folders_get_one_line_and_nothing_in_the_cache(tree, damage, message):
    import shutil

    if damage == "no_test":
        shutil.rmtree(tree / "test")
    elif damage == "no_train":
        shutil.rmtree(tree / "train")
    elif damage == "class_sets":
        (tree / "test" / "horse").mkdir()
        shutil.copy(next((tree / "test" / "cat").iterdir()), tree / "test" / "horse" / "0000.png")
    elif damage == "empty_class":
        for f in (tree / "train" / "dog").iterdir():
            f.unlink()
    elif damage == "unreadable":
        (tree / "train" / "cat" / "0000.png").write_bytes(b"not a png")
    elif damage == "sizes":
        from PIL import Image

        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tree / "train" / "dog" / "9999.png")
    with pytest.raises(EnergybenchError, match=message):
        load_dataset(str(tree), val_size=5)
    assert cache_files() == []


def test_corrupt_archive_gets_one_line(tree, tmp_path):
    archive = tar_folder(tree, tmp_path / "mydata.tar.gz")
    archive.write_bytes(archive.read_bytes()[:2000])  # truncated
    with pytest.raises(EnergybenchError, match="not a readable tar archive|cannot read"):
        load_dataset(str(archive), val_size=5)
    (tmp_path / "junk.tar").write_bytes(b"\x00" * 100 + b"junk")
    with pytest.raises(EnergybenchError, match=r"junk\.tar"):
        load_dataset(str(tmp_path / "junk.tar"), val_size=5)
    (tmp_path / "text.tar.gz").write_bytes(b"x")  # no compression or tar format recognises it
    with pytest.raises(EnergybenchError, match=r"text\.tar\.gz is not a readable tar archive \(not gzip") as err:
        load_dataset(str(tmp_path / "text.tar.gz"), val_size=5)
    assert "\n" not in str(err.value)
    assert cache_files() == []


def test_cli_bad_image_folder_is_one_line_and_exit_2(tree, capsys):
    (tree / "train" / "cat" / "0000.png").write_bytes(b"not a png")
    code, out, err = run_cli(capsys, "run", "--dataset", tree, "--model", "small-cnn", "--epochs", "1",
                             "--config", write_small_eval(tree.parent))
    assert code == 2 and "cannot read image train/cat/0000.png" in err and "Traceback" not in err + out
    code, _, err = run_cli(capsys, "run", "--dataset", tree.parent / "nowhere", "--epochs", "1")
    assert code == 2 and "does not exist" in err


def write_small_eval(folder: Path) -> Path:
    path = folder / "small.toml"
    path.write_text("val_size = 10\nbatch_size = 16\n[eval]\n" + "".join(f"{k} = {v}\n" for k, v in SMALL_EVAL.items()))
    return path


def test_a_run_on_your_own_image_folder(tree, capsys, monkeypatch):
    monkeypatch.chdir(tree.parent)  # a relative path is recorded as the absolute one
    code, out, err = run_cli(capsys, "run", "--dataset", "mydata", "--model", "small-cnn", "--trainer", "fgsm",
                             "--eps", "8/255", "--epochs", "1", "--config", write_small_eval(tree.parent),
                             "--store", tree.parent / "store")
    assert code == 0, err
    from energybench import leaderboard

    (row,) = leaderboard(store=tree.parent / "store")
    assert row["dataset"] == str(tree.resolve())


def test_the_shared_cifar10_jpeg_archive_end_to_end():
    """The real archive (../shared beside the checkout, as on CI): checksum, 60,000 images, 10 classes,
    5,000 per class in train and 1,000 in test, in CIFAR-10's label order."""
    archive = SHARED / "cifar10-jpeg.tar.gz"
    if not archive.is_file():
        pytest.skip(f"the shared CIFAR-10 JPEG archive is not at {archive}")
    expected = (SHARED / "SHA256SUMS").read_text().split()[0]
    assert hashlib.sha256(archive.read_bytes()).hexdigest() == expected
    with tarfile.open(archive) as tar:
        assert sum(m.isfile() for m in tar) == 60000
    data = load_dataset("cifar10-jpeg", data_root=archive, val_size=1000)
    assert data.info.classes[0] == "airplane" and data.info.classes[-1] == "truck"
    assert len(data.train) + len(data.val) == 50000 and len(data.test) == 10000
    assert torch.bincount(torch.cat([data.train.y, data.val.y])).tolist() == [5000] * 10
    assert torch.bincount(data.test.y).tolist() == [1000] * 10
    assert torch.bincount(data.test.y[:1000]).tolist() == [100] * 10
    assert data.train.x.shape[1:] == (3, 32, 32) and data.train.x.dtype == torch.uint8


def test_the_dataset_plugin_example_of_docs_datasets_md(tmp_path, scoped_registry):
    """docs/datasets.md's `Blobs` plugin, exactly as written there, registered and read from a data root."""
    import re

    from energybench.contracts import registry as reg

    doc = (Path(__file__).resolve().parents[1] / "docs" / "datasets.md").read_text()
    code = next(block for block in re.findall(r"```python\n(.*?)```", doc, re.S) if "class Blobs" in block)
    namespace: dict = {}
    exec(compile(code, "docs/datasets.md", "exec"), namespace)
    reg.register_dataset("blobs")(namespace["Blobs"])
    (tmp_path / "blobs").mkdir()
    rng = np.random.default_rng(0)
    splits = {f"x_{s}": rng.integers(0, 256, (n, 1, 16, 16), dtype=np.uint8) for s, n in (("train", 40), ("test", 8))}
    np.savez(tmp_path / "blobs" / "blobs.npz", **splits, y_train=rng.integers(0, 4, 40), y_test=rng.integers(0, 4, 8))
    data = load_dataset("blobs", data_root=tmp_path, val_size=5)
    assert data.train.x.shape == (35, 1, 16, 16) and len(data.test) == 8 and data.info.num_classes == 4
    with pytest.raises(EnergybenchError, match=r"dataset 'blobs' not found; put blobs.npz"):
        load_dataset("blobs", data_root=tmp_path / "blobs" / "nothing-here", val_size=5)
