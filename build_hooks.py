"""Hatch build hook: the repository's benchmark/, plugins/, cli.py and registry.toml become one package, `energybench`.

Wheel: benchmark/ is installed as energybench/, plugins/ as energybench/plugins/, cli.py as
energybench/cli.py and registry.toml as energybench/registry.toml. Editable install: an import hook
(a .pth file and a small finder module in site-packages) resolves the same three names to the checkout,
so `import energybench` works and no top-level `benchmark`, `plugins` or `cli` module is exposed.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

#: Where each piece of the checkout lives inside the installed package.
LAYOUT = {"benchmark": "energybench", "plugins": "energybench/plugins", "cli.py": "energybench/cli.py",
          "registry.toml": "energybench/registry.toml"}

FINDER = '''"""energybench editable install: maps the package to the checkout at {root}."""
import importlib.abc
import importlib.util
import sys

LOCATIONS = {locations!r}


class EnergybenchFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        location = LOCATIONS.get(fullname)
        if location is None:
            return None
        if location.endswith(".py"):
            return importlib.util.spec_from_file_location(fullname, location)
        return importlib.util.spec_from_file_location(fullname, location + "/__init__.py",
                                                      submodule_search_locations=[location])


if not any(isinstance(f, EnergybenchFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, EnergybenchFinder())
'''


def _files(root: Path, source: str) -> dict[str, str]:
    """Every file of ``source`` (a folder or a file) mapped to its place in the package, caches left out."""
    path = root / source
    if path.is_file():
        return {str(path): LAYOUT[source]}
    return {str(p): f"{LAYOUT[source]}/{p.relative_to(path).as_posix()}" for p in sorted(path.rglob("*"))
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"}


class PackageLayoutHook(BuildHookInterface):
    def initialize(self, version: str, build_data: dict) -> None:
        root = Path(self.root)
        if version == "editable":
            locations = {"energybench": str(root / "benchmark"), "energybench.plugins": str(root / "plugins"),
                         "energybench.cli": str(root / "cli.py")}
            folder = self._editable_folder = Path(tempfile.mkdtemp(prefix="energybench-editable-"))
            (folder / "_energybench_editable.py").write_text(FINDER.format(root=root, locations=locations))
            (folder / "_energybench_editable.pth").write_text("import _energybench_editable\n")
            build_data["force_include_editable"] = {str(p): p.name for p in folder.iterdir()}
            return
        for source in LAYOUT:
            build_data["force_include"].update(_files(root, source))

    def finalize(self, version: str, build_data: dict, artifact_path: str) -> None:
        if version == "editable":
            shutil.rmtree(self._editable_folder, ignore_errors=True)
