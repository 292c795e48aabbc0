"""Runs and snapshots in SQLite: WAL, one short transaction per run, tables declared with SQLModel."""

import hashlib
import json
import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table, create_engine, event, func, insert, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Field, SQLModel

from worker.errors import StoreError

# Runs are the audit trail `history` and `status` read; a busy source would otherwise grow without bound.
# 100 per source: over an hour and a half of a 1-minute source, ~10 MB per 1,000 sources.
RUNS_KEPT = 100
SCHEMA_VERSION = 1
OK, UNCHANGED, FAILED = "ok", "unchanged", "failed"
SKIPPED = "skipped"  # never stored: a run that did not happen (rate limit pause)


class Run(SQLModel, table=True):
    """One attempt to pull a source, successful or not."""

    __tablename__ = "runs"
    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(index=True)
    started_at: str  # ISO-8601 UTC; text so the file reads well in the sqlite3 shell
    finished_at: str
    status: str  # ok | unchanged | failed
    duration_ms: float
    error: str | None = None


class Snapshot(SQLModel, table=True):
    """One distinct response body (after `select`) of a source."""

    __tablename__ = "snapshots"
    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(index=True)
    fetched_at: str
    http_status: int
    content_hash: str
    data: str  # JSON text


class Meta(SQLModel, table=True):
    """Schema version, so later releases can migrate a database in place."""

    __tablename__ = "signfeed_meta"
    key: str = Field(primary_key=True)
    value: str


# Core tables for queries: plain SQL on the hot path, typed columns for mypy.
RUNS: Table = SQLModel.metadata.tables["runs"]
SNAPSHOTS: Table = SQLModel.metadata.tables["snapshots"]
META: Table = SQLModel.metadata.tables["signfeed_meta"]


@dataclass(frozen=True)
class StoredSnapshot:
    """A snapshot as read back: data decoded, time aware."""

    source: str
    fetched_at: datetime
    http_status: int
    content_hash: str
    data: Any


# The hot path speaks SQL directly: SQLAlchemy's statement building costs more than SQLite's work here.
SQL_LAST_RUN = "SELECT status, finished_at, error FROM runs WHERE source = ? ORDER BY id DESC LIMIT 1"
SQL_LAST_OK = "SELECT id, finished_at FROM runs WHERE source = ? AND status != ? ORDER BY id DESC LIMIT 1"
SQL_FAILURES_SINCE = "SELECT count(*) FROM runs WHERE source = ? AND status = ? AND id > ?"
SQL_LATEST_SNAPSHOT_META = "SELECT content_hash, fetched_at FROM snapshots WHERE source = ? ORDER BY id DESC LIMIT 1"
SQL_INSERT_RUN = ("INSERT INTO runs (source, started_at, finished_at, status, duration_ms, error) "
                  "VALUES (?, ?, ?, ?, ?, ?)")
SQL_INSERT_SNAPSHOT = ("INSERT INTO snapshots (source, fetched_at, http_status, content_hash, data) "
                       "VALUES (?, ?, ?, ?, ?)")
PRUNE_EVERY = 50


@dataclass(frozen=True, slots=True)
class RunRow:
    """A run as the pipeline records it: a plain row (a Run model object costs more to build than to insert)."""

    source: str
    started_at: str
    finished_at: str
    status: str
    duration_ms: float
    error: str | None = None


@dataclass(frozen=True)
class PullRecord:
    """What recording a pull found: the state before it, and whether the data was new."""

    status: str  # as recorded: a success whose data matched the latest snapshot is `unchanged`
    previous_status: str | None
    previous_success_at: datetime | None
    changed: bool
    fetched_at: datetime | None  # when the data now stored was first fetched


@dataclass(frozen=True)
class SourceState:
    """What the feeds and `status` say about a source, derived from its runs."""

    last_success_at: datetime | None
    last_error: str | None
    consecutive_failures: int
    last_run_at: datetime | None


def encode_data(data: Any) -> tuple[str, str]:
    """JSON text and its hash; keys sorted so the same data always hashes the same."""
    body = json.dumps(data, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
    return body, hashlib.sha256(body.encode("utf-8")).hexdigest()


def iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="microseconds")


