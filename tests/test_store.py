"""The snapshot database: WAL, state derived from runs, retention, owner-only file."""

import sqlite3
from pathlib import Path

from worker.store import FAILED, OK, Run, Snapshot, Store, encode_data


def run(status: str, n: int = 0, error: str | None = None) -> Run:
    t = f"2026-12-03T12:00:{n:02d}.000000+00:00"
    return Run(source="menu", started_at=t, finished_at=t, status=status, duration_ms=1.0, error=error)


def snap(data, n: int = 0) -> Snapshot:
    body, digest = encode_data(data)
    return Snapshot(source="menu", fetched_at=f"2026-12-03T12:00:{n:02d}.000000+00:00", http_status=200,
                    content_hash=digest, data=body)


def test_database_is_wal_and_owner_only(tmp_path: Path) -> None:
    Store(f"sqlite:///{tmp_path}/db/s.db").close()
    assert (tmp_path / "db" / "s.db").stat().st_mode & 0o777 == 0o600
    assert sqlite3.connect(tmp_path / "db" / "s.db").execute("PRAGMA journal_mode").fetchone() == ("wal",)


def test_state_counts_failures_since_last_success(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/s.db")
    store.record(run(FAILED, 1, "a"))
    store.record(run(OK, 2), snap({"x": 1}, 2))
    store.record(run(FAILED, 3, "b"))
    store.record(run(FAILED, 4, "c"))
    state = store.state("menu")
    assert (state.last_error, state.consecutive_failures, state.last_success_at.second) == ("c", 2, 2)


def test_keep_prunes_oldest_snapshots(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/s.db")
    for i in range(5):
        store.record(run(OK, i), snap({"i": i}, i), keep=3)
    assert [s.fetched_at[17:19] for s in store.snapshots("menu")] == ["04", "03", "02"]
    assert store.latest_snapshot("menu").data == {"i": 4}


def test_same_data_hashes_the_same_whatever_key_order() -> None:
    assert encode_data({"a": 1, "b": 2})[1] == encode_data({"b": 2, "a": 1})[1]
