"""Errors that the CLI turns into one clear line on stderr and exit code 2."""

from __future__ import annotations

import difflib


class EnergybenchError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a long job, carrying the command that picks the work up again."""

    def __init__(self, resume_command: str):
        super().__init__(resume_command)
        self.resume_command = resume_command


class Diverged(EnergybenchError):
    """Training produced a non-finite loss: an outcome of the method in this setting, stored as 'diverged' and
    not retried (a re-run would diverge again)."""


class PluginError(EnergybenchError):
    """A plugin could not be found, imported or validated, or failed at run time."""


def unknown_name(kind: str, name: str, known: list[str]) -> EnergybenchError:
    """An error for an unknown `name` of `kind`, with a did-you-mean suggestion."""
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    choices = ", ".join(sorted(known)) or "none registered"
    return EnergybenchError(f"unknown {kind} {name!r}{hint} (known: {choices})")
