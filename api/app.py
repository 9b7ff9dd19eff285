"""The FastAPI application: ``create_app(settings, *, store=..., prometheus=..., log_source=...,
clock=..., notifier=...)``. Everything outside the process is injectable; what is not given is
built from ``settings``."""

from __future__ import annotations

import hmac
import logging
import math
import os
import pathlib
import threading
import time
import urllib.parse
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any

import httpx
from fastapi import Depends, FastAPI, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from opentelemetry.sdk.trace import TracerProvider
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.annotations import GrafanaAnnotator, JobAnnotator, NoAnnotations
from api.catalog import CATALOG
from api.db import open_database
from api.deadline import DeadlineTransport, deadline
from api.logsource import LogSource, UnconfiguredLogSource, open_log_source
from api.models import (
    AlertList,
    CatalogEntry,
    Health,
    JobAnnotationsIn,
    JobIn,
    JobList,
    JobOut,
    Links,
    LogPageOut,
    MetricsResponse,
    NotificationList,
    Problem,
    ScalarsResponse,
    SummaryResponse,
    TensorBoardOut,
    UtcDatetime,
    WebhookPayload,
    WebhookResult,
)
from api.notify import AppriseNotifier, Notifier
from api.pages import install_page_errors, pages_router, session_caller
from api.prometheus import PrometheusClient, PrometheusQueryError
from api.service import Caller, Forbidden, JobService, NotFound, alert_out, iso, job_out, record_out, ts
from api.settings import ApiSettings
from api.signing import Signer
from api.store import JobStore
from api.telemetry import (
    ContextExecutor,
    JobStatusCollector,
    ObservabilityMiddleware,
    RequestMetrics,
    TracingTransport,
    make_tracer_provider,
)
from api.tensorboard import (
    NotAllowed,
    TensorBoardManager,
    WalkLimits,
    check_logdir,
    read_scalars,
    roots_for,
    run_as,
)
from jobsight import __version__
from jobsight.errors import DependencyUnavailable, InvalidInput
from jobsight.jobid import JOB_ID_PATTERN

log = logging.getLogger("jobsight.api")

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "missing or unknown bearer token"},
    403: {"model": Problem, "description": "not allowed for this token"},
    404: {"model": Problem, "description": "no such job (or not visible to this tenant)"},
    413: {"model": Problem, "description": "request body too large"},
    422: {"model": Problem, "description": "invalid input"},
    503: {"model": Problem, "description": "a dependency (named in `dependency`) is unavailable"},
}

JobIdParam = Annotated[str, Path(pattern=f"^{JOB_ID_PATTERN}$", max_length=128,
                                   description="letters, digits and . _ : @ -, at most 128")]


