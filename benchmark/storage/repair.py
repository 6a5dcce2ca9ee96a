"""`energybench store repair`: rebuild a store's database from its run folders.

Every run folder holds what the database knows of its run: ``config.json`` (the settings),
``metrics.jsonl`` (every completed epoch) and ``record.json`` (status, timings, final results and
per-point correctness). Generative results are rebuilt from the ``<sampler>.json`` files under
``STORE/generative/``. The database is rebuilt in a scratch folder and moved into place in one
step; the damaged file is kept beside it as ``store.sqlite.damaged-<time>``.

A run folder written before ``record.json`` existed comes back without its test results: as
``interrupted`` when it holds the state to resume from (``energybench run --resume`` evaluates its
checkpoints again), else as ``failed`` (an evaluated model: evaluate it again).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from energybench.config import RunConfig
from energybench.errors import EnergybenchError
from energybench.files import read_text
from energybench.storage.store import GenerativeRecord, RunClaim, Store, default_home


@dataclass
class Repair:
    """What ``repair_store`` did: ``problem`` (None: the database was sound and left alone), the runs
    restored, those without results, the folders skipped and where the damaged file went."""

    home: Path
    problem: str | None
    runs: int = 0
    without_results: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    generative: int = 0
    kept_as: Path | None = None

    def summary(self) -> str:
        """What happened, in a few lines."""
        db = self.home / "store.sqlite"
        if self.problem is None:
            return f"store {db} passes SQLite's integrity check: nothing to repair"
        lines = [f"store {db} was {self.problem}; rebuilt from {self.runs} run folders and {self.generative} "
                 "generative results" + (f" (the old file is kept as {self.kept_as.name})" if self.kept_as else "")]
        if self.without_results:
            lines.append(f"{len(self.without_results)} runs came back without their test results (their folders "
                         f"predate record.json): {', '.join(self.without_results)}; `energybench run --resume ID` "
                         "evaluates a trained run again, `energybench eval` an evaluated model")
        if self.skipped:
            lines.append(f"skipped (unreadable): {'; '.join(self.skipped)}")
        return "\n".join(lines)


def database_problem(path: Path) -> str | None:
    """How the database at ``path`` is unusable (missing, empty, damaged), or None when it is sound."""
    if not path.is_file() or path.stat().st_size == 0:
        return "missing or empty"
    try:
        db = sqlite3.connect(path)
        try:
            checks = [row[0] for row in db.execute("PRAGMA quick_check")]
            tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        finally:
            db.close()
    except sqlite3.DatabaseError as exc:
        return f"damaged ({exc})"
    if checks != ["ok"]:
        return f"damaged ({checks[0]})"
    return None if "runs" in tables else "without its tables"


def _folder_record(folder: Path, config: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """The run's ``record.json``, or one made up for a folder written before it existed; and whether the
    record holds the run's results."""
    if (folder / "record.json").is_file():
        return json.loads(read_text(folder / "record.json", "run record")), True
    resumable = (folder / "state.pt").is_file()
    error = ("recovered by `energybench store repair` without its test results: "
             + (f"`energybench run --resume {folder.name}` evaluates it" if resumable else "evaluate the model again"))
    return {"id": folder.name, "created": (folder / "config.json").stat().st_mtime, "suite": None,
            "status": "interrupted" if resumable else "failed", "error": error, "wall_time": None,
            "config_hash": RunConfig(**config).config_hash()}, False


def _epochs(folder: Path) -> list[dict[str, Any]]:
    path = folder / "metrics.jsonl"
    return [json.loads(line) for line in read_text(path, "metrics").splitlines() if line] if path.is_file() else []


def repair_store(home: str | Path | None = None) -> Repair:
    """Rebuild the database of the store at ``home`` from its folders when it is missing, empty or damaged
    (``database_problem``); a sound database is left alone. Refused while a run of the store is in use."""
    home = Path(home).expanduser() if home else default_home()
    db_path = home / "store.sqlite"
    report = Repair(home, database_problem(db_path))
    if report.problem is None:
        return report
    folders = sorted(p.parent for p in (home / "runs").glob("*/config.json"))
    for folder in folders:  # a running process would go on writing to the database moved aside
        RunClaim(folder / ".lock", folder.name).release()
    scratch = home / f".repair-{os.getpid()}"
    shutil.rmtree(scratch, ignore_errors=True)
    store = Store(scratch)
    try:
        for folder in folders:
            try:
                config = json.loads(read_text(folder / "config.json", "run config"))
                record, complete = _folder_record(folder, config)
                store.restore_run(record | {"id": folder.name}, config, _epochs(folder))
            except (EnergybenchError, ValueError, KeyError, ValidationError, sqlite3.DatabaseError) as exc:
                report.skipped.append(f"{folder.name}: {exc}")
                continue
            report.runs += 1
            if not complete:
                report.without_results.append(folder.name)
        names = {f.name for f in dataclasses.fields(GenerativeRecord)}
        for path in sorted((home / "generative").glob("*/*.json")):
            try:
                summary = json.loads(read_text(path, "generative result"))
                store.add_generative(GenerativeRecord(**{k: summary[k] for k in names}))
            except (EnergybenchError, ValueError, KeyError, TypeError) as exc:
                report.skipped.append(f"{path.relative_to(home)}: {exc}")
                continue
            report.generative += 1
    finally:
        store.close()
    if db_path.exists():
        report.kept_as = home / f"store.sqlite.damaged-{time.strftime('%Y%m%d-%H%M%S')}"
        for suffix in ("", "-wal", "-shm"):
            if Path(f"{db_path}{suffix}").exists():
                os.replace(f"{db_path}{suffix}", f"{report.kept_as}{suffix}")
    os.replace(scratch / "store.sqlite", db_path)
    shutil.rmtree(scratch)
    return report
