"""The collector's counters and gauges, and the Prometheus collector that exposes them.

The main loop updates plain dicts under a lock; :class:`LogMetrics` builds fresh metric families
from them on each scrape (client_python's custom-collector pattern), so label sets of jobs that
went quiet can be dropped (bounded cardinality: a job's series go after ``job_ttl`` seconds).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

JOB_TTL_S = 24 * 3600.0


@dataclass
class LogStats:
    clock: Callable[[], float] = time.time
    job_ttl: float = JOB_TTL_S
    lock: threading.Lock = field(default_factory=threading.Lock)
    records_read: dict[str, int] = field(default_factory=dict)  # source
    records_stored: dict[str, int] = field(default_factory=dict)  # source
    duplicates: dict[str, int] = field(default_factory=dict)  # sink
    events: dict[tuple[str, str], int] = field(default_factory=dict)  # (kind, job_id)
    job_last_record: dict[str, float] = field(default_factory=dict)
    sink_errors: dict[str, int] = field(default_factory=dict)
    sink_retries: dict[str, int] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)
    truncated_lines: dict[str, int] = field(default_factory=dict)
    dropped_bytes: dict[str, int] = field(default_factory=dict)
    multiline_truncated: dict[str, int] = field(default_factory=dict)
    read_errors: dict[tuple[str, str], int] = field(default_factory=dict)  # (source, reason)
    skipped_files: dict[tuple[str, str], int] = field(default_factory=dict)
    lost: dict[tuple[str, str], int] = field(default_factory=dict)
    # (source type, kind): hardware events a user-writable source claimed; not believed
    refused_events: dict[tuple[str, str], int] = field(default_factory=dict)
    files_open: dict[str, int] = field(default_factory=dict)
    backlog_bytes: float = 0.0
    monotonic: Callable[[], float] = time.monotonic
    pending_since: float | None = None  # monotonic time the oldest uncommitted record was read
    last_commit: float | None = None
    # The read loop's watchdog: monotonic time of its last completed round, and how long without
    # one counts as stalled (config `stall_after`).
    loop_progress: float | None = None
    stall_after: float = 120.0

    def loop_stalled_for(self) -> float | None:
        """Seconds since the read loop last made progress when that is over ``stall_after``,
        else None. Read by /healthz and /metrics on their own threads: a loop blocked for good
        (an open() that never returns) cannot report that itself."""
        since = self.loop_progress
        if since is None:
            return None
        age = self.monotonic() - since
        return age if age > self.stall_after else None

    def delivery_lag(self) -> float:
        """Age of the oldest record read but not yet committed; 0 when everything read is
        delivered. Grows while a sink is down, which is what an alert wants to see."""
        since = self.pending_since
        return 0.0 if since is None else max(0.0, self.monotonic() - since)

    def add(self, table: dict[str, int], key: str, value: int = 1) -> None:
        with self.lock:
            table[key] = table.get(key, 0) + value

    def add2(self, table: dict[tuple[str, str], int], key: tuple[str, str], value: int = 1) -> None:
        with self.lock:
            table[key] = table.get(key, 0) + value

    def record_event(self, kind: str, job_id: str | None) -> None:
        self.add2(self.events, (kind, job_id or ""))

    def saw_job(self, job_id: str, when: float) -> None:
        with self.lock:
            if when > self.job_last_record.get(job_id, 0.0):
                self.job_last_record[job_id] = when

    def prune_jobs(self) -> None:
        cutoff = self.clock() - self.job_ttl
        with self.lock:
            stale = {job for job, seen in self.job_last_record.items() if seen < cutoff}
            for job in stale:
                del self.job_last_record[job]
            for key in [k for k in self.events if k[1] in stale]:
                del self.events[key]


class LogMetrics:
    """Prometheus collector over :class:`LogStats`."""

    def __init__(self, stats: LogStats) -> None:
        self.stats = stats

    def collect(self) -> Iterator[Metric]:
        s = self.stats
        with s.lock:
            yield _counter("jobsight_log_records_read", "Records built from input lines, by source.",
                           ["source"], s.records_read)
            yield _counter("jobsight_log_records_stored", "Records newly accepted by the sink, by source.",
                           ["source"], s.records_stored)
            yield _counter("jobsight_log_records_duplicate",
                           "Records the sink already had (re-read after a restart), by sink.", ["sink"],
                           s.duplicates)
            yield _counter("jobsight_log_events", "Events (records that matched a rule), by kind and job.",
                           ["kind", "job_id"], s.events)
            last = GaugeMetricFamily("jobsight_log_job_last_record_timestamp_seconds",
                                     "When the collector last stored a record of the job (unix seconds).",
                                     labels=["job_id"])
            for job, when in sorted(s.job_last_record.items()):
                last.add_metric([job], when)
            yield last
            yield _counter("jobsight_log_sink_errors", "Failed deliveries to a sink, by sink.", ["sink"],
                           s.sink_errors)
            yield _counter("jobsight_log_sink_retries",
                           "Deliveries (whole batches or bulk items) retried after a failure, by sink.",
                           ["sink"], s.sink_retries)
            yield _counter("jobsight_log_dead_letters",
                           "Records a sink rejected for good (written to the dead-letter file), by sink.",
                           ["sink"], s.dead_letters)
            yield _counter("jobsight_log_truncated_lines",
                           "Lines longer than max_line_bytes, stored truncated, by source.", ["source"],
                           s.truncated_lines)
            yield _counter("jobsight_log_dropped_bytes",
                           "Bytes dropped by policy (the rest of over-long lines), by source.", ["source"],
                           s.dropped_bytes)
            yield _counter("jobsight_log_multiline_truncated",
                           "Multi-line blocks cut at max_lines or max_bytes, by source.", ["source"],
                           s.multiline_truncated)
            yield _counter("jobsight_log_read_errors",
                           "Errors opening or reading inputs, by source and reason.",
                           ["source", "reason"], s.read_errors)
            yield _counter("jobsight_log_skipped_files", "Files not read, by source and reason (binary).",
                           ["source", "reason"], s.skipped_files)
            yield _counter("jobsight_log_lost",
                           "Input known to be lost before it was read, by source and reason "
                           "(kmsg_overwritten: records; truncated: files whose unread rest was not found).",
                           ["source", "reason"], s.lost)
            yield _counter("jobsight_log_refused_events",
                           "Hardware events (XID, ECC, link down, kernel OOM kill) claimed by a "
                           "user-writable source and not believed: only the kernel's log is, by source "
                           "type and kind.", ["source_type", "kind"], s.refused_events)
            if s.loop_progress is not None:
                yield GaugeMetricFamily(
                    "jobsight_log_loop_last_progress_timestamp_seconds",
                    "When the read loop last completed a round (unix seconds).",
                    value=s.clock() - (s.monotonic() - s.loop_progress))
            yield GaugeMetricFamily(
                "jobsight_log_stalled",
                "1 when the read loop has made no progress for longer than stall_after (an input "
                "blocks it); /healthz then answers 503.", value=0.0 if s.loop_stalled_for() is None else 1.0)
            files = GaugeMetricFamily("jobsight_log_files_open", "Files being tailed, by source.",
                                      labels=["source"])
            for source, count in sorted(s.files_open.items()):
                files.add_metric([source], count)
            yield files
            yield GaugeMetricFamily("jobsight_log_backlog_bytes",
                                    "Bytes in tailed files not yet delivered (file size minus checkpoint).",
                                    value=s.backlog_bytes)
            yield GaugeMetricFamily("jobsight_log_delivery_lag_seconds",
                                    "Age of the oldest record read but not yet delivered (0 when none).",
                                    value=s.delivery_lag())
            if s.last_commit is not None:
                yield GaugeMetricFamily("jobsight_log_last_commit_timestamp_seconds",
                                        "When the last batch was committed (unix seconds).",
                                        value=s.last_commit)


def _counter(name: str, doc: str, labels: list[str], table: Mapping[Any, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, doc, labels=labels)
    for key, value in sorted(table.items()):
        values: tuple[str, ...] = key if isinstance(key, tuple) else (str(key),)
        family.add_metric(list(values), value)
    return family
