"""The SQLite cache of tuning records: workloads, hardware targets and every measured trial.

One file, shared by concurrent tuning processes for hours, so it runs in WAL mode with a busy
timeout, commits each trial as soon as it is measured (a killed session loses nothing), and
carries a versioned schema that upgrades itself through named migrations. Values are JSON
text, never pickles, so any tool can read the file.

Example::

    with Database("cache/tuning.db") as db:
        db.commit_trial(record)
        best = db.best(workload.key, target_key)
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlite_utils

from .errors import DatabaseError
from .records import Status, TrialRecord

log = logging.getLogger(__name__)

DEFAULT_DB_ENV = "AUTOTUNE_DB"
BUSY_TIMEOUT_MS = 30_000

_TRIAL_JSON_COLUMNS = ("decisions", "trace", "latencies", "versions")
_SESSION_JSON_COLUMNS = ("tasks", "options")
# Both tuned lookups filter on (workload_key, target_key) first; see _m001_initial's indexes.
# Correct trials in ranking order: by ranking_latency (TrialRecord.ranked_latency): a trial's own median, or
# its latency on its tune's control scale (MeasureOptions.control), until finals re-rank it.
_OK_BY_LATENCY = "workload_key = ? AND target_key = ? AND status = 'ok' AND ranking_latency IS NOT NULL"


@dataclass(frozen=True)
class Check:
    """A re-measurement of a stored trial, as the checks table keeps it."""

    trial_id: int
    remeasured: TrialRecord
    ratio: float | None  # the re-measured latency over the trial's recorded one; None when it failed
    flagged: bool  # the trial becomes "unstable": kept, never best again
    ranking_latency: float | None = None  # finals: the trial's new ranking latency (None keeps it)


def default_database_path() -> Path:
    """Where the cache lives when the caller names none.

    $AUTOTUNE_DB wins; inside a source checkout (pyproject.toml and cache/ beside the package)
    it is <checkout>/cache/tuning.db so that tuning results stay with the project; otherwise
    ~/.cache/autotune/tuning.db.
    """
    env = os.environ.get(DEFAULT_DB_ENV)
    if env:
        return Path(env).expanduser()
    checkout = Path(__file__).resolve().parents[1]
    if (checkout / "pyproject.toml").is_file() and (checkout / "cache").is_dir():
        return checkout / "cache" / "tuning.db"
    return Path.home() / ".cache" / "autotune" / "tuning.db"


class Database:
    """The tuning-record cache in one SQLite file (or ":memory:" for tests).

    Use one Database per thread or process: the SQLite connection is not shared across
    threads, and separate connections coordinate through SQLite's own locking.
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path: Path | str = _resolve_path(path)
        self._db = _connect(self.path)
        try:
            _check_ours(self._db, self.path)
            _set_pragmas(self._db, self.path)
            _migrate(self._db, self.path)
        except sqlite3.Error as err:
            self._db.close()
            raise DatabaseError(f"cannot open the tuning database {self.path}: {err}") from err
        except BaseException:
            self._db.close()
            raise

    # -- writes ---------------------------------------------------------------------------

    def commit_workload(self, workload: Any) -> None:
        """Store (or refresh) a workload, so that records can be traced back to the program tuned."""
        row = {"key": workload.key, "name": workload.name, "script": workload.script, "flops": float(workload.flops)}
        row.update(args=_dumps([a.to_json() for a in workload.args]), mod_json=workload.mod_json,
                   created_at=time.time())
        self._db.table("workloads").upsert(row, pk="key")

    def commit_target(self, key: str, target_json: dict[str, Any], fingerprint: dict[str, Any]) -> None:
        """Store (or refresh) a hardware target: its canonical TVM target and device fingerprint."""
        row = {"key": key, "kind": str(target_json.get("kind", "")), "target": _dumps(target_json)}
        row.update(fingerprint=_dumps(fingerprint), created_at=time.time())
        self._db.table("targets").upsert(row, pk="key")

    def commit_trial(self, record: TrialRecord) -> int:
        """Insert one trial and commit it before returning; returns its row id.

        The record's own `id` is ignored: every call adds a new row. With WAL and
        synchronous=NORMAL a committed row survives a killed process; only a power loss
        can drop the last few commits.
        """
        table = self._db.table("trials")
        table.insert(_trial_row(record))
        if table.last_rowid is None:  # cannot happen with a rowid table; guards the int() below
            raise DatabaseError(f"{self.path}: SQLite reported no row id for the inserted trial")
        return int(table.last_rowid)

    def merge_trials(
        self,
        records: Iterable[TrialRecord],
        workloads: Iterable[dict[str, Any]] = (),
        targets: Iterable[dict[str, Any]] = (),
    ) -> int:
        """Insert trials measured elsewhere, with their workload and target rows; returns how many trials were new.

        Trials whose `uid` is already here, and workloads/targets whose key is, are skipped, so
        merging the same log twice adds nothing; but a known trial takes the incoming ranking (its
        ranking latency, and "unstable" when it was flagged there), so that a log exported again
        after more tuning and finals ranks its trials here as it does where they were measured.
        One transaction: a merge is complete or absent. Workload and target rows are given as
        `workload_row`/`target_row` return them.
        """
        records = list(records)
        with self._db.conn:
            for row in workloads:
                self._db.table("workloads").insert(_encoded(row, ("args",)), pk="key", ignore=True)
            for row in targets:
                self._db.table("targets").insert(_encoded(row, ("target", "fingerprint")), pk="key", ignore=True)
            before = self._count("trials")
            self._db.table("trials").insert_all((_trial_row(r) for r in records), ignore=True, batch_size=500)
            self._db.conn.executemany(
                "UPDATE trials SET ranking_latency = ? WHERE uid = ? AND status = 'ok'",
                [(r.ranking_latency, r.uid) for r in records if r.status is Status.OK and r.ranking_latency is not None])
            self._db.conn.executemany(
                "UPDATE trials SET status = ? WHERE uid = ? AND status = 'ok'",
                [(Status.UNSTABLE.value, r.uid) for r in records if r.status is Status.UNSTABLE])
            return self._count("trials") - before

    def prune(self, keep: int) -> int:
        """Keep only the `keep` fastest correct trials per workload and target; returns how many were deleted.

        Failed trials go too, so a later session may measure a pruned candidate again.
        """
        if keep < 1:
            raise DatabaseError(f"prune must keep at least 1 trial per workload and target (got {keep})")
        with self._db.conn:
            before = self._count("trials")
            self._db.execute(
                """DELETE FROM trials WHERE id NOT IN (
                       SELECT id FROM (
                           SELECT id, row_number() OVER (
                               PARTITION BY workload_key, target_key ORDER BY ranking_latency, id) AS rank
                           FROM trials WHERE status = 'ok' AND ranking_latency IS NOT NULL)
                       WHERE rank <= ?)""",
                [int(keep)],
            )
            deleted = before - self._count("trials")
        if self.path != ":memory:":
            self._db.vacuum()
        return deleted

    # -- queries --------------------------------------------------------------------------

    def measured_candidate_keys(self, workload_key: str, target_key: str) -> set[str]:
        """Every candidate already measured here, whatever its status: none is measured twice."""
        rows = self._db.query(
            "SELECT DISTINCT candidate_key FROM trials WHERE workload_key = ? AND target_key = ?",
            [workload_key, target_key],
        )
        return {row["candidate_key"] for row in rows}

    def best(self, workload_key: str, target_key: str) -> TrialRecord | None:
        """The fastest correct trial of this workload on this target (by ranking latency), or None."""
        top = self.top_k(workload_key, target_key, 1)
        return top[0] if top else None

    def top_k(self, workload_key: str, target_key: str, k: int) -> list[TrialRecord]:
        """The k fastest correct trials, fastest first (ties: oldest first).

        "Fastest" is by ranking latency: a trial's own median, until finals timed it head to head
        with the other leaders (see tuner.TaskTuner.finals).
        """
        if k <= 0:
            return []
        rows = self._db.table("trials").rows_where(
            _OK_BY_LATENCY, [workload_key, target_key], order_by="ranking_latency, id", limit=int(k)
        )
        return [_trial_from_row(row) for row in list(rows)]

    def trials(self, workload_key: str | None = None, target_key: str | None = None) -> list[TrialRecord]:
        """All trials, optionally of one workload and/or target, in insertion order."""
        clauses, args = [], []
        for column, value in (("workload_key", workload_key), ("target_key", target_key)):
            if value is not None:
                clauses.append(f"{column} = ?")
                args.append(value)
        where = " AND ".join(clauses) or None
        rows = self._db.table("trials").rows_where(where, args, order_by="id")
        return [_trial_from_row(row) for row in list(rows)]

    def summary(self) -> list[dict[str, Any]]:
        """One row per (workload, target) pair: names, trial counts and the best's latency, for `cache ls`."""
        return list(self._db.query(
            """SELECT t.workload_key, w.name AS workload_name, t.target_key, g.kind AS target_kind,
                      count(*) AS trials, sum(t.status = 'ok') AS ok,
                      (SELECT b.latency_median FROM trials b
                       WHERE b.workload_key = t.workload_key AND b.target_key = t.target_key AND b.status = 'ok'
                             AND b.ranking_latency IS NOT NULL
                       ORDER BY b.ranking_latency, b.id LIMIT 1) AS best_latency
               FROM trials t LEFT JOIN workloads w ON w.key = t.workload_key
                             LEFT JOIN targets g ON g.key = t.target_key
               GROUP BY t.workload_key, t.target_key ORDER BY w.name, t.workload_key, t.target_key"""
        ))

    def stats(self) -> dict[str, Any]:
        """Counts for `cache stats`: workloads, targets, trials by status and origin, models, file size."""
        by_status = {r["status"]: r["n"] for r in self._db.query("SELECT status, count(*) AS n FROM trials GROUP BY status")}
        by_origin = {r["origin"]: r["n"] for r in self._db.query("SELECT origin, count(*) AS n FROM trials GROUP BY origin")}
        size = Path(self.path).stat().st_size if self.path != ":memory:" else 0
        return {"path": str(self.path), "schema": SCHEMA_VERSION, "bytes": size,
                "workloads": self._count("workloads"), "targets": self._count("targets"),
                "trials": sum(by_status.values()), "by_status": by_status, "by_origin": by_origin,
                "models": self._count("models")}

    def workload_row(self, key: str) -> dict[str, Any] | None:
        """The stored workload as a plain dict (args decoded), or None."""
        return self._row("workloads", key, ("args",))

    def target_row(self, key: str) -> dict[str, Any] | None:
        """The stored target as a plain dict (target and fingerprint decoded), or None."""
        return self._row("targets", key, ("target", "fingerprint"))

    def target_keys_with_records(self, workload_key: str) -> list[str]:
        """Targets holding correct trials of this workload, so a caller can say "tuned elsewhere"."""
        rows = self._db.query(
            "SELECT DISTINCT target_key FROM trials WHERE workload_key = ? AND status = 'ok' ORDER BY target_key",
            [workload_key],
        )
        return [row["target_key"] for row in rows]

    # -- re-measurements ------------------------------------------------------------------

    def commit_check(self, trial_id: int, remeasured: TrialRecord, ratio: float | None, flagged: bool) -> None:
        """Store a re-measurement of a trial; a flagged trial becomes "unstable" and is never best again."""
        self.commit_checks([Check(trial_id, remeasured, ratio, flagged)])

    def commit_checks(self, checks: Sequence[Check]) -> None:
        """Store re-measurements, with the flags and ranking latencies they set, in one transaction:
        finals re-rank their trials together or not at all."""
        with self._db.conn:
            for check in checks:
                again = check.remeasured
                self._db.table("checks").insert(
                    {"trial_id": check.trial_id, "status": again.status.value, "latency_median": again.latency,
                     "latencies": _dumps(list(again.latencies)), "ratio": check.ratio, "flagged": int(check.flagged),
                     "created_at": time.time()})
                if check.flagged:
                    self._db.execute("UPDATE trials SET status = ? WHERE id = ?", [Status.UNSTABLE.value, check.trial_id])
                if check.ranking_latency is not None:
                    self._db.execute("UPDATE trials SET ranking_latency = ? WHERE id = ?",
                                     [float(check.ranking_latency), check.trial_id])

    def checks(self, trial_id: int) -> list[dict[str, Any]]:
        """The re-measurements of a trial, oldest first."""
        rows = self._db.table("checks").rows_where("trial_id = ?", [trial_id], order_by="id")
        return [_decoded(r, ("latencies",)) for r in rows]

    # -- model-tuning sessions -------------------------------------------------------------

    def create_session(self, row: dict[str, Any]) -> int:
        """Store a new session (see session.py for its fields); returns its id."""
        now = time.time()
        data = {**_encoded(row, _SESSION_JSON_COLUMNS), "created_at": now, "updated_at": now}
        with self._db.conn:
            table = self._db.table("sessions")
            table.insert(data)
            return int(table.last_rowid or 0)

    def update_session(self, session_id: int, **changes: Any) -> None:
        """Change a session's status/elapsed/... and commit at once."""
        data = {**_encoded(changes, _SESSION_JSON_COLUMNS), "updated_at": time.time()}
        with self._db.conn:
            self._db.table("sessions").update(session_id, data)

    def session(self, session_id: int) -> dict[str, Any] | None:
        """A session as a dict (JSON columns decoded), or None."""
        rows = list(self._db.table("sessions").rows_where("id = ?", [session_id], limit=1))
        return _decoded(rows[0], _SESSION_JSON_COLUMNS) if rows else None

    def sessions(self) -> list[dict[str, Any]]:
        """Every session, newest first, without its stored model text."""
        rows = self._db.query(
            "SELECT id, name, status, target_key, tasks, options, trials_budget, time_budget, elapsed, created_at, "
            "updated_at FROM sessions ORDER BY id DESC"
        )
        return [_decoded(r, _SESSION_JSON_COLUMNS) for r in rows]

    def session_trial_counts(self, session_id: int) -> dict[str, int]:
        """How many trials this session committed, per workload key (what the budget has spent)."""
        rows = self._db.query(
            "SELECT workload_key, count(*) AS n FROM trials WHERE session_id = ? GROUP BY workload_key", [session_id]
        )
        return {r["workload_key"]: int(r["n"]) for r in rows}

    # -- cost models ----------------------------------------------------------------------

    def save_model(self, target_key: str, feature_version: int, n_records: int, model: bytes) -> None:
        """Store the cost model trained on this target's records (XGBoost's own JSON, not a pickle)."""
        row = {"target_key": target_key, "feature_version": feature_version, "n_records": n_records,
               "model": model, "created_at": time.time()}
        with self._db.conn:
            self._db.table("models").upsert(row, pk=("target_key", "feature_version"))

    def load_model(self, target_key: str, feature_version: int) -> tuple[bytes, int] | None:
        """The saved model for this target and feature version, with the record count it saw."""
        rows = list(self._db.query(
            "SELECT model, n_records FROM models WHERE target_key = ? AND feature_version = ?",
            [target_key, feature_version],
        ))
        return (bytes(rows[0]["model"]), int(rows[0]["n_records"])) if rows else None

    # -- cost-model features of past records ----------------------------------------------

    def cached_features(self, workload_key: str, target_key: str, feature_version: int) -> dict[str, bytes]:
        """Feature rows (float32 bytes) already computed for this workload's candidates, by candidate key."""
        rows = self._db.query(
            "SELECT candidate_key, features FROM features WHERE workload_key = ? AND target_key = ? "
            "AND feature_version = ?", [workload_key, target_key, feature_version],
        )
        return {r["candidate_key"]: bytes(r["features"]) for r in rows}

    def save_features(self, workload_key: str, target_key: str, feature_version: int, rows: dict[str, bytes]) -> None:
        """Keep feature rows so that the next warm start does not replay and analyse these candidates again."""
        if not rows:
            return
        with self._db.conn:
            self._db.table("features").upsert_all(
                [{"workload_key": workload_key, "target_key": target_key, "candidate_key": key,
                  "feature_version": feature_version, "features": blob} for key, blob in rows.items()],
                pk=("workload_key", "target_key", "candidate_key", "feature_version"),
            )

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> "Database":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Database({str(self.path)!r})"

    def _count(self, table: str) -> int:
        return int(self._db.execute(f"SELECT count(*) FROM [{table}]").fetchone()[0])

    def _row(self, table: str, key: str, json_columns: tuple[str, ...]) -> dict[str, Any] | None:
        rows = list(self._db.table(table).rows_where("key = ?", [key], limit=1))
        if not rows:
            return None
        return _decoded(rows[0], json_columns)


