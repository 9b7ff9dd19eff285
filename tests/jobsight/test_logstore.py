"""The embedded log store: exactly-once writes with checkpoints, search, cursors, retention."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

from jobsight.errors import DependencyUnavailable, InvalidInput
from jobsight.logstore import DB_FILE_NAME, LogRecord, SQLiteLogStore, fts_query


def _record(i: int, job: str = "4711", message: str | None = None, kind: str | None = None,
            ts: float | None = None, rank: int | None = None) -> LogRecord:
    return LogRecord(
        timestamp=float(i) if ts is None else ts, host="node1", job_id=job, path="/logs/a.log",
        offset=i * 100,
        message=message if message is not None else f"step {i} loss 0.5", rank=rank, event_kind=kind,
        event_severity="error" if kind else None, event_fields={"xid": "79"} if kind else {},
        record_id=f"node1:1:2:abc:{i * 100}", labels={"namespace": "ml"},
    )


def test_write_is_idempotent_and_commits_checkpoints_together(tmp_path: Path) -> None:
    store = SQLiteLogStore(tmp_path)
    records = [_record(i) for i in range(20)]
    assert store.write(records, {"file:1": "offset=2000"}) == 20
    assert store.write(records[10:], {"file:1": "offset=2500"}) == 0
    assert store.checkpoints() == {"file:1": "offset=2500"}
    stored = list(store.iter_all(batch=7))
    assert [r.offset for r in stored] == [i * 100 for i in range(20)]
    assert stored[0] == records[0]
    store.write([], remove_checkpoints=["file:1"])
    assert store.checkpoints() == {}


def test_failed_write_stores_nothing(tmp_path: Path) -> None:
    store = SQLiteLogStore(tmp_path)
    store.write([_record(0)], {"k": "before"})
    slow = SQLiteLogStore(tmp_path, busy_timeout_s=0.1)
    # Another connection holding the write lock makes our commit fail (busy timeout 0.1 s).
    blocker = sqlite3.connect(tmp_path / DB_FILE_NAME, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    with pytest.raises(DependencyUnavailable, match="log store"):
        slow.write([_record(1)], {"k": "after"})
    blocker.execute("ROLLBACK")
    assert store.checkpoints() == {"k": "before"}
    assert [r.offset for r in store.iter_all()] == [0]


def test_search_filters_and_pages(tmp_path: Path) -> None:
    store = SQLiteLogStore(tmp_path)
    records = [_record(i, job="a" if i % 2 else "b", rank=i % 4) for i in range(30)]
    records.append(_record(30, job="a", message="Watchdog caught collective operation timeout",
                           kind="nccl_timeout"))
    store.write(records)
    assert {r.job_id for r in store.search(job_id="a", limit=100).records} == {"a"}
    assert len(store.search(job_id="a", limit=100).records) == 16
    events = store.search(events_only=True).records
    assert [r.event_kind for r in events] == ["nccl_timeout"] and events[0].event_fields == {"xid": "79"}
    assert store.search(kind="cuda_oom").records == []
    assert {r.rank for r in store.search(rank=2).records} == {2}
    window = store.search(since=5, until=8).records
    assert [r.timestamp for r in window] == [5.0, 6.0, 7.0]
    seen: list[int] = []
    cursor = None
    while True:
        page = store.search(job_id="b", limit=4, cursor=cursor)
        seen.extend(r.offset for r in page.records)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
    assert seen == [i * 100 for i in range(0, 30, 2)]


def test_full_text_query_is_never_syntax(tmp_path: Path) -> None:
    store = SQLiteLogStore(tmp_path)
    store.write([_record(0, message='CUDA out of memory. Tried to allocate 2.00 GiB'),
                 _record(1, message="NCCL error: unhandled system error"),
                 _record(2, message='quote " and (parens) OR NOT *')])
    assert [r.offset for r in store.search(q="out of memory").records] == [0]
    assert [r.offset for r in store.search(q="nccl").records] == [100]
    for hostile in ['"', "(", "OR NOT", "message:NCCL", "*", "'; DROP TABLE records; --", "NEAR(a b)"]:
        store.search(q=hostile)  # never an error
    assert [r.offset for r in store.search(q="(parens)").records] == [200]
    assert store.search(q="   ").records == []
    assert fts_query('a "b') == '"a" """b"'


def test_bad_cursor_and_limit_are_invalid_input(tmp_path: Path) -> None:
    store = SQLiteLogStore(tmp_path)
    with pytest.raises(InvalidInput, match="cursor"):
        store.search(cursor="not-a-cursor!")
    with pytest.raises(InvalidInput, match="limit"):
        store.search(limit=0)


def test_retention_by_age_and_size(tmp_path: Path) -> None:
    now = [1000.0]
    store = SQLiteLogStore(tmp_path, clock=lambda: now[0])
    store.write([_record(i) for i in range(10)])
    now[0] = 2000.0
    store.write([_record(i) for i in range(10, 20)])
    assert store.apply_retention(max_age_s=500) == 10
    assert next(r.offset for r in store.iter_all()) == 1000
    store.write([_record(i, message="x" * 2000) for i in range(20, 400)])
    assert store.stats().used_bytes > 200_000
    store.apply_retention(max_bytes=200_000, chunk=50)
    stats = store.stats()
    assert stats.used_bytes <= 200_000 and stats.records > 0
    # Oldest went first: what is left is the newest tail.
    offsets = [r.offset for r in store.iter_all()]
    assert offsets[-1] == 399 * 100 and offsets == sorted(offsets)


def test_concurrent_reader_sees_commits(tmp_path: Path) -> None:
    writer = SQLiteLogStore(tmp_path)
    reader = SQLiteLogStore(tmp_path, read_only=True)
    reader.ping()
    counts: list[int] = []

    def read_loop() -> None:
        for _ in range(20):
            counts.append(len(reader.search(limit=10_000).records))

    thread = threading.Thread(target=read_loop)
    thread.start()
    for batch in range(10):
        writer.write([_record(batch * 10 + i) for i in range(10)])
    thread.join()
    assert counts == sorted(counts)  # a reader never sees a commit undone
    assert len(reader.search(limit=10_000).records) == 100
    writer.close()
    reader.close()


def test_unusable_store_raises_dependency_unavailable(tmp_path: Path) -> None:
    with pytest.raises(DependencyUnavailable, match="log store"):
        SQLiteLogStore(tmp_path / "missing", read_only=True)
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(DependencyUnavailable):
        SQLiteLogStore(blocker)
    store = SQLiteLogStore(tmp_path / "ok")
    store.close()
    with pytest.raises(DependencyUnavailable):
        store.ping()
