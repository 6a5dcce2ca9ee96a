"""The `Dataset` base class: what a dataset's images are and how to read its files."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar, NamedTuple

import torch


class Arrays(NamedTuple):
    """A dataset's two splits as tensors: uint8 images (N, C, H, W) and int64 labels (N,)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


class Dataset:
    """Base class of every dataset plugin (entry-point group ``energybench.datasets``).

    A subclass states the facts models and protocols need (``num_classes``, ``in_channels``,
    ``image_size``, the per-channel ``mean``/``std`` that models normalise with inside, and the split
    sizes when known) and implements ``read(location)``: the train and test splits from the files at
    ``location`` (a folder or a file found in ``--data-root``, ``$ENERGYBENCH_DATA`` and
    ``system_dirs``), or None when they are not there. ``download(folder)`` fetches them when the
    dataset can be downloaded. ``class_sorted = True`` says the files come sorted by class: energybench
    then puts each split in a fixed, seeded stratified order, so any first-n subset is a random
    stratified draw (the same one for every run).
    """

    name: ClassVar[str] = ""
    num_classes: int
    in_channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    train_size: int | None = None
    test_size: int | None = None
    files_hint: str = "its files"
    subdirs: tuple[str, ...] = ()  # where under a data root to look, besides the root itself
    system_dirs: tuple[str, ...] = ()
    needs_files: bool = True  # False for data that ships with a Python package
    downloadable: bool = False
    class_sorted: bool = False

    def read(self, location: Path) -> Arrays | None:
        """The splits read from ``location``, or None when its files are not there."""
        raise NotImplementedError

    def download(self, folder: Path) -> None:
        """Fetch the files into ``folder`` (only called when ``downloadable``)."""
        raise NotImplementedError

    def describe(self) -> str:
        """One line of facts, for ``energybench plugins``."""
        shape = f"{self.in_channels}x{self.image_size}x{self.image_size}"
        sizes = f", {self.train_size}/{self.test_size} train/test" if self.train_size else ""
        return f"{self.num_classes} classes, {shape}{sizes}"