# ---------------------------------------------------------------------------------------------
# schema and migrations: each is applied once, in order, and recorded in _migrations.


def _m001_initial(db: sqlite_utils.Database) -> None:
    """Workloads, targets, trials, and the indexes that keep best/top_k/measured lookups off full scans."""
    db.table("workloads").create(
        {"key": str, "name": str, "script": str, "flops": float, "args": str, "created_at": float}, pk="key"
    )
    db.table("targets").create(
        {"key": str, "kind": str, "target": str, "fingerprint": str, "created_at": float}, pk="key"
    )
    # Raw DDL because sqlite-utils' create() has no public AUTOINCREMENT (ids never reused).
    db.execute(
        """CREATE TABLE trials (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            workload_key TEXT NOT NULL, target_key TEXT NOT NULL, candidate_key TEXT NOT NULL,
            decisions TEXT NOT NULL, trace TEXT, status TEXT NOT NULL,
            latency_median REAL, latency_std REAL, latencies TEXT NOT NULL,
            error TEXT NOT NULL DEFAULT '', build_secs REAL, versions TEXT NOT NULL, created_at REAL NOT NULL)"""
    )
    trials = db.table("trials")
    trials.create_index(["workload_key", "target_key", "status", "latency_median"], index_name="idx_trials_best")
    trials.create_index(["workload_key", "target_key", "candidate_key"], index_name="idx_trials_candidate")


