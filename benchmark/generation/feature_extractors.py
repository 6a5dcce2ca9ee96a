"""Feature extractors for generative metrics: the reference Inception weights when present, else a domain CNN.

The domain extractor of a dataset is a classifier that energybench trains itself with the ``standard``
trainer, once per store home (fixed seed): by default a ``small-cnn`` on the short schedule
``EXTRACTOR_SETTINGS``, with a dataset's own changes from the catalogue's ``[feature_extractors.<dataset>]``
table (registry.toml: CIFAR-10 (JPEG) gets more epochs and augmentation). Its training run is kept in
``<home>/feature-extractors/`` (a store of its own, so it never shows on the robustness leaderboard) and
its weights in ``<home>/feature-extractors/<dataset>-<model>[-<settings hash>].pt`` (the hash only for
settings other than the defaults), reused by every later call. Results in its feature space carry its
name, e.g. ``FID[fmnist-cnn]``, ``FID[cifar10-jpeg-cnn]``.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from energybench.config import Catalogue, RunConfig, load_catalogue
from energybench.contracts.registry import create_model
from energybench.storage.checkpoint import load_checkpoint, model_state, save_checkpoint
from energybench.storage.store import Store
from energybench.training.progress import Reporter
from energybench.training.run import execute, prepare

#: torch-fidelity's Inception-v3 file, as torch.hub caches it after the first (online) use.
INCEPTION_FILE = "weights-inception-2015-12-05-6726825d.pth"

#: How the domain extractor is trained: clean training, 3 epochs on at most 20,000 images.
#: ``eps`` and the tiny robustness evaluation only satisfy the harness; AutoAttack is skipped.
EXTRACTOR_SETTINGS = {
    "model": "small-cnn", "trainer": "standard", "epochs": 3, "batch_size": 128, "lr": 0.05, "n_train": 20000,
    "val_size": 200, "seed": 0, "eps": 0.1,
    "eval": {"val_points": 200, "val_pgd_steps": 1, "test_points": 1000, "pgd_steps": 1, "aa_points": 0},
}

SHORT_NAMES = {"fashion-mnist": "fmnist"}


def domain_name(dataset: str) -> str:
    """The label of ``dataset``'s domain extractor, e.g. ``fmnist-cnn`` for Fashion-MNIST."""
    return f"{SHORT_NAMES.get(dataset, dataset)}-cnn"


def inception_cache_path() -> Path:
    """Where torch.hub keeps torch-fidelity's Inception weights once downloaded."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


@dataclass
class DomainExtractor:
    """A dataset's domain classifier (eval mode), its label, weights file and clean test accuracy."""

    name: str
    model: nn.Module
    path: Path
    test_acc: float


def extractor_settings(dataset: str, catalogue: Catalogue) -> dict[str, Any]:
    """How ``dataset``'s domain extractor is trained: ``EXTRACTOR_SETTINGS`` with the catalogue's changes."""
    return EXTRACTOR_SETTINGS | catalogue.feature_extractors.get(dataset, {})


def domain_extractor(dataset: str, home: Path, *, data_root: str | None = None, device: str = "auto",
                     reporter: Reporter | None = None) -> DomainExtractor:
    """Load ``dataset``'s domain extractor from the store ``home``, training it first if it is not there."""
    catalogue = load_catalogue()
    settings = extractor_settings(dataset, catalogue)
    folder = Path(home) / "feature-extractors"
    suffix = "" if settings == EXTRACTOR_SETTINGS else "-" + hashlib.sha256(
        json.dumps(settings, sort_keys=True).encode()).hexdigest()[:8]
    path = folder / f"{dataset}-{settings['model']}{suffix}.pt"
    if not path.is_file():
        config = prepare(RunConfig(dataset=dataset, data_root=data_root, device=device, **settings), catalogue)
        store = Store(folder)
        run_id = execute(config, store, reporter=reporter)
        last = store.results(run_id)["last"]
        save_checkpoint(path, {"model": load_checkpoint(store.run_dir(run_id) / "last.pt"),
                               "test_clean_acc": last["test_clean_acc"], "run_id": run_id})
        store.close()
    saved = load_checkpoint(path)
    model = create_model(settings["model"], dataset=dataset, **settings.get("model_params", {}))
    model.load_state_dict(model_state(saved))
    return DomainExtractor(domain_name(dataset), model.eval(), path, float(saved["test_clean_acc"]))
