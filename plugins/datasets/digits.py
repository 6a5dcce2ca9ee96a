"""`digits`: scikit-learn's bundled 8x8 handwritten digits, for smoke tests that need no files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from energybench import Arrays, Dataset


class Digits(Dataset):
    """1,797 images (16 grey levels, scaled to 0-255); a fixed seeded 360-image test split."""

    num_classes, in_channels, image_size, train_size, test_size = 10, 1, 8, 1437, 360
    mean, std = (0.3051,), (0.3819,)
    needs_files = False
    files_hint = "nothing: it ships with scikit-learn"

    def read(self, location: Path) -> Arrays:
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.from_numpy(np.rint(digits.images * (255 / 16)).astype(np.uint8)).unsqueeze(1)
        y = torch.from_numpy(digits.target.astype(np.int64))
        perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
        test, train = perm[:360], perm[360:]
        return Arrays(x[train], y[train], x[test], y[test])