def _m002_models(db: sqlite_utils.Database) -> None:
    """Cost models per hardware target, saved so that the next session starts with a trained one."""
    db.table("models").create(
        {"target_key": str, "feature_version": int, "n_records": int, "model": bytes, "created_at": float},
        pk=("target_key", "feature_version"),
    )


def _m003_trial_identity(db: sqlite_utils.Database) -> None:
    """A unique id per measurement and where it was made, so that merging logs is idempotent."""
    db.execute("ALTER TABLE trials ADD COLUMN uid TEXT")
    db.execute("ALTER TABLE trials ADD COLUMN origin TEXT NOT NULL DEFAULT ''")
    db.execute("UPDATE trials SET uid = lower(hex(randomblob(16))) WHERE uid IS NULL")
    db.execute("CREATE UNIQUE INDEX idx_trials_uid ON trials (uid)")


def _m004_sessions(db: sqlite_utils.Database) -> None:
    """Model-tuning sessions (tasks, budget, progress, status), and which session measured each trial."""
    db.execute(
        """CREATE TABLE sessions (
            id INTEGER PRIMARY KEY AUTOINCREMENT, name TEXT NOT NULL, status TEXT NOT NULL,
            target_key TEXT NOT NULL, model TEXT NOT NULL, tasks TEXT NOT NULL, options TEXT NOT NULL,
            trials_budget INTEGER, time_budget REAL, elapsed REAL NOT NULL DEFAULT 0,
            created_at REAL NOT NULL, updated_at REAL NOT NULL)"""
    )
    db.execute("ALTER TABLE trials ADD COLUMN session_id INTEGER")
    db.execute("CREATE INDEX idx_trials_session ON trials (session_id, workload_key)")


