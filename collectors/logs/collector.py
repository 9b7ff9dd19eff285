"""The collector's main loop: scan → read → batch → deliver → commit offsets.

Single-threaded on purpose: records and the checkpoints that cover them are taken at the same
moment, so a commit can never advance an offset past a record that is not in it. Backpressure is
the loop itself: while a delivery fails it retries with backoff and reads nothing, so memory
stays at one batch plus the per-file partial lines and open multi-line blocks, and the files
themselves are the buffer.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from collectors.logs.config import CollectorConfig, KmsgSource, source_name
from collectors.logs.es import ElasticsearchSink, Stopped
from collectors.logs.files import FileTailer
from collectors.logs.kmsg import KmsgReader
from collectors.logs.rules import RuleSet, take_refused
from collectors.logs.stats import LogStats
from jobsight.errors import DependencyUnavailable
from jobsight.logstore import LogRecord, SQLiteLogStore

log = logging.getLogger(__name__)

STORE_SINK = "store"


class Input(Protocol):
    name: str

    def scan(self) -> list[LogRecord]: ...

    def poll(self, budget: int) -> tuple[list[LogRecord], int]: ...

    def pending_checkpoints(self) -> tuple[dict[str, str], list[str]]: ...

    def committed(self) -> None: ...

    def backlog_bytes(self) -> int: ...

    def close(self) -> None: ...


@dataclass
class _Batch:
    records: list[LogRecord]
    size: int = 0
    started: float | None = None
    by_input: dict[str, int] = field(default_factory=dict)


class LogCollector:
    def __init__(
        self,
        config: CollectorConfig,
        store: SQLiteLogStore,
        *,
        host: str,
        rules: RuleSet,
        stats: LogStats,
        es: ElasticsearchSink | None = None,
        stop: threading.Event | None = None,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.store = store
        self.es = es
        self.stats = stats
        self.stop = stop or threading.Event()
        self.clock = clock
        self.monotonic = monotonic
        self.healthy = True
        self.last_error = ""
        self.rules = rules
        stats.stall_after = config.stall_after
        stats.loop_progress = stats.monotonic()
        checkpoints = store.checkpoints()
        self.inputs: list[Input] = []
        for index, source in enumerate(config.sources):
            name = source_name(source, index)
            source_host = source.host or host
            if isinstance(source, KmsgSource):
                self.inputs.append(KmsgReader(name, source, host=source_host, rules=rules, stats=stats,
                                              checkpoints=checkpoints, clock=clock, monotonic=monotonic))
            else:
                self.inputs.append(FileTailer(name, source, host=source_host, rules=rules, stats=stats,
                                              checkpoints=checkpoints, clock=clock, monotonic=monotonic))
        self._batch = _Batch([])
        self._last_scan = -1e18
        self._last_retention = -1e18

    # ---- the loop ---------------------------------------------------------------------------

    def run(self) -> None:
        """Until :attr:`stop` is set; then deliver what is complete and return."""
        try:
            while not self.stop.is_set():
                progressed = self.step()
                if not progressed:
                    self.stop.wait(self.config.poll_interval)
            self.flush()
        except Stopped:
            log.info("stopping with an undelivered batch; it is read again at the next start")

    def step(self) -> bool:
        """One round: maybe scan, read up to a batch, deliver when due. True if input was read."""
        now = self.monotonic()
        self.stats.loop_progress = self.stats.monotonic()
        cfg = self.config
        if now - self._last_scan >= cfg.glob_interval:
            self._last_scan = now
            for source in self.inputs:
                self._add(source.name, source.scan())
        read_any = False
        for source in self.inputs:
            room = cfg.batch.max_bytes - self._batch.size
            if room <= 0 or len(self._batch.records) >= cfg.batch.max_records:
                break
            records, nbytes = source.poll(room)
            self._add(source.name, records)
            read_any = read_any or nbytes > 0
        due = self._batch.started is not None and now - self._batch.started >= cfg.batch.max_wait
        full = len(self._batch.records) >= cfg.batch.max_records or self._batch.size >= cfg.batch.max_bytes
        if full or due or (not read_any and self._has_checkpoint_changes()):
            self.deliver()
        if now - self._last_retention >= cfg.retention_interval:
            self._last_retention = now
            self._retention()
        self._update_gauges()
        refused = take_refused(self.rules)
        for key, count in refused.items():
            self.stats.add2(self.stats.refused_events, key, count)
        self.stats.loop_progress = self.stats.monotonic()
        return read_any and not full

    def _add(self, source: str, records: list[LogRecord]) -> None:
        if not records:
            return
        if self._batch.started is None:
            self._batch.started = self.monotonic()
            self.stats.pending_since = self._batch.started
        self._batch.records.extend(records)
        self._batch.size += sum(len(r.message) for r in records)
        self._batch.by_input[source] = self._batch.by_input.get(source, 0) + len(records)
        self.stats.add(self.stats.records_read, source, len(records))

    def _has_checkpoint_changes(self) -> bool:
        return any(source.pending_checkpoints() != ({}, []) for source in self.inputs)

    def flush(self) -> None:
        """Deliver the records that are complete (open multi-line blocks stay unread: their
        checkpoint points at their start, so the next run rebuilds them whole)."""
        self.deliver()

    def deliver(self) -> None:
        records = self._batch.records
        updates: dict[str, str] = {}
        removals: list[str] = []
        for source in self.inputs:
            more, gone = source.pending_checkpoints()
            updates.update(more)
            removals.extend(gone)
        if not records and not updates and not removals:
            self._batch = _Batch([])
            return
        attempt = 0
        while True:
            try:
                if self.es is not None and records:
                    try:
                        self.es.deliver(records)
                    except DependencyUnavailable:
                        self.stats.add(self.stats.sink_errors, self.es.name)
                        raise
                keep = self.es is None or self.config.store.keep_records
                try:
                    inserted = self.store.write(records if keep else [], updates, removals)
                except DependencyUnavailable:
                    self.stats.add(self.stats.sink_errors, STORE_SINK)
                    raise
                break
            except DependencyUnavailable as exc:
                attempt += 1
                self.healthy = False
                self.last_error = str(exc)
                delay = min(self.config.retry_max, self.config.retry_initial * 2 ** (attempt - 1))
                sink = self.es.name if self.es is not None and "elasticsearch" in str(exc) else STORE_SINK
                self.stats.add(self.stats.sink_retries, sink)
                log.warning("delivery failed (%s); retrying in %.1fs, not reading meanwhile", exc, delay)
                self._update_gauges()
                # Waiting on purpose is not a stall: /healthz says "delivery failing" instead.
                self.stats.loop_progress = self.stats.monotonic()
                if self.stop.wait(delay):
                    raise Stopped() from exc
        self.healthy = True
        self.last_error = ""
        now = self.clock()
        self.stats.pending_since = None
        self.stats.last_commit = now
        if keep and records:
            self.stats.add(self.stats.duplicates, STORE_SINK, len(records) - inserted)
        for record in records:
            if record.job_id is not None:
                self.stats.saw_job(record.job_id, now)
            if record.event_kind is not None:
                self.stats.record_event(record.event_kind, record.job_id)
        for name, count in self._batch.by_input.items():
            self.stats.add(self.stats.records_stored, name, count)
        for source in self.inputs:
            source.committed()
        self._batch = _Batch([])

    def _retention(self) -> None:
        cfg = self.config.store
        if not cfg.keep_records and self.es is not None:
            return
        try:
            deleted = self.store.apply_retention(
                max_age_s=cfg.retention_days * 86400 if cfg.retention_days else None, max_bytes=cfg.max_bytes)
        except DependencyUnavailable as exc:
            log.warning("retention failed: %s", exc)
            return
        if deleted:
            log.info("retention removed %d records", deleted)
        self.stats.prune_jobs()

    def _update_gauges(self) -> None:
        total = 0
        for source in self.inputs:
            try:
                total += source.backlog_bytes()
            except OSError:
                continue
        self.stats.backlog_bytes = float(total)

    def health(self) -> tuple[bool, str]:
        """For /healthz, on the server's thread: a stalled read loop first (it cannot say so
        itself), then a failing delivery."""
        stalled = self.stats.loop_stalled_for()
        if stalled is not None:
            return False, (f"stalled: the read loop has made no progress for {stalled:.0f}s "
                           f"(stall_after {self.config.stall_after:g}s); an input may block it")
        return (True, "ok") if self.healthy else (False, f"delivery failing: {self.last_error}")

    def close(self) -> None:
        for source in self.inputs:
            source.close()
