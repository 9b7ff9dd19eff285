"""Serving Prometheus collectors over HTTP, the one way every jobsight exporter does it.

- :func:`parse_listen_address` reads Prometheus-style ``--web.listen-address`` values.
- :class:`CollectorSet` runs named collectors on each scrape and adds the self metrics
  ``<prefix>_scrape_collector_duration_seconds{collector}`` and
  ``<prefix>_scrape_collector_success{collector}`` (node_exporter's names with prefix ``node``).
  One failing collector never fails the scrape: its families are left out and success is 0.
- :class:`MetricsServer` serves a registry at ``/metrics`` and a health callback at ``/healthz``.
"""

from __future__ import annotations

import gzip
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import gzip_accepted

from jobsight.errors import ConfigError

log = logging.getLogger(__name__)

Clock = Callable[[], float]
HealthCheck = Callable[[], tuple[bool, str]]


class Collector(Protocol):
    """prometheus_client's collector protocol: fresh metric families on every call."""

    def collect(self) -> Iterable[Metric]: ...


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_listen_address(value: str) -> ListenAddress:
    """Parse ``:9400``, ``127.0.0.1:9400``, ``[::1]:9400`` or ``localhost:0``. An empty host means
    every IPv4 interface, as in the Go exporters."""
    text = value.strip()
    host, sep, port_text = text.rpartition(":")
    if not sep:
        raise ConfigError(f"listen address {value!r} must be HOST:PORT or :PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        port = int(port_text)
    except ValueError:
        raise ConfigError(f"listen address {value!r}: port {port_text!r} is not a number") from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"listen address {value!r}: port {port} is outside 0-65535")
    return ListenAddress(host or "0.0.0.0", port)


class CollectorSet:
    """Runs named collectors and reports how each one did.

    ``clock`` is injected (``time.perf_counter`` by default) so tests can check durations.
    """

    def __init__(
        self,
        collectors: Mapping[str, Collector],
        prefix: str = "jobsight",
        clock: Clock = time.perf_counter,
    ) -> None:
        self.collectors = dict(collectors)
        self.prefix = prefix
        self.clock = clock
        # node_exporter's HELP texts say "node_exporter: ..."; keep them identical.
        self.help_prefix = "node_exporter" if prefix == "node" else prefix
        # Collectors whose last run failed: a failure is logged with its traceback when it
        # starts, not on every scrape (a kernel without PSI would otherwise log every 15 s).
        self._failing: set[str] = set()

    def collect(self) -> Iterator[Metric]:
        duration = GaugeMetricFamily(
            f"{self.prefix}_scrape_collector_duration_seconds",
            f"{self.help_prefix}: Duration of a collector scrape.",
            labels=["collector"],
        )
        success = GaugeMetricFamily(
            f"{self.prefix}_scrape_collector_success",
            f"{self.help_prefix}: Whether a collector succeeded.",
            labels=["collector"],
        )
        for name, collector in self.collectors.items():
            start = self.clock()
            try:
                # Materialise first: a generator that fails half-way must not leave half its
                # families in the exposition.
                families = list(collector.collect())
                ok = 1.0
            except Exception:
                if name not in self._failing:
                    log.exception("collector %s failed (logged again only after it recovers)", name)
                    self._failing.add(name)
                families = []
                ok = 0.0
            else:
                if name in self._failing:
                    log.info("collector %s recovered", name)
                    self._failing.discard(name)
            yield from families
            duration.add_metric([name], self.clock() - start)
            success.add_metric([name], ok)
        yield duration
        yield success


def _gzip_level1(
    app: Callable[..., Iterable[bytes]], environ: dict[str, Any], start_response: Callable[..., Any]
) -> Iterable[bytes]:
    captured: dict[str, Any] = {}

    def capture(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        captured["status"], captured["headers"] = status, headers

    body = b"".join(app(environ, capture))
    headers = [(k, v) for k, v in captured["headers"] if k.lower() != "content-length"]
    if gzip_accepted(environ.get("HTTP_ACCEPT_ENCODING", "")) and captured["status"].startswith("200"):
        body = gzip.compress(body, compresslevel=1)
        headers.append(("Content-Encoding", "gzip"))
    headers.append(("Content-Length", str(len(body))))
    start_response(captured["status"], headers)
    return [body]


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    allow_reuse_address = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)