def _m005_checks(db: sqlite_utils.Database) -> None:
    """Re-measurements of best trials (measurement honesty): what the check measured and whether it flagged."""
    db.execute(
        """CREATE TABLE checks (
            id INTEGER PRIMARY KEY AUTOINCREMENT, trial_id INTEGER NOT NULL, status TEXT NOT NULL,
            latency_median REAL, latencies TEXT NOT NULL, ratio REAL, flagged INTEGER NOT NULL, created_at REAL NOT NULL)"""
    )
    db.execute("CREATE INDEX idx_checks_trial ON checks (trial_id)")


def _m006_workload_json(db: sqlite_utils.Database) -> None:
    """Workloads in TVM's JSON too: read back without parsing TVMScript, which evaluates Python."""
    db.execute("ALTER TABLE workloads ADD COLUMN mod_json TEXT")


def _m007_features(db: sqlite_utils.Database) -> None:
    """Cost-model features of measured candidates: a derived cache (recomputable from the trials'
    decisions) that spares each warm start replaying and analysing every past record, seconds per
    few hundred records."""
    db.table("features").create(
        {"workload_key": str, "target_key": str, "candidate_key": str, "feature_version": int, "features": bytes},
        pk=("workload_key", "target_key", "candidate_key", "feature_version"),
    )


