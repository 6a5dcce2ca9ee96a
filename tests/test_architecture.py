"""The layering the folder tree promises: dependencies point one way, no private imports across modules."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "benchmark"

#: Sub-packages that compute (lower layers) and what they must never import (upper layers and the CLI).
LOWER = ("contracts", "ops", "data", "storage", "training", "evaluation", "generation")
UPPER = ("energybench.reporting", "energybench.suites", "energybench.api", "energybench.cli")


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(module, imported names) of every absolute import in ``path``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.module, [alias.name for alias in node.names]))
        elif isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
    return found


def _modules(*subpackages: str) -> list[Path]:
    return sorted(p for sub in subpackages for p in (PACKAGE / sub).rglob("*.py"))


@pytest.mark.parametrize("subpackage", LOWER)
def test_lower_layers_never_import_reporting_suites_or_the_cli(subpackage):
    offending = [f"{path.relative_to(PACKAGE)} imports {module}" for path in _modules(subpackage)
                 for module, _ in _imports(path) if module.startswith(UPPER)]
    assert not offending


def test_no_module_imports_another_modules_private_names():
    offending = [f"{path.relative_to(PACKAGE.parent)} imports {module}.{name}"
                 for path in sorted(PACKAGE.rglob("*.py")) + sorted((PACKAGE.parent / "plugins").rglob("*.py"))
                 for module, names in _imports(path) if module.startswith("energybench")
                 for name in names if name.startswith("_")]
    assert not offending


def test_the_checks_see_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from energybench.reporting.formats import _md\nimport energybench.cli\n")
    assert _imports(bad) == [("energybench.reporting.formats", ["_md"]), ("energybench.cli", [])]