def _always_healthy() -> tuple[bool, str]:
    return True, "ok"


def _nothing_to_close() -> None:
    return None


@dataclass
class ExporterParts:
    """What one exporter contributes to a serving process (its own, or ``jobsight agent``):
    named collectors whose self metrics use ``prefix`` (``node`` for the node exporter, so its
    self metrics keep node_exporter's names; ``jobsight`` otherwise), a health check for
    ``/healthz``, and ``close`` to stop background threads and release the backend."""

    collectors: dict[str, Collector]
    prefix: str = "jobsight"
    health: HealthCheck = _always_healthy
    close: Callable[[], None] = _nothing_to_close


class MetricsServer:
    """Serves ``registry`` at ``/metrics`` and ``health()`` at ``/healthz`` on a background thread.

    Bind to port 0 to get a free port; :attr:`address` then holds the real one.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        listen: ListenAddress,
        health: HealthCheck = _always_healthy,
    ) -> None:
        self.registry = registry
        self.health = health
        # prometheus_client gzips at level 9, a few ms per scrape of a large exposition; level 1
        # costs a fraction of that for nearly the same size on text this repetitive.
        metrics_app = make_wsgi_app(registry, disable_compression=True)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            path = environ.get("PATH_INFO", "/")
            if path == "/healthz":
                ok, message = self.health()
                status = "200 OK" if ok else "503 Service Unavailable"
                start_response(status, [("Content-Type", "text/plain; charset=utf-8")])
                return [message.encode() + b"\n"]
            if path == "/metrics":
                return _gzip_level1(metrics_app, environ, start_response)
            if path == "/":
                start_response("200 OK", [("Content-Type", "text/html; charset=utf-8")])
                return [b'<html><body><a href="/metrics">/metrics</a> <a href="/healthz">/healthz</a>'
                        b"</body></html>\n"]
            start_response("404 Not Found", [("Content-Type", "text/plain; charset=utf-8")])
            return [b"not found: try /metrics or /healthz\n"]

        try:
            self._server = make_server(
                listen.host, listen.port, app, server_class=_ThreadingWSGIServer, handler_class=_QuietHandler
            )
        except OSError as exc:
            raise ConfigError(f"cannot listen on {listen}: {exc.strerror or exc}") from exc
        host, port = self._server.server_address[:2]
        self.address = ListenAddress(str(host), int(port))
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)

    def start(self) -> MetricsServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        # shutdown() waits for serve_forever to notice; it would wait forever if never started.
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()


def serve_parts(parts: list[ExporterParts], listen: ListenAddress) -> int:
    """Serve the collectors of ``parts`` on one port until SIGINT/SIGTERM; the wiring every
    exporter command and ``jobsight agent`` share. One CollectorSet per self-metrics prefix."""
    registry = CollectorRegistry(auto_describe=False)
    by_prefix: dict[str, dict[str, Collector]] = {}
    for part in parts:
        by_prefix.setdefault(part.prefix, {}).update(part.collectors)
    for prefix, collectors in by_prefix.items():
        registry.register(CollectorSet(collectors, prefix=prefix))

    def health() -> tuple[bool, str]:
        results = [part.health() for part in parts]
        return all(ok for ok, _ in results), "; ".join(msg for _, msg in results)

    def close_all() -> None:
        for part in parts:
            part.close()

    try:
        server = MetricsServer(registry, listen, health=health)
    except BaseException:
        close_all()
        raise
    return serve_until_signalled(server, on_stop=close_all)


def serve_until_signalled(server: MetricsServer, on_stop: Callable[[], None] | None = None) -> int:
    """Run ``server`` until SIGINT/SIGTERM, then stop it and call ``on_stop``; returns exit code 0."""
    import signal

    stop = threading.Event()

    def _handler(signum: int, _frame: object) -> None:
        log.info("received signal %d, stopping", signum)
        stop.set()

    signal.signal(signal.SIGINT, _handler)
    signal.signal(signal.SIGTERM, _handler)
    server.start()
    log.info("serving metrics on http://%s/metrics", server.address)
    while not stop.wait(1.0):
        pass
    server.stop()
    if on_stop is not None:
        on_stop()
    return 0
