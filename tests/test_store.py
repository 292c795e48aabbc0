"""The snapshot database: WAL, state derived from runs, retention, owner-only file."""

import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import pytest

from worker.errors import StoreError
from worker.store import FAILED, OK, RUNS_KEPT, UNCHANGED, Run, RunRow, Snapshot, Store, encode_data


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


def pull_row(source: str, n: int) -> RunRow:
    t = f"2026-12-03T12:{n // 60:02d}:{n % 60:02d}.000000+00:00"
    return RunRow(source=source, started_at=t, finished_at=t, status=OK, duration_ms=1.0)


def test_record_pull_marks_same_data_unchanged_and_stores_one_snapshot(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/s.db")
    body, digest = encode_data({"x": 1})
    first = store.record_pull(pull_row("menu", 1), body, digest, 200, keep=10)
    second = store.record_pull(pull_row("menu", 2), body, digest, 200, keep=10)
    assert (first.status, first.changed, second.status, second.changed) == (OK, True, UNCHANGED, False)
    assert second.fetched_at == datetime(2026, 12, 3, 12, 0, 1, tzinfo=UTC)
    assert [r.status for r in store.runs("menu")] == [UNCHANGED, OK]
    assert len(store.snapshots("menu")) == 1


def test_runs_are_pruned_to_the_newest_hundred_per_source_leaving_other_sources(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path}/s.db")
    store.record_pull(pull_row("other", 0), None, None, 0, keep=10)
    for n in range(1, 250):  # ids 2..250: the 250th insert prunes "menu"
        store.record_pull(pull_row("menu", n), None, None, 0, keep=10)
    kept = store.runs("menu", limit=1000)
    assert (len(kept), kept[-1].started_at, kept[0].started_at) == (
        RUNS_KEPT, pull_row("menu", 150).started_at, pull_row("menu", 249).started_at)
    assert len(store.runs("other")) == 1


def test_unusable_database_path_is_one_line_with_the_drivers_words(tmp_path: Path) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "notes.db").write_text("not a database, just some text that is long enough to have a header\n" * 20)
    for name, words in (("folder", "unable to open database file"), ("notes.db", "file is not a database")):
        with pytest.raises(StoreError) as info:
            Store(f"sqlite:///{tmp_path / name}")
        assert str(info.value) == f"cannot open database sqlite:///{tmp_path / name}: {words}"
