"""The embedded log and event store: SQLite in WAL mode with FTS5 on the message.

The log collector writes to it and the API reads it, so it lives in the kernel. One directory
(config ``store: {path: DIR}``) holds the database ``logs.sqlite3`` and its WAL files.

Writing (:meth:`SQLiteLogStore.write`) puts a batch of records *and* the collector's new read
offsets in one transaction, so "offsets advance only after the sink durably accepted the records"
is a single SQLite commit. The default ``synchronous=NORMAL`` in WAL mode makes a commit durable
across a process crash (SIGKILL); after a power loss the last commits may roll back, but records
and offsets roll back *together*, so those lines are read again from the files and nothing is
lost or duplicated. ``synchronous="FULL"`` also fsyncs every commit (needed only when the source
files themselves may not survive the power loss); it costs one fsync per batch. Records are
inserted with ``INSERT OR IGNORE`` keyed by their deterministic ``record_id`` (host + file
identity + offset): a line read twice after a crash is stored once.

New rows are added to the FTS5 index by one ``INSERT ... SELECT`` per batch in the same
transaction (a per-row trigger costs about three times as much); deletions keep the index in step
through a trigger.

Reading (:meth:`SQLiteLogStore.search`) filters by job, kind, rank and time, and matches ``q``
against the FTS5 index. User text is always a bound parameter and every word is quoted as an FTS5
string, so it can never be FTS5 or SQL syntax. Pages come oldest first ("newest last", ordered by
timestamp then row id) with an opaque cursor for the next page.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import json
import math
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jobsight.errors import DependencyUnavailable, InvalidInput

DB_FILE_NAME = "logs.sqlite3"
MAX_SEARCH_LIMIT = 10_000
SEVERITIES = ("info", "warning", "error", "critical")

_SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS records (
    id INTEGER PRIMARY KEY,
    record_id TEXT NOT NULL UNIQUE,
    timestamp REAL NOT NULL,
    ingested REAL NOT NULL,
    host TEXT NOT NULL,
    job_id TEXT,
    path TEXT NOT NULL,
    offset INTEGER NOT NULL,
    message TEXT NOT NULL,
    stream TEXT,
    rank INTEGER,
    level TEXT,
    source TEXT NOT NULL,
    event_kind TEXT,
    event_severity TEXT,
    event_fields TEXT,
    labels TEXT
);
CREATE INDEX IF NOT EXISTS records_time ON records (timestamp, id);
CREATE INDEX IF NOT EXISTS records_job_time ON records (job_id, timestamp, id);
CREATE INDEX IF NOT EXISTS records_event_time ON records (event_kind, timestamp, id)
    WHERE event_kind IS NOT NULL;
CREATE INDEX IF NOT EXISTS records_ingested ON records (ingested);
CREATE VIRTUAL TABLE IF NOT EXISTS records_fts USING fts5(
    message, content='records', content_rowid='id'
);
DROP TRIGGER IF EXISTS records_ai;
CREATE TRIGGER IF NOT EXISTS records_ad AFTER DELETE ON records BEGIN
    INSERT INTO records_fts (records_fts, rowid, message) VALUES ('delete', old.id, old.message);
END;
CREATE TABLE IF NOT EXISTS checkpoints (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""

_COLUMNS = (
    "id, record_id, timestamp, host, job_id, path, offset, message, stream, rank, level, source, "
    "event_kind, event_severity, event_fields, labels"
)
_INSERT = (
    "INSERT OR IGNORE INTO records (record_id, timestamp, ingested, host, job_id, path, offset, "
    "message, stream, rank, level, source, event_kind, event_severity, event_fields, labels) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INDEX_NEW = "INSERT INTO records_fts (rowid, message) SELECT id, message FROM records WHERE id > ?"
# FTS5 "words" for the user's query: anything between whitespace. Each is quoted (embedded
# double quotes doubled), which makes it a string token, never an operator or column filter.
_WORD = re.compile(r"\S+")


@dataclass(frozen=True)
class LogRecord:
    """One stored log line (or multi-line block) and, when it matched a rule, its event."""

    timestamp: float  # unix seconds (the line's own time when parseable, else read time)
    host: str
    job_id: str | None
    path: str  # file path, or "kmsg"
    offset: int  # byte offset of the record's first byte (kmsg: sequence number)
    message: str
    stream: str | None = None  # stdout/stderr for container logs
    rank: int | None = None
    level: str | None = None
    source: str = "file"  # file | cri | docker | kmsg
    event_kind: str | None = None  # set when the record matched an event rule
    event_severity: str | None = None  # info | warning | error | critical
    event_fields: Mapping[str, str] = field(default_factory=dict)
    record_id: str = ""  # deterministic id: host + file identity + offset
    # Extra keyword metadata (Kubernetes namespace/pod/pod_uid/container from the log path).
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class LogPage:
    records: list[LogRecord]
    next_cursor: str | None


@dataclass(frozen=True)
class StoreStats:
    records: int
    events: int
    used_bytes: int


def _encode_cursor(timestamp: float, row_id: int) -> str:
    raw = json.dumps([timestamp, row_id], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[float, int]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        value = json.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
        timestamp, row_id = value
        if (isinstance(row_id, bool) or not isinstance(row_id, int) or isinstance(timestamp, bool)
                or not isinstance(timestamp, int | float)):
            raise ValueError("wrong types")
        # Bounds as SQLite stores them: a row id is a signed 64-bit integer, a timestamp a finite
        # float; anything else (a tampered cursor) would fail deep in the driver.
        if not 0 <= row_id < 2**63 or not math.isfinite(float(timestamp)):
            raise ValueError("out of range")
        return float(timestamp), row_id
    except (ValueError, TypeError, OverflowError, UnicodeEncodeError, binascii.Error) as exc:
        raise InvalidInput(f"invalid cursor {cursor[:40]!r}: pass back the next_cursor of a page") from exc


def fts_query(text: str) -> str | None:
    """The FTS5 query for free text: every whitespace-separated word as a quoted string (all must
    match). None when the text has no words."""
    words = _WORD.findall(text)
    if not words:
        return None
    return " ".join('"' + word.replace('"', '""') + '"' for word in words)


class SQLiteLogStore:
    """The embedded store. ``path`` is a directory; the database file lives inside it.

    One connection, guarded by a lock, so a store object can be shared by threads (the API's
    worker threads, the collector's metrics thread). Other processes open the same directory
    concurrently: WAL lets readers run while the collector writes.
    """

    def __init__(
        self,
        path: Path | str,
        clock: Callable[[], float] = time.time,
        *,
        read_only: bool = False,
        busy_timeout_s: float = 10.0,
        synchronous: str = "NORMAL",
    ) -> None:
        if synchronous.upper() not in ("NORMAL", "FULL"):
            raise InvalidInput(f"synchronous must be NORMAL or FULL, got {synchronous!r}")
        self.path = Path(path)
        self.db_path = self.path / DB_FILE_NAME
        self.clock = clock
        self.read_only = read_only
        self._lock = threading.Lock()
        try:
            if read_only:
                if not self.db_path.exists():
                    raise DependencyUnavailable("log store",
                                                f"no store at {self.path} ({DB_FILE_NAME} missing)")
                uri = f"file:{self.db_path}?mode=ro"
                self._conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout_s, check_same_thread=False,
                                             isolation_level=None)
            else:
                self.path.mkdir(parents=True, exist_ok=True)
                self._conn = sqlite3.connect(self.db_path, timeout=busy_timeout_s, check_same_thread=False,
                                             isolation_level=None)
                self._conn.execute("PRAGMA journal_mode=WAL")
                self._conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
                # A 64 MiB page cache keeps the B-trees and FTS segments of a batch in memory, and
                # checkpointing the WAL every ~40 MiB instead of 4 MiB copies hot index pages to
                # the database less often (about +10 % rows/s, measured).
                self._conn.execute("PRAGMA cache_size=-65536")
                self._conn.execute("PRAGMA wal_autocheckpoint=10000")
                self._conn.executescript(_SCHEMA)
                self._conn.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                                   (str(_SCHEMA_VERSION),))
        except (sqlite3.Error, OSError) as exc:
            raise DependencyUnavailable("log store", f"cannot open {self.db_path}: {exc}") from exc

    # ---- writing -------------------------------------------------------------------------

    def write(self, records: Sequence[LogRecord], checkpoints: Mapping[str, str] | None = None,
              remove_checkpoints: Sequence[str] = ()) -> int:
        """Store ``records`` and set ``checkpoints`` (key → opaque value) in one transaction.

        Returns how many records were new (the rest were already stored: same ``record_id``).
        Raises :class:`DependencyUnavailable` if the commit failed; then nothing was stored.
        """
        now = self.clock()
        rows = [
            (
                r.record_id, r.timestamp, now, r.host, r.job_id, r.path, r.offset, r.message, r.stream,
                r.rank, r.level, r.source, r.event_kind, r.event_severity,
                json.dumps(dict(r.event_fields), sort_keys=True) if r.event_fields else None,
                json.dumps(dict(r.labels), sort_keys=True) if r.labels else None,
            )
            for r in records
        ]
        with self._lock:
            try:
                self._conn.execute("BEGIN IMMEDIATE")
                try:
                    inserted = 0
                    if rows:
                        last = self._conn.execute("SELECT coalesce(max(id), 0) FROM records").fetchone()[0]
                        # rowcount is sqlite3_changes summed over the rows: ignored duplicates are
                        # not counted.
                        inserted = max(self._conn.executemany(_INSERT, rows).rowcount, 0)
                        if inserted:
                            # One bulk statement instead of a per-row trigger: FTS5 indexes the
                            # batch about three times faster (measured, docs/benchmarks/logs.md).
                            self._conn.execute(_INDEX_NEW, (last,))
                    if checkpoints:
                        self._conn.executemany(
                            "INSERT INTO checkpoints (key, value, updated) VALUES (?, ?, ?) "
                            "ON CONFLICT (key) DO UPDATE SET value = excluded.value, "
                            "updated = excluded.updated",
                            [(key, value, now) for key, value in checkpoints.items()],
                        )
                    if remove_checkpoints:
                        self._conn.executemany("DELETE FROM checkpoints WHERE key = ?",
                                               [(key,) for key in remove_checkpoints])
                    self._conn.execute("COMMIT")
                except BaseException:
                    self._rollback_locked()
                    raise
            except sqlite3.Error as exc:
                raise DependencyUnavailable("log store", self._describe_locked("write failed", exc)) from exc
        return inserted

    def _rollback_locked(self) -> None:
        """Undo the open transaction, if there still is one. On some errors (SQLITE_FULL,
        SQLITE_IOERR, SQLITE_NOMEM) SQLite has already rolled it back itself; a ROLLBACK then
        fails with "cannot rollback - no transaction is active", and that message must not replace
        the error that says what went wrong."""
        if self._conn.in_transaction:
            with contextlib.suppress(sqlite3.Error):  # the original error is the one to report
                self._conn.execute("ROLLBACK")

    def _describe_locked(self, what: str, exc: sqlite3.Error) -> str:
        """The message for a failed write: "disk full" with the store's path when the file system
        has no room (SQLITE_FULL, or an I/O error while the file system is full), else ``what``
        and SQLite's message."""
        if is_disk_full(exc, self.path):
            return (f"disk full: cannot write to {self.db_path} ({exc}); records are kept in their "
                    f"input files and stored once there is room again")
        return f"{what}: {exc}"

    def checkpoints(self) -> dict[str, str]:
        """Every stored checkpoint (key → value)."""
        with self._lock:
            try:
                rows = self._conn.execute("SELECT key, value FROM checkpoints").fetchall()
            except sqlite3.Error as exc:
                raise DependencyUnavailable("log store", f"read failed: {exc}") from exc
        return {str(k): str(v) for k, v in rows}

    def apply_retention(self, *, max_age_s: float | None = None, max_bytes: int | None = None,
                        chunk: int = 5000) -> int:
        """Delete records ingested more than ``max_age_s`` ago, then the oldest records until the
        live data is under ``max_bytes``. Returns how many were deleted. Freed pages are reused by
        later inserts (no VACUUM: it would block the collector and readers)."""
        deleted = 0
        with self._lock:
            try:
                if max_age_s is not None:
                    cutoff = self.clock() - max_age_s
                    while True:
                        cur = self._conn.execute(
                            "DELETE FROM records WHERE id IN (SELECT id FROM records WHERE ingested < ? "
                            "ORDER BY ingested LIMIT ?)", (cutoff, chunk))
                        deleted += max(cur.rowcount, 0)
                        if cur.rowcount < chunk:
                            break
                if max_bytes is not None:
                    deleted += self._shrink_locked(max_bytes)
            except sqlite3.Error as exc:
                self._rollback_locked()
                message = self._describe_locked("retention failed", exc)
                raise DependencyUnavailable("log store", message) from exc
        return deleted

    def _shrink_locked(self, max_bytes: int) -> int:
        # FTS5 frees the pages of deleted rows only when its segments merge, so the size does not
        # fall row by row; estimate how many of the oldest rows hold the excess, delete those in
        # one statement, then merge the FTS segments so the freed pages are reused.
        used = self._used_bytes_locked()
        if used <= max_bytes:
            return 0
        count = int(self._conn.execute("SELECT count(*) FROM records").fetchone()[0])
        if count == 0:
            return 0
        excess = min(count, int(count * (used - max_bytes) / used * 1.1) + 1)
        cur = self._conn.execute(
            "DELETE FROM records WHERE id IN (SELECT id FROM records ORDER BY ingested, id LIMIT ?)",
            (excess,))
        self._conn.execute("INSERT INTO records_fts (records_fts) VALUES ('optimize')")
        return max(cur.rowcount, 0)

    def _used_bytes_locked(self) -> int:
        page_size = int(self._conn.execute("PRAGMA page_size").fetchone()[0])
        pages = int(self._conn.execute("PRAGMA page_count").fetchone()[0])
        free = int(self._conn.execute("PRAGMA freelist_count").fetchone()[0])
        return (pages - free) * page_size

    def stats(self) -> StoreStats:
        with self._lock:
            try:
                records = int(self._conn.execute("SELECT count(*) FROM records").fetchone()[0])
                events = int(self._conn.execute(
                    "SELECT count(*) FROM records WHERE event_kind IS NOT NULL").fetchone()[0])
                used = self._used_bytes_locked()
            except sqlite3.Error as exc:
                raise DependencyUnavailable("log store", f"read failed: {exc}") from exc
        return StoreStats(records=records, events=events, used_bytes=used)

    # ---- reading -------------------------------------------------------------------------

    def search(
        self,
        *,
        job_id: str | None = None,
        q: str | None = None,
        kind: str | None = None,
        rank: int | None = None,
        since: float | None = None,
        until: float | None = None,
        events_only: bool = False,
        limit: int = 100,
        cursor: str | None = None,
        hosts: Sequence[str] | None = None,
    ) -> LogPage:
        """Records matching every given filter, oldest first, at most ``limit`` per page.

        ``since`` is inclusive, ``until`` exclusive (unix seconds). ``kind`` implies events only.
        ``hosts``: records of these hosts only (an empty list matches nothing).
        Raises :class:`InvalidInput` for a bad limit or cursor.
        """
        if not 1 <= limit <= MAX_SEARCH_LIMIT:
            raise InvalidInput(f"limit must be between 1 and {MAX_SEARCH_LIMIT}, got {limit}")
        where: list[str] = []
        params: list[Any] = []
        if job_id is not None:
            where.append("r.job_id = ?")
            params.append(job_id)
        if kind is not None:
            where.append("r.event_kind = ?")
            params.append(kind)
        elif events_only:
            where.append("r.event_kind IS NOT NULL")
        if rank is not None:
            where.append("r.rank = ?")
            params.append(rank)
        if hosts is not None:
            if not hosts:
                return LogPage(records=[], next_cursor=None)
            where.append(f"r.host IN ({', '.join('?' for _ in hosts)})")
            params.extend(hosts)
        if since is not None:
            where.append("r.timestamp >= ?")
            params.append(since)
        if until is not None:
            where.append("r.timestamp < ?")
            params.append(until)
        if cursor is not None:
            after_ts, after_id = _decode_cursor(cursor)
            where.append("(r.timestamp > ? OR (r.timestamp = ? AND r.id > ?))")
            params.extend([after_ts, after_ts, after_id])
        if q is not None:
            match = fts_query(q)
            if match is None:
                return LogPage(records=[], next_cursor=None)
            where.append("r.id IN (SELECT rowid FROM records_fts WHERE records_fts MATCH ?)")
            params.append(match)
        sql = f"SELECT {', '.join('r.' + c.strip() for c in _COLUMNS.split(','))} FROM records r"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY r.timestamp, r.id LIMIT ?"
        params.append(limit + 1)
        with self._lock:
            try:
                rows = self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:
                raise DependencyUnavailable("log store", f"search failed: {exc}") from exc
        more = len(rows) > limit
        rows = rows[:limit]
        records = [_row_to_record(row) for row in rows]
        next_cursor = _encode_cursor(rows[-1][2], rows[-1][0]) if more and rows else None
        return LogPage(records=records, next_cursor=next_cursor)

    def iter_all(self, *, job_id: str | None = None, batch: int = 1000) -> Iterator[LogRecord]:
        """Every stored record (of ``job_id`` if given), oldest first, read page by page."""
        cursor: str | None = None
        while True:
            page = self.search(job_id=job_id, limit=batch, cursor=cursor)
            yield from page.records
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def ping(self) -> None:
        """Raise :class:`DependencyUnavailable` if the store cannot be read."""
        with self._lock:
            try:
                self._conn.execute("SELECT 1 FROM records LIMIT 1").fetchall()
            except sqlite3.Error as exc:
                raise DependencyUnavailable("log store", f"{self.db_path}: {exc}") from exc

    def close(self) -> None:
        # Closing a broken connection: nothing left to release.
        with self._lock, contextlib.suppress(sqlite3.Error):
                self._conn.close()


# Less than this many bytes free for the store's directory counts as a full file system when
# SQLite reports an I/O error (a WAL or journal write that failed with ENOSPC is SQLITE_IOERR, not
# SQLITE_FULL).
_NEARLY_FULL_BYTES = 256 * 1024


def is_disk_full(exc: sqlite3.Error, path: Path) -> bool:
    """True when ``exc`` means the store's file system (or the database's size limit) is full."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    if primary == sqlite3.SQLITE_FULL or "database or disk is full" in str(exc):
        return True
    if primary == sqlite3.SQLITE_IOERR or "disk I/O error" in str(exc):
        try:
            fs = os.statvfs(path)
        except OSError:
            return False
        free = fs.f_bfree if os.geteuid() == 0 else fs.f_bavail
        return free * fs.f_frsize < _NEARLY_FULL_BYTES
    return False


def _row_to_record(row: Sequence[Any]) -> LogRecord:
    (_id, record_id, timestamp, host, job_id, path, offset, message, stream, rank, level, source,
     event_kind, event_severity, event_fields, labels) = row
    return LogRecord(
        timestamp=float(timestamp), host=host, job_id=job_id, path=path, offset=int(offset),
        message=message, stream=stream, rank=rank, level=level, source=source, event_kind=event_kind,
        event_severity=event_severity, event_fields=json.loads(event_fields) if event_fields else {},
        record_id=record_id, labels=json.loads(labels) if labels else {},
    )