def _m008_ranking_latency(db: sqlite_utils.Database) -> None:
    """The latency trials are ranked by: their own median until finals re-rank them head to head
    (tuner.TaskTuner.finals). Indexed as the best lookup reads it."""
    db.execute("ALTER TABLE trials ADD COLUMN ranking_latency REAL")
    db.execute("UPDATE trials SET ranking_latency = latency_median WHERE status = 'ok'")
    db.execute("DROP INDEX IF EXISTS idx_trials_best")
    db.table("trials").create_index(["workload_key", "target_key", "status", "ranking_latency"],
                                    index_name="idx_trials_rank")


_MIGRATIONS: tuple[Callable[[sqlite_utils.Database], None], ...] = (
    _m001_initial, _m002_models, _m003_trial_identity, _m004_sessions, _m005_checks, _m006_workload_json,
    _m007_features, _m008_ranking_latency,
)
SCHEMA_VERSION = len(_MIGRATIONS)


def _resolve_path(path: str | os.PathLike[str] | None) -> Path | str:
    if path is None:
        path = default_database_path()
    if os.fspath(path) == ":memory:":
        return ":memory:"
    resolved = Path(path).expanduser()
    if resolved.is_dir():
        raise DatabaseError(f"the tuning database path {resolved} is a directory, not a file")
    try:
        resolved.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise DatabaseError(f"cannot create the directory for the tuning database {resolved}: {err}") from err
    return resolved


