"""Jinja2 templates of the reporting formats (HTML leaderboards and report, markdown leaderboards)."""

from __future__ import annotations

import functools
import html
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup

TEMPLATES = Path(__file__).parent / "templates"


def _markdown_cell(text: Any) -> str:
    """A value fit for a markdown table cell: pipes escaped, one line."""
    return str(text).replace("|", "\\|").replace("\n", " ")


def _html_text(text: Any) -> Markup:
    """``text`` escaped for an element's content, quotes left readable (a JSON block stays greppable)."""
    return Markup(html.escape(str(text), quote=False))


@functools.cache
def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]),
                      undefined=StrictUndefined, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    env.filters["md"] = _markdown_cell
    env.filters["text"] = _html_text
    env.globals["zip"] = zip
    return env


def render(name: str, **context: Any) -> str:
    """Template ``name`` of reporting/templates rendered with ``context`` (HTML templates autoescape)."""
    return _environment().get_template(name).render(**context)
