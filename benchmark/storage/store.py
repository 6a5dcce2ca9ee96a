"""The run store: an SQLite database of runs, per-epoch and final metrics, plus a folder per run.

Layout under the store home (``--store``, ``$ENERGYBENCH_HOME`` or ``~/.local/share/energybench``):
``store.sqlite`` and ``runs/<run_id>/`` holding ``config.json``, ``metrics.jsonl``, ``best.pt``,
``last.pt`` and ``state.pt`` (everything needed to resume). A ``generative`` table holds the results
of sampling stored models (``energybench sample``); a ``points`` table holds, per final accuracy,
which test points were classified correctly (for paired tests). The database uses WAL mode and a busy
timeout, so several processes may write to it at once. Numbers are stored rounded to ``SIGNIFICANT_DIGITS``
(``stored_value``), and results written under an earlier version's names are read under today's
(``energybench.storage.migrations``).
"""

from __future__ import annotations

import base64
import json
import math
import os
import secrets
import sqlite3
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from energybench.errors import EnergybenchError
from energybench.storage.migrations import current_config, current_key

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: runs are not locked
    fcntl = None

SCHEMA_VERSION = 1
#: Significant digits of stored numbers: float32's precision (about 7.2 digits), so a float32 accuracy or energy
#: is stored as 0.6, not as the double 0.6000000238418579 nearest to its float32 value.
SIGNIFICANT_DIGITS = 7


def stored_value(value: Any) -> Any:
    """``value`` as the store keeps it: floats rounded to ``SIGNIFICANT_DIGITS`` significant digits (NaN and
    infinities kept), anything else unchanged."""
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.{SIGNIFICANT_DIGITS}g}")
    return value

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY, created REAL NOT NULL, status TEXT NOT NULL, track TEXT, suite TEXT,
    trainer TEXT NOT NULL, regularizer TEXT NOT NULL, dataset TEXT NOT NULL, model TEXT NOT NULL,
    eps REAL NOT NULL, norm TEXT NOT NULL, seed INTEGER NOT NULL, config_hash TEXT NOT NULL,
    config TEXT NOT NULL, epochs_done INTEGER NOT NULL DEFAULT 0, wall_time REAL, error TEXT);
CREATE INDEX IF NOT EXISTS runs_hash ON runs (config_hash);
CREATE TABLE IF NOT EXISTS epochs (
    run_id TEXT NOT NULL REFERENCES runs(id), epoch INTEGER NOT NULL, metrics TEXT NOT NULL,
    PRIMARY KEY (run_id, epoch));
CREATE TABLE IF NOT EXISTS results (
    run_id TEXT NOT NULL REFERENCES runs(id), checkpoint TEXT NOT NULL, metric TEXT NOT NULL, value REAL,
    PRIMARY KEY (run_id, checkpoint, metric));
CREATE TABLE IF NOT EXISTS points (
    run_id TEXT NOT NULL REFERENCES runs(id), checkpoint TEXT NOT NULL, metric TEXT NOT NULL, n INTEGER NOT NULL,
    correct BLOB NOT NULL, PRIMARY KEY (run_id, checkpoint, metric));
CREATE TABLE IF NOT EXISTS generative (
    id TEXT PRIMARY KEY, created REAL NOT NULL, model_ref TEXT NOT NULL, checkpoint TEXT, dataset TEXT NOT NULL,
    model TEXT NOT NULL, sampler TEXT NOT NULL, params TEXT NOT NULL, seed INTEGER NOT NULL, n INTEGER NOT NULL,
    metrics TEXT NOT NULL, steps_mean REAL NOT NULL, wall_time REAL NOT NULL, out_dir TEXT);
