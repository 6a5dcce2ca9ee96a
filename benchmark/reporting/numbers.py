"""How every table writes a number: one formatter, one rule for what was not measured (None or NaN: ``-``)."""

from __future__ import annotations

import math
from typing import Any

#: What a table shows where a number was not measured.
MISSING = "-"


def is_missing(value: Any) -> bool:
    """None or NaN: a number that was not measured."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def number(value: float | None, spec: str = "g", *, scale: float = 1.0, suffix: str = "") -> str:
    """``value * scale`` in the format ``spec`` (``".1f"``, ``"+.3f"``) followed by ``suffix``; ``-`` when missing."""
    return MISSING if is_missing(value) else format(value * scale, spec) + suffix