def parse_iso(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


def _sqlite_file(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///"))


def _create_private(path: Path) -> None:
    """Create the database file readable by its owner only: it holds cached tokens."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))


def _on_connect(dbapi_conn: Any, _record: Any) -> None:
    cursor = dbapi_conn.cursor()
    # WAL lets the CLI read while the daemon writes; NORMAL is crash-safe in WAL and much cheaper than FULL.
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


class Store:
    """The snapshot database; safe to share between threads (one connection per checkout)."""

    def __init__(self, url: str) -> None:
        try:
            _create_private(_sqlite_file(url))
            self.engine: Engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
            event.listen(self.engine, "connect", _on_connect)
            self._migrate()
        except (SQLAlchemyError, OSError) as exc:
            # The driver's own words: SQLAlchemy's text adds the statement and a second "Background" line.
            raise StoreError(f"cannot open database {url}: {getattr(exc, 'orig', None) or exc}") from None

    def _migrate(self) -> None:
        SQLModel.metadata.create_all(self.engine)
        with self.engine.begin() as conn:
            version = conn.execute(select(META.c.value).where(META.c.key == "schema_version")).scalar()
            if version is None:
                conn.execute(insert(META).values(key="schema_version", value=str(SCHEMA_VERSION)))
            elif int(version) > SCHEMA_VERSION:
                raise StoreError(f"database schema {version} is newer than this signfeed ({SCHEMA_VERSION}); upgrade")

    @contextmanager
    def _tx(self) -> Iterator[Any]:
        try:
            with self.engine.begin() as conn:
                yield conn
        except SQLAlchemyError as exc:
            raise StoreError(f"database error: {exc.__class__.__name__}: {getattr(exc, 'orig', None) or exc}") from None
        except sqlite3.Error as exc:
            raise StoreError(f"database error: {exc.__class__.__name__}: {exc}") from None

    @contextmanager
    def _sql(self) -> Iterator[sqlite3.Cursor]:
        """A plain sqlite3 cursor inside one transaction, for the per-pull queries: SQLAlchemy's statement
        handling costs several times what SQLite itself spends on them."""
        with self._tx() as conn:
            cursor = conn.connection.driver_connection.cursor()
            try:
                yield cursor
            finally:
                cursor.close()

    def close(self) -> None:
        self.engine.dispose()

    def record(self, run: Run, snapshot: Snapshot | None = None, keep: int = 100) -> None:
        """Write a run (and its new snapshot) and apply retention, all in one transaction."""
        with self._sql() as sql:
            _insert_run(sql, (run.source, run.started_at, run.finished_at, run.status, run.duration_ms, run.error))
            if snapshot is not None:
                _insert_snapshot(sql, (snapshot.source, snapshot.fetched_at, snapshot.http_status,
                                        snapshot.content_hash, snapshot.data), keep)

    def record_pull(self, run: RunRow, body: str | None, digest: str | None, http_status: int,
                    keep: int) -> PullRecord:
        """Record one pull in one short transaction: a new snapshot only when the data's hash differs from
        the latest one (then the run says `unchanged`), plus what the feeds need to know about before."""
        source = run.source
        with self._sql() as sql:
            previous = sql.execute(SQL_LAST_RUN, (source,)).fetchone()
            last_ok = sql.execute(SQL_LAST_OK, (source, FAILED)).fetchone()
            latest = sql.execute(SQL_LATEST_SNAPSHOT_META, (source,)).fetchone()
            changed = digest is not None and (latest is None or latest[0] != digest)
            status = UNCHANGED if digest is not None and not changed else run.status
            fetched_at = run.started_at if changed else (latest[1] if latest else None)
            _insert_run(sql, (source, run.started_at, run.finished_at, status, run.duration_ms, run.error))
            if changed and body is not None and digest is not None:
                # A plain row, not a Snapshot: building a SQLModel object costs more than the insert.
                _insert_snapshot(sql, (source, run.started_at, http_status, digest, body), keep)
        return PullRecord(
            status=status,
            previous_status=previous[0] if previous else None,
            previous_success_at=parse_iso(last_ok[1]) if last_ok else None,
            changed=changed,
            fetched_at=parse_iso(fetched_at),
        )

    def latest_snapshot(self, source: str) -> StoredSnapshot | None:
        with self._sql() as sql:
            row = sql.execute(
                "SELECT source, fetched_at, http_status, content_hash, data FROM snapshots WHERE source = ? "
                "ORDER BY id DESC LIMIT 1", (source,)).fetchone()
        if row is None:
            return None
        return StoredSnapshot(row[0], datetime.fromisoformat(row[1]), row[2], row[3], json.loads(row[4]))

    def last_successes(self) -> dict[str, datetime]:
        """When each source last succeeded, in one scan (the daemon's start-up reads all of them)."""
        with self._sql() as sql:
            rows = sql.execute(
                "SELECT source, max(finished_at) FROM runs WHERE status != ? GROUP BY source", (FAILED,)).fetchall()
        return {row[0]: datetime.fromisoformat(row[1]) for row in rows}

    def failing_sources(self) -> set[str]:
        """Sources whose latest run failed, in one scan (the daemon's start-up retries them at once)."""
        with self._sql() as sql:
            rows = sql.execute("SELECT source FROM runs WHERE status = ? AND id IN "
                               "(SELECT max(id) FROM runs GROUP BY source)", (FAILED,)).fetchall()
        return {row[0] for row in rows}

    def state(self, source: str) -> SourceState:
        """Last success, last error and the failure streak, read from the runs table."""
        with self._sql() as sql:
            last_ok = sql.execute(SQL_LAST_OK, (source, FAILED)).fetchone()
            ok_id = last_ok[0] if last_ok else 0
            failed = sql.execute(SQL_FAILURES_SINCE, (source, FAILED, ok_id)).fetchone()
            last = sql.execute(SQL_LAST_RUN, (source,)).fetchone()
        failures = failed[0] if failed else 0
        return SourceState(
            last_success_at=parse_iso(last_ok[1]) if last_ok else None,
            last_error=last[2] if failures and last else None,
            consecutive_failures=failures,
            last_run_at=parse_iso(last[1]) if last else None,
        )

    def runs(self, source: str, limit: int = 20) -> list[Run]:
        with self._tx() as conn:
            rows = conn.execute(
                select(RUNS).where(RUNS.c.source == source).order_by(RUNS.c.id.desc()).limit(limit)
            ).all()
        return [Run(**row._mapping) for row in rows]

    def snapshots(self, source: str, limit: int = 20) -> list[Snapshot]:
        """Newest first, without the data column (history lists them; bodies can be large)."""
        with self._tx() as conn:
            rows = conn.execute(
                select(SNAPSHOTS.c.id, SNAPSHOTS.c.source, SNAPSHOTS.c.fetched_at, SNAPSHOTS.c.http_status,
                       SNAPSHOTS.c.content_hash, func.length(SNAPSHOTS.c.data).label("data"))
                .where(SNAPSHOTS.c.source == source).order_by(SNAPSHOTS.c.id.desc()).limit(limit)
            ).all()
        return [Snapshot(**{**row._mapping, "data": str(row.data)}) for row in rows]

    def integrity_ok(self) -> bool:
        with self._tx() as conn:
            return conn.execute(text("PRAGMA integrity_check")).scalar() == "ok"


def _insert_run(sql: sqlite3.Cursor, row: tuple[str, str, str, str, float, str | None]) -> None:
    """Insert (source, started_at, finished_at, status, duration_ms, error); now and then prune old runs."""
    sql.execute(SQL_INSERT_RUN, row)
    # Pruning scans `RUNS_KEPT` index entries; every 50th run is often enough to bound the table.
    if (sql.lastrowid or 0) % PRUNE_EVERY == 0:
        _prune(sql, RUNS, row[0], RUNS_KEPT)


def _insert_snapshot(sql: sqlite3.Cursor, row: tuple[str, str, int, str, str], keep: int) -> None:
    """Insert (source, fetched_at, http_status, content_hash, data) and keep the source's newest `keep`."""
    sql.execute(SQL_INSERT_SNAPSHOT, row)
    _prune(sql, SNAPSHOTS, row[0], keep)


def _prune(sql: sqlite3.Cursor, table: Table, source: str, keep: int) -> None:
    # One statement on the (source, id) index: the subquery finds the newest row to drop.
    sql.execute(
        f"DELETE FROM {table.name} WHERE source = ? AND id <= "
        f"(SELECT id FROM {table.name} WHERE source = ? ORDER BY id DESC LIMIT 1 OFFSET ?)",
        (source, source, keep))
