"""`energybench sample` and `leaderboard --generative` end to end on a digits-tiny run, with the digits domain CNN."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3

import numpy as np
import pytest
import torch
import torch_fidelity
from datafiles import run_cli, trained_digits_run
from PIL import Image
from torch.utils.data import Dataset

from energybench.data.datasets import get_dataset, load_dataset
from energybench.errors import EnergybenchError
from energybench.generation.feature_extractors import domain_extractor, domain_name
from energybench.generation.generate import feature_sets
from energybench.generation.metrics import fid_bootstrap_std, register_domain_extractor
from energybench.reporting.generative_leaderboard import rankings
from energybench.storage.store import GenerativeRecord, Store


@pytest.fixture(scope="module")
def base_home(tmp_path_factory):
    """A store with one finished digits-tiny run and the digits domain extractor already trained."""
    home = tmp_path_factory.mktemp("base")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ENERGYBENCH_OFFLINE", "1")
        run_id = trained_digits_run(home, epochs=1, eval={"aa_points": 0, "val_points": 60, "test_points": 60})
        domain_extractor("digits", home)
    return home, run_id


@pytest.fixture
def home(base_home, tmp_path):
    """A private copy of the base store; returns (home, run_id)."""
    folder = tmp_path / "store"
    shutil.copytree(base_home[0], folder)
    return folder, base_home[1]


class Images(Dataset):
    """uint8 (N, C, H, W) images as the Dataset torch-fidelity reads (the test's own, not energybench's)."""

    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.images[i]


def test_sample_writes_grid_samples_and_labelled_metrics_and_stores_a_row(capsys, home, tmp_path):
    store_dir, run_id = home
    out_dir = tmp_path / "out"
    code, out, err = run_cli(capsys, "sample", run_id, "--sampler", "local-pca", "-n", "30", "-S", "steps=5",
                             "--store", str(store_dir), "--out", str(out_dir))
    assert code == 0, err
    assert "ranked by FID@30[digits-cnn]" in out and "local-pca" in out and str(out_dir) in out.replace("\n", "")

    samples = np.load(out_dir / "local-pca.npz")
    assert samples["x"].shape == (30, 1, 8, 8) and samples["x"].dtype == np.uint8
    assert samples["y"].tolist() == sorted(list(range(10)) * 3)  # balanced, sorted: grid rows are classes
    assert samples["steps"].shape == (30,) and samples["steps"].max() <= 5 and samples["energy"].shape == (30,)
    # 10 rows of 3 columns of 8x8 images with 2-pixel padding, enlarged 8 times
    assert Image.open(out_dir / "local-pca.png").size == ((3 * 10 + 2) * 8, (10 * 10 + 2) * 8)

    saved = json.loads((out_dir / "local-pca.json").read_text())
    metrics = saved["metrics"]
    assert metrics["FID_std[digits-cnn]"] > 0
    for key in ("FID[digits-cnn]", "IS[digits-cnn]", "KID[digits-cnn]", "KID_std[digits-cnn]", "precision[digits-cnn]",
                "recall[digits-cnn]", "acc[digits-cnn]", "diversity", "diversity_real"):
        assert key in metrics, key
    assert not {"FID", "IS"} & set(metrics)  # never unlabelled without the Inception weights
    assert saved["params"]["steps"] == 5 and saved["feature_extractor"]["name"] == "digits-cnn"

    rows = Store(store_dir).generative()
    assert len(rows) == 1
    row = rows[0]
    assert (row.sampler, row.model_ref, row.checkpoint, row.dataset) == ("local-pca", run_id, "best", "digits")
    assert row.n == 30
    assert row.metrics == metrics and row.steps_mean == pytest.approx(samples["steps"].mean())

    # the stored metrics are torch-fidelity's own, called directly on the saved samples with the registered
    # domain extractor: IS/FID/KID against the whole training set (train + validation files), precision/recall
    # against the n training images drawn with the run's seed; IS in max(1, min(10, n // 10)) = 3 splits,
    # KID on torch-fidelity's 100 subsets of min(1000, n) samples
    data = load_dataset("digits", val_size=1)
    real = torch.cat([data.train.x, data.val.x])
    prc_real = real[torch.randperm(len(real), generator=torch.Generator().manual_seed(0))[:30]]
    extractor = domain_extractor("digits", store_dir).model
    register_domain_extractor("digits-cnn", extractor)
    fake = torch.from_numpy(samples["x"])
    common = dict(input1=Images(fake), feature_extractor="digits-cnn", cuda=False, verbose=False, cache=False,
                  save_cpu_ram=True)  # no DataLoader worker processes
    direct = torch_fidelity.calculate_metrics(**common, input2=Images(real), isc=True, fid=True, kid=True,
                                              isc_splits=3, kid_subsets=100, kid_subset_size=30)
    direct |= torch_fidelity.calculate_metrics(**common, input2=Images(prc_real), prc=True, prc_neighborhood=3)
    for key, name in (("inception_score_mean", "IS"), ("inception_score_std", "IS_std"),
                      ("frechet_inception_distance", "FID"), ("kernel_inception_distance_mean", "KID"),
                      ("kernel_inception_distance_std", "KID_std"), ("precision", "precision"), ("recall", "recall"),
                      ("f_score", "F1")):
        assert metrics[f"{name}[digits-cnn]"] == pytest.approx(direct[key], rel=1e-9, abs=1e-12), name
    with torch.no_grad():
        predicted = extractor(fake.float() / 255).argmax(1)
    hits = predicted == torch.from_numpy(samples["y"])
    assert metrics["acc[digits-cnn]"] == pytest.approx(float(hits.float().mean()))


def test_fid_uncertainty_is_the_spread_of_torch_fidelity_fids_of_bootstrap_resamples(home):
    store_dir, _ = home
    data = load_dataset("digits", val_size=1)
    real, fake = data.train.x, data.test.x[:40]
    register_domain_extractor("digits-cnn", domain_extractor("digits", store_dir).model)
    common = dict(feature_extractor="digits-cnn", cuda=False, verbose=False, cache=False, save_cpu_ram=True)
    generator = torch.Generator().manual_seed(0)
    resamples = [fake[torch.randint(len(fake), (len(fake),), generator=generator)] for _ in range(3)]
    direct = [torch_fidelity.calculate_metrics(input1=Images(x), input2=Images(real), fid=True, **common)[
        "frechet_inception_distance"] for x in resamples]
    options = dict(input1=Images(fake), input2=Images(real), fid=True, **common)
    assert fid_bootstrap_std(options, resamples=3, seed=0) == pytest.approx(float(np.std(direct, ddof=1)), rel=1e-6)
    # one image repeated: every resample is the same set, so FID has no spread
    same = dict(options, input1=Images(fake[:1].repeat(40, 1, 1, 1)))
    assert fid_bootstrap_std(same, resamples=3) == pytest.approx(0.0, abs=1e-6)


def test_compare_runs_every_sampler_on_the_same_labels_and_seed(capsys, home, tmp_path):
    store_dir, run_id = home
    common = [run_id, "-n", "20", "--seed", "3", "--store", str(store_dir)]
    code, out, err = run_cli(capsys, "sample", *common, "--compare", "class-pca, sgld,local-pca", "-S", "steps=3",
                             "-S", "sgld.steps=2", "--out", str(tmp_path / "all"))
    assert code == 0, err
    rows = Store(store_dir).generative()
    assert [r.sampler for r in rows] == ["class-pca", "sgld", "local-pca"]
    assert {r.seed for r in rows} == {3} and {r.model_ref for r in rows} == {run_id}
    assert [r.params["steps"] for r in rows] == [3, 2, 3]
    assert "sgld steps=2" in out and "class-pca steps=3" in out  # non-default hyper-parameters are shown
    labels = [np.load(tmp_path / "all" / f"{r.sampler}.npz")["y"].tolist() for r in rows]
    assert labels[0] == labels[1] == labels[2]
    assert all((tmp_path / "all" / f"{r.sampler}.{ext}").is_file() for r in rows for ext in ("png", "json"))

    # each sampler starts from the seed afresh: sgld alone draws exactly what it drew second in the comparison
    code, _, err = run_cli(capsys, "sample", *common, "--sampler", "sgld", "-S", "steps=2", "--out",
                           str(tmp_path / "alone"))
    assert code == 0, err
    assert np.array_equal(np.load(tmp_path / "alone" / "sgld.npz")["x"], np.load(tmp_path / "all" / "sgld.npz")["x"])


def test_a_dataset_can_train_its_domain_extractor_its_own_way(tmp_path, monkeypatch):
    """registry.toml's ``[feature_extractors.<dataset>]`` changes how the extractor is trained; its weights file
    then carries a hash of the settings, so the default extractor's file is never taken for it."""
    from energybench.config import default_catalogue_path

    registry = tmp_path / "registry.toml"
    registry.write_text(default_catalogue_path().read_text()
                        + "\n[feature_extractors.digits]\nepochs = 1\nn_train = 300\nmodel_params = { width = 8 }\n")
    monkeypatch.setenv("ENERGYBENCH_REGISTRY", str(registry))
    extractor = domain_extractor("digits", tmp_path / "home")
    assert extractor.path.name.startswith("digits-small-cnn-") and extractor.name == "digits-cnn"
    (run,) = Store(tmp_path / "home" / "feature-extractors").runs()
    assert (run.config["epochs"], run.config["n_train"], run.config["model_params"]) == (1, 300, {"width": 8})
    assert extractor.model.features[0].out_channels == 8


