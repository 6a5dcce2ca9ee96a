"""Writers for tiny dataset files in their real formats (shared by tests)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np


def write_idx(path: Path, array: np.ndarray) -> None:
    """Write ``array`` (uint8) as a gzipped IDX file, the MNIST/Fashion-MNIST format."""
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def class_images(n: int, size: int, channels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Learnable toy images: each class lights up its own horizontal band, plus noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = rng.integers(0, 60, (n, channels, size, size))
    band = max(size // 10, 1)
    for i, label in enumerate(y):
        row = (label * size) // 10
        x[i, :, row:row + band, :] = 230
    return x.astype(np.uint8), y.astype(np.int64)


def write_mnist_folder(root: Path, train: tuple[np.ndarray, np.ndarray], test: tuple[np.ndarray, np.ndarray]) -> Path:
    """The four gzipped IDX files of an MNIST-layout folder (Fashion-MNIST's too) from (images, labels) pairs;
    images as (n, 28, 28) or (n, 1, 28, 28). Returns ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    for prefix, (x, y) in (("train", train), ("t10k", test)):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", x[:, 0] if x.ndim == 4 else x)
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", y)
    return root


# ----- helpers shared by the test files (one definition each) -------------------------------------

#: A small evaluation for tests that do not look at evaluation numbers: no AutoAttack, 20 points.
SMALL_EVAL = {"aa_points": 0, "val_points": 20, "test_points": 20}


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    """``energybench ARGV...`` in process (arguments made strings): exit code, stdout, stderr."""
    from energybench.cli import main

    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def stored_run(out: str) -> str:
    """The run id in `energybench eval`'s last line, "run ID: rank K of N on SETTING ..."."""
    import re

    match = re.search(r"^run (\S+): rank ", out, flags=re.M)
    assert match, out
    return match.group(1)


def tiny_config(track: str = "digits-tiny", *, registry=None, **overrides):
    """A prepared ``RunConfig`` of ``track`` (digits-tiny: 8x8 digits, small-cnn, FGSM, 2 epochs) with
    ``overrides`` (top-level keys replace the track's, ``eval`` included); ``registry``: a registry.toml path."""
    from energybench.config import load_catalogue, resolve_config
    from energybench.training.run import prepare

    catalogue = load_catalogue(registry) if registry is not None else load_catalogue()
    return prepare(resolve_config(catalogue, track=track, overrides=overrides), catalogue)


def trained_digits_run(home, **overrides) -> str:
    """Train and evaluate a digits-tiny run (``tiny_config(**overrides)``) into the store at ``home``; its id."""
    from energybench.storage.store import Store
    from energybench.training.run import execute

    return execute(tiny_config(**overrides), Store(home))


def batchnorm_buffers(model) -> dict[str, object]:
    """Copies of every BatchNorm running statistic of ``model`` (running_mean, running_var, num_batches_tracked)."""
    import torch

    return {f"{name}.{key}": buf.detach().clone() for name, m in model.named_modules()
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
            for key, buf in m.named_buffers(recurse=False)}


def same_tensors(a: dict, b: dict) -> list[str]:
    """The keys whose tensors differ between ``a`` and ``b`` (same keys expected)."""
    import torch

    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k])]


def write_image_folder(root: Path, splits: dict[str, tuple[np.ndarray, np.ndarray]], classes: list[str],
                       suffix: str = ".png") -> Path:
    """An image-folder tree ``root/<split>/<class>/NNNN<suffix>`` (torchvision ImageFolder's layout) from
    (uint8 images (n, C, H, W), labels) per split, written with PIL and sorted by class like the
    CIFAR-10 JPEG copy. Returns ``root``."""
    from PIL import Image

    for split, (x, y) in splits.items():
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i, image in enumerate(x[y == c]):
                pixels = image.transpose(1, 2, 0)
                Image.fromarray(pixels[:, :, 0] if pixels.shape[2] == 1 else pixels).save(folder / f"{i:04d}{suffix}")
    return root


def tar_folder(folder: Path, archive: Path) -> Path:
    """``folder`` packed as a .tar or .tar.gz ``archive`` with one top folder, as the CIFAR-10 JPEG archive."""
    import tarfile

    with tarfile.open(archive, "w:gz" if archive.name.endswith("gz") else "w") as tar:
        tar.add(folder, arcname=folder.name)
    return archive


class StopAfterFirstEpoch:
    """A reporter that interrupts the run once its first epoch is stored (like Ctrl-C or a kill)."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: None

    def epoch_done(self, epoch, metrics):
        raise KeyboardInterrupt
