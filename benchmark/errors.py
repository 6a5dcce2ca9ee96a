"""Errors that the CLI turns into one clear line on stderr and exit code 2."""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping


class EnergybenchError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""


class ArgumentError(EnergybenchError):
    """Bad or missing input of API parameters (``parameters``), which the message names as the API does:
    ``dataset=``. A front end names them its own way (``naming``): the CLI says ``--dataset``."""

    def __init__(self, message: str, *parameters: str):
        super().__init__(message)
        self.parameters = parameters

    def naming(self, names: Mapping[str, str]) -> str:
        """The message with each ``parameter=`` that ``names`` knows written as ``names[parameter]`` (followed by a
        space where a value follows)."""
        message = str(self)
        for parameter in self.parameters:
            if parameter in names:
                message = re.sub(rf"(?<![\w.-]){re.escape(parameter)}=(?=(\S?))",
                                 lambda m, name=names[parameter]: name + (" " if m.group(1) not in ("", ")", ",", ";")
                                                                           else ""), message)
        return message


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
