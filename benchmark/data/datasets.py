"""Image datasets as in-memory uint8 tensors, found on disk in the standard file layouts.

Every dataset becomes ``(x, y)`` tensors: ``x`` uint8 of shape (N, C, H, W), ``y`` int64. Files
are looked up in ``--data-root``, then ``$ENERGYBENCH_DATA``, then system folders (Debian's
``dataset-fashion-mnist`` package), and downloaded through torchvision only when downloads are
allowed (``ENERGYBENCH_OFFLINE`` unset) and the files are missing.

torchvision's dataset classes do the downloads. The files are read here, for reasons torchvision's
readers cannot meet: IDX files (MNIST, Fashion-MNIST) are read gzipped where they lie (Debian's
``dataset-fashion-mnist`` ships them as .gz; torchvision reads only the files it extracted into its
own folder layout), with one clear line for a bad header or a truncated file; CIFAR batches are
unpickled by an unpickler that accepts only numpy arrays and plain containers, since torchvision's
``pickle.load`` would run any code a tampered batch file carries; SVHN's .mat files are read with
scipy (as torchvision does), because torchvision refuses any file whose MD5 differs from the
official release's (a re-saved or subset file, as the tests write).
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from energybench.errors import EnergybenchError


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a dataset: shape, classes and the normalisation its models use."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    loader: Callable[[list[Path], bool], tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
    files_hint: str


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

    info: DatasetInfo
    train: Split
    val: Split
    test: Split


def offline() -> bool:
    """True when downloads are forbidden (``ENERGYBENCH_OFFLINE`` set to anything but 0)."""
    return os.environ.get("ENERGYBENCH_OFFLINE", "") not in ("", "0")


def _search_dirs(data_root: Path | None, subdirs: tuple[str, ...], system: tuple[str, ...] = ()) -> list[Path]:
    roots = [p for p in (data_root, os.environ.get("ENERGYBENCH_DATA")) if p]
    dirs = [Path(r).expanduser() / s for r in roots for s in ("",) + subdirs]
    return dirs + [Path(s) for s in system]


# ----- IDX (MNIST, Fashion-MNIST) -----------------------------------------------------------

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) into a numpy array, checking its header."""
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise EnergybenchError(f"{path} is not a valid gzip file ({exc})") from None
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] != 0x08:
        raise EnergybenchError(f"{path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise EnergybenchError(f"{path} is truncated: header says {shape}, found {data.size} bytes")
    return data.reshape(shape)


def _find_idx(dirs: list[Path]) -> list[Path] | None:
    for d in dirs:
        found = []
        for stem in IDX_FILES:
            candidates = [d / f"{stem}.gz", d / stem]
            hit = next((c for c in candidates if c.is_file()), None)
            if hit is None:
                break
            found.append(hit)
        else:
            return found
    return None


def _idx_loader(torchvision_name: str):
    def load(dirs: list[Path], download: bool):
        files = _find_idx(dirs)
        if files is None and download:
            import torchvision

            getattr(torchvision.datasets, torchvision_name)(str(dirs[0]), download=True)
            files = _find_idx([dirs[0] / torchvision_name / "raw"])
        if files is None:
            return None
        xtr, ytr, xte, yte = (read_idx(f) for f in files)
        if xtr.ndim != 3 or xte.ndim != 3 or len(xtr) != len(ytr) or len(xte) != len(yte):
            raise EnergybenchError(f"IDX files in {files[0].parent} have inconsistent shapes")
        return (torch.from_numpy(xtr.copy()).unsqueeze(1), torch.from_numpy(ytr.astype(np.int64)),
                torch.from_numpy(xte.copy()).unsqueeze(1), torch.from_numpy(yte.astype(np.int64)))

    return load


# ----- CIFAR (pickled batches) --------------------------------------------------------------

class _BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batch files, refusing any object but plain containers and numpy arrays."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise EnergybenchError(f"refusing to unpickle {module}.{name} from a dataset file")


def _read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _BatchUnpickler(io.BytesIO(path.read_bytes()), encoding="bytes").load()
        data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(batch[label_key], dtype=np.int64)
    except EnergybenchError:
        raise
    except Exception as exc:
        raise EnergybenchError(f"{path} is not a readable CIFAR batch file ({type(exc).__name__}: {exc})") from None
    if len(data) != len(labels):
        raise EnergybenchError(f"{path}: {len(data)} images but {len(labels)} labels")
    return data, labels


def _cifar_loader(folder: str, train_files: tuple[str, ...], test_file: str, label_key: bytes, tv_name: str):
    def load(dirs: list[Path], download: bool):
        hit = next((d / folder for d in dirs if all((d / folder / f).is_file() for f in train_files + (test_file,))),
                   None)
        if hit is None and download:
            import torchvision

            getattr(torchvision.datasets, tv_name)(str(dirs[0]), download=True)
            hit = dirs[0] / folder
        if hit is None:
            return None
        parts = [_read_cifar_batch(hit / f, label_key) for f in train_files]
        xte, yte = _read_cifar_batch(hit / test_file, label_key)
        xtr, ytr = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        return torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte), torch.from_numpy(yte)

    return load


# ----- SVHN (.mat) --------------------------------------------------------------------------

