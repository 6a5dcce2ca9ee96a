"""IDX files (MNIST, Fashion-MNIST), read gzipped where they lie."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from energybench.contracts.dataset import Arrays, Dataset
from energybench.errors import EnergybenchError

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


class IDXDataset(Dataset):
    """A dataset of four IDX files (gzipped or not) in one folder, as MNIST and Fashion-MNIST ship;
    ``torchvision_name`` names the torchvision class that downloads them."""

    torchvision_name: str = ""
    downloadable = True

    def read(self, location: Path) -> Arrays | None:
        files = []
        for stem in IDX_FILES:
            hit = next((c for c in (location / f"{stem}.gz", location / stem) if c.is_file()), None)
            if hit is None:
                return None
            files.append(hit)
        xtr, ytr, xte, yte = (read_idx(f) for f in files)
        if xtr.ndim != 3 or xte.ndim != 3 or len(xtr) != len(ytr) or len(xte) != len(yte):
            raise EnergybenchError(f"IDX files in {location} have inconsistent shapes")
        return Arrays(torch.from_numpy(xtr.copy()).unsqueeze(1), torch.from_numpy(ytr.astype(np.int64)),
                      torch.from_numpy(xte.copy()).unsqueeze(1), torch.from_numpy(yte.astype(np.int64)))

    def download(self, folder: Path) -> None:
        import torchvision

        getattr(torchvision.datasets, self.torchvision_name)(str(folder), download=True)
