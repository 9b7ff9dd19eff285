"""What the routes do, without HTTP: tenant visibility, discovered jobs, metrics, summaries,
diagnosis, links, the alert webhook and notification delivery. Every dependency is injected."""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from api.annotations import JobAnnotator, NoAnnotations
from api.cache import ResultCache
from api.catalog import CATALOG, rate_window
from api.diagnosis import Finding, diagnose
from api.links import build_links
from api.logsource import LogSource, UnconfiguredLogSource
from api.models import (
    EARLIEST,
    LATEST,
    AlertOut,
    Diagnosis,
    JobAnnotationsIn,
    JobIn,
    Links,
    LogRecordOut,
    SummaryResponse,
    TrainingSummary,
    WebhookPayload,
    WebhookResult,
)
from api.notify import Notifier, alert_message, failure_message
from api.prometheus import PrometheusClient, RangeSeries, choose_step, duration, matcher
from api.scope import JobScope, resolve
from api.settings import ApiSettings
from api.signing import Signer
from api.store import Alert, IncomingAlert, Job, JobStore
from api.summary import JobFacts, PromFacts, findings_from_alerts, findings_from_events, overall
from api.tensorboard import TensorBoardManager
from api.training import training_facts
from jobsight.errors import DependencyUnavailable, InvalidInput
from jobsight.jobid import is_valid_job_id
from jobsight.logstore import LogRecord

log = logging.getLogger("jobsight.api")

MAX_RANGE_SECONDS = 400 * 24 * 3600
# Points per series of a metrics answer when the caller names no step.
DEFAULT_POINTS = 720
DISCOVERY_LOOKBACK = "5m"
FAILURE_ALERTS = frozenset({"JobFailed"})
# Alerts about a job that has not failed but needs its owner now (a hang burns every GPU of the
# job until a watchdog or a person stops it): each firing one is notified once to the tenant.
NOTIFY_ALERTS = frozenset({"JobHung"})
# How long a replica may take to send one notification before another may take it over: far above
# apprise's own timeouts (10 s per target), so a slow send is not sent twice.
NOTIFY_LEASE_SECONDS = 300.0


class NotFound(Exception):
    """The job does not exist, or the caller may not see it (both answer 404)."""


class Forbidden(Exception):
    """The caller is authenticated but not allowed to do this."""


@dataclass(frozen=True)
class Caller:
    """Who holds the token: its tenant and its role (``tenant``, ``scheduler`` or ``admin``)."""

    tenant: str
    role: str = "tenant"

    @property
    def admin(self) -> bool:
        return self.role == "admin"

    @property
    def scheduler(self) -> bool:
        return self.role == "scheduler"

    @property
    def all_tenants(self) -> bool:
        """Sees registry records of every tenant (admins; schedulers, which wrote them)."""
        return self.role in ("admin", "scheduler")


def ts(value: datetime | None) -> float | None:
    return value.timestamp() if value is not None else None


def iso(value: float | None) -> datetime | None:
    return datetime.fromtimestamp(value, tz=UTC) if value is not None else None


def job_out(job: Job, source: str = "registered") -> dict[str, Any]:
    return {
        "job_id": job.job_id, "source": source, "tenant": job.tenant or None, "name": job.name,
        "user": job.user, "scheduler": job.scheduler, "nodes": list(job.nodes), "gpus": list(job.gpus),
        "started_at": iso(job.started_at), "ended_at": iso(job.ended_at), "status": job.status,
        "exit_code": job.exit_code, "reason": job.reason, "tensorboard_logdir": job.tensorboard_logdir,
        "labels": dict(job.labels), "created_at": iso(job.created_at) if job.created_at else None,
        "updated_at": iso(job.updated_at) if job.updated_at else None,
    }


def record_out(record: LogRecord) -> dict[str, Any]:
    return {
        "timestamp": iso(record.timestamp), "host": record.host, "job_id": record.job_id, "path": record.path,
        "offset": record.offset, "message": record.message, "stream": record.stream, "rank": record.rank,
        "level": record.level, "source": record.source, "event_kind": record.event_kind,
        "event_severity": record.event_severity, "event_fields": dict(record.event_fields),
        "record_id": record.record_id,
    }