class BodyLimitMiddleware:
    """Refuse bodies over ``limit`` bytes with 413, by Content-Length or while streaming."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    too_big = int(value) > self.limit
                except ValueError:
                    too_big = True
                if too_big:
                    await self._refuse(send)
                    return
        seen = 0
        refused = False

        async def limited_receive() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    # Answer now and tell the app the client went away; whatever the app tries
                    # to send afterwards is dropped.
                    refused = True
                    await self._refuse(send)
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Message) -> None:
            if not refused:
                await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not refused:
                raise

    async def _refuse(self, send: Send) -> None:
        body = b'{"detail":"request body is larger than the limit of %d bytes"}' % self.limit
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


class _Maintenance:
    """A background thread: delivers due notifications and stops idle TensorBoards."""

    def __init__(self, service: JobService, interval: float = 5.0) -> None:
        self._service = service
        self._interval = interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="jobsight-api-maintenance", daemon=True)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self._service.deliver_due()
                self._service.tensorboard.reap()
                due = self._service.store.next_notification_due()
            except Exception as exc:  # noqa: BLE001 - the loop must survive a store outage
                log.warning("maintenance pass failed: %s", exc)
                due = None
            wait = self._interval
            if due is not None:
                wait = max(0.05, min(wait, due - self._service.clock()))
            self._wake.wait(wait)
            self._wake.clear()


def create_app(
    settings: ApiSettings,
    *,
    store: JobStore | None = None,
    prometheus: PrometheusClient | None = None,
    log_source: LogSource | None = None,
    clock: Callable[[], float] = time.time,
    notifier: Notifier | None = None,
    tensorboard: TensorBoardManager | None = None,
    http_client: httpx.Client | None = None,
    tracer_provider: TracerProvider | None = None,
    environ: dict[str, str] | None = None,
    annotator: JobAnnotator | None = None,
) -> FastAPI:
    provider = tracer_provider or make_tracer_provider(os.environ if environ is None else environ)
    tracer = provider.get_tracer("jobsight.api")
    timeout = settings.dependency_timeout_seconds
    owned_client = http_client is None
    if http_client is None:
        limits = httpx.Limits(max_connections=64, max_keepalive_connections=32)
        # Each Prometheus call ends within dependency_timeout_seconds in total, however slowly
        # the answer trickles in (see api/deadline.py).
        transport = TracingTransport(DeadlineTransport(limits=limits), tracer)
        http_client = httpx.Client(transport=transport, timeout=timeout, limits=limits)
    if store is None:
        store = JobStore(open_database(settings.store_url), clock=clock,
                         notify_delay=settings.notify_delay_seconds)
    prometheus = prometheus or PrometheusClient(settings.prometheus_url, http_client, timeout=timeout,
                                                max_bytes=settings.prometheus_max_response_bytes)
    logs = log_source if log_source is not None else open_log_source(settings.log_store, timeout)
    tb_settings = settings.tensorboard
    walk_limits = WalkLimits(files=tb_settings.max_event_files, bytes=tb_settings.max_event_bytes,
                             seconds=tb_settings.max_walk_seconds)
    tensorboard = tensorboard or TensorBoardManager(
        tb_settings.command, host=tb_settings.host, max_instances=tb_settings.max_instances,
        idle_seconds=tb_settings.idle_seconds, limits=walk_limits, user=run_as(tb_settings.user),
    )
    if not tb_settings.allowed_roots:
        log.warning("no tensorboard.allowed_roots are configured: TensorBoard and /scalars are off for "
                    "every tenant")
    executor = ContextExecutor(max_workers=settings.query_workers, thread_name_prefix="jobsight-api-query")
    if annotator is None:
        annotator = (GrafanaAnnotator(settings.grafana_url, settings.grafana_token, timeout=timeout)
                     if settings.grafana_url and settings.grafana_token else NoAnnotations())
    signer = Signer.from_setting(settings.pages.signing_key, clock)
    service = JobService(settings, store, prometheus, logs, notifier or AppriseNotifier(), tensorboard,
                         executor, clock, annotator=annotator, signer=signer)
    maintenance = _Maintenance(service)
    registry = CollectorRegistry()
    request_metrics = RequestMetrics(registry)
    # Per-job series name job ids, tenants and statuses: shown only to the metrics token.
    job_registry = CollectorRegistry()
    job_registry.register(JobStatusCollector(store, clock))

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        store.migrate()
        maintenance.start()
        try:
            yield
        finally:
            maintenance.stop()
            tensorboard.close()
            executor.shutdown(wait=False, cancel_futures=True)
            logs.close()
            store.close()
            if owned_client:
                http_client.close()
            provider.shutdown()

    app = FastAPI(
        title="jobsight job API", version=__version__, lifespan=lifespan, docs_url="/docs",
        description="Per-job metrics, summaries with failure diagnosis, logs, alerts, TensorBoard and "
                    "notifications for GPU training jobs. See docs/api.md.",
    )
    app.state.service = service
    app.state.registry = registry
    app.add_middleware(BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(ObservabilityMiddleware, metrics=request_metrics, tracer=tracer)

    # -- errors -----------------------------------------------------------------------------

    @app.exception_handler(DependencyUnavailable)
    async def _unavailable(_: Request, exc: DependencyUnavailable) -> JSONResponse:
        return JSONResponse({"detail": f"{exc.dependency} unavailable: {exc}", "dependency": exc.dependency},
                            status_code=503)

    @app.exception_handler(InvalidInput)
    async def _invalid(_: Request, exc: InvalidInput) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": f"job {exc} not found"}, status_code=404)

    @app.exception_handler(NotAllowed)
    async def _tensorboard_off(_: Request, exc: NotAllowed) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=403)

    @app.exception_handler(Forbidden)
    async def _forbidden(_: Request, exc: Forbidden) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=403)

    @app.exception_handler(PrometheusQueryError)
    async def _bad_query(_: Request, exc: PrometheusQueryError) -> JSONResponse:
        log.error("Prometheus rejected a query jobsight built: %s", exc)
        return JSONResponse({"detail": "internal error: a generated query was rejected"}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = []
        for err in exc.errors():
            loc = ".".join(str(p) for p in err.get("loc", ()))
            problems.append({"loc": loc, "msg": err.get("msg", "invalid")})
        return JSONResponse({"detail": problems}, status_code=422)

    app.state.tokens = [(entry.token.encode(), Caller(entry.tenant, entry.role))
                        for entry in settings.tokens]
    app.state.webhook_token = settings.webhook_token.encode() if settings.webhook_token else None
    app.state.metrics_token = settings.metrics_token.encode() if settings.metrics_token else None

    @app.exception_handler(_AuthError)
    async def _auth_failed(_: Request, exc: _AuthError) -> JSONResponse:
        return JSONResponse({"detail": exc.detail}, status_code=401, headers={"WWW-Authenticate": "Bearer"})

    # -- health -----------------------------------------------------------------------------

    @app.get("/healthz", response_model=Health, tags=["health"])
    def healthz() -> Health:
        return Health(status="ok")

    @app.get("/readyz", response_model=Health, tags=["health"], responses={503: {"model": Health}})
    def readyz() -> JSONResponse:
        checks: dict[str, str] = {}
        down: list[str] = []
        probes: list[tuple[str, Callable[[], None]]] = [
            ("store", store.ping), ("prometheus", prometheus.ping)]
        if not isinstance(logs, UnconfiguredLogSource):
            probes.append(("log store", logs.ping))
        else:
            checks["log store"] = "not configured"
        for name, probe in probes:
            try:
                probe()
                checks[name] = "ok"
            except DependencyUnavailable as exc:
                checks[name] = str(exc)
                down.append(name)
            except Exception as exc:  # noqa: BLE001 - a probe must never turn into a 500
                checks[name] = f"{type(exc).__name__}: {exc}"
                down.append(name)
        body = Health(status="unavailable" if down else "ok", checks=checks).model_dump()
        return JSONResponse(body, status_code=503 if down else 200)

    @app.get("/metrics", tags=["health"], response_class=Response,
             responses={200: {"content": {"text/plain": {}},
                              "description": "Prometheus text exposition; the per-job series "
                                             "(jobsight_job_status) only with the metrics token or an "
                                             "admin token"},
                        401: ERROR_RESPONSES[401], 403: ERROR_RESPONSES[403]})
    def metrics_endpoint(request: Request, credentials: Credentials) -> Response:
        body = generate_latest(registry)
        if credentials is not None:
            if not _metrics_reader(request, credentials.credentials.encode()):
                raise Forbidden("the per-job series need the metrics_token or an admin token")
            body += generate_latest(job_registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    # -- jobs -------------------------------------------------------------------------------

    @app.put("/v1/jobs/{job_id}", response_model=JobOut, tags=["jobs"],
             responses={**ERROR_RESPONSES, 201: {"model": JobOut, "description": "created"}})
    def put_job(job_id: JobIdParam, body: JobIn, who: Who) -> JSONResponse:
        job, created = service.upsert(job_id, body, who)
        maintenance.wake()
        return JSONResponse(JobOut.model_validate(job_out(job)).model_dump(mode="json"),
                            status_code=201 if created else 200)

    @app.patch("/v1/jobs/{job_id}", response_model=JobOut, tags=["jobs"], responses=ERROR_RESPONSES)
    def annotate_job(job_id: JobIdParam, body: JobAnnotationsIn, who: Who) -> JobOut:
        return JobOut.model_validate(job_out(service.annotate(job_id, body, who)))

    @app.get("/v1/jobs", response_model=JobList, tags=["jobs"], responses=ERROR_RESPONSES)
    def list_jobs(
        who: Who,
        status: Annotated[str | None, Query(pattern="^(pending|running|succeeded|failed|cancelled)$")] = None,
        user: Annotated[str | None, Query(max_length=128)] = None,
        tenant: Annotated[str | None, Query(max_length=128, description="admins only")] = None,
        scheduler: Annotated[str | None, Query(max_length=64, description="the scheduler that registered "
                                                                       "the job (slurm, kubernetes)")] = None,
        since: UtcDatetime | None = None,
        until: UtcDatetime | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: Annotated[str | None, Query(max_length=300)] = None,
    ) -> JobList:
        if tenant is not None and not who.all_tenants and tenant != who.tenant:
            raise Forbidden("only admins and schedulers may list another tenant's jobs")
        scope = tenant if who.all_tenants else who.tenant
        after = _decode_job_cursor(cursor) if cursor else None
        jobs = service.store.list_jobs(tenant=scope, status=status, user=user, since=ts(since),
                                       until=ts(until), limit=limit + 1, after=after, scheduler=scheduler)
        next_cursor = None
        if len(jobs) > limit:
            jobs = jobs[:limit]
            next_cursor = _encode_job_cursor(jobs[-1].created_at, jobs[-1].job_id)
        discovered: list[JobOut] = []
        warnings: list[str] = []
        if (who.admin and cursor is None and status in (None, "running") and user is None and tenant is None
                and scheduler is None):
            try:
                found = service.discovered()
                known = service.store.known_job_ids(found)
                discovered = [JobOut.model_validate(job_out(job, "discovered"))
                              for job_id, job in sorted(found.items()) if job_id not in known]
            except DependencyUnavailable as exc:
                warnings.append(f"discovered jobs omitted: {exc}")
        return JobList(jobs=[JobOut.model_validate(job_out(j)) for j in jobs], next_cursor=next_cursor,
                       discovered=discovered, warnings=warnings)

    @app.get("/v1/jobs/{job_id}", response_model=JobOut, tags=["jobs"], responses=ERROR_RESPONSES)
    def get_job(job_id: JobIdParam, who: Who) -> JobOut:
        job, source = service.visible_job(job_id, who)
        return JobOut.model_validate(job_out(job, source))

    @app.delete("/v1/jobs/{job_id}", status_code=204, tags=["jobs"], responses=ERROR_RESPONSES)
    def delete_job(job_id: JobIdParam, _: Admin) -> Response:
        if not service.store.delete_job(job_id):
            raise NotFound(job_id)
        return Response(status_code=204)

    @app.get("/v1/catalog", response_model=list[CatalogEntry], tags=["metrics"], responses=ERROR_RESPONSES)
    def catalog(_: Who) -> list[CatalogEntry]:
        return [CatalogEntry(name=m.name, unit=m.unit, scope=m.scope, description=m.description)
                for m in CATALOG.values()]

    @app.get("/v1/jobs/{job_id}/metrics", response_model=MetricsResponse, tags=["metrics"],
             responses=ERROR_RESPONSES)
    def job_metrics(
        job_id: JobIdParam, who: Reader,
        name: Annotated[list[str], Query(min_length=1, max_length=len(CATALOG),
                                         description=f"one or more of: {', '.join(CATALOG)}")],
        start: UtcDatetime | None = None, end: UtcDatetime | None = None,
        step: Annotated[float | None, Query(gt=0, le=86400, description="seconds; raised if needed")] = None,
    ) -> Response:
        job, _ = service.visible_job(job_id, who)
        return Response(service.metrics_json(job, name, start, end, step), media_type="application/json")

    @app.get("/v1/jobs/{job_id}/summary", response_model=SummaryResponse, tags=["jobs"],
             responses=ERROR_RESPONSES)
    def job_summary(job_id: JobIdParam, who: Reader) -> JSONResponse:
        job, source = service.visible_job(job_id, who)
        return JSONResponse(service.summary(job, source).model_dump(mode="json"))

    def _logs(job_id: str, who: Caller, events_only: bool, q: str | None, kind: str | None, rank: int | None,
              since: datetime | None, until: datetime | None, limit: int, cursor: str | None) -> LogPageOut:
        job, _ = service.visible_job(job_id, who)
        page = logs.search(job_id=job.job_id, q=q, kind=kind, rank=rank, since=ts(since), until=ts(until),
                           events_only=events_only, limit=limit, cursor=cursor)
        return LogPageOut.model_validate({"records": [record_out(r) for r in page.records],
                                          "next_cursor": page.next_cursor})

    @app.get("/v1/jobs/{job_id}/logs", response_model=LogPageOut, tags=["logs"], responses=ERROR_RESPONSES)
    def job_logs(job_id: JobIdParam, who: Reader, q: LogQ = None, kind: Kind = None, rank: Rank = None,
                 since: UtcDatetime | None = None, until: UtcDatetime | None = None, limit: Limit = 100,
                 cursor: Cursor = None) -> LogPageOut:
        return _logs(job_id, who, False, q, kind, rank, since, until, limit, cursor)

    @app.get("/v1/jobs/{job_id}/events", response_model=LogPageOut, tags=["logs"], responses=ERROR_RESPONSES)
    def job_events(job_id: JobIdParam, who: Reader, q: LogQ = None, kind: Kind = None, rank: Rank = None,
                   since: UtcDatetime | None = None, until: UtcDatetime | None = None, limit: Limit = 100,
                   cursor: Cursor = None) -> LogPageOut:
        return _logs(job_id, who, True, q, kind, rank, since, until, limit, cursor)

    @app.get("/v1/jobs/{job_id}/links", response_model=Links, tags=["jobs"], responses=ERROR_RESPONSES)
    def job_links(job_id: JobIdParam, who: Reader) -> Links:
        job, _ = service.visible_job(job_id, who)
        return service.links(job)

    @app.get("/v1/jobs/{job_id}/tensorboard", response_model=TensorBoardOut, tags=["tensorboard"],
             responses=ERROR_RESPONSES)
    def job_tensorboard(job_id: JobIdParam, who: Reader) -> TensorBoardOut:
        logdir = _logdir(job_id, who)
        _, ready = tensorboard.ensure(logdir)
        # The TensorBoard itself listens on loopback under a secret prefix; users reach it only
        # through the proxy route below, with their token.
        url = f"{service.api_url.rstrip('/')}/v1/jobs/{job_id}/tensorboard/ui/"
        return TensorBoardOut(url=url, state="running" if ready else "starting", logdir=str(logdir))

    @app.api_route("/v1/jobs/{job_id}/tensorboard/ui/{path:path}", methods=["GET", "POST"],
                   include_in_schema=False)
    async def tensorboard_ui(job_id: JobIdParam, path: str, request: Request, who: Reader) -> Response:
        body = await request.body()
        headers = {k: v for k, v in request.headers.items() if k.lower() in _PROXIED_REQUEST_HEADERS}
        return await run_in_threadpool(_proxy_tensorboard, job_id, who, request.method, path,
                                       request.url.query, headers, body)

    def _proxy_tensorboard(job_id: str, who: Caller, method: str, path: str, query: str,
                           headers: dict[str, str], body: bytes) -> Response:
        logdir = _logdir(job_id, who)
        base, ready = tensorboard.ensure(logdir)
        if not ready:
            raise DependencyUnavailable("tensorboard", "starting; try again in a few seconds")
        target = base + path.lstrip("/") + (f"?{query}" if query else "")
        try:
            with deadline(tb_settings.proxy_timeout_seconds):
                upstream = http_client.request(method, target, headers=headers, content=body,
                                               timeout=tb_settings.proxy_timeout_seconds,
                                               follow_redirects=False)
        except httpx.HTTPError as exc:
            raise DependencyUnavailable("tensorboard", f"{type(exc).__name__}: {exc}") from exc
        out = {k: v for k, v in upstream.headers.items() if k.lower() in _PROXIED_RESPONSE_HEADERS}
        if "location" in upstream.headers:
            public = f"{service.api_url.rstrip('/')}/v1/jobs/{job_id}/tensorboard/ui/"
            location = _public_location(upstream.headers["location"], base, public)
            if location is not None:
                out["location"] = location
        return Response(upstream.content, status_code=upstream.status_code, headers=out)

    @app.get("/v1/jobs/{job_id}/scalars", response_model=ScalarsResponse, tags=["tensorboard"],
             responses=ERROR_RESPONSES)
    def job_scalars(job_id: JobIdParam, who: Reader,
                    tag: Annotated[str | None, Query(max_length=512)] = None) -> ScalarsResponse:
        logdir = _logdir(job_id, who)
        tags, runs = read_scalars(logdir, tag, limits=walk_limits, stop=tensorboard.stop)
        return ScalarsResponse.model_validate({
            "logdir": str(logdir), "tags": tags,
            "series": [
                {"run": r.run, "tag": r.tag,
                 "points": [{"step": s, "wall_time": w, "value": v} for s, w, v in r.points]}
                for r in runs],
        })

    def _logdir(job_id: str, who: Caller) -> pathlib.Path:
        job, _ = service.visible_job(job_id, who)
        if not job.tensorboard_logdir:
            raise NotFound(f"{job_id} (it has no tensorboard_logdir)")
        # The job's tenant's roots, whoever asks: an admin reads a job as its tenant would.
        roots = roots_for(settings.tensorboard.allowed_roots, job.tenant)
        return check_logdir(job.tensorboard_logdir, roots, job.tenant)

    # -- alerts and notifications -----------------------------------------------------------

    @app.post("/v1/alerts/webhook", response_model=WebhookResult, tags=["alerts"], responses=ERROR_RESPONSES)
    def alerts_webhook(payload: WebhookPayload, _: WebhookAuth) -> WebhookResult:
        result = service.webhook(payload)
        maintenance.wake()
        return result

    @app.get("/v1/alerts", response_model=AlertList, tags=["alerts"], responses=ERROR_RESPONSES)
    def list_alerts(
        _: Admin,
        status: Annotated[str | None, Query(pattern="^(firing|resolved)$")] = None,
        limit: Limit = 100,
        cursor: Annotated[int | None, Query(ge=1, le=2**63 - 1,
                                            description="the next_cursor of the previous page")] = None,
    ) -> AlertList:
        alerts = service.store.list_alerts(status=status, limit=limit + 1, before_id=cursor)
        next_cursor = str(alerts[limit - 1].id) if len(alerts) > limit else None
        return AlertList.model_validate({"alerts": [alert_out(a) for a in alerts[:limit]],
                                         "next_cursor": next_cursor})

    @app.get("/v1/jobs/{job_id}/alerts", response_model=AlertList, tags=["alerts"], responses=ERROR_RESPONSES)
    def job_alerts(job_id: JobIdParam, who: Reader, limit: Limit = 100) -> AlertList:
        job, _ = service.visible_job(job_id, who)
        alerts = service.store.list_alerts(job_id=job.job_id, limit=limit)
        return AlertList.model_validate({"alerts": [alert_out(a) for a in alerts], "next_cursor": None})

    @app.get("/v1/jobs/{job_id}/notifications", response_model=NotificationList, tags=["alerts"],
             responses=ERROR_RESPONSES)
    def job_notifications(job_id: JobIdParam, who: Reader) -> NotificationList:
        job, _ = service.visible_job(job_id, who)
        items = service.store.list_notifications(job.job_id)
        return NotificationList.model_validate({"notifications": [
            {"id": n.id, "job_id": n.job_id, "failure_seq": n.failure_seq, "status": n.status,
             "attempts": n.attempts, "created_at": iso(n.created_at), "sent_at": iso(n.sent_at),
             "last_error": n.last_error, "targets": n.targets, "body": n.body} for n in items]})

    # -- pages for people (api/pages.py) -----------------------------------------------------
    app.include_router(pages_router(settings, service, signer, clock))
    install_page_errors(app, settings, signer)

    return app


class _AuthError(Exception):
    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


bearer = HTTPBearer(auto_error=False, description="an API token from the `tokens` setting")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]


def caller(request: Request, credentials: Credentials) -> Caller:
    if credentials is None or credentials.scheme.lower() != "bearer":
        # A browser signed in on the pages may read the raw routes the job page links to.
        session = session_caller(request)
        if session is not None:
            return session
        raise _AuthError("missing bearer token")
    given = credentials.credentials.encode()
    found: Caller | None = None
    for secret, who in request.app.state.tokens:
        # Compare against every token so the time taken does not reveal which one matched.
        if hmac.compare_digest(secret, given):
            found = who
    if found is None:
        raise _AuthError("unknown token")
    return found


def _metrics_reader(request: Request, given: bytes) -> bool:
    """The metrics token, or an admin's token; 401 for a token nobody holds."""
    expected: bytes | None = request.app.state.metrics_token
    if expected is not None and hmac.compare_digest(expected, given):
        return True
    found: Caller | None = None
    for secret, who in request.app.state.tokens:
        if hmac.compare_digest(secret, given):
            found = who
    if found is None:
        raise _AuthError("unknown token")
    return found.admin