def _svhn_loader(dirs: list[Path], download: bool):
    from scipy.io import loadmat

    hit = next((d for d in dirs if (d / "train_32x32.mat").is_file() and (d / "test_32x32.mat").is_file()), None)
    if hit is None and download:
        import torchvision

        for split in ("train", "test"):
            torchvision.datasets.SVHN(str(dirs[0]), split=split, download=True)
        hit = dirs[0]
    if hit is None:
        return None
    out = []
    for split in ("train", "test"):
        try:
            mat = loadmat(hit / f"{split}_32x32.mat")
        except Exception as exc:
            raise EnergybenchError(f"{hit / f'{split}_32x32.mat'} is not a readable SVHN file ({exc})") from None
        x = torch.from_numpy(np.ascontiguousarray(mat["X"].transpose(3, 2, 0, 1)))
        y = torch.from_numpy(mat["y"].astype(np.int64).reshape(-1) % 10)  # SVHN labels digit 0 as 10
        out += [x, y]
    return tuple(out)


# ----- scikit-learn digits ------------------------------------------------------------------

def _digits_loader(dirs: list[Path], download: bool):
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = torch.from_numpy(np.rint(digits.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(digits.target.astype(np.int64))
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    test, train = perm[:360], perm[360:]
    return x[train], y[train], x[test], y[test]


_CIFAR_MEAN, _CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)

DATASETS: dict[str, DatasetInfo] = {d.name: d for d in (
    DatasetInfo("fashion-mnist", 10, 1, 28, (0.2860,), (0.3530,), _idx_loader("FashionMNIST"),
                "the four IDX files (train-images-idx3-ubyte.gz, ...) from Fashion-MNIST, or "
                "`apt-get install dataset-fashion-mnist`"),
    DatasetInfo("mnist", 10, 1, 28, (0.1307,), (0.3081,), _idx_loader("MNIST"),
                "the four MNIST IDX files (train-images-idx3-ubyte.gz, ...)"),
    DatasetInfo("digits", 10, 1, 8, (0.3051,), (0.3819,), _digits_loader, "nothing: it ships with scikit-learn"),
    DatasetInfo("cifar10", 10, 3, 32, _CIFAR_MEAN, _CIFAR_STD,
                _cifar_loader("cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)), "test_batch",
                              b"labels", "CIFAR10"),
                "the folder cifar-10-batches-py (data_batch_1..5, test_batch)"),
    DatasetInfo("cifar100", 100, 3, 32, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                _cifar_loader("cifar-100-python", ("train",), "test", b"fine_labels", "CIFAR100"),
                "the folder cifar-100-python (train, test)"),
    DatasetInfo("svhn", 10, 3, 32, (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), _svhn_loader,
                "train_32x32.mat and test_32x32.mat"),
)}

_SUBDIRS = {"fashion-mnist": ("fashion-mnist", "FashionMNIST/raw"), "mnist": ("mnist", "MNIST/raw"),
            "svhn": ("svhn",)}
_SYSTEM = {"fashion-mnist": ("/usr/share/datasets/fashion-mnist",)}


def dataset_info(name: str) -> DatasetInfo:
    """The ``DatasetInfo`` of dataset ``name``; an unknown name raises with a did-you-mean suggestion."""
    if name not in DATASETS:
        from energybench.errors import unknown_name

        raise unknown_name("dataset", name, list(DATASETS))
    return DATASETS[name]


def load_dataset(name: str, *, data_root: str | Path | None = None, val_size: int = 5000, split_seed: int = 0,
                 n_train: int | None = None) -> ImageData:
    """Load ``name`` and carve ``val_size`` validation points from its training set.

    The validation split depends only on ``split_seed``, so every run of a dataset is selected on
    the same points. ``n_train`` keeps a subset of the remaining training points (CPU-sized tracks).
    """
    info = dataset_info(name)
    dirs = _search_dirs(Path(data_root) if data_root else None, _SUBDIRS.get(name, ()), _SYSTEM.get(name, ()))
    try:
        arrays = info.loader(dirs, not offline() and bool(dirs))
    except EnergybenchError:
        raise
    except Exception as exc:  # download failures (no network) and the like
        arrays = None
        reason = f" (download failed: {type(exc).__name__})"
    else:
        reason = "" if not offline() else " (downloads disabled by ENERGYBENCH_OFFLINE)"
    if arrays is None:
        where = ", ".join(str(d) for d in dirs) or "nowhere: give --data-root or set ENERGYBENCH_DATA"
        raise EnergybenchError(f"dataset {name!r} not found{reason}; put {info.files_hint} in one of: {where}")
    xtr, ytr, xte, yte = arrays
    _check_shape(name, info, xtr, ytr)
    _check_shape(name, info, xte, yte)
    if not 0 < val_size < len(ytr):
        raise EnergybenchError(f"val_size={val_size} must be between 1 and {len(ytr) - 1} for {name!r}")
    perm = torch.randperm(len(ytr), generator=torch.Generator().manual_seed(split_seed))
    val, train = perm[:val_size], perm[val_size:]
    if n_train is not None:
        if n_train < 1:
            raise EnergybenchError(f"n_train={n_train} must be positive")
        train = train[:n_train]
    return ImageData(info, Split(xtr[train], ytr[train]), Split(xtr[val], ytr[val]), Split(xte, yte))


def _check_shape(name: str, info: DatasetInfo, x: torch.Tensor, y: torch.Tensor) -> None:
    expected = (info.in_channels, info.image_size, info.image_size)
    if x.dim() != 4 or tuple(x.shape[1:]) != expected:
        raise EnergybenchError(f"dataset {name!r} has images of shape {tuple(x.shape[1:])}, expected {expected}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= info.num_classes):
        raise EnergybenchError(f"dataset {name!r} has labels outside 0..{info.num_classes - 1}")