def _connect(path: Path | str) -> sqlite_utils.Database:
    try:
        conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as err:
        raise DatabaseError(f"cannot open the tuning database {path}: {err}") from err
    return sqlite_utils.Database(conn, execute_plugins=False)


def _check_ours(db: sqlite_utils.Database, path: Path | str) -> None:
    """Refuse, before writing a byte, files that are not SQLite, someone else's, or from a newer autotune."""
    try:
        tables = {t for t in db.table_names() if not t.startswith("sqlite_")}
        version = db.execute("PRAGMA user_version").fetchone()[0]
    except sqlite3.DatabaseError as err:
        raise DatabaseError(f"{path} is not a readable autotune database: {err}") from err
    if tables and "_migrations" not in tables:
        names = ", ".join(sorted(tables)[:5])
        raise DatabaseError(f"{path} is an SQLite database but not an autotune one (tables {names}; no _migrations)")
    _check_version(version, path)


def _check_version(version: int, path: Path | str) -> None:
    if version > SCHEMA_VERSION:
        raise DatabaseError(
            f"{path} was written by a newer autotune (schema {version}, this one reads up to {SCHEMA_VERSION})"
        )


def _set_pragmas(db: sqlite_utils.Database, path: Path | str) -> None:
    db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    if path == ":memory:":
        return
    mode = _enable_wal(db)
    if mode != "wal":  # e.g. some network filesystems; still correct, only less concurrent.
        log.warning("%s: SQLite refused WAL mode (journal_mode=%s)", path, mode)
    # Safe with WAL: a crash of the process never loses a committed transaction.
    db.execute("PRAGMA synchronous = NORMAL")


