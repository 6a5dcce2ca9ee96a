"""Quality and diversity of generated images through torch-fidelity: IS, FID, KID, precision/recall.

Two feature extractors:
- Inception-v3 (torch-fidelity's ``inception-v3-compat``): labels ``IS``/``FID`` only with the
  reference weights (downloaded by torch-fidelity when ``weights_path`` is None, or a local copy of
  that file); any other weights file is labelled ``FID[inception:<sha256 prefix>]``.
- a DOMAIN extractor wrapping a classifier trained on the dataset (``register_domain_extractor``):
  penultimate features for FID and precision/recall, logits for IS; labelled ``FID[<name>]``,
  ``IS[<name>]``, never plain ``FID``. It works offline and on grayscale data at native size.
FID and KID (kernel inception distance, Binkowski et al. 2018: unbiased, so usable at small n, with
its standard deviation over ``KID_SUBSETS`` random subsets of at most ``KID_SUBSET_SIZE`` samples)
are against the real (training) images, whose features torch-fidelity caches under
``cache_root`` when ``real_cache_name`` is given; the cache entry's name includes a fingerprint of
the extractor's weights, so a changed model never reuses stale statistics (the images themselves
are not hashed: use one real_cache_name per real set). Precision (fraction of fakes inside the
real manifold: quality) and recall (fraction of reals inside the fake manifold: diversity) are the
k-NN estimates of Kynkäänniemi et al. (2019), computed in the same feature space against a real
subset (``prc_real``), since they cost O(N^2) distances. FID carries its standard deviation over
``FID_RESAMPLES`` bootstrap resamples of the generated images (``FID_std``), computed from
torch-fidelity's own features and statistics.
"""

from __future__ import annotations

import copy
import hashlib
import os
from typing import ClassVar

import torch
import torch_fidelity
from torch import nn
from torch.utils.data import Dataset
from torch_fidelity.feature_extractor_base import FeatureExtractorBase
from torch_fidelity.metric_fid import (
    fid_features_to_statistics,
    fid_input_id_to_statistics_cached,
    fid_statistics_to_metric,
)
from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY
from torch_fidelity.utils import (
    create_feature_extractor,
    extract_featuresdict_from_input_id_cached,
    resolve_feature_extractor,
    resolve_feature_layer_for_metric,
)

from energybench.errors import EnergybenchError

INCEPTION = "inception-v3-compat"
# torch-fidelity's file is weights-inception-2015-12-05-6726825d.pth: torch.hub names carry a sha256 prefix.
INCEPTION_REFERENCE_SHA256 = "6726825d"
RESULT_KEYS = {"inception_score_mean": "IS", "inception_score_std": "IS_std", "frechet_inception_distance": "FID",
               "frechet_inception_distance_std": "FID_std", "kernel_inception_distance_mean": "KID",
               "kernel_inception_distance_std": "KID_std", "precision": "precision", "recall": "recall",
               "f_score": "F1"}
