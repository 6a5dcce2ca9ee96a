"""Sample a trained classifier with sampler plugins, measure the samples, write them out and store the results.

``generate`` runs every sampler on the same model, labels and seed (``--compare``): ``n`` labels
balanced over the classes and sorted (grid rows are classes), drawn in batches from a CPU
generator seeded with ``seed`` afresh for each sampler. Per sampler it writes to the output folder
``<sampler>.png`` (one row per class), ``<sampler>.npz`` (``x`` uint8 (N, C, H, W), ``y``, ``steps``,
``energy``) and ``<sampler>.json`` (settings and metrics), and adds a row to the store's
``generative`` table.

Samplers are fitted on, and FID is measured against, the dataset's full training set (the train
and validation splits together: every image of the training files). Metrics (``SampleMetrics``):

- ``IS``, ``FID``, ``precision``, ``recall``, ``F1`` (generative_metrics): plain with the reference
  Inception weights, ``...[inception:<sha>]`` with other Inception weights, ``...[<dataset>-cnn]``
  in the feature space of the dataset's domain classifier (feature_extractors); precision (quality)
  and recall (diversity) against ``n`` random training images;
- ``acc[<dataset>-cnn]``: the fraction of samples the domain classifier assigns to their target class;
- ``diversity``: the samples' mean within-class pixel distance, and ``diversity_real`` that of the
  same random training images (a much smaller ``diversity`` means mode collapse).
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torchvision.utils import make_grid

from energybench.config import Catalogue, select_device
from energybench.contracts.dataset import Dataset
from energybench.contracts.guard import call_plugin
from energybench.contracts.params import parse_params
from energybench.contracts.registry import create_sampler, get_registry
from energybench.contracts.sampler import SampleBatch, Sampler
from energybench.data.datasets import Split, load_dataset, offline
from energybench.errors import ArgumentError
from energybench.files import make_folder
from energybench.generation.feature_extractors import DomainExtractor, domain_extractor, inception_cache_path
from energybench.generation.metrics import domain_metrics, inception_metrics, to_uint8, within_class_diversity
from energybench.storage.checkpoint import atomic_write
from energybench.storage.store import GenerativeRecord, Store, new_id
from energybench.storage.trained import load_trained
from energybench.training.progress import Reporter

FEATURES = ("auto", "domain", "inception", "both")


def sampler_names(sampler: str | None, compare: str | None) -> list[str]:
    """The samplers to run: ``sampler``, then those of the comma-separated ``compare``, without repeats."""
    names = [sampler] if sampler else []
    return list(dict.fromkeys(names + [name.strip() for name in (compare or "").split(",") if name.strip()]))


def sampler_settings(names: list[str], assignments: dict[str, Any], catalogue: Catalogue) -> dict[str, dict]:
    """Validated hyper-parameters of each sampler in ``names`` (unknown names raise with a suggestion).

    On top of the sampler's own defaults and registry.toml's ``[defaults.sampler.<name>]``,
    ``SAMPLER.KEY=VALUE`` sets KEY of one sampler and a plain ``KEY=VALUE`` sets KEY of every
    sampler in ``names`` that declares it.
    """
    registry = get_registry()
    classes = {name: registry.load("sampler", name) for name in names}
    values = {name: catalogue.defaults_for("sampler", name) for name in names}
    for key, value in assignments.items():
        target, dot, param = key.rpartition(".")
        if dot:
            if target not in values:
                raise ArgumentError(f"params={key}: sampler {target!r} is not run here (running: {', '.join(names)})",
                                    "params")
            values[target][param] = value
            continue
        takers = [name for name, cls in classes.items() if key in _fields(cls)]
        if not takers:
            raise ArgumentError(f"params={key}: no sampler run here has a hyper-parameter {key!r} "
                                f"(see `energybench plugins --kind sampler`)", "params")
        for name in takers:
            values[name][key] = value
    return {name: parse_params(cls.Params, values[name], f"sampler {name!r}").model_dump(by_alias=True)
            for name, cls in classes.items()}


def _fields(cls: type[Sampler]) -> set[str]:
    return {alias for key, f in cls.Params.model_fields.items() for alias in (key, f.alias) if alias}


def balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    """``n`` labels, as even over the classes as possible, sorted (class 0 first)."""
    return (torch.arange(n) % num_classes).sort().values


def draw(sampler: Sampler, model: nn.Module, labels: torch.Tensor, seed: int, batch_size: int) -> SampleBatch:
    """One sample per label, in batches, from a CPU generator seeded with ``seed``; returned on the CPU."""
    generator = torch.Generator().manual_seed(seed)
    parts = [call_plugin("sampler", sampler.name, sampler.sample, model, chunk, generator)
             for chunk in labels.split(batch_size)]
    return SampleBatch(*(torch.cat([getattr(p, f).detach().cpu() for p in parts])
                         for f in ("x", "y", "steps", "energy")))


def save_grid(path: Path, x: torch.Tensor, y: torch.Tensor, num_classes: int, columns: int = 10) -> None:
    """A PNG of uint8 images ``x``: row c holds the first ``columns`` samples of class c (grey where missing).

    Small images are enlarged (nearest neighbour) so a row is at least about 64 pixels high.
    """
    columns = min(columns, max(int((y == c).sum()) for c in range(num_classes)))
    blank = torch.full(x.shape[1:], 128, dtype=torch.uint8)
    cells = []
    for c in range(num_classes):
        row = list(x[y == c][:columns])
        cells += row + [blank] * (columns - len(row))
    grid = make_grid(torch.stack(cells).float() / 255, nrow=columns, padding=2, pad_value=1.0)
    image = Image.fromarray((grid * 255).round().byte().permute(1, 2, 0).numpy())
    scale = max(1, 64 // x.shape[-1])
    buffer = io.BytesIO()
    image.resize((image.width * scale, image.height * scale), Image.NEAREST).save(buffer, format="PNG")
    atomic_write(path, buffer.getvalue())


def feature_sets(features: str, info: Dataset, inception_weights: str | None) -> list[str]:
    """Which feature spaces to measure in: ``auto`` is Inception for colour images when its weights are
    here (``inception_weights`` or torch-fidelity's cache), else the domain extractor."""
    if features not in FEATURES:
        raise ArgumentError(f"features={features!r} must be one of {', '.join(FEATURES)}", "features")
    have_inception = inception_weights is not None or inception_cache_path().is_file()
    if features == "auto":
        return ["inception"] if info.in_channels == 3 and have_inception else ["domain"]
    chosen = ["inception", "domain"] if features == "both" else [features]
    if "inception" in chosen and not have_inception and offline():
        raise ArgumentError(f"Inception weights not found at {inception_cache_path()} and downloads are "
                            "disabled: pass inception_weights= (a file) or use features=domain", "inception_weights",
                            "features")
    return chosen


class SampleMetrics:
    """Measures samples of one dataset against its training set in the chosen feature spaces.

    Real features are cached under ``<home>/fidelity-cache`` (per dataset and extractor weights).
    """

    def __init__(self, real: Split, info: Dataset, home: Path, *, n: int, seed: int, features: list[str],
                 inception_weights: str | None, device: torch.device, data_root: str | None = None,
                 reporter: Reporter | None = None):
        self.real, self.info, self.features, self.inception_weights = real, info, features, inception_weights
        self.device = device
        self.cache_root = str(Path(home) / "fidelity-cache")
        pick = torch.randperm(len(real), generator=torch.Generator().manual_seed(seed))[:n]
        self.prc_x, prc_y = real.x[pick], real.y[pick]
        self.diversity_real = within_class_diversity(self.prc_x, prc_y)
        self.extractor: DomainExtractor | None = None
        if "domain" in features:
            self.extractor = domain_extractor(info.name, home, data_root=data_root, device=str(device),
                                              reporter=reporter)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        """Metrics of uint8 samples ``x`` with target labels ``y``."""
        common = dict(real_cache_name=f"{self.info.name}-train", cache_root=self.cache_root, prc_real=self.prc_x,
                      isc_splits=max(1, min(10, len(x) // 10)), device=self.device)
        metrics = {"diversity": within_class_diversity(x, y), "diversity_real": self.diversity_real}
        if "inception" in self.features:
            try:
                metrics |= inception_metrics(x, self.real.x, weights_path=self.inception_weights, **common)
            except OSError as exc:  # the weights download failed
                raise ArgumentError(f"cannot load the Inception weights ({exc}); pass inception_weights= (a file) "
                                    "or use features=domain", "inception_weights", "features") from None
        if self.extractor is not None:
            name, model = self.extractor.name, self.extractor.model
            metrics |= domain_metrics(x, self.real.x, model, name, **common)
            with torch.no_grad():
                predicted = torch.cat([model(xb.float() / 255).argmax(1) for xb in x.split(500)])
            metrics[f"acc[{name}]"] = float((predicted == y).float().mean())
        return metrics


@dataclass
class SampleRequest:
    """What a sampling job asks for (``energybench.sample``): the model (``ref``, a run id or a checkpoint file;
    ``dataset`` and ``arch``, its registered architecture, for a file outside a run folder, ``checkpoint`` of a run),
    the ``samplers`` and their hyper-parameters (``params``: ``KEY`` or ``SAMPLER.KEY``), ``n`` samples each from
    ``seed``, where they go (``out_dir``) and how they are measured and drawn."""

    ref: str
    samplers: list[str]
    n: int = 1000
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    checkpoint: str = "best"
    dataset: str | None = None
    arch: str | None = None
    data_root: str | None = None
    out_dir: str | Path | None = None
    features: str = "auto"
    inception_weights: str | None = None
    batch_size: int = 250
    device: str = "auto"


def generate(request: SampleRequest, store: Store, catalogue: Catalogue, *, reporter: Reporter | None = None,
             log: Callable[[str], None] = lambda line: None) -> list[GenerativeRecord]:
    """Sample the model of ``request`` (a run id of ``store`` or a checkpoint file) with each of its samplers.

    Writes the grid, samples and metrics of each sampler to ``out_dir`` (default
    ``<home>/generative/<id>``), stores one ``generative`` row per sampler and returns those rows.
    """
    r = request
    ref, samplers, n, seed, batch_size = r.ref, r.samplers, r.n, r.seed, r.batch_size
    if not samplers:
        raise ArgumentError("name a sampler with sampler= (several: a list)", "sampler")
    if batch_size < 1:
        raise ArgumentError(f"batch_size={batch_size} must be at least 1", "batch_size")
    settings = sampler_settings(samplers, r.params, catalogue)
    trained = load_trained(ref, store, checkpoint=r.checkpoint, dataset=r.dataset, arch=r.arch)
    info = trained.info
    if n < 2 * info.num_classes:
        raise ArgumentError(f"n={n} is too small: FID and diversity need at least 2 samples per class "
                            f"({2 * info.num_classes} for {info.name}'s {info.num_classes} classes)", "n")
    chosen = feature_sets(r.features, info, r.inception_weights)
    from_file = Path(ref).is_file()
    data_root = r.data_root or (trained.config.data_root if trained.config else None)
    dev = select_device(r.device)
    net = trained.model.to(dev).eval()

    folder = make_folder(Path(r.out_dir) if r.out_dir else store.home / "generative" / new_id())
    data = load_dataset(info.name, data_root=data_root, val_size=1)
    real = Split(torch.cat([data.train.x, data.val.x]), torch.cat([data.train.y, data.val.y]))
    measure = SampleMetrics(real, info, store.home, n=n, seed=seed, features=chosen,
                            inception_weights=r.inception_weights, device=dev, data_root=data_root, reporter=reporter)
    x_fit = real.x.float() / 255
    labels = balanced_labels(n, info.num_classes)
    records = []
    for name in samplers:
        sampler = create_sampler(name, **settings[name])
        call_plugin("sampler", name, sampler.fit, net, x_fit, real.y)
        start = time.perf_counter()
        batch = draw(sampler, net, labels, seed, batch_size)
        wall_time = time.perf_counter() - start
        x = to_uint8(batch.x)
        log(f"{name}: {n} samples in {wall_time:.1f}s, {batch.steps.float().mean():.1f} steps per sample on average")
        record = GenerativeRecord(
            id=new_id(), created=time.time(), model_ref=str(Path(ref).resolve()) if from_file else ref,
            checkpoint=None if from_file else r.checkpoint, dataset=info.name,
            model=r.arch or trained.config.model, sampler=name, params=settings[name], seed=seed, n=n,
            metrics=measure(x, batch.y), steps_mean=float(batch.steps.float().mean()), wall_time=wall_time,
            out_dir=str(folder))
        save_grid(folder / f"{name}.png", x, batch.y, info.num_classes)
        arrays = io.BytesIO()
        np.savez_compressed(arrays, x=x.numpy(), y=batch.y.numpy(), steps=batch.steps.numpy(),
                            energy=batch.energy.numpy())
        atomic_write(folder / f"{name}.npz", arrays.getvalue())
        extractor = measure.extractor
        summary = asdict(record) | {"model_source": trained.source, "features": chosen,
                                    "feature_extractor": None if extractor is None else {
                                        "name": extractor.name, "weights": str(extractor.path),
                                        "test_clean_acc": extractor.test_acc}}
        atomic_write(folder / f"{name}.json", json.dumps(summary, indent=2, sort_keys=True).encode())
        store.add_generative(record)
        records.append(record)
    return records
