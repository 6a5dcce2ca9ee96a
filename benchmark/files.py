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


def make_folder(folder: str | Path, for_path: str | Path | None = None) -> Path:
    """``folder``, created with its parents if missing; one clear line naming ``for_path`` (default: the folder)
    when it cannot be (e.g. it or a parent is a file). Writers of user-named paths call it before their work,
    so a bad path fails at once."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise write_error(for_path or folder, exc, blocked_at=folder) from None
    return folder


def write_error(path: str | Path, exc: OSError, blocked_at: str | Path | None = None) -> EnergybenchError:
    """The one-line error for ``exc`` raised while writing ``path``; names the folder on the way (a parent of
    ``path``, or ``blocked_at`` and its parents) that is a file, not a folder."""
    folder = Path(blocked_at) if blocked_at is not None else Path(path).parent
    blocker = next((p for p in [*reversed(folder.parents), folder] if p.exists() and not p.is_dir()), None)
    reason = f"{blocker} is a file, not a folder" if blocker else (exc.strerror or str(exc))
    return EnergybenchError(f"cannot write {path}: {reason}")
