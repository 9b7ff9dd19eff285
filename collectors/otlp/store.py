"""The latest training telemetry per job and rank, as received over OTLP; bounded.

What a request may add is limited, because any process on the node can post to the receiver:

- only the instruments ``jobsight.training`` defines are kept, each with its expected type;
  everything else is refused and counted (``reason="unknown_metric"``, ``"type"``);
- label values are validated: the job id against the job-id character set, the rank and local rank
  as small integers, the GPU and phase names against short safe patterns;
- at most ``max_jobs`` jobs, and at most ``max_series_per_job`` series per job; what would exceed
  the cap is dropped and counted per job (``jobsight_otlp_series_dropped_total{job_id}``);
- a rank that stops exporting (its process ended) expires after ``expire_after_s`` with all its
  series; a job goes with its last rank.

A request is applied resource by resource; a refused point never affects another job's series.
Cumulative points (OpenTelemetry's default) replace the stored value, delta points add to it.
"""

from __future__ import annotations

import itertools
import math
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import ExportMetricsServiceRequest
from opentelemetry.proto.common.v1.common_pb2 import KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import AggregationTemporality, Metric

from jobsight import training
from jobsight.jobid import is_valid_job_id

COUNTER = "counter"
GAUGE = "gauge"
HISTOGRAM = "histogram"


@dataclass(frozen=True)
class Family:
    """Where an OTLP instrument goes: the family name after ``jobsight_train_`` and its type."""

    name: str
    kind: str
    phased: bool = False  # has a ``phase`` label


FAMILIES: dict[str, Family] = {
    training.STEP_DURATION: Family("step_seconds", HISTOGRAM),
    training.PHASE_DURATION: Family("phase_seconds", HISTOGRAM, phased=True),
    training.STEPS: Family("steps", COUNTER),
    training.SAMPLES: Family("samples", COUNTER),
    training.TOKENS: Family("tokens", COUNTER),
    training.EXPORT_FAILURES: Family("export_failures", COUNTER),
    training.LAST_STEP: Family("last_step_timestamp_seconds", GAUGE),
    training.LOSS: Family("loss", GAUGE),
    training.PHASE_ENTERED: Family("phase_entered_timestamp_seconds", GAUGE, phased=True),
}
_PHASE_ENTERED = FAMILIES[training.PHASE_ENTERED].name

DEFAULT_MAX_JOBS = 256
DEFAULT_MAX_SERIES_PER_JOB = 2048
# Trackers export every 10 s: six missed exports mean the process is gone (or frozen so hard that
# its export thread cannot run, which JobHung does not need to see: the job stops being "running").
DEFAULT_EXPIRE_AFTER_S = 60.0
MAX_RANK = 1 << 20
MAX_BUCKETS = 64
_GPU_RE = re.compile(r"^[0-9]{1,4}$")
_PHASE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,31}$")


@dataclass
class Histogram:
    bounds: tuple[float, ...]
    counts: list[int]  # per bucket, not cumulative; len(bounds) + 1
    sum: float
    count: int


@dataclass
class RankState:
    job_id: str
    rank: int
    info: dict[str, str]
    seen: float
    values: dict[tuple[str, str], float] = field(default_factory=dict)  # (family, phase) -> value
    histograms: dict[tuple[str, str], Histogram] = field(default_factory=dict)

    @property
    def series(self) -> int:
        # The info series, plus one per value; a histogram's buckets count as one series here, as
        # its bucket array has a fixed bounded length.
        return 1 + len(self.values) + len(self.histograms)


@dataclass
class JobState:
    ranks: dict[int, RankState] = field(default_factory=dict)
    dropped: int = 0
    series: int = 0  # sum of its ranks' series, kept up to date as keys come and go


@dataclass
class IngestResult:
    accepted: int = 0
    rejected: int = 0
    reasons: Counter[str] = field(default_factory=Counter)

    def reject(self, reason: str, points: int = 1) -> None:
        if points:
            self.rejected += points
            self.reasons[reason] += points

    def message(self) -> str:
        return ", ".join(f"{count} {reason}" for reason, count in sorted(self.reasons.items()))


@dataclass(frozen=True)
class SenderCheck:
    """The job of the process that sent a request, as its scheduler cgroup says (None: not found:
    another network namespace, or no scheduler cgroup), and whether one is required."""

    job_id: str | None
    required: bool = False


