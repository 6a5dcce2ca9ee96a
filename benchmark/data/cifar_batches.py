"""CIFAR-10/100 pickled batches (torchvision's cifar-10-batches-py layout), unpickled safely."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
import torch

from energybench.contracts.dataset import Arrays, Dataset
from energybench.errors import EnergybenchError


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles CIFAR batch files, refusing any object but plain containers and numpy arrays."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise EnergybenchError(f"refusing to unpickle {module}.{name} from a dataset file")


def read_cifar_batch(path: Path, label_key: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 3, 32, 32) and labels of one pickled batch file."""
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


class CIFARBatchesDataset(Dataset):
    """CIFAR-10/100 as torchvision downloads it: a ``folder`` of pickled ``train_files`` and a ``test_file``."""

    folder: str = ""
    train_files: tuple[str, ...] = ()
    test_file: str = ""
    label_key: bytes = b"labels"
    torchvision_name: str = ""
    downloadable = True
    in_channels, image_size, train_size, test_size = 3, 32, 50000, 10000

    def read(self, location: Path) -> Arrays | None:
        hit = location / self.folder
        if not all((hit / f).is_file() for f in self.train_files + (self.test_file,)):
            return None
        parts = [read_cifar_batch(hit / f, self.label_key) for f in self.train_files]
        xte, yte = read_cifar_batch(hit / self.test_file, self.label_key)
        xtr, ytr = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
        return Arrays(torch.from_numpy(xtr), torch.from_numpy(ytr), torch.from_numpy(xte), torch.from_numpy(yte))

    def download(self, folder: Path) -> None:
        import torchvision

        getattr(torchvision.datasets, self.torchvision_name)(str(folder), download=True)