def test_domain_extractor_is_trained_once_and_names_its_results(home, monkeypatch, tmp_path):
    store_dir, _ = home
    weights = store_dir / "feature-extractors" / "digits-small-cnn.pt"
    before = weights.stat().st_mtime_ns
    extractor = domain_extractor("digits", store_dir)
    assert weights.stat().st_mtime_ns == before and extractor.path == weights  # reused, not retrained
    assert extractor.name == "digits-cnn" and domain_name("fashion-mnist") == "fmnist-cnn"
    assert extractor.test_acc > 0.5 and not extractor.model.training
    assert len(Store(store_dir / "feature-extractors").runs()) == 1
    assert Store(store_dir).runs(trainer="standard") == []  # never on the robustness leaderboard

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no cached Inception weights here
    assert feature_sets("auto", get_dataset("fashion-mnist"), None) == ["domain"]
    assert feature_sets("auto", get_dataset("cifar10"), None) == ["domain"]
    assert feature_sets("auto", get_dataset("cifar10"), "inception.pth") == ["inception"]
    assert feature_sets("auto", get_dataset("fashion-mnist"), "inception.pth") == ["domain"]  # grayscale: domain
    assert feature_sets("both", get_dataset("cifar10"), "inception.pth") == ["inception", "domain"]
    with pytest.raises(EnergybenchError, match="Inception weights not found"):
        feature_sets("inception", get_dataset("cifar10"), None)


