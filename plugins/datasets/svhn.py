"""`svhn`: Street View House Numbers (cropped digits), torchvision's .mat files read with scipy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from energybench import Arrays, Dataset, EnergybenchError


class SVHN(Dataset):
    """73,257 training and 26,032 test 32x32 colour digits; the files' label 10 (digit 0) becomes 0."""

    num_classes, in_channels, image_size, train_size, test_size = 10, 3, 32, 73257, 26032
    mean, std = (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)
    subdirs = ("svhn",)
    downloadable = True
    files_hint = "train_32x32.mat and test_32x32.mat"

    def read(self, location: Path) -> Arrays | None:
        from scipy.io import loadmat

        files = [location / f"{split}_32x32.mat" for split in ("train", "test")]
        if not all(f.is_file() for f in files):
            return None
        out = []
        for path in files:
            try:
                mat = loadmat(path)
            except Exception as exc:
                raise EnergybenchError(f"{path} is not a readable SVHN file ({exc})") from None
            out += [torch.from_numpy(np.ascontiguousarray(mat["X"].transpose(3, 2, 0, 1))),
                    torch.from_numpy(mat["y"].astype(np.int64).reshape(-1) % 10)]
        return Arrays(*out)

    def download(self, folder: Path) -> None:
        import torchvision

        for split in ("train", "test"):
            torchvision.datasets.SVHN(str(folder), split=split, download=True)