@dataclass(frozen=True)
class Snapshot:
    ranks: tuple[RankState, ...]
    dropped_by_job: dict[str, int]
    rejected: dict[str, int]
    jobs: int


def _any_value(value: Any) -> str | int | None:
    kind = value.WhichOneof("value")
    if kind == "string_value":
        return str(value.string_value)
    if kind == "int_value":
        return int(value.int_value)
    return None


def _attributes(pairs: Iterable[KeyValue]) -> dict[str, str | int]:
    out: dict[str, str | int] = {}
    for pair in pairs:
        value = _any_value(pair.value)
        if value is not None:
            out[pair.key] = value
    return out


def _small_int(value: str | int | None) -> int | None:
    if isinstance(value, str):
        value = int(value) if value.isdigit() and len(value) <= 7 else None
    if isinstance(value, int) and 0 <= value < MAX_RANK:
        return value
    return None


def _points(metric: Metric) -> int:
    kind = metric.WhichOneof("data")
    # Counted for every kind, those refused (exponential histograms, summaries) too.
    return len(getattr(metric, kind).data_points) if kind is not None else 0


class TrainingStore:
    """Thread-safe: the HTTP server's threads ingest while scrapes take snapshots."""

    def __init__(
        self,
        max_jobs: int = DEFAULT_MAX_JOBS,
        max_series_per_job: int = DEFAULT_MAX_SERIES_PER_JOB,
        expire_after_s: float = DEFAULT_EXPIRE_AFTER_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_jobs = max_jobs
        self.max_series_per_job = max_series_per_job
        self.expire_after_s = expire_after_s
        self._clock = clock
        self._lock = threading.Lock()
        self._jobs: dict[str, JobState] = {}
        self._rejected: Counter[str] = Counter()

    def ingest(self, request: ExportMetricsServiceRequest, sender: SenderCheck | None = None) -> IngestResult:
        """``sender``: what the connection says of the sender's job (collectors/otlp/peer.py);
        None when it was not checked."""
        result = IngestResult()
        with self._lock:
            now = self._clock()
            self._expire(now)
            for resource_metrics in request.resource_metrics:
                self._ingest_resource(resource_metrics, now, result, sender)
            self._rejected.update(result.reasons)
        return result

    def _ingest_resource(self, resource_metrics: Any, now: float, result: IngestResult,
                         sender: SenderCheck | None) -> None:
        metrics = [m for scope in resource_metrics.scope_metrics for m in scope.metrics]
        total = sum(_points(m) for m in metrics)
        attrs = _attributes(resource_metrics.resource.attributes)
        job_id = attrs.get(training.ATTR_JOB_ID)
        rank = _small_int(attrs.get(training.ATTR_RANK))
        if not isinstance(job_id, str) or not is_valid_job_id(job_id):
            result.reject("job_id", total)
            return
        if sender is not None:
            if sender.job_id is not None and sender.job_id != job_id:
                # The scheduler put the sending process in another job: the claim is not its own.
                result.reject("not_the_senders_job", total)
                return
            if sender.job_id is None and sender.required:
                result.reject("sender_job_unknown", total)
                return
        if rank is None:
            result.reject("rank", total)
            return
        job = self._jobs.get(job_id)
        if job is None:
            if len(self._jobs) >= self.max_jobs:
                result.reject("too_many_jobs", total)
                return
            job = self._jobs[job_id] = JobState()
        state = job.ranks.get(rank)
        if state is None:
            if job.series + 1 > self.max_series_per_job:
                job.dropped += total
                result.reject("series_cap", total)
                return
            state = job.ranks[rank] = RankState(job_id, rank, {}, now)
            job.series += 1
        state.seen = now
        state.info = self._info(attrs)
        # Only the phase a rank is in at export time is reported: a phase it has left must go.
        for key in [key for key in state.values if key[0] == _PHASE_ENTERED]:
            del state.values[key]
            job.series -= 1
        for metric in metrics:
            self._ingest_metric(job, state, metric, result)

    @staticmethod
    def _info(attrs: dict[str, str | int]) -> dict[str, str]:
        info: dict[str, str] = {}
        for key, label in (
            (training.ATTR_LOCAL_RANK, "local_rank"),
            (training.ATTR_WORLD_SIZE, "world_size"),
        ):
            value = _small_int(attrs.get(key))
            if value is not None:
                info[label] = str(value)
        gpu = attrs.get(training.ATTR_GPU)
        if gpu is not None and _GPU_RE.match(str(gpu)):
            info["gpu"] = str(gpu)
        return info

    def _ingest_metric(self, job: JobState, state: RankState, metric: Metric, result: IngestResult) -> None:
        family = FAMILIES.get(metric.name)
        points = _points(metric)
        if family is None:
            result.reject("unknown_metric", points)
            return
        kind = metric.WhichOneof("data")
        expected = {COUNTER: "sum", GAUGE: "gauge", HISTOGRAM: "histogram"}[family.kind]
        if kind != expected:
            result.reject("type", points)
            return
        data = getattr(metric, kind)
        delta = (
            getattr(data, "aggregation_temporality", 0)
            == AggregationTemporality.AGGREGATION_TEMPORALITY_DELTA
        )
        for point in data.data_points:
            phase = ""
            if family.phased:
                value = _attributes(point.attributes).get(training.ATTR_PHASE)
                if not isinstance(value, str) or not _PHASE_RE.match(value):
                    result.reject("phase", 1)
                    continue
                phase = value
            key = (family.name, phase)
            new = key not in state.values and key not in state.histograms
            if new and job.series + 1 > self.max_series_per_job:
                job.dropped += 1
                result.reject("series_cap", 1)
                continue
            if family.kind == HISTOGRAM:
                ok = self._histogram(state, key, point, delta)
            else:
                ok = self._number(state, key, point, delta and family.kind == COUNTER)
            if ok:
                result.accepted += 1
                job.series += new
            else:
                result.reject("value", 1)

    @staticmethod
    def _number(state: RankState, key: tuple[str, str], point: Any, add: bool) -> bool:
        kind = point.WhichOneof("value")
        if kind == "as_double":
            value = float(point.as_double)
        elif kind == "as_int":
            value = float(point.as_int)
        else:
            return False
        # Never NaN or inf on /metrics: an unknown value is left out.
        if not math.isfinite(value):
            return False
        state.values[key] = state.values.get(key, 0.0) + value if add else value
        return True

    @staticmethod
    def _histogram(state: RankState, key: tuple[str, str], point: Any, add: bool) -> bool:
        bounds = tuple(float(b) for b in point.explicit_bounds)
        counts = [int(c) for c in point.bucket_counts]
        if (
            len(bounds) > MAX_BUCKETS
            or len(counts) != len(bounds) + 1
            or any(not math.isfinite(b) for b in bounds)
            or any(b >= c for b, c in itertools.pairwise(bounds))
            or not point.HasField("sum")
            or not math.isfinite(point.sum)
            or sum(counts) != point.count
        ):
            return False
        old = state.histograms.get(key)
        if add and old is not None and old.bounds == bounds:
            old.counts = [a + b for a, b in zip(old.counts, counts, strict=True)]
            old.sum += float(point.sum)
            old.count += int(point.count)
        else:
            state.histograms[key] = Histogram(bounds, counts, float(point.sum), int(point.count))
        return True

    def _expire(self, now: float) -> None:
        cutoff = now - self.expire_after_s
        for job_id in list(self._jobs):
            job = self._jobs[job_id]
            for rank in [rank for rank, state in job.ranks.items() if state.seen < cutoff]:
                job.series -= job.ranks.pop(rank).series
            if not job.ranks:
                del self._jobs[job_id]

    def snapshot(self) -> Snapshot:
        """Copies of the live ranks, for one scrape; expires first."""
        with self._lock:
            self._expire(self._clock())
            ranks = tuple(
                RankState(
                    state.job_id,
                    state.rank,
                    dict(state.info),
                    state.seen,
                    dict(state.values),
                    {
                        k: Histogram(h.bounds, list(h.counts), h.sum, h.count)
                        for k, h in state.histograms.items()
                    },
                )
                for job in self._jobs.values()
                for state in job.ranks.values()
            )
            dropped = {job_id: job.dropped for job_id, job in self._jobs.items()}
            return Snapshot(ranks, dropped, dict(self._rejected), len(self._jobs))