"""


def default_home() -> Path:
    if os.environ.get("ENERGYBENCH_HOME"):
        return Path(os.environ["ENERGYBENCH_HOME"]).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "energybench"


@dataclass
class RunRecord:
    """One row of the runs table, with its config decoded."""

    id: str
    created: float
    status: str
    track: str | None
    suite: str | None
    trainer: str
    regularizer: str
    dataset: str
    model: str
    eps: float
    norm: str
    seed: int
    config_hash: str
    config: dict[str, Any]
    epochs_done: int
    wall_time: float | None
    error: str | None


class Store:
    """Runs, their per-epoch metrics and final results, in SQLite, with one folder per run."""

    def __init__(self, home: str | Path | None = None, *, readonly: bool = False):
        """Open (or create) the store at ``home``. ``readonly`` opens it for reading only: nothing is created or
        written, so a store on a read-only folder or mount can be read (a missing one reads as empty).

        A database that is missing or empty while run folders exist is refused, never re-initialised: it
        must be rebuilt from them (``energybench store repair``)."""
        self.home = Path(home).expanduser() if home else default_home()
        self.db_path = self.home / "store.sqlite"
        try:
            if readonly:
                self._db = self._open_readonly()
            else:
                (self.home / "runs").mkdir(parents=True, exist_ok=True)
                probe = self.home / f".write-test-{os.getpid()}"
                probe.write_bytes(b"")
                probe.unlink()
                self._db = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA busy_timeout = 30000")
            version = self._schema_version()
            if version is None:
                self._refuse_orphaned_runs()
            if readonly and version is None:  # nothing stored yet: read as an empty store
                self._db.close()
                self._db = sqlite3.connect(":memory:", isolation_level=None)
                self._db.row_factory = sqlite3.Row
            if not readonly:
                self._db.execute("PRAGMA journal_mode = WAL")
            if version is None or (version <= SCHEMA_VERSION and not readonly):  # older stores gain new tables
                self._db.executescript(_SCHEMA)
                self._db.execute("INSERT OR IGNORE INTO meta VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
        except OSError as exc:
            raise EnergybenchError(f"store {self.home} is not writable: {exc.strerror or exc}") from None
        except sqlite3.DatabaseError as exc:
            raise EnergybenchError(f"store {self.db_path} is not a usable SQLite database: {exc}; if its run "
                                   f"folders are intact, rebuild it with `energybench store repair --store "
                                   f"{self.home}`") from None
        version = self._schema_version()
        if version is not None and version > SCHEMA_VERSION:
            raise EnergybenchError(f"store {self.db_path} has schema version {version}, newer than this "
                                   f"energybench understands ({SCHEMA_VERSION}); upgrade energybench")

    def _schema_version(self) -> int | None:
        try:
            row = self._db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
        except sqlite3.OperationalError:
            return None
        return int(row[0]) if row else None

    def _open_readonly(self) -> sqlite3.Connection:
        """The database opened for reading; on a folder it cannot write (where SQLite cannot share the
        write-ahead log), as an immutable file."""
        if not self.db_path.is_file():
            return sqlite3.connect(":memory:", isolation_level=None)
        uri = "file:" + urllib.parse.quote(str(self.db_path.resolve()))
        db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30.0, isolation_level=None)
        try:
            db.execute("SELECT count(*) FROM sqlite_master").fetchone()
            return db
        except sqlite3.OperationalError:
            db.close()
            return sqlite3.connect(f"{uri}?immutable=1", uri=True, isolation_level=None)

    def _refuse_orphaned_runs(self) -> None:
        """Refuse a database with no tables (missing or empty) beside run folders: opening it would hide them."""
        folders = list((self.home / "runs").glob("*/config.json"))
        if folders:
            self._db.close()
            raise EnergybenchError(f"store {self.db_path} is missing or empty, but {self.home / 'runs'} holds "
                                   f"{len(folders)} run folders: rebuild the database from them with "
                                   f"`energybench store repair --store {self.home}`")

    def _failure(self, exc: sqlite3.DatabaseError) -> Exception:
        """The one-line error for a database error: a damaged file says how to rebuild it."""
        if type(exc) is sqlite3.DatabaseError:  # SQLITE_CORRUPT, SQLITE_NOTADB
            return self._damaged(str(exc))
        if isinstance(exc, sqlite3.OperationalError):  # locked, full disk, read-only, I/O error
            return EnergybenchError(f"store {self.db_path}: {exc}")
        return exc

    def _damaged(self, detail: str) -> EnergybenchError:
        return EnergybenchError(f"store {self.db_path} is damaged ({detail}); its run folders hold every run: "
                                f"rebuild the database from them with `energybench store repair --store {self.home}`")

    def _rows(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """Every row of a query; database errors as one line (``_failure``)."""
        try:
            return self._db.execute(sql, args).fetchall()
        except sqlite3.DatabaseError as exc:
            raise self._failure(exc) from None

    def check_integrity(self) -> None:
        """Refuse a damaged database (SQLite's ``PRAGMA quick_check``), naming it and how to rebuild it."""
        problems = [row[0] for row in self._rows("PRAGMA quick_check")]
        if problems != ["ok"]:
            raise self._damaged(problems[0])

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        try:
            for attempt in range(50):
                try:
                    self._db.execute("BEGIN IMMEDIATE")
                    break
                except sqlite3.OperationalError as exc:
                    if "locked" not in str(exc) or attempt == 49:
                        raise
                    time.sleep(0.05 * (attempt + 1))
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.DatabaseError as exc:
            raise self._failure(exc) from None

    def close(self) -> None:
        self._db.close()

    # ----- runs -----------------------------------------------------------------------------

    def run_dir(self, run_id: str) -> Path:
        return self.home / "runs" / run_id

    def claim(self, run_id: str) -> RunClaim:
        """Hold run ``run_id`` for this process until ``release()``; refused while another process holds it.

        The hold is an OS lock (``flock``) on ``runs/<id>/.lock`` that ends with its process, however
        that ends: a run left in status 'running' that nobody holds was killed and may be resumed.
        """
        return RunClaim(self.run_dir(run_id) / ".lock", run_id)

    def new_run_id(self) -> str:
        """A fresh run id that no stored run has (``create_run`` may store a run under it)."""
        with self._tx() as db:
            for _ in range(10):
                run_id = new_id()
                if db.execute("SELECT 1 FROM runs WHERE id = ?", (run_id,)).fetchone() is None:
                    return run_id
        raise EnergybenchError("no free run id after 10 draws; try again in a minute")

    def create_run(self, config: dict[str, Any], config_hash: str, suite: str | None = None, *,
                   run_id: str | None = None) -> str:
        """Insert a new run in status 'running' and create its folder; return its id (``run_id``: one drawn by
        ``new_run_id``, else a fresh one)."""
        for attempt in range(10):
            drawn = run_id or new_id()
            try:
                with self._tx() as db:
                    _insert_run(db, drawn, time.time(), "running", config, config_hash, suite)
                break
            except sqlite3.IntegrityError:  # the id is taken (another run in the same minute): draw again
                if attempt == 9 or run_id is not None:
                    raise
        run_id = drawn
        self.run_dir(run_id).mkdir(parents=True, exist_ok=True)
        _write_text(self.run_dir(run_id) / "config.json", json.dumps(config, indent=2, sort_keys=True))
        self._write_record(run_id)
        return run_id

    def set_status(self, run_id: str, status: str, *, error: str | None = None, wall_time: float | None = None) -> None:
        with self._tx() as db:
            db.execute("UPDATE runs SET status = ?, error = ?, wall_time = COALESCE(?, wall_time) WHERE id = ?",
                       (status, error, wall_time, run_id))
        self._write_record(run_id)

    def _write_record(self, run_id: str) -> None:
        """``runs/<id>/record.json``: the run's row (config aside), final results and per-point correctness.
        With ``config.json`` and ``metrics.jsonl`` the folder holds all the database knows of the run."""
        (row,) = self._rows("SELECT * FROM runs WHERE id = ?", (run_id,))
        record = {k: row[k] for k in row.keys() if k not in ("config", "epochs_done")}
        record["results"] = self.results(run_id)
        record["points"] = {}
        for checkpoint, metric, n, blob in self._rows(
                "SELECT checkpoint, metric, n, correct FROM points WHERE run_id = ?", (run_id,)):
            record["points"].setdefault(checkpoint, {})[metric] = {"n": n, "packed": base64.b64encode(blob).decode()}
        _write_text(self.run_dir(run_id) / "record.json", json.dumps(record, indent=2, sort_keys=True))

    def restore_run(self, record: dict[str, Any], config: dict[str, Any], epochs: list[dict[str, Any]]) -> None:
        """Insert a run read back from its folder (``record.json`` as ``_write_record`` writes it, the
        config and the epochs' metrics), for ``energybench store repair``; no file is written."""
        with self._tx() as db:
            _insert_run(db, record["id"], record["created"], record["status"], config, record["config_hash"],
                        record.get("suite"))
            db.execute("UPDATE runs SET epochs_done = ?, wall_time = ?, error = ? WHERE id = ?",
                       (max((e["epoch"] + 1 for e in epochs), default=0), record.get("wall_time"),
                        record.get("error"), record["id"]))
            db.executemany("INSERT INTO epochs VALUES (?, ?, ?)",
                           [(record["id"], e["epoch"], json.dumps(e, sort_keys=True)) for e in epochs])
            db.executemany("INSERT INTO results VALUES (?, ?, ?, ?)",
                           [(record["id"], checkpoint, k, v)
                            for checkpoint, metrics in record.get("results", {}).items() for k, v in metrics.items()])
            db.executemany("INSERT INTO points VALUES (?, ?, ?, ?, ?)",
                           [(record["id"], checkpoint, metric, p["n"], base64.b64decode(p["packed"]))
                            for checkpoint, by_metric in record.get("points", {}).items()
                            for metric, p in by_metric.items()])

    def add_epoch(self, run_id: str, epoch: int, metrics: dict[str, Any]) -> None:
        """Record one epoch's metrics (idempotent: a resumed run may record an epoch again)."""
        line = json.dumps({"epoch": epoch, **{k: stored_value(v) for k, v in metrics.items()}}, sort_keys=True)
        path = self.run_dir(run_id) / "metrics.jsonl"
        with self._tx() as db:
            (last,) = db.execute("SELECT MAX(epoch) FROM epochs WHERE run_id = ?", (run_id,)).fetchone()
            db.execute("INSERT OR REPLACE INTO epochs VALUES (?, ?, ?)", (run_id, epoch, line))
            db.execute("UPDATE runs SET epochs_done = MAX(epochs_done, ?) WHERE id = ?", (epoch + 1, run_id))
            if last is not None and last == epoch - 1 and path.is_file():  # the next epoch: one line more
                with open(path, "a", encoding="utf-8") as f:
                    f.write(f"{line}\n")
                return
            lines = [row[0] for row in db.execute("SELECT metrics FROM epochs WHERE run_id = ? ORDER BY epoch",
                                                  (run_id,))]
        _write_text(path, "".join(f"{line}\n" for line in lines))  # the first epoch, or one recorded again

    def add_results(self, run_id: str, checkpoint: str, metrics: dict[str, float]) -> None:
        with self._tx() as db:
            db.executemany("INSERT OR REPLACE INTO results VALUES (?, ?, ?, ?)",
                           [(run_id, checkpoint, k, stored_value(v)) for k, v in metrics.items()])

    def add_points(self, run_id: str, checkpoint: str, correct: dict[str, Any]) -> None:
        """Record which evaluated points each accuracy counted as correct (bool vectors over the first n
        points of the split, e.g. ``test_pgd``, ``aa``), packed 8 points a byte."""
        rows = [(run_id, checkpoint, metric, *pack_points(vector)) for metric, vector in correct.items()]
        with self._tx() as db:
            db.executemany("INSERT OR REPLACE INTO points VALUES (?, ?, ?, ?, ?)", rows)

    def points(self, run_id: str) -> dict[str, dict[str, np.ndarray]]:
        """Per-point correctness by checkpoint and metric (empty for runs stored before it was recorded)."""
        out: dict[str, dict[str, np.ndarray]] = {}
        for checkpoint, metric, n, blob in self._rows(
                "SELECT checkpoint, metric, n, correct FROM points WHERE run_id = ?", (run_id,)):
            out.setdefault(checkpoint, {})[current_key(metric)] = unpack_points(n, blob)
        return out

    def get_run(self, run_id: str) -> RunRecord:
        rows = self._rows("SELECT * FROM runs WHERE id = ?", (run_id,))
        if not rows:
            from energybench.errors import unknown_name

            recent = [r[0] for r in self._rows("SELECT id FROM runs ORDER BY created DESC LIMIT 50")]
            raise unknown_name("run", run_id, recent)
        return _record(rows[0])

    def runs(self, *, status: str | None = "done", **filters: Any) -> list[RunRecord]:
        """Runs matching column filters (None values ignored), oldest first."""
        clauses, args = [], []
        if status is not None:
            clauses.append("status = ?")
            args.append(status)
        for column, value in filters.items():
            if value is None:
                continue
            if column == "eps":
                clauses.append("ABS(eps - ?) < 1e-9")
            elif column in {"track", "suite", "trainer", "regularizer", "dataset", "model", "config_hash", "norm"}:
                clauses.append(f"{column} = ?")
            else:
                raise ValueError(f"cannot filter runs by {column!r}")
            args.append(value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return [_record(r) for r in self._rows(f"SELECT * FROM runs {where} ORDER BY created", args)]

    def epochs(self, run_id: str) -> list[dict[str, Any]]:
        rows = self._rows("SELECT metrics FROM epochs WHERE run_id = ? ORDER BY epoch", (run_id,))
        return [json.loads(r[0]) for r in rows]

    def results(self, run_id: str) -> dict[str, dict[str, float]]:
        """Final metrics by checkpoint: ``{"best": {...}, "last": {...}}``, under today's result keys."""
        out: dict[str, dict[str, float]] = {}
        for row in self._rows("SELECT checkpoint, metric, value FROM results WHERE run_id = ?", (run_id,)):
            out.setdefault(row[0], {})[current_key(row[1])] = row[2]
        return out


    # ----- generative results -----------------------------------------------------------------

    def add_generative(self, record: GenerativeRecord) -> None:
        """Store one sampler's result on one model (``record.id`` from ``new_id()``)."""
        data = asdict(record) | {"params": json.dumps(record.params, sort_keys=True),
                                 "metrics": json.dumps(record.metrics, sort_keys=True)}
        with self._tx() as db:
            db.execute(f"INSERT INTO generative ({', '.join(data)}) VALUES ({', '.join('?' * len(data))})",
                       tuple(data.values()))

    def generative(self, *, dataset: str | None = None, model: str | None = None) -> list[GenerativeRecord]:
        """Stored generative results, oldest first, optionally for one dataset and/or architecture."""
        clauses = [(c, v) for c, v in (("dataset", dataset), ("model", model)) if v is not None]
        where = f"WHERE {' AND '.join(f'{c} = ?' for c, _ in clauses)}" if clauses else ""
        rows = self._rows(f"SELECT * FROM generative {where} ORDER BY created", [v for _, v in clauses])
        return [GenerativeRecord(**(dict(r) | {"params": json.loads(r["params"]), "metrics": json.loads(r["metrics"])}))
                for r in rows]


def pack_points(correct: Any) -> tuple[int, bytes]:
    """A per-point correctness vector as its length and its bits packed 8 a byte (``unpack_points``)."""
    bits = np.asarray(correct, dtype=bool).ravel()
    return len(bits), np.packbits(bits).tobytes()


def unpack_points(n: int, packed: bytes) -> np.ndarray:
    """The bool vector of ``n`` points that ``pack_points`` packed."""
    return np.unpackbits(np.frombuffer(packed, dtype=np.uint8), count=n).astype(bool)


def _write_text(path: Path, text: str) -> None:
    from energybench.storage.checkpoint import atomic_write  # imports torch: only when a run is written

    atomic_write(path, text.encode())


class RunInUse(EnergybenchError):
    """The run is held by another live process (``Store.claim``)."""


class RunClaim:
    """An exclusive lock on a run's ``.lock`` file, holding the owner's pid (Unix; a no-op elsewhere)."""

    def __init__(self, path: Path, run_id: str):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(path, "a+")
        if fcntl is None:
            return
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._file.seek(0)
            holder = self._file.read().strip() or "?"
            self._file.close()
            raise RunInUse(f"run {run_id} is in use by another process (pid {holder}); wait for it "
                           "to finish or stop it first") from None
        self._file.truncate(0)
        self._file.write(str(os.getpid()))
        self._file.flush()

    def release(self) -> None:
        self._file.close()


def new_id() -> str:
    """A fresh id for a run or a generative result: creation minute plus a random suffix."""
    return f"{time.strftime('%y%m%d-%H%M')}-{secrets.token_hex(2)}"


@dataclass
class GenerativeRecord:
    """One row of the generative table: a sampler's samples of one model and their metrics.

    ``model_ref`` is a run id (with its ``checkpoint``, best or last) or a checkpoint path;
    ``metrics`` holds labelled keys such as ``FID[fmnist-cnn]``; ``steps_mean`` is the mean number
    of update steps per sample and ``wall_time`` the sampling time in seconds (metrics excluded).
    """

    id: str
    created: float
    model_ref: str
    checkpoint: str | None
    dataset: str
    model: str
    sampler: str
    params: dict[str, Any]
    seed: int
    n: int
    metrics: dict[str, float]
    steps_mean: float
    wall_time: float
    out_dir: str | None


def _insert_run(db: sqlite3.Connection, run_id: str, created: float, status: str, config: dict[str, Any],
                config_hash: str, suite: str | None) -> None:
    db.execute("INSERT INTO runs (id, created, status, track, suite, trainer, regularizer, dataset, model, eps, norm, "
               "seed, config_hash, config) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
               (run_id, created, status, config.get("track"), suite, config["trainer"], config["regularizer"],
                config["dataset"], config["model"], config["eps"], config["norm"], config["seed"], config_hash,
                json.dumps(config, sort_keys=True)))


def _record(row: sqlite3.Row) -> RunRecord:
    data = dict(row)
    data["config"] = current_config(json.loads(data["config"]))
    return RunRecord(**data)
