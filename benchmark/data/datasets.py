"""Datasets as in-memory uint8 tensors: a dataset plugin's files found, read, checked and split.

Every dataset becomes ``(x, y)`` tensors: ``x`` uint8 of shape (N, C, H, W), ``y`` int64. A dataset is
a plugin (``energybench.datasets``: the built-ins and any third party's) or the path of an image
folder or archive (``ImageFolderDataset.from_path``). Files are looked up in ``--data-root``, then
``$ENERGYBENCH_DATA``, then ``$ENERGYBENCH_HOME/data``, then the plugin's system folders (Debian's
``dataset-fashion-mnist`` package), each also under the plugin's ``subdirs``; when they are missing
and downloads are allowed (``ENERGYBENCH_OFFLINE`` unset), a downloadable dataset is fetched through
torchvision into the first of those roots.

The readers are energybench's own where torchvision's would refuse or be unsafe: IDX files are read
gzipped where they lie (Debian ships them as .gz), CIFAR batches are unpickled by an unpickler that
accepts only numpy arrays and plain containers (torchvision's ``pickle.load`` would run any code a
tampered file carries), SVHN's .mat files are read with scipy without torchvision's MD5 check of the
official release. Image folders are decoded with PIL and cached (``energybench.data.image_folder``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import torch

from energybench.contracts.dataset import Arrays, Dataset
from energybench.contracts.registry import get_registry
from energybench.data.image_folder import ImageFolderDataset, is_archive
from energybench.errors import EnergybenchError, unknown_name

#: The seed of the stratified order given to class-sorted datasets: fixed, so every run sees the same points.
ORDER_SEED = 0


@dataclass
class Split:
    """One split: uint8 images (N, C, H, W) and int64 labels (N,)."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return len(self.y)


@dataclass
class ImageData:
    """Train, validation (carved from train, for model selection) and test splits of a dataset."""

    info: Dataset
    train: Split
    val: Split
    test: Split


def offline() -> bool:
    """True when downloads are forbidden (``ENERGYBENCH_OFFLINE`` set to anything but 0)."""
    return os.environ.get("ENERGYBENCH_OFFLINE", "") not in ("", "0")


def is_path(name: str) -> bool:
    """True when a dataset name is meant as a path (an image folder or archive), not a plugin name."""
    return "/" in name or os.sep in name or name.startswith(("~", ".")) or is_archive(Path(name)) or Path(name).is_dir()


def get_dataset(name: str) -> Dataset:
    """The dataset plugin ``name``, or the image-folder dataset at the path ``name``; an unknown name raises
    with a did-you-mean suggestion."""
    registry = get_registry()
    if name in registry.names("dataset"):
        return registry.load("dataset", name)()
    if is_path(name):
        return ImageFolderDataset.from_path(Path(name))
    error = unknown_name("dataset", name, registry.names("dataset"))
    raise EnergybenchError(f"{error} or give the path of an image folder (train/<class>/*, test/<class>/*)")


def dataset_name(name: str) -> str:
    """How a run records dataset ``name``: the plugin name, or the absolute path of an image folder (checked)."""
    if name in get_registry().names("dataset") or not is_path(name):
        return name
    return get_dataset(name).name


def split_sizes(name: str, default: tuple[int | None, int | None] = (None, None)) -> tuple[int | None, int | None]:
    """Train and test set sizes of dataset ``name`` as its plugin states them, read no files (``default`` when
    the plugin does not say, or ``name`` is a path)."""
    registry = get_registry()
    if name not in registry.names("dataset"):
        return default
    cls = registry.load("dataset", name)
    return (cls.train_size, cls.test_size) if cls.train_size and cls.test_size else default


def stratified_order(y: torch.Tensor, seed: int = ORDER_SEED) -> torch.Tensor:
    """A seeded permutation of the points whose every prefix holds each class in proportion to its size
    (to within one point): each class in random order, interleaved by rank within the class."""
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    labels = y[perm]
    position = torch.empty(len(y), dtype=torch.float64)
    for c in labels.unique():
        members = (labels == c).nonzero().squeeze(1)
        position[members] = (torch.arange(len(members), dtype=torch.float64) + 0.5) / len(members)
    return perm[torch.argsort(position, stable=True)]  # ties (same relative rank) keep the random order