def _enable_wal(db: sqlite_utils.Database) -> str:
    """Switch to WAL, retrying: the switch needs an exclusive lock and SQLite answers "database is
    locked" at once, without its busy handler, when a concurrent opener holds the file."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    delay = 0.002
    while True:
        try:
            mode = db.journal_mode
            return mode if mode == "wal" else db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        except sqlite3.OperationalError as err:
            if "locked" not in str(err) or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 0.1)


def _migrate(db: sqlite_utils.Database, path: Path | str) -> None:
    """Apply pending migrations under one write lock, so two openers never both apply one."""
    if _applied(db) >= {m.__name__ for m in _MIGRATIONS} and _user_version(db) == SCHEMA_VERSION:
        return
    with _immediate(db):
        _check_version(_user_version(db), path)  # another process may have upgraded it meanwhile
        db.execute("CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL NOT NULL)")
        done = _applied(db)
        for migration in _MIGRATIONS:
            if migration.__name__ not in done:
                log.info("%s: applying migration %s", path, migration.__name__)
                migration(db)
                db.table("_migrations").insert({"name": migration.__name__, "applied_at": time.time()})
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


def _applied(db: sqlite_utils.Database) -> set[str]:
    if not db.table("_migrations").exists():
        return set()
    return {row["name"] for row in db.query("SELECT name FROM _migrations")}


def _user_version(db: sqlite_utils.Database) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


@contextmanager
def _immediate(db: sqlite_utils.Database) -> Iterator[None]:
    """A transaction that takes the write lock at BEGIN (waiting up to the busy timeout)."""
    db.conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        if db.conn.in_transaction:
            db.conn.execute("ROLLBACK")
        raise
    db.conn.execute("COMMIT")


def _dumps(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


def _decoded(row: dict[str, Any], json_columns: tuple[str, ...]) -> dict[str, Any]:
    return {k: json.loads(v) if k in json_columns and v is not None else v for k, v in row.items()}


def _encoded(row: dict[str, Any], json_columns: tuple[str, ...]) -> dict[str, Any]:
    """A row as workload_row/target_row return it, with its JSON columns encoded again for storage."""
    return {k: _dumps(v) if k in json_columns else v for k, v in row.items()}


def _trial_row(record: TrialRecord) -> dict[str, Any]:
    """The trials row; latency_median/latency_std are derived here so that SQL can sort on them."""
    return dict(
        workload_key=record.workload_key, target_key=record.target_key, candidate_key=record.candidate_key,
        decisions=_dumps(record.decisions), trace=_dumps(record.trace), status=Status(record.status).value,
        latency_median=record.latency, latency_std=record.latency_std,
        ranking_latency=record.ranked_latency,
        latencies=_dumps([float(x) for x in record.latencies]), error=record.error, build_secs=float(record.build_secs),
        versions=_dumps(dict(record.versions)), created_at=float(record.created_at),
        uid=record.uid, origin=record.origin, session_id=record.session_id,
    )


def _trial_from_row(row: dict[str, Any]) -> TrialRecord:
    data = dict(row)
    for column in _TRIAL_JSON_COLUMNS:
        data[column] = json.loads(row[column]) if row[column] is not None else None
    if data.get("ranking_latency") == row["latency_median"]:  # ranked by its own median (see TrialRecord)
        data["ranking_latency"] = None
    return TrialRecord.from_json(data)


@contextmanager
def open_database(database: str | os.PathLike[str] | Database | None) -> Iterator[Database]:
    """Use a Database the caller passed as is; open (and close) one from a path, or the default path, otherwise."""
    if isinstance(database, Database):
        yield database
        return
    with Database(database) as db:
        yield db