def record(id_, dataset, sampler, metrics, model_ref="run-a", checkpoint="best", n=100):
    return GenerativeRecord(id=id_, created=float(len(id_)), model_ref=model_ref, checkpoint=checkpoint,
                            dataset=dataset, model="small-cnn", sampler=sampler, params={}, seed=0, n=n,
                            metrics=metrics | {"diversity": 1.0, "diversity_real": 2.0}, steps_mean=10.0,
                            wall_time=1.0, out_dir=None)


def test_generative_leaderboard_ranks_per_feature_space_and_sample_size_and_keeps_references_apart(capsys, tmp_path):
    store = Store(tmp_path / "s")
    for r in (record("g1", "fashion-mnist", "sgld", {"FID[fmnist-cnn]": 9.0, "IS[fmnist-cnn]": 3.0,
                                                      "KID[fmnist-cnn]": 0.0123, "KID_std[fmnist-cnn]": 0.0011}),
              record("g2", "fashion-mnist", "local-pca", {"FID[fmnist-cnn]": 2.0, "IS[fmnist-cnn]": 5.0}),
              # FID on 1000 samples is not ranked against FID on 100: it is biased differently
              record("g5", "fashion-mnist", "class-pca", {"FID[fmnist-cnn]": 1.0}, n=1000),
              record("g3", "cifar10", "class-pca", {"FID": 50.0, "IS": 6.0}, model_ref="/x/model.pt", checkpoint=None),
              record("g4", "cifar10", "sgld", {"FID": 40.0, "IS": 7.0, "FID[cifar10-cnn]": 1.0})):
        store.add_generative(r)
    groups = rankings(store.generative())
    assert {tuple(key): [r.id for r in group] for key, group in groups.items()} == {
        ("cifar10", "", 100): ["g4", "g3"], ("cifar10", "[cifar10-cnn]", 100): ["g4"],
        ("fashion-mnist", "[fmnist-cnn]", 100): ["g2", "g1"], ("fashion-mnist", "[fmnist-cnn]", 1000): ["g5"]}

    code, out, err = run_cli(capsys, "leaderboard", "--generative", "--store", str(tmp_path / "s"))
    assert code == 0, err
    measured, references = out.split("Published references")
    assert "ranked by FID@100[fmnist-cnn]" in measured and "ranked by FID@100[cifar10-cnn]" in measured
    assert re.search(r"cifar10, ranked by FID@100 *\n", measured)  # reference Inception weights: plain FID
    fmnist, fmnist_1000 = measured.split("ranked by FID@100[fmnist-cnn]")[1].split("ranked by FID@1000[fmnist-cnn]")
    assert fmnist.index("local-pca") < fmnist.index("sgld") and "class-pca" not in fmnist
    assert "KID@100" in fmnist and "0.0123±0.0011" in fmnist and "IS@100" in fmnist
    assert "class-pca" in fmnist_1000 and "sgld" not in fmnist_1000
    assert "model.pt" in measured and "run-a ?/best" in measured
    for text in ("JEM", "IS@? 8.76", "FID@? 38.4", "Grathwohl", "JEAT", "Zhu", "Santurkar", "7.50"):
        assert text in references and text not in measured, text
    assert "never ranked" in references

    code, out, _ = run_cli(capsys, "leaderboard", "--generative", "--dataset", "fashion-mnist", "--store",
                           str(tmp_path / "s"))
    assert code == 0 and "cifar10-cnn" not in out.split("Published references")[0] and "JEM" in out
    code, out, _ = run_cli(capsys, "leaderboard", "--generative", "--no-references", "--store", str(tmp_path / "s"))
    assert code == 0 and "local-pca" in out and "JEM" not in out and "Published references" not in out


