"""Suites: matrices of runs from registry.toml and the executors that run them (local, Ray)."""