def admin(who: Annotated[Caller, Depends(caller)]) -> Caller:
    if not who.admin:
        raise Forbidden("this route needs an admin token")
    return who


def reader(who: Annotated[Caller, Depends(caller)]) -> Caller:
    """Reading a job's data (metrics, logs, summaries, TensorBoard): its tenant or an admin. A
    scheduler token registers every tenant's jobs but reads none of their data, so a leaked hook
    credential on a compute node exposes no logs."""
    if who.scheduler:
        raise Forbidden("a scheduler token may register, finish and list jobs, not read their data")
    return who


def webhook_caller(request: Request, credentials: Credentials) -> None:
    """The Alertmanager webhook has its own token (``webhook_token``), not an API token."""
    expected: bytes | None = request.app.state.webhook_token
    if credentials is None:
        raise _AuthError("missing bearer token")
    if expected is None:
        raise Forbidden("the alert webhook is disabled: no webhook_token is configured")
    if not hmac.compare_digest(expected, credentials.credentials.encode()):
        raise _AuthError("unknown webhook token")


Who = Annotated[Caller, Depends(caller)]
Admin = Annotated[Caller, Depends(admin)]
Reader = Annotated[Caller, Depends(reader)]
WebhookAuth = Annotated[None, Depends(webhook_caller)]
# Only what TensorBoard needs; never the caller's Authorization or cookies.
_PROXIED_REQUEST_HEADERS = frozenset({"accept", "accept-language", "content-type", "x-xsrf-protected"})
_PROXIED_RESPONSE_HEADERS = frozenset({"content-type", "cache-control", "etag", "last-modified",
                                       "content-security-policy", "x-content-type-options"})