def test_an_existing_store_gains_the_generative_table(tmp_path):
    Store(tmp_path).close()
    db = sqlite3.connect(tmp_path / "store.sqlite")
    db.execute("DROP TABLE generative")  # as a store made before generation existed
    db.commit()
    db.close()
    store = Store(tmp_path)
    store.add_generative(record("g1", "digits", "sgld", {"FID[digits-cnn]": 1.0}))
    assert [r.id for r in Store(tmp_path).generative(dataset="digits")] == ["g1"]


@pytest.mark.parametrize("argv,message", [
    (["--sampler", "local-pcaa"], "unknown sampler 'local-pcaa'; did you mean 'local-pca'?"),
    (["--compare", "sgld,clas-pca"], "unknown sampler 'clas-pca'; did you mean 'class-pca'?"),
    (["--sampler", "sgld", "-n", "0"], "-n 0 is too small: FID and diversity need at least 2 samples per class"),
    (["--sampler", "sgld", "-S", "tol=0.1"], "-S tol: no sampler run here has a hyper-parameter 'tol'"),
    (["--sampler", "sgld", "-S", "local-pca.tol=0.1"], "sampler 'local-pca' is not run here"),
    (["--sampler", "sgld", "-S", "steps=-1"], "invalid hyper-parameters for sampler 'sgld'"),
    (["--sampler", "sgld", "--features", "inception"], "Inception weights not found"),
    (["-n", "20"], "name a sampler with --sampler or several with --compare"),
])
def test_bad_sample_input_is_one_line_exit_2(capsys, home, monkeypatch, tmp_path, argv, message):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    store_dir, run_id = home
    code, out, err = run_cli(capsys, "sample", run_id, *argv, "--store", str(store_dir))
    assert code == 2, err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err
    assert Store(store_dir).generative() == []


def test_unknown_run_and_bad_leaderboard_filters_are_one_line_errors(capsys, home):
    store_dir, run_id = home
    code, _, err = run_cli(capsys, "sample", run_id[:-1] + "x", "--sampler", "sgld",
                           "--store", str(store_dir))
    assert code == 2 and f"unknown run '{run_id[:-1]}x'; did you mean '{run_id}'?" in err and err.count("\n") == 1
    code, _, err = run_cli(capsys, "leaderboard", "--generative", "--eps", "0.1", "--store", str(store_dir))
    assert code == 2 and "with --generative use --dataset/--model" in err and err.count("\n") == 1
