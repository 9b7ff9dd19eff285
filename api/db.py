"""One thin SQL layer over SQLite (stdlib) and PostgreSQL (psycopg 3).

Statements are written once with ``?`` placeholders; the PostgreSQL side rewrites them to ``%s``.
Every unit of work runs in :meth:`Database.transaction`, which commits on success and rolls back
on any error, so a failed request never leaves half of its rows behind. Driver errors about the
connection itself become :class:`DependencyUnavailable` ("store"); constraint violations surface as
:class:`IntegrityConflict`.
"""

from __future__ import annotations

import queue
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

from jobsight.errors import DependencyUnavailable, JobsightError

Row = tuple[Any, ...]


class IntegrityConflict(JobsightError):
    """A statement violated a uniqueness or other integrity constraint."""


class Cursor(Protocol):
    def execute(self, sql: str, params: Sequence[Any] = ()) -> None: ...
    def fetchone(self) -> Row | None: ...
    def fetchall(self) -> list[Row]: ...


class Database(Protocol):
    dialect: str

    def transaction(self) -> Any: ...  # context manager yielding a Cursor
    def ping(self) -> None: ...
    def close(self) -> None: ...


class _SQLiteCursor:
    def __init__(self, cursor: sqlite3.Cursor) -> None:
        self._cursor = cursor

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        try:
            self._cursor.execute(sql, tuple(params))
        except sqlite3.IntegrityError as exc:
            raise IntegrityConflict(str(exc)) from exc

    def fetchone(self) -> Row | None:
        row = self._cursor.fetchone()
        return tuple(row) if row is not None else None

    def fetchall(self) -> list[Row]:
        return [tuple(row) for row in self._cursor.fetchall()]


class SQLiteDatabase:
    """One connection, serialised by a lock: SQLite allows one writer anyway, and holding the
    lock across a whole transaction keeps read-modify-write sequences atomic."""

    dialect = "sqlite"

    def __init__(self, path: Path | str) -> None:
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                         timeout=10.0)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.Error as exc:
            raise DependencyUnavailable("store", f"cannot open SQLite database {self.path}: {exc}") from exc
        self._lock = threading.Lock()

    @contextmanager
    def transaction(self) -> Iterator[_SQLiteCursor]:
        with self._lock:
            cursor = self._conn.cursor()
            try:
                cursor.execute("BEGIN IMMEDIATE")
                yield _SQLiteCursor(cursor)
                cursor.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            finally:
                cursor.close()

    def ping(self) -> None:
        try:
            with self._lock:
                self._conn.execute("SELECT 1").fetchone()
        except sqlite3.Error as exc:
            raise DependencyUnavailable("store", f"SQLite: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._conn.close()


class _PgCursor:
    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        import psycopg

        try:
            self._cursor.execute(sql.replace("?", "%s"), tuple(params))
        except psycopg.errors.IntegrityError as exc:
            raise IntegrityConflict(str(exc)) from exc

    def fetchone(self) -> Row | None:
        row = self._cursor.fetchone()
        return tuple(row) if row is not None else None

    def fetchall(self) -> list[Row]:
        return [tuple(row) for row in self._cursor.fetchall()]


class PostgresDatabase:
    """A small pool of psycopg connections (created on demand, at most ``pool_size``)."""

    dialect = "postgresql"

    def __init__(self, url: str, pool_size: int = 8, connect_timeout: float = 5.0) -> None:
        self.url = url
        self._connect_timeout = max(1, int(connect_timeout))
        self._idle: queue.LifoQueue[Any] = queue.LifoQueue()
        self._slots = threading.BoundedSemaphore(pool_size)
        self._closed = False

    def _connect(self) -> Any:
        import psycopg

        try:
            return psycopg.connect(self.url, connect_timeout=self._connect_timeout)
        except psycopg.Error as exc:
            raise DependencyUnavailable("store", f"PostgreSQL: {_first_line(exc)}") from exc

    @contextmanager
    def transaction(self) -> Iterator[_PgCursor]:
        import psycopg

        if not self._slots.acquire(timeout=30):
            raise DependencyUnavailable("store", "PostgreSQL: no free connection within 30 s")
        conn: Any = None
        try:
            try:
                conn = self._idle.get_nowait()
            except queue.Empty:
                conn = self._connect()
            try:
                with conn.transaction(), conn.cursor() as cursor:
                    yield _PgCursor(cursor)
            except psycopg.OperationalError as exc:
                conn.close()
                conn = None
                raise DependencyUnavailable("store", f"PostgreSQL: {_first_line(exc)}") from exc
            except psycopg.Error:
                # The transaction block rolled back; the connection stays usable.
                raise
        finally:
            if conn is not None:
                if conn.closed or self._closed:
                    conn.close()
                else:
                    self._idle.put(conn)
            self._slots.release()

    def ping(self) -> None:
        with self.transaction() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()

    def close(self) -> None:
        self._closed = True
        while True:
            try:
                self._idle.get_nowait().close()
            except queue.Empty:
                return


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def open_database(url: str) -> SQLiteDatabase | PostgresDatabase:
    """``sqlite:///relative/or/absolute/path`` (``sqlite:////abs`` also works) or a PostgreSQL URL."""
    if url.startswith("sqlite:///"):
        return SQLiteDatabase(url[len("sqlite:///"):] or ":memory:")
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresDatabase(url)
    raise DependencyUnavailable("store", f"unsupported store_url scheme: {url.split(':', 1)[0]}")