LogQ = Annotated[str | None, Query(max_length=1000, description="words to match in the message")]
Kind = Annotated[str | None, Query(pattern=r"^[a-z][a-z0-9_]{0,63}$")]
Rank = Annotated[int | None, Query(ge=0, le=1_000_000)]
Limit = Annotated[int, Query(ge=1, le=1000)]
Cursor = Annotated[str | None, Query(max_length=500)]


def _public_location(location: str, internal: str, public: str) -> str | None:
    """A TensorBoard redirect, pointed at the proxy; None if it would reveal the secret prefix."""
    internal_path = urllib.parse.urlsplit(internal).path  # "/<prefix>/"
    if location.startswith(internal):
        location = public + location[len(internal):]
    elif location.startswith(internal_path):
        location = public + location[len(internal_path):]
    elif location == internal_path.rstrip("/"):
        location = public
    return None if internal_path.strip("/") in location else location


def _encode_job_cursor(created_at: float, job_id: str) -> str:
    import base64
    import json

    return base64.urlsafe_b64encode(json.dumps([created_at, job_id]).encode()).decode().rstrip("=")


def _decode_job_cursor(cursor: str) -> tuple[float, str]:
    import base64
    import binascii
    import json

    try:
        created_at, job_id = json.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
        if (isinstance(created_at, bool) or not isinstance(created_at, int | float)
                or not isinstance(job_id, str) or not math.isfinite(float(created_at))):
            raise ValueError("wrong types")
        return float(created_at), job_id
    except (ValueError, TypeError, OverflowError, binascii.Error) as exc:
        raise InvalidInput("cursor is not one this API returned") from exc
