"""IS/FID/precision-recall through torch-fidelity: exact agreement with direct calls, caching, labels.

No weights are downloaded: the Inception tests save a randomly initialised torch-fidelity Inception
state dict in a temporary folder, and the domain tests use a small CNN trained on sklearn's digits.
"""

from __future__ import annotations

import copy
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torch_fidelity
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import Dataset
from torch_fidelity import feature_extractor_inceptionv3 as tf_inception

from energybench.contracts.registry import get_plugin
from energybench.errors import EnergybenchError
from energybench.generation import metrics as gm

KEYS = {"inception_score_mean": "IS", "inception_score_std": "IS_std", "frechet_inception_distance": "FID",
        "kernel_inception_distance_mean": "KID", "kernel_inception_distance_std": "KID_std",
        "precision": "precision", "recall": "recall", "f_score": "F1"}


class RGB(Dataset):
    """The test's own Dataset for direct torch-fidelity calls: uint8 images, grey repeated to 3 channels."""

    def __init__(self, images, channels=3):
        self.images = images.repeat(1, channels // images.shape[1], 1, 1)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


def direct(fake, real, prc_real, channels=3, **kwargs):
    """torch-fidelity called directly, the way its documentation shows, labelled like energybench."""
    common = dict(input1=RGB(fake, channels), cuda=False, verbose=False, save_cpu_ram=True, cache=False, **kwargs)
    out = torch_fidelity.calculate_metrics(input2=RGB(real, channels), isc=True, fid=True, kid=True,
                                           kid_subset_size=min(len(fake), len(real), 1000), **common)
    out.update(torch_fidelity.calculate_metrics(input2=RGB(prc_real, channels), prc=True, **common))
    return out


def labelled(result, label):
    return {KEYS[k] + label: float(v) for k, v in result.items()}


def direct_part(ours):
    """``ours`` without FID's bootstrap standard deviation, which a direct call does not compute (its own tests:
    tests/test_generation.py), after checking that it is there and positive."""
    spread = [key for key in ours if key.startswith("FID_std")]
    assert len(spread) == 1 and ours[spread[0]] > 0
    return {k: v for k, v in ours.items() if k not in spread}


@pytest.fixture(scope="module")
def digits_uint8():
    d = load_digits()
    return torch.tensor(d.images * 255 / 16).round().to(torch.uint8).unsqueeze(1), torch.tensor(d.target)


@pytest.fixture(scope="module")
def inception_weights(tmp_path_factory):
    """A randomly initialised Inception state dict saved locally (He init, so features do not vanish)."""
    torch.manual_seed(0)
    with mock.patch.object(tf_inception, "load_state_dict_from_url", return_value={}), \
            mock.patch.object(tf_inception.FeatureExtractorInceptionV3, "load_state_dict"):
        module = tf_inception.FeatureExtractorInceptionV3(gm.INCEPTION, ["2048"])
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    path = tmp_path_factory.mktemp("inception") / "weights-random.pth"
    torch.save(module.state_dict(), path)
    return str(path)


@pytest.fixture
def small_inception():
    """Inception at its minimum 75x75 input with FID on the 192-d block: the same code paths in seconds.

    torch-fidelity's FID takes the eigenvalues of a D x D product: about 13 s for D=2048 on 2 cores.
    """
    layers = {"isc": "logits_unbiased", "fid": "192", "kid": "192", "prc": "192"}
    with mock.patch.object(tf_inception.FeatureExtractorInceptionV3, "INPUT_IMAGE_SIZE", 75), \
            mock.patch.object(tf_inception.FeatureExtractorInceptionV3, "get_default_feature_layer_for_metric",
                              staticmethod(layers.__getitem__)):
        yield


def split(digits_uint8, n_fake, n_real, n_prc):
    x, _ = digits_uint8
    return x[:n_fake], x[100:100 + n_real], x[50:50 + n_prc]


def test_inception_metrics_match_a_direct_call_and_cache_the_real_statistics(
        digits_uint8, inception_weights, small_inception, tmp_path, monkeypatch):
    fake, real, prc_real = split(digits_uint8, 10, 12, 10)
    sha = gm._file_sha256(inception_weights)[:8]
    expected = labelled(direct(fake, real, prc_real, feature_extractor=gm.INCEPTION, isc_splits=2,
                               feature_extractor_weights_path=inception_weights), f"[inception:{sha}]")
    assert 1 < expected[f"IS[inception:{sha}]"] and expected[f"FID[inception:{sha}]"] > 0  # not degenerate

    cache = str(tmp_path / "cache")
    ours = gm.inception_metrics(fake, real, weights_path=inception_weights, real_cache_name="digits-train",
                                cache_root=cache, prc_real=prc_real, isc_splits=2, device="cpu")
    assert direct_part(ours) == expected
    assert not any(key.startswith("FID") and key not in (f"FID[inception:{sha}]", f"FID_std[inception:{sha}]")
                   for key in ours)

    cached = gm.inception_metrics(fake, None, weights_path=inception_weights, real_cache_name="digits-train",
                                  cache_root=cache, isc_splits=2, device="cpu")
    assert direct_part(cached) == {k: v for k, v in expected.items()
                                   if k.split("[")[0] in ("IS", "IS_std", "FID", "KID", "KID_std")}
    assert cached[f"FID_std[inception:{sha}]"] == ours[f"FID_std[inception:{sha}]"]  # the cached real statistics

    monkeypatch.setattr(gm, "INCEPTION_REFERENCE_SHA256", sha)  # as if these were the reference weights
    plain = gm.inception_metrics(fake, None, weights_path=inception_weights, real_cache_name="digits-train",
                                 cache_root=cache, isc_splits=2, device="cpu")
    assert plain == {key: cached[f"{key}[inception:{sha}]"]
                     for key in ("IS", "IS_std", "FID", "FID_std", "KID", "KID_std")}


def test_missing_cache_or_bad_images_are_clear_errors(digits_uint8, inception_weights, tmp_path):
    fake, _, _ = split(digits_uint8, 10, 0, 0)
    with pytest.raises(EnergybenchError, match="cached"):
        gm.inception_metrics(fake, None, weights_path=inception_weights, real_cache_name="nothing-here",
                             cache_root=str(tmp_path), device="cpu")
    with pytest.raises(EnergybenchError, match="real"):
        gm.inception_metrics(fake, None, weights_path=inception_weights, device="cpu")
    with pytest.raises(EnergybenchError, match="uint8"):
        gm.inception_metrics(fake.float() / 255, fake, weights_path=inception_weights, device="cpu")


@pytest.mark.slow
def test_inception_metrics_at_full_size_match_a_direct_call(digits_uint8, inception_weights):
    """299x299 input and 2048-d FID features, unpatched: a handful of images."""
    fake, real, prc_real = split(digits_uint8, 4, 4, 4)
    sha = gm._file_sha256(inception_weights)[:8]
    expected = labelled(direct(fake, real, prc_real, feature_extractor=gm.INCEPTION, isc_splits=2,
                               feature_extractor_weights_path=inception_weights), f"[inception:{sha}]")
    assert direct_part(gm.inception_metrics(fake, real, weights_path=inception_weights, prc_real=prc_real,
                                            isc_splits=2, device="cpu")) == expected


@pytest.fixture(scope="module")
def digits_cnn(digits_uint8):
    """A small CNN trained on the digits for a few seconds, left in training mode on purpose."""
    torch.manual_seed(0)
    x, y = digits_uint8[0].float() / 255, digits_uint8[1]
    model = get_plugin("model", "small-cnn")(num_classes=10, in_channels=1, mean=[0.3], std=[0.4], width=8)
    opt = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(5):
        for idx in torch.randperm(len(x)).split(128):
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    return model


def test_domain_metrics_match_a_direct_call(digits_uint8, digits_cnn, tmp_path):
    fake, real, prc_real = split(digits_uint8, 40, 300, 40)
    ours = gm.domain_metrics(fake, real, digits_cnn, "digits-cnn", prc_real=prc_real, device="cpu",
                             real_cache_name="digits-train", cache_root=str(tmp_path))
    expected = labelled(direct(fake, real, prc_real, channels=1, feature_extractor="digits-cnn"), "[digits-cnn]")
    assert direct_part(ours) == expected
    assert set(ours) == {f"{k}[digits-cnn]" for k in [*KEYS.values(), "FID_std"]}
    assert ours["IS[digits-cnn]"] > 2 and ours["FID[digits-cnn]"] > 0  # a trained classifier separates digits
    same = gm.domain_metrics(real[:40], None, digits_cnn, "digits-cnn", device="cpu",
                             real_cache_name="digits-train", cache_root=str(tmp_path))
    assert same["FID[digits-cnn]"] < ours["FID[digits-cnn]"]  # real images are closer to the real set
    assert same["KID[digits-cnn]"] < ours["KID[digits-cnn]"] and ours["KID_std[digits-cnn]"] > 0


def test_domain_fid_is_the_frechet_distance_of_penultimate_features(digits_uint8, digits_cnn):
    fake, real, _ = split(digits_uint8, 60, 300, 0)
    ours = gm.domain_metrics(fake, real, digits_cnn, "digits-cnn", device="cpu")

    def penultimate(images):
        model = copy.deepcopy(digits_cnn).eval()
        with torch.no_grad():
            z = (images.float() / 255 - model.mean) / model.std
            return model.head[:-1](model.features(z)).double().numpy()

    def psd_sqrt(m):
        w, v = np.linalg.eigh(m)
        return (v * np.sqrt(w.clip(0))) @ v.T

    f1, f2 = penultimate(fake), penultimate(real)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    root = psd_sqrt(s1)  # tr sqrt(s1 s2) = tr sqrt(root s2 root), symmetric even when s1 is singular
    fid = ((f1.mean(0) - f2.mean(0)) ** 2).sum() + np.trace(s1 + s2) - 2 * np.trace(psd_sqrt(root @ s2 @ root))
    assert ours["FID[digits-cnn]"] == pytest.approx(fid, rel=1e-3)


def test_domain_extractor_leaves_the_model_alone_and_never_reuses_stale_statistics(
        digits_uint8, digits_cnn, tmp_path):
    fake, real, _ = split(digits_uint8, 20, 100, 0)
    before = {k: v.clone() for k, v in digits_cnn.state_dict().items()}
    gm.domain_metrics(fake, real, digits_cnn, "digits-cnn", device="cpu", real_cache_name="r", cache_root=str(tmp_path))
    assert digits_cnn.training and all(p.requires_grad for p in digits_cnn.parameters())
    assert all(torch.equal(before[k], v) for k, v in digits_cnn.state_dict().items())

    changed = copy.deepcopy(digits_cnn)
    with torch.no_grad():
        changed.head[-1].bias += 1.0
    with pytest.raises(EnergybenchError, match="cached"):  # other weights: the first model's cache is not used
        gm.domain_metrics(fake, None, changed, "digits-cnn", device="cpu", real_cache_name="r",
                          cache_root=str(tmp_path))


def test_domain_name_cannot_take_over_a_torch_fidelity_extractor(digits_cnn):
    with pytest.raises(EnergybenchError, match="already taken"):
        gm.register_domain_extractor(gm.INCEPTION, digits_cnn)


def test_within_class_diversity_and_uint8_conversion():
    x = torch.rand(6, 1, 4, 4)
    y = torch.tensor([0, 0, 0, 1, 1, 1])
    assert gm.within_class_diversity(x[[0, 0, 0, 3, 3, 3]], y) == 0
    assert gm.within_class_diversity(x, y) > 0
    u = gm.to_uint8(x)
    assert u.dtype == torch.uint8 and (u.float() / 255 - x).abs().max() <= 0.5 / 255 + 1e-6
    assert gm.within_class_diversity(u, y) == pytest.approx(gm.within_class_diversity(x, y), abs=0.01)
