"""XID bookkeeping: a real counter per (GPU, XID code) and dcgm-exporter's "last XID" gauge.

Fed by the sampler's XID thread from the backend's event stream; read by the collector on each
scrape. Kept apart from device readings because an XID (79: fallen off the bus) usually comes
right before the GPU stops answering, and its count must survive that.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from exporters.gpu.model import Clock, XidEvent


@dataclass(frozen=True)
class XidView:
    """A consistent copy of the ledger for one scrape."""

    counts: dict[tuple[int, int], int]  # (gpu index, xid) -> events since start
    last: dict[int, int]  # gpu index -> last XID seen
    seen_at: dict[tuple[int, int], float]  # (gpu index, xid) -> wall-clock time of the last event


class XidLedger:
    """``clock`` is the wall clock (epoch seconds): the last-seen time is published for alerts."""

    def __init__(self, clock: Clock = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._counts: dict[tuple[int, int], int] = {}
        self._last: dict[int, int] = {}
        self._seen_at: dict[tuple[int, int], float] = {}

    def record(self, event: XidEvent) -> None:
        now = self._clock()
        with self._lock:
            key = (event.index, event.xid)
            self._counts[key] = self._counts.get(key, 0) + 1
            self._last[event.index] = event.xid
            self._seen_at[key] = now

    def view(self) -> XidView:
        with self._lock:
            return XidView(dict(self._counts), dict(self._last), dict(self._seen_at))
