"""A real third-party package adds a regularizer and an attack through entry points only."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from energybench.storage.store import Store

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "energybench-plugin-example"


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The example package pip-installed (offline, no build isolation) into its own folder."""
    target = tmp_path_factory.mktemp("site")
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(EXAMPLE)], check=True, capture_output=True)
    assert list(target.glob("energybench_plugin_example-*.dist-info/entry_points.txt"))
    return target


def energybench(site: Path, tmp_path: Path, *argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(site), ENERGYBENCH_OFFLINE="1", ENERGYBENCH_HOME=str(tmp_path),
               COLUMNS="200", OMP_NUM_THREADS="1")
    code = "import sys; from energybench.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.run([sys.executable, "-c", code, *argv], capture_output=True, text=True, env=env, timeout=600)


def test_example_plugins_are_listed_with_their_source(site, tmp_path):
    result = energybench(site, tmp_path, "plugins")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any("logit-pairing" in line and "energybench-plugin-example 0.1.0" in line for line in lines)
    assert any("uniform-noise" in line and "tries=10" in line for line in lines)


def test_a_run_with_the_third_party_regularizer(site, tmp_path):
    result = energybench(site, tmp_path, "run", "--track", "digits-tiny", "--reg", "logit-pairing",
                         "-R", "lambda=0.3", "--aa-points", "0", "--epochs", "1")
    assert result.returncode == 0, result.stderr
    (run,) = Store(tmp_path).runs(status="done")
    assert (run.regularizer, run.config["regularizer_params"]) == ("logit-pairing", {"lambda": 0.3})
    assert 0 <= Store(tmp_path).results(run.id)["last"]["test_pgd_acc"] <= 1


def test_the_third_party_attack_respects_its_ball(site, tmp_path):
    code = ("import torch; from energybench.contracts.registry import get_plugin;"
            "net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10));"
            "x = torch.rand(32, 1, 8, 8); y = torch.randint(0, 10, (32,));"
            "a = get_plugin('attack', 'uniform-noise')(net, eps=0.05, tries=3);"
            "xa = a(x, y); assert (xa - x).abs().max() <= 0.05 + 1e-6 and xa.min() >= 0 and xa.max() <= 1;"
            "print('ok')")
    env = dict(os.environ, PYTHONPATH=str(site))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert result.stdout.strip() == "ok", result.stderr


def _readme_block(language: str, containing: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", (EXAMPLE.parents[1] / "README.md").read_text(), re.S)
    (block,) = [b for b in blocks if containing in b]
    return block


def test_the_plugin_written_as_the_readme_shows_works_through_entry_points(tmp_path):
    package = tmp_path / "src"
    (package / "my_package").mkdir(parents=True)
    (package / "my_package" / "__init__.py").write_text("")
    (package / "my_package" / "logit_pairing.py").write_text(_readme_block("python", "class LogitPairing"))
    (package / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=64"]\nbuild-backend = "setuptools.build_meta"\n\n'
        '[project]\nname = "my-package"\nversion = "0.1"\n\n'
        + _readme_block("toml", "energybench.regularizers") + '\n[tool.setuptools]\npackages = ["my_package"]\n')
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(target), str(package)], check=True, capture_output=True)
    home = tmp_path / "home"
    listed = energybench(target, home, "plugins")
    assert any("logit-pairing" in line and "my-package 0.1" in line for line in listed.stdout.splitlines())
    result = energybench(target, home, "run", "--track", "digits-tiny", "--reg", "logit-pairing", "-R", "lambda=0.3",
                         "--aa-points", "0", "--epochs", "1")
    assert result.returncode == 0, result.stderr
    (run,) = Store(home).runs(status="done")
    assert (run.regularizer, run.config["regularizer_params"]) == ("logit-pairing", {"lambda": 0.3})
