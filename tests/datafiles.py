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