def alert_out(alert: Alert) -> dict[str, Any]:
    return {
        "id": alert.id, "fingerprint": alert.fingerprint, "alertname": alert.alertname,
        "status": alert.status,
        "labels": alert.labels, "annotations": alert.annotations, "starts_at": iso(alert.starts_at),
        "ends_at": iso(alert.ends_at), "received_at": iso(alert.received_at), "job_ids": alert.job_ids,
    }


class JobService:
    def __init__(self, settings: ApiSettings, store: JobStore, prometheus: PrometheusClient, logs: LogSource,
                 notifier: Notifier, tensorboard: TensorBoardManager, executor: Executor,
                 clock: Callable[[], float] = time.time, annotator: JobAnnotator | None = None,
                 signer: Signer | None = None) -> None:
        self.settings = settings
        # Signs the job page links that notifications and /links carry (api/pages.py).
        self.signer = signer
        self.annotator: JobAnnotator = annotator or NoAnnotations()
        self.store = store
        self.prometheus = prometheus
        self.logs = logs
        self.notifier = notifier
        self.tensorboard = tensorboard
        self.executor = executor
        self.clock = clock
        self.facts = JobFacts(prometheus, logs, executor, clock,
                              rollup_after=settings.summary_rollup_after_seconds)
        self.cache = ResultCache(settings.query_cache_seconds, settings.query_cache_entries)
        self.api_url = settings.public_url or f"http://{settings.listen}"

    # -- visibility ---------------------------------------------------------------------------

    def visible_job(self, job_id: str, caller: Caller) -> tuple[Job, str]:
        job = self.store.get_job(job_id)
        if job is not None:
            if not caller.all_tenants and job.tenant != caller.tenant:
                raise NotFound(job_id)
            return job, "registered"
        if caller.admin:
            discovered = self.discovered(job_id)
            if job_id in discovered:
                return discovered[job_id], "discovered"
        raise NotFound(job_id)

    def discovered(self, job_id: str | None = None) -> dict[str, Job]:
        """Jobs that exporters currently report holding GPUs (``jobsight_gpu_job_info``)."""
        selector = f"{{{matcher('job_id', job_id)}}}" if job_id is not None else ""
        # An explicit time: VictoriaMetrics answers "now" with its latency offset applied.
        samples = self.prometheus.query(
            "max by (job_id, Hostname, gpu, UUID) "
            f"(last_over_time(jobsight_gpu_job_info{selector}[{DISCOVERY_LOOKBACK}]))",
            at=self.clock(),
        )
        gpus: dict[str, list[dict[str, Any]]] = {}
        for sample in samples:
            found = sample.labels.get("job_id", "")
            host = sample.labels.get("Hostname")
            if not is_valid_job_id(found) or not host:
                continue
            try:
                index = int(sample.labels.get("gpu", ""))
            except ValueError:
                continue
            gpus.setdefault(found, []).append({"host": host, "gpu": index, "uuid": sample.labels.get("UUID")})
        return {
            found: Job(job_id=found, tenant="", nodes=sorted({g["host"] for g in items}),
                       gpus=sorted(items, key=lambda g: (g["host"], g["gpu"])), status="running")
            for found, items in gpus.items()
        }

    # -- jobs -----------------------------------------------------------------------------------

    def upsert(self, job_id: str, body: JobIn, caller: Caller) -> tuple[Job, bool]:
        """Register or finish a job: a scheduler's or an admin's right. A tenant may do it only
        where ``tenants_may_register_jobs`` is set, and then only for its own tenant: otherwise the
        first tenant to register a job id would own that job's logs and metrics."""
        tenant = body.tenant or caller.tenant
        if not caller.all_tenants:
            if not self.settings.tenants_may_register_jobs:
                raise Forbidden("registering jobs needs a scheduler or admin token; a tenant may "
                                "annotate its jobs with PATCH (or set tenants_may_register_jobs)")
            if tenant != caller.tenant:
                raise Forbidden("only schedulers and admins may register a job for another tenant")
        existing = self.store.get_job(job_id)
        if existing is not None and not caller.all_tenants and existing.tenant != caller.tenant:
            # Same answer as for a job that does not exist: ids of other tenants stay hidden.
            raise NotFound(job_id)
        given = body.model_fields_set

        def kept(field: str, value: Any) -> Any:
            # What the tenant annotated survives a scheduler's update that does not mention it.
            return getattr(existing, field) if existing is not None and field not in given else value

        job = Job(
            job_id=job_id, tenant=tenant, name=kept("name", body.name), user=body.user,
            scheduler=body.scheduler, nodes=list(dict.fromkeys(body.nodes)),
            gpus=[g.model_dump() for g in body.gpus], started_at=ts(body.started_at),
            ended_at=ts(body.ended_at), status=body.status, exit_code=body.exit_code, reason=body.reason,
            tensorboard_logdir=kept("tensorboard_logdir", body.tensorboard_logdir),
            labels=dict(kept("labels", body.labels)),
        )
        result = self.store.upsert_job(job, notify_targets=len(self.settings.notify.get(tenant, [])))
        if result.created:
            started = result.job.started_at or self.clock()
            name = f" ({result.job.name})" if result.job.name else ""
            # Off the request path: Grafana being slow or down must not slow job registration.
            self.executor.submit(self.annotator.annotate, job_id, f"job {job_id}{name} started",
                                 int(started * 1000), ["started"])
        return result.job, result.created

    def annotate(self, job_id: str, body: JobAnnotationsIn, caller: Caller) -> Job:
        """What a job's tenant may change about it: the fields that describe it, not the facts a
        scheduler reports (tenant, hosts, GPUs, times, status)."""
        if caller.scheduler:
            raise Forbidden("a scheduler token registers and finishes jobs; annotations are the tenant's")
        changes = body.model_dump(include=body.model_fields_set)
        if changes.get("labels") is None:
            changes.pop("labels", None)
        job = self.store.annotate_job(job_id, tenant=None if caller.admin else caller.tenant, changes=changes)
        if job is None:
            raise NotFound(job_id)
        return job

    def hosts_and_gpus(self, job: Job) -> tuple[list[str], list[tuple[str, int]]]:
        gpus = sorted({(str(g["host"]), int(g["gpu"])) for g in job.gpus})
        hosts = sorted(set(job.nodes) | {h for h, _ in gpus})
        return hosts, gpus

    def window(self, job: Job, start: datetime | None = None,
               end: datetime | None = None) -> tuple[float, float]:
        """The requested window, defaulting to the job's run (or the last hour before its end)."""
        end_ts = end.timestamp() if end is not None else (
            job.ended_at if job.ended_at is not None else self.clock())
        start_ts = start.timestamp() if start is not None else (
            job.started_at if job.started_at is not None else end_ts - 3600)
        for moment in (start_ts, end_ts):
            if not EARLIEST.timestamp() <= moment < LATEST.timestamp():
                raise InvalidInput("times must be between 1970-01-01 and 2200-01-01")
        if end_ts <= start_ts:
            if start is not None and end is not None:
                raise InvalidInput("end must be after start")
            # Recorded times that disagree (a failure alert stamped before the start): keep a
            # minimal window rather than refusing to summarise the job.
            start_ts = min(start_ts, end_ts - 60.0)
        if end_ts - start_ts > MAX_RANGE_SECONDS:
            raise InvalidInput(f"the time range may span at most {MAX_RANGE_SECONDS // 86400} days")
        return start_ts, end_ts

    def scope(self, job: Job, start_ts: float, end_ts: float) -> JobScope:
        """The job's hosts and GPUs over the window (label index and registry), reused for a
        settled window: every metrics and summary query selects only these."""
        def compute() -> JobScope:
            return resolve(self.prometheus, job.job_id, start_ts, end_ts, job.gpus, job.nodes)

        if not self.settled(end_ts):
            return compute()
        key = ("scope", job.job_id, tuple(job.nodes), len(job.gpus), start_ts, end_ts)
        return self.cache.get_or_compute(key, compute)

    # -- metrics --------------------------------------------------------------------------------

    def metrics_step(self, scope: JobScope, names: Sequence[str], start_ts: float, end_ts: float,
                     requested: float | None) -> float:
        """The step of a metrics answer. The default gives at most ~720 points per series, fewer
        where the job's series would otherwise exceed ``max_points_per_answer``; an explicit step
        that would exceed it is refused, naming the limit."""
        cap = self.settings.max_points_per_answer
        # A rank entry has about one series per GPU (a rank per GPU), at least one per host.
        series = sum(len(scope.gpus) if CATALOG[name].scope == "gpu" else
                     max(len(scope.gpus), len(scope.hosts)) if CATALOG[name].scope == "rank" else
                     len(scope.hosts) for name in names)
        if requested is None and series:
            per_series = max(2, min(DEFAULT_POINTS + 1, cap // series))
            step = choose_step(start_ts, end_ts, None, default_points=per_series - 1)
        else:
            step = choose_step(start_ts, end_ts, requested)
        points = int((end_ts - start_ts) // step) + 1
        if series * points > cap:
            raise InvalidInput(
                f"this answer would hold {series} series x {points} points = {series * points} points, "
                f"more than max_points_per_answer={cap}: ask for a larger step, a shorter window or "
                f"fewer metrics")
        return step

    def settled(self, end_ts: float) -> bool:
        """Prometheus data up to ``end_ts`` will not change any more."""
        return end_ts <= self.clock() - self.settings.query_settle_seconds

    def metrics_json(self, job: Job, names: Sequence[str], start: datetime | None, end: datetime | None,
                     step: float | None) -> bytes:
        """The metrics answer, encoded; reused from the cache when its window is settled."""
        unknown = [name for name in names if name not in CATALOG]
        if unknown:
            raise InvalidInput(f"unknown metric name(s) {', '.join(sorted(set(unknown)))}; "
                               f"known: {', '.join(sorted(CATALOG))}")
        start_ts, end_ts = self.window(job, start, end)
        unique = tuple(dict.fromkeys(names))
        scope = self.scope(job, start_ts, end_ts)
        chosen = self.metrics_step(scope, unique, start_ts, end_ts, step)

        def compute() -> bytes:
            body = self.metrics(job, unique, iso(start_ts), iso(end_ts), chosen, scope=scope)
            return json.dumps(_jsonable(body), separators=(",", ":")).encode()

        if not self.settled(end_ts):
            return compute()
        return self.cache.get_or_compute(("metrics", job.job_id, unique, start_ts, end_ts, chosen), compute)

    def metrics(self, job: Job, names: Sequence[str], start: datetime | None, end: datetime | None,
                step: float | None, scope: JobScope | None = None) -> dict[str, Any]:
        unknown = [name for name in names if name not in CATALOG]
        if unknown:
            raise InvalidInput(f"unknown metric name(s) {', '.join(sorted(set(unknown)))}; "
                               f"known: {', '.join(sorted(CATALOG))}")
        start_ts, end_ts = self.window(job, start, end)
        unique = list(dict.fromkeys(names))
        if scope is None:
            scope = self.scope(job, start_ts, end_ts)
        chosen = self.metrics_step(scope, unique, start_ts, end_ts, step)
        window = rate_window(chosen)
        # One query per metric and batch of the job's hosts; none when the job held nothing.
        futures = {
            name: [self.executor.submit(self.prometheus.query_range,
                                        CATALOG[name].build(job.job_id, hosts, window),
                                        start_ts, end_ts, chosen)
                   for hosts in scope.host_batches()]
            for name in unique
        }
        out = []
        for name in unique:
            entry = CATALOG[name]
            series: list[dict[str, Any]] = []
            found: list[RangeSeries] = [s for future in futures[name] for s in future.result()]
            for s in found:
                labels = {"host": s.labels.get("Hostname", "")}
                if entry.scope == "gpu":
                    labels["gpu"] = s.labels.get("gpu", "")
                elif entry.scope == "rank":
                    labels["rank"] = s.labels.get("rank", "")
                series.append({"labels": labels, "points": [[t, v] for t, v in s.points]})
            series.sort(key=_series_order)
            unavailable: list[dict[str, Any]] = []
            if entry.scope == "gpu":
                # Empty data would read as "idle"; say which GPUs have none, and why.
                answered = {(s.labels.get("Hostname", ""), s.labels.get("gpu", "")) for s in found}
                unavailable = [{"host": host, "gpu": int(gpu), "reason": entry.unavailable_reason}
                               for host, gpu in scope.gpus if (host, gpu) not in answered and gpu.isdigit()]
            out.append({"name": name, "unit": entry.unit, "scope": entry.scope,
                        "description": entry.description,
                        "series": series, "unavailable": unavailable})
        return {"job_id": job.job_id, "start": iso(start_ts), "end": iso(end_ts), "step_seconds": chosen,
                "metrics": out}

    # -- summary and diagnosis ------------------------------------------------------------------

    def _failed_at(self, job: Job) -> float | None:
        if job.status != "failed":
            return None
        return job.ended_at or job.failed_at or self.clock()

    def summary(self, job: Job, source: str, *, strict: bool = True) -> SummaryResponse:
        """``strict``: a dependency that is down raises (the route answers 503). Otherwise (the
        notification path) what could be read is used and the rest is named as missing."""
        start_ts, end_ts = self.window(job)
        warnings: list[str] = []
        missing: list[str] = []
        hosts, _ = self.hosts_and_gpus(job)

        def prometheus_facts() -> PromFacts:
            def compute() -> PromFacts:
                return self.facts.prometheus_facts(self.scope(job, start_ts, end_ts), start_ts, end_ts)

            if not self.settled(end_ts):
                return compute()
            return self.cache.get_or_compute(("facts", job.job_id, start_ts, end_ts), compute)

        alerts = self.store.list_alerts(job_id=job.job_id, limit=500)
        facts = PromFacts()
        try:
            # In this thread, not the query pool: the facts fan out into that pool, and a task
            # that waits on tasks of its own bounded pool deadlocks under load.
            facts = prometheus_facts()
        except DependencyUnavailable as exc:
            if strict:
                raise
            missing.append(exc.dependency)
            warnings.append(str(exc))
        warnings.extend(facts.warnings)
        # The job's own step telemetry (jobsight.training), when it reports any: api/training.py.
        training: TrainingSummary | None = None
        training_findings: list[Finding] = []
        if "prometheus" not in missing:
            try:
                def training_part() -> tuple[TrainingSummary | None, list[Finding]]:
                    return training_facts(self.prometheus, self.executor, job.job_id, start_ts, end_ts)

                # A settled window's step telemetry does not change either: reused like the facts.
                training, training_findings = (
                    self.cache.get_or_compute(("training", job.job_id, start_ts, end_ts), training_part)
                    if self.settled(end_ts) else training_part())
            except DependencyUnavailable as exc:
                if strict:
                    raise
                missing.append(exc.dependency)
                warnings.append(str(exc))
        all_hosts = set(hosts) | {g.host for g in facts.gpus} | {n.host for n in facts.nodes}
        events: list[LogRecord] = []
        if isinstance(self.logs, UnconfiguredLogSource):
            warnings.append("no log store is configured: events are not included")
            missing.append("log store")
        else:
            try:
                events = self.facts.log_events(job.job_id, all_hosts, start_ts, end_ts)
            except DependencyUnavailable as exc:
                if strict:
                    raise
                missing.append(exc.dependency)
                warnings.append(str(exc))
        overall_summary, stragglers = overall(facts.gpus)
        diagnosis: Diagnosis | None = None
        if job.status == "failed":
            findings = (facts.findings + findings_from_events(events, facts.pci_to_gpu)
                        + findings_from_alerts(alerts) + training_findings)
            diagnosis = diagnose(findings, started_at=job.started_at, failed_at=self._failed_at(job),
                                 exit_code=job.exit_code, reason=job.reason, missing_sources=missing,
                                 world_size=world_size(job))
        return SummaryResponse.model_validate({
            "job": job_out(job, source), "start": iso(start_ts), "end": iso(end_ts),
            "duration_seconds": end_ts - start_ts, "overall": overall_summary, "gpus": facts.gpus,
            "nodes": facts.nodes,
            "stragglers": [{"host": g.host, "gpu": g.gpu, "uuid": g.uuid} for g in stragglers],
            "events": [LogRecordOut.model_validate(record_out(e)) for e in events[-200:]],
            "alerts": [AlertOut.model_validate(alert_out(a)) for a in alerts],
            "diagnosis": diagnosis, "training": training, "warnings": warnings,
            "rollup_step_seconds": facts.rollup_step,
        })

    def links(self, job: Job) -> Links:
        hosts, gpus = self.hosts_and_gpus(job)
        tensorboard = None
        if job.tensorboard_logdir:
            tensorboard = f"{self.api_url.rstrip('/')}/v1/jobs/{job.job_id}/tensorboard"
        return build_links(job, hosts, gpus, grafana_url=self.settings.grafana_url, api_url=self.api_url,
                           alertmanager_url=self.settings.alertmanager_url, tensorboard_url=tensorboard,
                           now=self.clock(), page_url=self.page_url(job))

    def page_url(self, job: Job) -> str | None:
        """The job's page, signed for ``pages.link_expiry_seconds``: opens without a token."""
        if self.signer is None or not job.tenant:
            return None
        return self.signer.job_url(self.api_url, job.job_id, self.settings.pages.link_expiry_seconds)

    # -- alerts ---------------------------------------------------------------------------------

    def jobs_for_alert(self, labels: dict[str, str], at: float, warnings: list[str]) -> list[str]:
        job_id = labels.get("job_id")
        if job_id:
            if is_valid_job_id(job_id):
                return [job_id]
            warnings.append("an alert carried an invalid job_id label; it was stored unmapped")
            return []
        host = labels.get("Hostname")
        if not host:
            return []
        gpu = labels.get("gpu")
        found: set[str] = set()
        for job in self.store.jobs_on_host(host, at):
            if gpu is not None and job.gpus:
                if any(g["host"] == host and str(g["gpu"]) == gpu for g in job.gpus):
                    found.add(job.job_id)
            else:
                found.add(job.job_id)
        selector = [matcher("Hostname", host)] + ([matcher("gpu", gpu)] if gpu is not None else [])
        try:
            info = f"jobsight_gpu_job_info{{{', '.join(selector)}}}"
            samples = self.prometheus.query(
                f"max by (job_id) (last_over_time({info}[{DISCOVERY_LOOKBACK}]))", at=at)
            found.update(s.labels["job_id"] for s in samples if is_valid_job_id(s.labels.get("job_id", "")))
        except DependencyUnavailable as exc:
            warnings.append(f"mapped by the registry only: {exc}")
        return sorted(found)

    def webhook(self, payload: WebhookPayload) -> WebhookResult:
        warnings: list[str] = []
        incoming: list[IncomingAlert] = []
        for alert in payload.alerts:
            starts = alert.startsAt.timestamp()
            ends = alert.endsAt.timestamp() if alert.endsAt is not None and alert.endsAt.year > 1 else None
            fingerprint = alert.fingerprint or hashlib.sha256(
                json.dumps(alert.labels, sort_keys=True).encode()).hexdigest()[:16]
            incoming.append(IncomingAlert(
                fingerprint=fingerprint, alertname=alert.labels.get("alertname"), status=alert.status,
                labels=dict(alert.labels), annotations=dict(alert.annotations), starts_at=starts,
                ends_at=ends if alert.status == "resolved" else None, group_key=payload.groupKey,
                job_ids=self.jobs_for_alert(alert.labels, starts, warnings),
            ))
        alert_ids = self.store.record_alerts(incoming)
        for stored, alert_id in zip(incoming, alert_ids, strict=True):
            if stored.alertname in NOTIFY_ALERTS and stored.status == "firing":
                for job_id in stored.job_ids:
                    job = self.store.get_job(job_id)
                    if job is not None and job.status == "running":
                        self.store.add_alert_notification(
                            job_id, alert_id, notify_targets=len(self.settings.notify.get(job.tenant, [])))
            if stored.alertname in FAILURE_ALERTS and stored.status == "firing":
                for job_id in stored.job_ids:
                    job = self.store.get_job(job_id)
                    if job is None:
                        continue
                    summary = stored.annotations.get("summary") or stored.alertname
                    self.store.mark_failed(job_id, f"alert {stored.alertname}: {summary}", stored.starts_at,
                                           notify_targets=len(self.settings.notify.get(job.tenant, [])))
        return WebhookResult(stored=len(incoming), mapped={a.fingerprint: a.job_ids for a in incoming},
                             warnings=sorted(set(warnings)))

    # -- notifications --------------------------------------------------------------------------

    def deliver_due(self) -> int:
        """Try every due notification this replica claims once; returns how many were attempted."""
        due = self.store.due_notifications(self.clock())
        attempted = 0
        for notification in due:
            # Several API replicas share the store: each notification is sent by the one that
            # claims it (a replica that dies mid-send leaves it to another after the lease).
            if not self.store.claim_notification(notification.id, self.clock(), NOTIFY_LEASE_SECONDS):
                continue
            attempted += 1
            job = self.store.get_job(notification.job_id)
            if job is None:
                self.store.finish_notification(notification.id, ok=False, body=None, targets=0,
                                               error="job no longer exists", retry_at=None)
                continue
            urls = self.settings.notify.get(job.tenant, [])
            body: str | None = None
            try:
                if notification.alert_id is not None:
                    alerts = self.store.list_alerts(alert_id=notification.alert_id, limit=1)
                    if not alerts:
                        raise RuntimeError(f"alert {notification.alert_id} no longer exists")
                    alert = alerts[0]
                    title, body = alert_message(job, alert.alertname or "alert", alert.annotations,
                                                alert.starts_at, self.links(job))
                else:
                    summary = self.summary(job, "registered", strict=False)
                    title, body = failure_message(job, summary.diagnosis, self.links(job))
                if not urls:
                    raise RuntimeError(f"tenant {job.tenant} has no notify URLs")
                self.notifier.send(urls, title, body)
            except Exception as exc:  # noqa: BLE001 - any failure is recorded and retried
                attempts = notification.attempts + 1
                give_up = attempts >= self.settings.notify_max_attempts or not urls
                retry_at = None if give_up else self.clock() + min(
                    600.0, self.settings.notify_retry_seconds * 2 ** (attempts - 1))
                log.warning("notification for job %s failed (attempt %d): %s", job.job_id, attempts, exc)
                self.store.finish_notification(notification.id, ok=False, body=body, targets=len(urls),
                                               error=str(exc)[:1000], retry_at=retry_at)
                continue
            self.store.finish_notification(notification.id, ok=True, body=body, targets=len(urls), error=None,
                                           retry_at=None)
            # Once per failure, like the notification; this loop already runs off the request path.
            if notification.alert_id is None:
                failed_at = self._failed_at(job) or self.clock()
                self.annotator.annotate(job.job_id, title, int(failed_at * 1000), ["failed"])
        return attempted


def world_size(job: Job) -> int | None:
    """The job's number of ranks as its scheduler or launcher registered it (label ``world_size``,
    or ``WORLD_SIZE`` as torchrun names it); None lets the diagnosis count the ranks it sees."""
    for key in ("world_size", "WORLD_SIZE"):
        text = job.labels.get(key, "").strip()
        if text.isdigit() and 0 < int(text) <= 1_000_000:
            return int(text)
    return None


def _series_order(series: dict[str, Any]) -> tuple[int, str, int]:
    """Rank series by rank; GPU and node series by host, then GPU."""
    labels = series["labels"]
    rank, gpu = labels.get("rank"), labels.get("gpu") or ""
    if rank is not None:
        return (int(rank) if rank.isdigit() else -1, labels["host"], 0)
    return (0, labels["host"], int(gpu) if gpu.isdigit() else 0)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return value


__all__ = ["Caller", "Forbidden", "JobService", "NotFound", "duration"]
