"""The plugin registry: lazy discovery, reporting broken plugins, clashes, runtime registration."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import EntryPoint

import pytest

from energybench.contracts import registry as reg
from energybench.contracts.trainer import Trainer
from energybench.errors import EnergybenchError, PluginError


class _Dist:
    def __init__(self, name: str, version: str = "1.0"):
        self.name, self.version = name, version


def _ep(name: str, value: str, group: str, dist: str) -> EntryPoint:
    ep = EntryPoint(name, value, group)
    object.__setattr__(ep, "dist", _Dist(dist))
    return ep


@pytest.fixture
def fake_entry_points(monkeypatch):
    """Replace the installed entry points with a controlled list, for one test."""
    def install(*eps):
        def entry_points(group):
            return [e for e in eps if e.group == group]

        monkeypatch.setattr(reg, "entry_points", entry_points)
        return reg.Registry()

    return install


def test_builtin_plugins_are_discovered_through_entry_points():
    r = reg.Registry()
    assert {"standard", "fgsm", "rs-fgsm", "pgd"} <= set(r.names("trainer"))
    assert "der" in r.names("regularizer")
    assert {"fgsm", "pgd", "autoattack"} <= set(r.names("attack"))
    assert {"small-cnn", "preact-resnet18", "wrn-28-10"} <= set(r.names("model"))
    assert r.entry("trainer", "fgsm").source.startswith("energybench ")


def test_listing_names_imports_no_plugin_code():
    code = ("import sys; from energybench.contracts.registry import list_plugins; names = list_plugins('trainer');"
            "assert 'pgd' in names; print(sorted(m for m in sys.modules if m.startswith('plugins.')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_unknown_name_suggests_the_closest(fake_entry_points):
    r = reg.Registry()
    with pytest.raises(EnergybenchError, match="did you mean 'fgsm'"):
        r.entry("trainer", "fgms")


def test_broken_and_wrong_type_plugins_are_reported_and_skipped(fake_entry_points):
    r = fake_entry_points(
        _ep("good", "energybench.plugins.trainers.fgsm:FGSMTrainer", "energybench.trainers", "energybench"),
        _ep("broken", "no_such_module_xyz:Thing", "energybench.trainers", "thirdparty"),
        _ep("notatrainer", "energybench.plugins.attacks.fgsm:FGSM", "energybench.trainers", "thirdparty"),
    )
    loaded = [entry.name for entry, _ in r.load_all("trainer")]
    assert loaded == ["good"]
    assert any("'broken' from thirdparty 1.0 failed to import" in p for p in r.problems)
    assert any("'notatrainer' from thirdparty 1.0" in p and "not a subclass" in p for p in r.problems)
    with pytest.raises(EnergybenchError):
        r.entry("trainer", "broken")


def test_a_clash_keeps_the_builtin_and_reports_the_other(fake_entry_points):
    r = fake_entry_points(
        _ep("fgsm", "other_pkg:Fgsm", "energybench.trainers", "aaa-thirdparty"),
        _ep("fgsm", "energybench.plugins.trainers.fgsm:FGSMTrainer", "energybench.trainers", "energybench"),
    )
    assert r.entry("trainer", "fgsm").source == "energybench 1.0"
    assert any("clashes" in p and "aaa-thirdparty" in p for p in r.problems)


def test_autoload_can_be_disabled(fake_entry_points, monkeypatch):
    monkeypatch.setenv("ENERGYBENCH_DISABLE_PLUGIN_AUTOLOAD", "1")
    r = fake_entry_points(
        _ep("fgsm", "energybench.plugins.trainers.fgsm:FGSMTrainer", "energybench.trainers", "energybench"),
        _ep("extra", "energybench.plugins.trainers.pgd:PGDTrainer", "energybench.trainers", "thirdparty"),
    )
    assert r.names("trainer") == ["fgsm"]


def test_runtime_registration_decorator(scoped_registry):
    @reg.register_trainer("my-trainer")
    class MyTrainer(Trainer):
        def step(self, model, x, y, *, keep_clean_logits):
            raise NotImplementedError

    assert reg.get_plugin("trainer", "my-trainer") is MyTrainer
    assert "my-trainer" in reg.list_plugins("trainer")
    with pytest.raises(PluginError, match="already registered"):
        reg.register_trainer("my-trainer")(MyTrainer)
    with pytest.raises(PluginError, match="not a subclass"):
        reg.register_trainer("not-one")(int)


def test_a_registration_inside_use_registry_is_gone_after_it():
    with reg.use_registry() as scoped:
        reg.register_trainer("scoped-x")(reg.get_plugin("trainer", "fgsm"))
        assert reg.get_registry() is scoped and "scoped-x" in reg.list_plugins("trainer")
    assert reg.get_registry() is not scoped and "scoped-x" not in reg.list_plugins("trainer")


def test_a_subclass_of_a_registered_plugin_carries_its_own_name(scoped_registry):
    fgsm = reg.get_plugin("trainer", "fgsm")
    parent = reg.register_trainer("parent-x")(type("Parent", (fgsm,), {}))
    child = reg.register_trainer("child-x")(type("Child", (parent,), {}))
    assert (parent.name, child.name) == ("parent-x", "child-x")
    assert child(eps=0.1).params.model_dump() == fgsm(eps=0.1).params.model_dump()
