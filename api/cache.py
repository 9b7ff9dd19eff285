"""A small results cache for Prometheus answers about the past.

Samples older than a few minutes do not change (Prometheus accepts no late writes by default), so
a job's metrics or summary over a window that ended "long enough ago" can be reused for a while,
as Thanos/Cortex query frontends do. Entries expire after ``ttl`` seconds and the least recently
used go first beyond ``max_entries``. Concurrent requests for the same key wait for one
computation instead of each asking Prometheus (no thundering herd at 50 clients).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class ResultCache:
    def __init__(self, ttl: float, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._clock = clock
        self._entries: OrderedDict[Hashable, tuple[float, Any]] = OrderedDict()
        self._inflight: dict[Hashable, Future[Any]] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.ttl > 0 and self.max_entries > 0

    def get_or_compute(self, key: Hashable, compute: Callable[[], T]) -> T:
        if not self.enabled:
            return compute()
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[0] > self._clock():
                self._entries.move_to_end(key)
                self.hits += 1
                return entry[1]  # type: ignore[no-any-return]
            waiting = self._inflight.get(key)
            if waiting is None:
                mine: Future[Any] = Future()
                self._inflight[key] = mine
                self.misses += 1
        if waiting is not None:
            return waiting.result()  # type: ignore[no-any-return]
        try:
            value = compute()
        except BaseException as exc:
            # Errors are not cached; whoever waited sees the same error.
            with self._lock:
                self._inflight.pop(key, None)
            mine.set_exception(exc)
            raise
        with self._lock:
            self._inflight.pop(key, None)
            self._entries[key] = (self._clock() + self.ttl, value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        mine.set_result(value)
        return value

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)
