"""Checkpoint files: atomic writes, a SHA-256 sidecar, and loading with ``weights_only=True``."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tempfile
import warnings
from pathlib import Path
from typing import Any

import torch

from energybench.errors import EnergybenchError
from energybench.files import write_error


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and rename: never a half-written file.

    Any OS error (a parent that is a file, no permission, a full disk) raises one line naming ``path``.
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except OSError as exc:
        raise write_error(path, exc) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise write_error(path, exc) from None
        raise
    if hasattr(os, "O_DIRECTORY"):  # make the rename itself durable (POSIX)
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def save_checkpoint(path: str | Path, obj: Any) -> str:
    """Save ``obj`` (tensors, dicts, numbers) atomically, with ``path.sha256`` beside it; return the hash.

    The sidecar lists the hashes a valid ``path`` may have: first the new one plus the old ones,
    then, once ``path`` is replaced, the new one only. A process killed at any moment thus leaves
    a checkpoint whose hash is listed, while any corruption of the file is still detected. A write
    that fails (a full disk) leaves no sidecar of a checkpoint that does not exist.
    """
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()
    sidecar = path.with_name(path.name + ".sha256")
    previous = []
    if path.is_file():
        previous = (_hashes(sidecar) if sidecar.is_file() else [hashlib.sha256(path.read_bytes()).hexdigest()])
    atomic_write(sidecar, "\n".join([digest, *previous]).encode())
    try:
        atomic_write(path, data)
    except BaseException:
        if not previous:
            sidecar.unlink(missing_ok=True)
        raise
    atomic_write(sidecar, digest.encode())
    return digest


def _hashes(sidecar: Path) -> list[str]:
    """The hashes a sidecar lists (a damaged, non-text sidecar lists none that match)."""
    return sidecar.read_text(encoding="utf-8", errors="replace").split()


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    """Load a checkpoint safely: verify its hash when a sidecar exists, and never run pickled code."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise EnergybenchError(f"cannot read checkpoint {path}: {exc.strerror or exc}") from None
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.is_file() and hashlib.sha256(data).hexdigest() not in _hashes(sidecar):
        raise EnergybenchError(f"checkpoint {path} is corrupted: its SHA-256 does not match {sidecar.name}")
    try:
        with warnings.catch_warnings():  # e.g. about pickle protocols: the outcome is reported below
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        modules = pickled_modules(data)
        if modules:
            raise EnergybenchError(
                f"refusing {path}: it holds a whole pickled model ({', '.join(modules[:3])}: what torch.save(model) "
                "writes), and unpickling it could run any code; save what energybench can load instead: the weights, "
                "torch.save(model.state_dict(), 'weights.pt'), with a registered architecture (--arch, see "
                "`energybench plugins --kind model`), or a TorchScript file (torch.jit.save(torch.jit.script(model), "
                "'model.ts')), or pass the module itself to energybench.evaluate(model, dataset=...) in Python"
            ) from None
        boilerplate = ("Weights only load failed", "Please file an issue", "Check the documentation")
        reason = " ".join(line.strip() for line in str(exc).splitlines()
                          if line.strip() and not line.strip().startswith(boilerplate))
        raise EnergybenchError(f"refusing checkpoint {path}: it holds objects other than tensors and plain "
                               f"containers, which could run code ({reason[:160] or 'pickled objects'})") from None
    except Exception as exc:
        raise EnergybenchError(f"checkpoint {path} is not a readable PyTorch file "
                               f"({type(exc).__name__}: {str(exc)[:160]})") from None


def pickled_modules(data: bytes) -> list[str]:
    """The ``torch.nn`` module classes a ``torch.save`` file pickles (a whole model), read without unpickling it;
    empty for a state dict or a file that is not a ``torch.save`` archive."""
    from torch.serialization import get_unsafe_globals_in_checkpoint

    try:
        names = get_unsafe_globals_in_checkpoint(io.BytesIO(data))
    except Exception:  # not a torch.save zip archive: nothing to name
        return []
    return sorted(name for name in names if name.startswith("torch.nn.modules."))


def model_state(obj: Any) -> dict[str, torch.Tensor]:
    """The model state dict inside a loaded checkpoint: an energybench file or a bare state dict."""
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        obj = obj["model"]
    for key in ("state_dict", "model_state_dict"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise EnergybenchError("checkpoint holds no model state dict")
    return obj