FID_STD_KEY = "frechet_inception_distance_std"
#: FID's uncertainty: its standard deviation over this many bootstrap resamples of the generated images.
FID_RESAMPLES = 50
#: torch-fidelity's defaults: KID averages the MMD of 100 random subsets of 1000 samples (fewer when n is smaller).
KID_SUBSETS, KID_SUBSET_SIZE = 100, 1000


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] (e.g. ``SampleBatch.x``) as uint8 in [0, 255], on the CPU."""
    return (x.detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu()


class ImageDataset(Dataset):
    """uint8 images (N, C, H, W) as the Dataset torch-fidelity reads; 1 channel is repeated to ``channels``."""

    def __init__(self, images: torch.Tensor, channels: int | None = None):
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise EnergybenchError(f"expected uint8 images of shape (N, C, H, W), got {images.dtype} "
                                   f"{tuple(images.shape)} (convert with to_uint8)")
        if channels is not None and images.shape[1] != channels:
            if images.shape[1] != 1:
                raise EnergybenchError(f"cannot make {channels}-channel images from {images.shape[1]} channels")
            images = images.expand(-1, channels, -1, -1)
        self.images = images.cpu()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.images[i].contiguous()


class ClassifierFeatureExtractor(FeatureExtractorBase):
    """torch-fidelity feature extractor over a classifier registered with ``register_domain_extractor``.

    Takes uint8 images in the classifier's own channels and size, feeds them in [0, 1] to a private
    eval-mode copy of the classifier (the original is left untouched) and provides ``penultimate``
    (the input of its last ``nn.Linear``) and ``logits``.
    """

    models: ClassVar[dict[str, nn.Module]] = {}

    def __init__(self, name, features_list, **kwargs):
        super().__init__(name, features_list)
        self.model = copy.deepcopy(self.models[name]).cpu().eval().requires_grad_(False)
        self._penultimate = None
        _last_linear(self.model).register_forward_pre_hook(self._keep_input)

    def _keep_input(self, module, args):
        self._penultimate = args[0].flatten(1)

    @staticmethod
    def get_provided_features_list():
        return "penultimate", "logits"

    @staticmethod
    def get_default_feature_layer_for_metric(metric):
        return {"isc": "logits", "fid": "penultimate", "kid": "penultimate", "prc": "penultimate"}[metric]

    @staticmethod
    def can_be_compiled():
        return False

    @staticmethod
    def get_dummy_input_for_compile():
        return torch.zeros(1, 1, 8, 8, dtype=torch.uint8)

    def forward(self, x):
        logits = self.model(x.float() / 255)
        features = {"penultimate": self._penultimate.float(), "logits": logits.float()}
        return tuple(features[name] for name in self.features_list)


def _last_linear(model: nn.Module) -> nn.Linear:
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise EnergybenchError(f"{type(model).__name__} has no nn.Linear layer to take penultimate features from")
    return linears[-1]


def register_domain_extractor(name: str, model: nn.Module) -> str:
    """Make ``model`` (a classifier on [0, 1] inputs) available to torch-fidelity as feature extractor ``name``.

    Registering the same name again replaces the model. Returns ``name``.
    """
    _last_linear(model)
    registered = FEATURE_EXTRACTORS_REGISTRY.get(name)
    if registered is None:
        torch_fidelity.register_feature_extractor(name, ClassifierFeatureExtractor)
    elif registered is not ClassifierFeatureExtractor:
        raise EnergybenchError(f"torch-fidelity feature extractor {name!r} is already taken by {registered.__name__}")
    ClassifierFeatureExtractor.models[name] = model
    return name


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _model_fingerprint(model: nn.Module) -> str:
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:8]


def _check_cached(extractor: str, cache_name: str | None, cache_root: str | None) -> None:
    """Fail before any feature extraction unless torch-fidelity's cache holds the real features."""
    if cache_name is None:
        raise EnergybenchError("pass the real images, or the real_cache_name of features cached by an earlier call")
    root = cache_root or os.path.join(torch.hub._get_torch_home(), "fidelity_cache")  # torch-fidelity's default
    layers = {FEATURE_EXTRACTORS_REGISTRY[extractor].get_default_feature_layer_for_metric(m)
              for m in ("isc", "fid", "kid")}
    missing = [f for f in (os.path.join(root, f"{cache_name}-{extractor}-features-{layer}.pt") for layer in layers)
               if not os.path.exists(f)]
    if missing:
        raise EnergybenchError(f"no cached real features for {cache_name!r} ({missing[0]} is missing): "
                               "pass the real images once to cache them")


def fid_bootstrap_std(options: dict, resamples: int = FID_RESAMPLES, seed: int = 0) -> float:
    """FID's standard deviation over ``resamples`` bootstrap resamples of the generated images (input1).

    ``options`` are the keywords of a ``torch_fidelity.calculate_metrics`` call with ``fid=True``; the
    features and both statistics come from torch-fidelity (the real ones from its cache when that call
    cached them), so each resample's FID is torch-fidelity's FID of those images. The real side is held
    fixed: with the whole training set as reference its sampling error is small beside the samples'.
    """
    layer = resolve_feature_layer_for_metric("fid", **options)
    extractor = create_feature_extractor(resolve_feature_extractor(**options), [layer], **options)
    fake = extract_featuresdict_from_input_id_cached(1, extractor, **options)[layer]
    real = fid_input_id_to_statistics_cached(2, extractor, layer, **options)
    generator = torch.Generator().manual_seed(seed)
    values = [fid_statistics_to_metric(fid_features_to_statistics(fake[torch.randint(len(fake), (len(fake),),
                                                                                      generator=generator)]),
                                       real, False)["frechet_inception_distance"] for _ in range(resamples)]
    return float(torch.tensor(values, dtype=torch.float64).std())