def _roots(data_root: str | Path | None) -> list[Path]:
    from energybench.storage.store import default_home

    given = [Path(p).expanduser() for p in (data_root, os.environ.get("ENERGYBENCH_DATA")) if p]
    return given + [default_home() / "data"]


def _locations(dataset: Dataset, roots: list[Path]) -> list[Path]:
    source = getattr(dataset, "source", None)
    if source is not None:
        return [source]
    if not dataset.needs_files:
        return [Path()]  # the reader takes its data from a package, not from files
    found = [root / sub for root in roots for sub in ("",) + dataset.subdirs]
    return found + [Path(s) for s in dataset.system_dirs]


def _read(dataset: Dataset, locations: list[Path]) -> Arrays | None:
    for location in locations:
        if location.exists():
            arrays = dataset.read(location)
            if arrays is not None:
                return arrays
    return None


def read_arrays(dataset: Dataset, data_root: str | Path | None = None) -> Arrays:
    """The train and test tensors of ``dataset`` as its files hold them (downloaded first when missing and
    allowed), checked against the dataset's facts."""
    roots = _roots(data_root)
    locations = _locations(dataset, roots)
    arrays, reason = _read(dataset, locations), ""
    if arrays is None and dataset.downloadable:
        if offline():
            reason = " (downloads disabled by ENERGYBENCH_OFFLINE)"
        else:
            try:
                dataset.download(roots[0])
            except Exception as exc:  # no network and the like
                reason = f" (download failed: {type(exc).__name__})"
            else:
                arrays = _read(dataset, _locations(dataset, roots[:1]))
    if arrays is None:
        where = ", ".join(str(p) for p in locations)
        raise EnergybenchError(f"dataset {dataset.name!r} not found{reason}; put {dataset.files_hint} in one of: "
                               f"{where} (or give --data-root)")
    for x, y in ((arrays.x_train, arrays.y_train), (arrays.x_test, arrays.y_test)):
        _check(dataset, x, y)
    return arrays


def load_dataset(name: str, *, data_root: str | Path | None = None, val_size: int = 5000, split_seed: int = 0,
                 n_train: int | None = None) -> ImageData:
    """Load dataset ``name`` (a plugin name or an image-folder path) and carve ``val_size`` validation points
    from its training set.

    The validation split depends only on ``split_seed``, so every run of a dataset is selected on the
    same points; ``n_train`` keeps a random subset of the remaining training points. A class-sorted
    source (an image folder) is first put in a fixed stratified order (``stratified_order``), so the
    first n test points that evaluations use are a stratified random draw, the same for every run.
    """
    dataset = get_dataset(name)
    xtr, ytr, xte, yte = read_arrays(dataset, data_root)
    if not 0 < val_size < len(ytr):
        raise EnergybenchError(f"val_size={val_size} must be between 1 and {len(ytr) - 1} for {dataset.name!r}")
    if n_train is not None and n_train < 1:
        raise EnergybenchError(f"n_train={n_train} must be positive")
    perm = torch.randperm(len(ytr), generator=torch.Generator().manual_seed(split_seed))
    test = Split(xte, yte)
    if dataset.class_sorted:  # one copy of the images: the split's indices are composed with the order
        perm = stratified_order(ytr)[perm]
        test_order = stratified_order(yte)
        test = Split(xte[test_order], yte[test_order])
    val, train = perm[:val_size], perm[val_size:][:n_train]
    return ImageData(dataset, Split(xtr[train], ytr[train]), Split(xtr[val], ytr[val]), test)


def _check(dataset: Dataset, x: torch.Tensor, y: torch.Tensor) -> None:
    expected = (dataset.in_channels, dataset.image_size, dataset.image_size)
    if x.dim() != 4 or tuple(x.shape[1:]) != expected:
        raise EnergybenchError(f"dataset {dataset.name!r} has images of shape {tuple(x.shape[1:])}, "
                               f"expected {expected}")
    if len(x) != len(y):
        raise EnergybenchError(f"dataset {dataset.name!r} has {len(x)} images but {len(y)} labels")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= dataset.num_classes):
        raise EnergybenchError(f"dataset {dataset.name!r} has labels outside 0..{dataset.num_classes - 1}")
