"""What the job pages show, without HTTP: the charts, the timeline, the log viewer's pages and
context, the first cause of a failed job, the fleet at a glance, and the formatting of values.
The router and access rules are in :mod:`api.pages`."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

from api.diagnosis import HARDWARE_KINDS
from api.logsource import UnconfiguredLogSource
from api.models import SummaryResponse
from api.notify import first_cause
from api.service import JobService, record_out
from api.store import Job
from jobsight.errors import DependencyUnavailable, InvalidInput
from jobsight.logstore import LogRecord

log = logging.getLogger("jobsight.api")

LOG_PAGE = 50
CONTEXT_LINES = 8
# Alerts that mean a node's hardware is at fault (alerts/rules); the fleet page lists their nodes.
HARDWARE_ALERTS = frozenset({
    "GPUXidError", "GPULost", "GPUMissing", "GPUEccDoubleBitError", "GPUNVLinkErrors", "GPURowRemapFailure",
    "GPURecoveryActionRequired", "GPUPcieLinkDegraded", "RDMALinkDowned", "RDMAPhysicalLinkDown",
    "RDMALinkFlapping", "RDMAPortNotActive", "RDMALinkDegraded",
})


@dataclass(frozen=True)
class Chart:
    metric: str
    title: str
    unit: str
    scope: Literal["gpu", "node", "rank"]


CHARTS = (
    Chart("gpu_util", "GPU utilisation", "percent", "gpu"),
    Chart("gpu_memory_used", "GPU memory used", "bytes", "gpu"),
    Chart("gpu_power", "GPU power", "watts", "gpu"),
    Chart("gpu_temperature", "GPU temperature", "celsius", "gpu"),
    Chart("gpu_tensor_active", "Tensor pipes active", "ratio", "gpu"),
    Chart("rdma_rx_bytes", "RDMA received", "bytes_per_second", "node"),
    Chart("rdma_tx_bytes", "RDMA transmitted", "bytes_per_second", "node"),
    Chart("job_cpu", "Job CPU", "cores", "node"),
    Chart("job_memory", "Job memory (RSS)", "bytes", "node"),
    # Shown only for a job that reports its steps (jobsight.training): see charts_for.
    Chart("train_step_seconds", "Training step time", "seconds", "rank"),
)
# A rank this much slower than the job's median is drawn as slow (the JobSlowRank rule's factor).
SLOW_RANK = 1.3


def charts_for(summary: SummaryResponse) -> list[Chart]:
    """The job page's charts: the per-rank training chart only when the job reported steps."""
    return [c for c in CHARTS if c.scope != "rank" or summary.training is not None]


def training_marks(summary: SummaryResponse) -> dict[str, Any] | None:
    """What the training chart draws apart from the data: the hang (its time and the ranks that
    stopped first, in red) and the ranks slower than :data:`SLOW_RANK` x the median (thicker)."""
    training = summary.training
    if training is None:
        return None
    hang = training.hang
    return {
        "hang": {"t": hang.stopped_at.timestamp() if hang.stopped_at else None, "ranks": hang.ranks,
                 "detail": hang.detail} if hang is not None else None,
        "slow": [r.rank for r in training.slowest_ranks if (r.slowdown or 0.0) >= SLOW_RANK],
    }



# -- formatting -----------------------------------------------------------------------------------


def _moment(value: float | datetime | None) -> datetime | None:
    if value is None:
        return None
    return value if isinstance(value, datetime) else datetime.fromtimestamp(value, tz=UTC)


def fmt_time(value: float | datetime | None, with_date: bool = True) -> str:
    moment = _moment(value)
    if moment is None:
        return "—"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC" if with_date else "%H:%M:%S")


def iso_time(value: float | datetime | None) -> str:
    moment = _moment(value)
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z") if moment is not None else ""


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours} h {minutes:02d} min"
    if minutes:
        return f"{minutes} min {secs:02d} s"
    return f"{secs} s"


