"""Where the API reads logs and events: one protocol, two adapters (the embedded SQLite store and
Elasticsearch, in :mod:`api.logsource_es`). Records are the kernel's
:class:`jobsight.logstore.LogRecord`, so both adapters return the same shape."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

from jobsight.errors import DependencyUnavailable
from jobsight.logstore import LogPage, SQLiteLogStore

DEPENDENCY = "log store"


class LogSource(Protocol):
    def search(
        self, *, job_id: str | None = None, q: str | None = None, kind: str | None = None,
        rank: int | None = None, since: float | None = None, until: float | None = None,
        events_only: bool = False, limit: int = 100, cursor: str | None = None,
        hosts: Sequence[str] | None = None,
    ) -> LogPage: ...

    def ping(self) -> None: ...

    def close(self) -> None: ...


class UnconfiguredLogSource:
    """Stands in when no ``log_store`` is configured: every read says so (503)."""

    def search(self, **_: object) -> LogPage:
        raise DependencyUnavailable(DEPENDENCY, "no log_store is configured")

    def ping(self) -> None:
        raise DependencyUnavailable(DEPENDENCY, "no log_store is configured")

    def close(self) -> None:
        return None


class SQLiteLogSource:
    """The embedded store, opened read-only and lazily: the API may start before the collector
    has created the store, and keeps answering 503 for logs until it exists."""

    def __init__(self, path: Path | str, clock: Callable[[], float] = time.time) -> None:
        self.path = Path(path)
        self._clock = clock
        self._store: SQLiteLogStore | None = None
        self._lock = threading.Lock()

    def _open(self) -> SQLiteLogStore:
        with self._lock:
            if self._store is None:
                self._store = SQLiteLogStore(self.path, clock=self._clock, read_only=True)
            return self._store

    def search(
        self, *, job_id: str | None = None, q: str | None = None, kind: str | None = None,
        rank: int | None = None, since: float | None = None, until: float | None = None,
        events_only: bool = False, limit: int = 100, cursor: str | None = None,
        hosts: Sequence[str] | None = None,
    ) -> LogPage:
        return self._open().search(job_id=job_id, q=q, kind=kind, rank=rank, since=since, until=until,
                                   events_only=events_only, limit=limit, cursor=cursor, hosts=hosts)

    def ping(self) -> None:
        self._open().ping()

    def close(self) -> None:
        with self._lock:
            if self._store is not None:
                self._store.close()
                self._store = None


def open_log_source(location: str | None, timeout: float) -> LogSource:
    """A directory path means the embedded store; an http(s) URL means Elasticsearch."""
    if not location:
        return UnconfiguredLogSource()
    if location.startswith(("http://", "https://")):
        from api.logsource_es import ElasticsearchLogSource

        return ElasticsearchLogSource.from_url(location, timeout=timeout)
    return SQLiteLogSource(location)
