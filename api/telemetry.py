"""The API's own observability: request metrics and ``jobsight_job_status`` on ``/metrics``, and
OpenTelemetry tracing of requests and outgoing httpx calls.

Tracing is always wired (spans cost little), but spans leave the process only when
``OTEL_EXPORTER_OTLP_ENDPOINT`` is set, through the OTLP/HTTP exporter. The instrumentation is
done here with the SDK directly (an ASGI middleware and an httpx transport wrapper), so no
contrib instrumentation package is needed.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

import httpx
from opentelemetry import propagate, trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.store import JobStore

T = TypeVar("T")

JOB_STATUS_WINDOW_SECONDS = 24 * 3600
JOB_STATUS_MAX_SERIES = 10_000


def make_tracer_provider(environ: Mapping[str, str]) -> TracerProvider:
    provider = TracerProvider(resource=Resource.create({"service.name": "jobsight-api"}))
    if environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


class TracingTransport(httpx.BaseTransport):
    """Wraps an httpx transport: one CLIENT span per outgoing request, context propagated."""

    def __init__(self, inner: httpx.BaseTransport, tracer: trace.Tracer) -> None:
        self._inner = inner
        self._tracer = tracer

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        with self._tracer.start_as_current_span(
            f"{request.method} {request.url.host}", kind=SpanKind.CLIENT,
            attributes={"http.request.method": request.method,
                        "url.full": str(request.url.copy_with(query=None)),
                        "server.address": request.url.host, "server.port": request.url.port or 0},
        ) as span:
            carrier: dict[str, str] = {}
            propagate.inject(carrier)
            request.headers.update(carrier)
            try:
                response = self._inner.handle_request(request)
            except Exception as exc:
                span.record_exception(exc)
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                raise
            span.set_attribute("http.response.status_code", response.status_code)
            if response.status_code >= 500:
                span.set_status(Status(StatusCode.ERROR))
            return response

    def close(self) -> None:
        self._inner.close()


class ContextExecutor(ThreadPoolExecutor):
    """A thread pool whose tasks run in the submitter's context, so spans of parallel Prometheus
    queries are children of the request's span (a plain pool starts each task in an empty one)."""

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> Future[T]:
        context = contextvars.copy_context()
        return super().submit(context.run, fn, *args, **kwargs)


class RequestMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("jobsight_api_requests_total", "HTTP requests handled, by route template",
                                ["method", "route", "code"], registry=registry)
        self.duration = Histogram(
            "jobsight_api_request_duration_seconds", "HTTP request latency, by route template",
            ["method", "route"], registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )


def _route_template(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    # Unmatched paths share one label value so random URLs cannot grow the series count.
    return str(path) if path else "unmatched"


class ObservabilityMiddleware:
    """Pure ASGI middleware: a SERVER span and request metrics per HTTP request."""

    def __init__(self, app: ASGIApp, metrics: RequestMetrics, tracer: trace.Tracer,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.app = app
        self.metrics = metrics
        self.tracer = tracer
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", [])}
        context = propagate.extract(headers)
        status = {"code": 500}
        started = self.clock()

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = int(message["status"])
            await send(message)

        with self.tracer.start_as_current_span(
            f"{scope['method']} request", context=context, kind=SpanKind.SERVER,
            attributes={"http.request.method": scope["method"], "url.path": scope["path"]},
        ) as span:
            try:
                await self.app(scope, receive, send_wrapper)
            finally:
                route = _route_template(scope)
                span.update_name(f"{scope['method']} {route}")
                span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status["code"])
                if status["code"] >= 500:
                    span.set_status(Status(StatusCode.ERROR))
                self.metrics.requests.labels(scope["method"], route, str(status["code"])).inc()
                self.metrics.duration.labels(scope["method"], route).observe(self.clock() - started)


class JobStatusCollector(Collector):
    """``jobsight_job_status{job_id, tenant, status} 1`` for each registered job updated in the
    last 24 h, at most 10 000 series (newest first), read from the store at scrape time."""

    def __init__(self, store: JobStore, clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._clock = clock

    def collect(self) -> Iterable[Any]:
        family = GaugeMetricFamily("jobsight_job_status", "1 for each recent job, labelled with its status",
                                   labels=["job_id", "tenant", "status"])
        for job in self._store.jobs_updated_since(self._clock() - JOB_STATUS_WINDOW_SECONDS,
                                                  JOB_STATUS_MAX_SERIES):
            family.add_metric([job.job_id, job.tenant, job.status], 1.0)
        yield family