def fmt_bytes(value: float | None) -> str:
    if value is None:
        return "—"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def fmt_num(value: float | None, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "—"
    return f"{value:,.{digits}f}{suffix}"


# -- the timeline ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Moment:
    t: float
    kind: Literal["start", "fault", "nccl", "alert", "failure", "notification", "cause", "hang"]
    label: str


def timeline(job: Job, summary: SummaryResponse, notifications: Sequence[Any]) -> list[Moment]:
    """Job start, the causes (the first hardware fault among them), NCCL timeouts per rank,
    alerts firing, the last step of a hung job (its own step telemetry), the failure and the
    notification, oldest first."""
    out: list[Moment] = []
    if job.started_at is not None:
        out.append(Moment(job.started_at, "start", "job started"))
    diagnosis = summary.diagnosis
    if diagnosis is not None:
        hardware_seen = False
        for cause in diagnosis.causes[:3]:
            if cause.time is None:
                continue
            hardware = cause.kind in HARDWARE_KINDS and not hardware_seen
            hardware_seen = hardware_seen or hardware
            kind: Literal["fault", "cause"] = "fault" if hardware else "cause"
            prefix = "first hardware fault" if hardware else f"cause {cause.rank}"
            out.append(Moment(cause.time.timestamp(), kind, f"{prefix}: {cause.title}"))
    ranks: dict[str, float] = {}
    for event in summary.events:
        if event.event_kind != "nccl_timeout":
            continue
        who = f"rank {event.rank}" if event.rank is not None else event.host
        ranks.setdefault(who, event.timestamp.timestamp())
    for who, at in ranks.items():
        out.append(Moment(at, "nccl", f"NCCL timeout, {who}"))
    for alert in summary.alerts:
        where = " ".join(v for v in (alert.labels.get("Hostname"), _gpu_label(alert.labels)) if v)
        out.append(Moment(alert.starts_at.timestamp(), "alert",
                          f"alert {alert.alertname or '?'} firing" + (f" ({where})" if where else "")))
    failed_at = diagnosis.failed_at.timestamp() if diagnosis and diagnosis.failed_at else None
    if job.status == "failed":
        failure = failed_at or job.ended_at or job.failed_at
        if failure is not None:
            out.append(Moment(failure, "failure", f"job failed (exit code {job.exit_code})"
                              if job.exit_code is not None else "job failed"))
    hang = summary.training.hang if summary.training is not None else None
    if hang is not None and hang.stopped_at is not None:
        out.append(Moment(hang.stopped_at.timestamp(), "hang", f"training stopped: {hang.detail}"))
    for note in notifications:
        if note.sent_at is not None:
            out.append(Moment(note.sent_at, "notification", "notification sent"))
    out.sort(key=lambda m: m.t)
    return out


def _gpu_label(labels: Mapping[str, str]) -> str | None:
    gpu = labels.get("gpu")
    return f"GPU {gpu}" if gpu is not None else None


def first_cause_of(service: JobService, job: Job, budget: bool) -> str | None:
    """The first diagnosed cause of a failed job: from its notification, else (for the first few
    jobs of a page) from a fresh summary, which the query cache keeps for settled jobs."""
    if job.status != "failed":
        return None
    for note in reversed(service.store.list_notifications(job.job_id)):
        cause = first_cause(note.body)
        if cause:
            return cause
    if not budget:
        return None
    try:
        diagnosis = service.summary(job, "registered", strict=False).diagnosis
    except (DependencyUnavailable, InvalidInput) as exc:
        log.info("no first cause for job %s on /jobs: %s", job.job_id, exc)
        return None
    return diagnosis.causes[0].title if diagnosis and diagnosis.causes else None


def fault_of(summary: SummaryResponse) -> dict[str, Any] | None:
    """The first hardware fault the diagnosis names (time, host, GPU): marked on the charts."""
    if summary.diagnosis is None:
        return None
    for cause in summary.diagnosis.causes:
        if cause.kind in HARDWARE_KINDS and cause.time is not None:
            return {"t": cause.time.timestamp(), "host": cause.host, "gpu": cause.gpu, "title": cause.title}
    return None


@dataclass
class LogView:
    q: str = ""
    kind: str = ""
    rank: str = ""
    host: str = ""
    records: list[dict[str, Any]] = field(default_factory=list)
    next_cursor: str | None = None
    error: str | None = None
    context: list[dict[str, Any]] | None = None
    context_of: str | None = None
    hosts: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    filtered: bool = False


def log_view(service: JobService, job: Job, params: Mapping[str, str]) -> LogView:
    hosts, _ = service.hosts_and_gpus(job)
    view = LogView(q=(params.get("q") or "")[:1000], kind=(params.get("kind") or "")[:64],
                   rank=(params.get("rank") or "")[:8], host=(params.get("host") or "")[:253], hosts=hosts,
                   kinds=sorted({"nccl_timeout", "nccl_error", "gpu_xid", "gpu_fallen_off_bus", "cuda_oom",
                                 "child_failed", "process_exit", "ecc_error", "oom_killed"}))
    view.filtered = any((view.q, view.kind, view.rank, view.host))
    if isinstance(service.logs, UnconfiguredLogSource):
        view.error = "No log store is configured."
        return view
    rank: int | None = None
    if view.rank:
        if not view.rank.isdigit():
            view.error = "rank must be a number"
            return view
        rank = int(view.rank)
    kind = view.kind or None
    if kind is not None and not kind.replace("_", "").isalnum():
        view.error = "kind must be a word like nccl_timeout"
        return view
    cursor = params.get("cursor") or None
    try:
        context_id = params.get("context")
        if context_id:
            view.context = _context(service, job, context_id, params.get("at") or "")
            view.context_of = context_id
        records, view.next_cursor = _search(service, job, view.q or None, kind, rank, view.host or None,
                                            cursor)
        view.records = [record_out(r) for r in records]
    except (DependencyUnavailable, InvalidInput) as exc:
        view.error = str(exc)
    return view


def _search(service: JobService, job: Job, q: str | None, kind: str | None, rank: int | None,
            host: str | None, cursor: str | None) -> tuple[list[LogRecord], str | None]:
    """One page of the job's log lines, oldest first. The store has no host filter, so with one
    the page is filled batch by batch, each batch no larger than what is still wanted: every
    match of a batch fits, and the store's cursor after it is exact."""
    found: list[LogRecord] = []
    for _ in range(20):
        wanted = LOG_PAGE - len(found)
        page = service.logs.search(job_id=job.job_id, q=q, kind=kind, rank=rank, limit=wanted, cursor=cursor)
        found += [r for r in page.records if host is None or r.host == host]
        cursor = page.next_cursor
        if cursor is None or len(found) >= LOG_PAGE or host is None:
            break
    return found, cursor


def _context(service: JobService, job: Job, record_id: str, at_text: str) -> list[dict[str, Any]]:
    """The lines of the same file around one record: what came just before and after it. The
    store has no file filter, so the window around the line's time widens until it holds enough
    lines of that file, or as many records as one search returns."""
    try:
        at = float(at_text)
    except ValueError:
        raise InvalidInput("the context link is missing the line's time") from None
    found: list[LogRecord] = []
    for half in (60.0, 600.0, 3600.0, 6 * 3600.0):
        page = service.logs.search(job_id=job.job_id, since=at - half, until=at + half + 0.001, limit=1000)
        target = next((r for r in page.records if r.record_id == record_id), None)
        if target is None:
            if page.next_cursor is not None:
                break  # this window is already too full to hold the line: keep the last answer
            continue
        same = [r for r in page.records if r.host == target.host and r.path == target.path]
        index = same.index(target)
        found = same[max(0, index - CONTEXT_LINES): index + CONTEXT_LINES + 1]
        enough = index >= CONTEXT_LINES and len(same) - index > CONTEXT_LINES
        if enough or page.next_cursor is not None:
            break
    return [{**record_out(r), "match": r.record_id == record_id} for r in found]


def fleet_view(service: JobService, clock: Callable[[], float]) -> dict[str, Any]:
    now = clock()
    today = datetime.fromtimestamp(now, tz=UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    midnight = today.timestamp()
    running = service.store.list_jobs(status="running", limit=1000)
    failed = [j for j in service.store.list_jobs(status="failed", since=midnight, limit=1000)
              if (j.ended_at or j.failed_at or now) >= midnight]
    warnings: list[str] = []
    gpus: dict[str, int] | None = None
    try:
        gpus = _gpu_states(service)
    except DependencyUnavailable as exc:
        warnings.append(f"GPU states unavailable: {exc}")
    firing = service.store.list_alerts(status="firing", limit=200)
    faults: dict[str, list[str]] = {}
    for alert in service.store.list_alerts(limit=1000):
        if alert.alertname in HARDWARE_ALERTS and alert.starts_at >= now - 86400:
            host = alert.labels.get("Hostname") or alert.labels.get("instance") or "?"
            what = alert.alertname + (f" GPU {alert.labels['gpu']}" if "gpu" in alert.labels else "")
            if alert.labels.get("xid"):
                what += f" (XID {alert.labels['xid']})"
            if what not in faults.setdefault(host, []):
                faults[host].append(what)
    return {"running": running, "failed": failed, "gpus": gpus, "firing": firing,
            "faults": sorted(faults.items()), "warnings": warnings, "since": midnight}


def _gpu_states(service: JobService) -> dict[str, int]:
    """Busy (held by a job), idle, lost (``jobsight_gpu_up`` 0), over the last five minutes."""
    up = service.prometheus.query("max by (Hostname, gpu) (last_over_time(jobsight_gpu_up[5m]))")
    held = service.prometheus.query("max by (Hostname, gpu) (last_over_time(jobsight_gpu_job_info[5m]))")
    busy_keys = {(s.labels.get("Hostname"), s.labels.get("gpu")) for s in held}
    states = {"busy": 0, "idle": 0, "lost": 0}
    for sample in up:
        key = (sample.labels.get("Hostname"), sample.labels.get("gpu"))
        if sample.value < 1:
            states["lost"] += 1
        elif key in busy_keys:
            states["busy"] += 1
        else:
            states["idle"] += 1
    return states
