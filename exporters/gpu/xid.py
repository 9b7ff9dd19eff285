"""XID bookkeeping: a real counter per (GPU, XID code) and dcgm-exporter's "last XID" gauge.

Fed by the sampler's XID thread from the backend's event stream; read by the collector on each
scrape. Kept apart from device readings because an XID (79: fallen off the bus) usually comes
right before the GPU stops answering, and its count must survive that.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from exporters.gpu.model import XidEvent


@dataclass(frozen=True)
class XidView:
    """A consistent copy of the ledger for one scrape."""

    counts: dict[tuple[int, int], int]  # (gpu index, xid) -> events since start
    last: dict[int, int]  # gpu index -> last XID seen


class XidLedger:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[int, int], int] = {}
        self._last: dict[int, int] = {}

    def record(self, event: XidEvent) -> None:
        with self._lock:
            key = (event.index, event.xid)
            self._counts[key] = self._counts.get(key, 0) + 1
            self._last[event.index] = event.xid

    def view(self) -> XidView:
        with self._lock:
            return XidView(dict(self._counts), dict(self._last))
