"""Trained models by reference: a run id from the store, or a checkpoint file plus its architecture."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from energybench.config import RunConfig
from energybench.contracts.dataset import Dataset
from energybench.contracts.registry import create_model
from energybench.data.datasets import get_dataset
from energybench.errors import ArgumentError, EnergybenchError
from energybench.files import read_text
from energybench.storage.checkpoint import load_checkpoint, model_state
from energybench.storage.store import Store


@dataclass
class TrainedModel:
    """A model with its weights loaded (eval mode), the dataset it was trained for and its origin."""

    model: nn.Module
    info: Dataset
    source: str  # "run RUN_ID (best)" or the checkpoint path
    config: RunConfig | None = None  # the run's config when the model came from the store


def load_trained(ref: str, store: Store, *, checkpoint: str = "best", dataset: str | None = None,
                 arch: str | None = None) -> TrainedModel:
    """Load ``ref``: a run id of ``store`` (its ``best`` or ``last`` checkpoint) or a checkpoint path.

    A checkpoint file inside a run folder finds its architecture in the ``config.json`` beside it;
    any other file needs ``dataset`` and ``arch`` (a registered architecture).
    """
    if checkpoint not in ("best", "last"):
        raise EnergybenchError(f"checkpoint {checkpoint!r} must be 'best' or 'last'")
    path = Path(ref)
    config = None
    if path.suffix in (".pt", ".pth", ".ckpt") or path.is_file():
        if not path.is_file():
            raise EnergybenchError(f"checkpoint file {ref} does not exist")
        beside = path.parent / "config.json"
        if beside.is_file() and not (dataset and arch):
            try:
                config = RunConfig(**json.loads(read_text(beside, "run config")))
            except (ValueError, TypeError) as exc:  # JSONDecodeError and ValidationError are ValueErrors
                raise EnergybenchError(f"{beside} beside checkpoint {ref} is not an energybench run config "
                                       f"({type(exc).__name__}); give --dataset and --model") from None
        source, weights = str(path), path
    else:
        record = store.get_run(ref)
        config = RunConfig(**record.config)
        weights = store.run_dir(ref) / f"{checkpoint}.pt"
        source = f"run {ref} ({checkpoint})"
    state = model_state(load_checkpoint(weights))  # a whole pickled model is refused here, saying what to save instead
    dataset = dataset or (config.dataset if config else None)
    arch = arch or (config.model if config else None)
    if not dataset or not arch:
        raise ArgumentError(f"{ref}: give dataset= and arch= (a registered architecture, see `energybench "
                            "plugins --kind model`) for a checkpoint that is not in an energybench run folder",
                            "dataset", "arch")
    info = get_dataset(dataset)
    net = create_model(arch, dataset=dataset, **(config.model_params if config and arch == config.model else {}))
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise EnergybenchError(f"checkpoint {weights} does not fit model {arch!r} for {dataset!r} "
                               f"({info.num_classes} classes, {info.in_channels} channels): {first}") from None
    return TrainedModel(model=net.eval(), info=info, source=source, config=config)
