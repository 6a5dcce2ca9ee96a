"""Files a user names or hands over: read as UTF-8 text, and OS errors on them, as one clear line."""

from __future__ import annotations

from pathlib import Path

from energybench.errors import EnergybenchError


def read_text(path: str | Path, what: str) -> str:
    """The UTF-8 text of ``path`` (``what`` it is, e.g. "config file"); a missing, unreadable or binary
    file raises one line naming it."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise EnergybenchError(f"cannot read {what} {path}: it is not UTF-8 text (byte {exc.object[exc.start]:#04x} "
                               f"at offset {exc.start})") from None
    except OSError as exc:
        raise EnergybenchError(f"cannot read {what} {path}: {exc.strerror or exc}") from None


def write_error(path: str | Path, exc: OSError) -> EnergybenchError:
    """The one-line error for ``exc`` raised while writing ``path``; names a parent that is a file, not a folder."""
    blocker = next((p for p in reversed(Path(path).parents) if p.exists() and not p.is_dir()), None)
    reason = f"{blocker} is a file, not a folder" if blocker else (exc.strerror or str(exc))
    return EnergybenchError(f"cannot write {path}: {reason}")
