"""Hatch build hook: ship the top-level registry.toml inside the `benchmark` package of a wheel.

Editable installs read registry.toml from the checkout instead, so this runs for wheels only.
"""

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


class CatalogueHook(BuildHookInterface):
    def initialize(self, version: str, build_data: dict) -> None:
        if version != "editable":
            build_data["force_include"]["registry.toml"] = "benchmark/registry.toml"
