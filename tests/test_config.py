"""Configuration: eps parsing, tracks, resolution order and readable validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from energybench import describe_plugins
from energybench.config import (
    Catalogue,
    RunConfig,
    default_catalogue_path,
    load_catalogue,
    parse_eps,
    resolve_config,
)
from energybench.errors import EnergybenchError
from energybench.training.run import prepare


@pytest.mark.parametrize("text,value", [("8/255", 8 / 255), ("0.031", 0.031), (0.3, 0.3), ("1e-2", 0.01)])
def test_parse_eps(text, value):
    assert parse_eps(text) == pytest.approx(value)


@pytest.mark.parametrize("text", ["abc", "8/0", "", "1/2/3"])
def test_parse_eps_rejects_garbage(text):
    with pytest.raises(ValueError):
        parse_eps(text)


def test_shipped_catalogue_is_valid_and_has_the_documented_tracks():
    catalogue = load_catalogue()
    assert catalogue.default_track == "fmnist-co"
    assert {"fmnist-co", "fmnist-ro", "digits-tiny", "cifar10-co", "cifar10-ro"} <= set(catalogue.tracks)
    cifar = resolve_config(catalogue, track="cifar10-co")
    assert cifar.eps == pytest.approx(8 / 255) and cifar.model == "preact-resnet18" and cifar.augment


def test_default_track_and_override_order(tmp_path):
    catalogue = load_catalogue()
    cfg = resolve_config(catalogue, overrides={"trainer": "fgsm", "regularizer": "der"})
    assert cfg.track == "fmnist-co" and cfg.eps == 0.3 and cfg.regularizer == "der"
    file = tmp_path / "c.toml"
    file.write_text('epochs = 7\neps = "4/255"\n[eval]\naa_points = 5\n')
    cfg = resolve_config(catalogue, track="fmnist-co", config_file=file, overrides={"epochs": 2})
    assert cfg.epochs == 2 and cfg.eps == pytest.approx(4 / 255) and cfg.eval.aa_points == 5
    assert cfg.eval.val_points == 500  # untouched track settings survive the merge


def test_plugin_defaults_come_from_the_catalogue_then_flags(tmp_path):
    catalogue = load_catalogue()
    cfg = prepare(resolve_config(catalogue, overrides={"regularizer": "der",
                                                       "regularizer_params": {"gamma": 0.5}}), catalogue)
    assert cfg.regularizer_params == {"form": "hinge", "beta": 30.0, "gamma": 0.5, "aae": "auto"}
    edited = tmp_path / "registry.toml"
    edited.write_text(default_catalogue_path().read_text() + "\n[defaults.trainer.pgd]\nsteps = 4\n")
    catalogue_4 = load_catalogue(edited)
    assert prepare(resolve_config(catalogue_4, overrides={"trainer": "pgd"}), catalogue_4).trainer_params["steps"] == 4
    (shown,) = [p for p in describe_plugins("trainer", catalogue=edited) if p.name == "pgd"]  # `energybench plugins`
    assert shown.defaults == {"steps": 4, "step_ratio": 0.25}
    flagged = resolve_config(catalogue_4, overrides={"trainer": "pgd", "trainer_params": {"steps": 2}})
    assert prepare(flagged, catalogue_4).trainer_params["steps"] == 2
    ablation = prepare(resolve_config(catalogue, overrides={
        "regularizer": "der", "regularizer_params": {"form": "squared", "terms": "joint"}}), catalogue)
    assert ablation.regularizer_params == {"form": "squared", "lambda": 1.0, "terms": "joint", "huber_delta": 1.0}


@pytest.mark.parametrize("overrides,message", [
    ({"eps": -0.1}, "eps=-0.1 is outside (0, 1)"),
    ({"eps": "2"}, "eps=2 is outside (0, 1)"),
    ({"eps": "eight"}, "not a number or a fraction"),
    ({"epochs": "many"}, "epochs: Input should be a valid integer"),
    ({"colour": "red"}, "unknown setting 'colour'"),
])
def test_bad_settings_give_one_readable_line(overrides, message):
    with pytest.raises(EnergybenchError) as info:
        resolve_config(load_catalogue(), overrides=overrides)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_bad_plugin_choices_are_refused():
    catalogue = load_catalogue()
    with pytest.raises(EnergybenchError, match="needs adversarial examples but trainer 'standard'"):
        prepare(resolve_config(catalogue, overrides={"trainer": "standard", "regularizer": "der"}), catalogue)
    with pytest.raises(EnergybenchError, match="did you mean 'fgsm'"):
        prepare(resolve_config(catalogue, overrides={"trainer": "fgsn"}), catalogue)
    with pytest.raises(EnergybenchError, match=r"regularizer 'der'.*lambda=.?'big'"):
        prepare(resolve_config(catalogue, overrides={"regularizer": "der",
                                                     "regularizer_params": {"lambda": "big"}}), catalogue)
    with pytest.raises(EnergybenchError, match="unknown hyper-parameter 'lamda'"):
        prepare(resolve_config(catalogue, overrides={"regularizer": "der",
                                                     "regularizer_params": {"lamda": 1}}), catalogue)


def test_malformed_track_names_the_track(tmp_path: Path):
    bad = tmp_path / "registry.toml"
    bad.write_text('[tracks.broken]\ndescription = "x"\nepochs = "ten"\n')
    with pytest.raises(EnergybenchError, match="track 'broken' is malformed: epochs"):
        Catalogue(bad)
    bad.write_text("[tracks.nodesc]\nepochs = 3\n")
    with pytest.raises(EnergybenchError, match="'nodesc' needs a table with a 'description'"):
        Catalogue(bad)


def test_config_hash_ignores_device_and_paths_but_not_settings():
    catalogue = load_catalogue()
    a = resolve_config(catalogue, track="fmnist-co")
    b = resolve_config(catalogue, track="fmnist-co", overrides={"device": "cpu", "data_root": "/x"})
    c = resolve_config(catalogue, track="fmnist-co", overrides={"seed": 1})
    assert a.config_hash() == b.config_hash() != c.config_hash()


def test_one_identity_hashes_and_groups_a_run(tmp_path):
    """A logger observes: a run with and without one hashes the same and falls in one seed group; a different
    regularizer parameter does neither; another seed hashes apart but groups together."""
    from energybench.reporting.rows import group_key
    from energybench.storage.store import Store

    store = Store(tmp_path)

    def record(**overrides):
        settings = {"trainer": "fgsm", "regularizer": "der", "regularizer_params": {"beta": 30.0}}
        config = RunConfig(**settings | overrides)
        return store.get_run(store.create_run(config.model_dump(), config.config_hash()))

    plain, logged = record(), record(callbacks=["tensorboard"])
    assert plain.config_hash == logged.config_hash and group_key(plain) == group_key(logged)
    other = record(regularizer_params={"beta": 10.0})
    assert plain.config_hash != other.config_hash and group_key(plain) != group_key(other)
    seed = record(seed=1)
    assert plain.config_hash != seed.config_hash and group_key(plain) == group_key(seed)


def test_model_params_reach_the_model_and_the_hash_only_when_given(tmp_path, capsys):
    from datafiles import SMALL_EVAL, run_cli

    from energybench import create_model
    from energybench.config import RunConfig
    from energybench.storage.store import Store

    plain = RunConfig(dataset="cifar10", model="preact-resnet18")
    assert plain.config_hash() == RunConfig(dataset="cifar10", model="preact-resnet18", model_params={}).config_hash()
    narrow = RunConfig(dataset="cifar10", model="preact-resnet18", model_params={"width": 16})
    assert narrow.config_hash() != plain.config_hash()
    assert create_model("preact-resnet18", dataset="cifar10", width=16).fc.in_features == 128
    with pytest.raises(EnergybenchError, match=r"model 'small-cnn' does not take depth=3"):
        create_model("small-cnn", dataset="digits", depth=3)
    config = tmp_path / "small.toml"
    config.write_text("[eval]\n" + "".join(f"{k} = {v}\n" for k, v in SMALL_EVAL.items()))
    code, _, err = run_cli(capsys, "run", "--track", "digits-tiny", "-M", "width=8", "--epochs", "1",
                           "--config", config, "--store", tmp_path / "store")
    assert code == 0, err
    (record,) = Store(tmp_path / "store").runs()
    assert record.config["model_params"] == {"width": 8} and "small-cnn width=8" in err
    code, _, err = run_cli(capsys, "run", "--track", "digits-tiny", "-M", "depth=3", "--store", tmp_path / "store")
    assert code == 2 and "does not take depth=3" in err and "Traceback" not in err
