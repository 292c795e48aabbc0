"""Runs and snapshots in SQLite: WAL, one short transaction per run, tables declared with SQLModel."""

import hashlib
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, Table, create_engine, delete, event, func, insert, select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlmodel import Field, SQLModel

from worker.errors import StoreError

# Runs are the audit trail `history` and `status` read; a busy source would otherwise grow without bound.
RUNS_KEPT = 500
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
            raise StoreError(f"cannot open database {url}: {exc}") from None

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

    def close(self) -> None:
        self.engine.dispose()

    def record(self, run: Run, snapshot: Snapshot | None = None, keep: int = 100) -> None:
        """Write a run (and its new snapshot) and apply retention, all in one transaction."""
        with self._tx() as conn:
            conn.execute(insert(RUNS).values(**run.model_dump(exclude={"id"})))
            if snapshot is not None:
                conn.execute(insert(SNAPSHOTS).values(**snapshot.model_dump(exclude={"id"})))
                _prune(conn, SNAPSHOTS, run.source, keep)
            _prune(conn, RUNS, run.source, RUNS_KEPT)

    def latest_snapshot(self, source: str) -> StoredSnapshot | None:
        with self._tx() as conn:
            row = conn.execute(
                select(SNAPSHOTS).where(SNAPSHOTS.c.source == source).order_by(SNAPSHOTS.c.id.desc()).limit(1)
            ).first()
        if row is None:
            return None
        return StoredSnapshot(row.source, datetime.fromisoformat(row.fetched_at), row.http_status,
                              row.content_hash, json.loads(row.data))

    def latest_hash(self, source: str) -> str | None:
        with self._tx() as conn:
            return conn.execute(
                select(SNAPSHOTS.c.content_hash).where(SNAPSHOTS.c.source == source)
                .order_by(SNAPSHOTS.c.id.desc()).limit(1)
            ).scalar()

    def last_outcome(self, source: str) -> tuple[str | None, datetime | None]:
        """(status of the latest run, when the latest successful run finished), in one query."""
        last_ok = (select(func.max(RUNS.c.finished_at)).where(RUNS.c.source == source, RUNS.c.status != FAILED)
                   .scalar_subquery())
        with self._tx() as conn:
            row = conn.execute(
                select(RUNS.c.status, last_ok).where(RUNS.c.source == source).order_by(RUNS.c.id.desc()).limit(1)
            ).first()
        return (row[0], parse_iso(row[1])) if row else (None, None)

    def state(self, source: str) -> SourceState:
        """Last success, last error and the failure streak, read from the runs table."""
        with self._tx() as conn:
            last_ok = conn.execute(
                select(func.max(RUNS.c.id), func.max(RUNS.c.finished_at))
                .where(RUNS.c.source == source, RUNS.c.status != FAILED)
            ).first()
            ok_id = last_ok[0] if last_ok and last_ok[0] is not None else 0
            failed = conn.execute(
                select(func.count(), func.max(RUNS.c.id))
                .where(RUNS.c.source == source, RUNS.c.status == FAILED, RUNS.c.id > ok_id)
            ).first()
            last_error = None
            if failed and failed[0]:
                last_error = conn.execute(select(RUNS.c.error).where(RUNS.c.id == failed[1])).scalar()
            last_run = conn.execute(select(func.max(RUNS.c.finished_at)).where(RUNS.c.source == source)).scalar()
        return SourceState(
            last_success_at=parse_iso(last_ok[1]) if last_ok else None,
            last_error=last_error,
            consecutive_failures=failed[0] if failed else 0,
            last_run_at=parse_iso(last_run),
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


def _prune(conn: Any, table: Table, source: str, keep: int) -> None:
    cutoff = conn.execute(
        select(table.c.id).where(table.c.source == source).order_by(table.c.id.desc()).offset(keep).limit(1)
    ).scalar()
    if cutoff is not None:
        conn.execute(delete(table).where(table.c.source == source, table.c.id <= cutoff))