def _calculate(fake, real, *, extractor: str, label: str, fingerprint: str, channels: int | None,
               weights_path: str | None, real_cache_name: str | None, cache_root: str | None, prc_real,
               batch_size: int, isc_splits: int, prc_neighborhood: int, device, verbose: bool) -> dict[str, float]:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cache_name = None if real_cache_name is None else f"{real_cache_name}-{fingerprint}"
    if real is None:
        _check_cached(extractor, cache_name, cache_root)
    # In-memory tensors need no loader workers: save_cpu_ram=True keeps torch-fidelity in this process
    # (and makes its precision/recall compute distances in blocks).
    common = dict(input1=ImageDataset(fake, channels), feature_extractor=extractor,
                  feature_extractor_weights_path=weights_path, cuda=device.type == "cuda", batch_size=batch_size,
                  save_cpu_ram=True, verbose=verbose)
    subset = min(KID_SUBSET_SIZE, len(fake), len(real) if real is not None else KID_SUBSET_SIZE)
    options = dict(**common, input2=cache_name if real is None else ImageDataset(real, channels), isc=True, fid=True,
                   kid=True, kid_subsets=KID_SUBSETS, kid_subset_size=subset, isc_splits=isc_splits,
                   cache=cache_name is not None, cache_root=cache_root, input2_cache_name=cache_name)
    result = torch_fidelity.calculate_metrics(**options)
    result[FID_STD_KEY] = fid_bootstrap_std(options)
    if prc_real is not None:
        result.update(torch_fidelity.calculate_metrics(**common, input2=ImageDataset(prc_real, channels), prc=True,
                                                       prc_neighborhood=prc_neighborhood, cache=False))
    return {RESULT_KEYS[key] + label: float(value) for key, value in result.items()}


def inception_metrics(fake: torch.Tensor, real: torch.Tensor | None, *, weights_path: str | None = None,
                      real_cache_name: str | None = None, cache_root: str | None = None,
                      prc_real: torch.Tensor | None = None, batch_size: int = 64, isc_splits: int = 10,
                      prc_neighborhood: int = 3, device=None, verbose: bool = False) -> dict[str, float]:
    """IS of ``fake`` and its FID against ``real`` with Inception-v3 features; precision/recall against ``prc_real``.

    ``fake``, ``real``, ``prc_real`` are uint8 (N, C, H, W) with 1 or 3 channels (torch-fidelity
    resizes to 299). ``real`` is the training set; ``real=None`` reuses the statistics an earlier
    call cached under ``real_cache_name``. Precision/recall cost O(N^2) distances, so they are
    computed only against ``prc_real`` (a random real subset, ideally the size of ``fake``), in a
    second pass over ``fake``. ``weights_path`` is a local Inception weights file; None downloads
    the reference file. Keys: ``IS``, ``IS_std``, ``FID``, ``FID_std``, ``KID``, ``KID_std`` (+ ``precision``,
    ``recall``, ``F1``), suffixed ``[inception:<sha256 prefix>]`` unless the weights are the reference ones.
    """
    sha = INCEPTION_REFERENCE_SHA256 if weights_path is None else _file_sha256(weights_path)[:8]
    label = "" if sha == INCEPTION_REFERENCE_SHA256 else f"[inception:{sha}]"
    return _calculate(fake, real, extractor=INCEPTION, label=label, fingerprint=sha, channels=3,
                      weights_path=weights_path, real_cache_name=real_cache_name, cache_root=cache_root,
                      prc_real=prc_real, batch_size=batch_size, isc_splits=isc_splits,
                      prc_neighborhood=prc_neighborhood, device=device, verbose=verbose)


def domain_metrics(fake: torch.Tensor, real: torch.Tensor | None, model: nn.Module, name: str, *,
                   real_cache_name: str | None = None, cache_root: str | None = None,
                   prc_real: torch.Tensor | None = None, batch_size: int = 64, isc_splits: int = 10,
                   prc_neighborhood: int = 3, device=None, verbose: bool = False) -> dict[str, float]:
    """IS, FID (and precision/recall) in the feature space of ``model``, a classifier trained on the dataset.

    Same arguments as ``inception_metrics``, with uint8 images in the model's own channels and size.
    ``name`` (e.g. ``fmnist-cnn``) registers the extractor and labels the results: ``IS[name]``,
    ``IS_std[name]``, ``FID[name]``, ``FID_std[name]``, ``KID[name]``, ``KID_std[name]`` (+ ``precision[name]``,
    ``recall[name]``, ``F1[name]``).
    """
    register_domain_extractor(name, model)
    return _calculate(fake, real, extractor=name, label=f"[{name}]", fingerprint=_model_fingerprint(model),
                      channels=None, weights_path=None, real_cache_name=real_cache_name, cache_root=cache_root,
                      prc_real=prc_real, batch_size=batch_size, isc_splits=isc_splits,
                      prc_neighborhood=prc_neighborhood, device=device, verbose=verbose)


def within_class_diversity(x: torch.Tensor, y: torch.Tensor) -> float:
    """Mean pairwise L2 distance between images of the same class, averaged over classes (pixel space).

    Compare the value for generated samples with the one for as many real images per class: a
    much smaller value signals mode collapse. ``x`` may be uint8 or in [0, 1].
    """
    x = x.float().flatten(1) / (255.0 if x.dtype == torch.uint8 else 1.0)
    per_class = [torch.pdist(x[y == c]).mean() for c in y.unique() if int((y == c).sum()) > 1]
    if not per_class:
        raise EnergybenchError("within_class_diversity needs at least two images of one class")
    return float(torch.stack(per_class).mean())
