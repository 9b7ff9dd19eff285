"""Serving Prometheus collectors over HTTP, the one way every jobsight exporter does it.

- :func:`parse_listen_address` reads Prometheus-style ``--web.listen-address`` values.
- :class:`CollectorSet` runs named collectors on each scrape and adds the self metrics
  ``<prefix>_scrape_collector_duration_seconds{collector}`` and
  ``<prefix>_scrape_collector_success{collector}`` (node_exporter's names with prefix ``node``).
  One failing collector never fails the scrape: its families are left out and success is 0.
- :class:`MetricsServer` serves a registry at ``/metrics`` and a health callback at ``/healthz``,
  over HTTP/1.1 with keep-alive, rendering with :class:`jobsight.exposition.Renderer`.
"""

from __future__ import annotations

import contextlib
import gzip
import logging
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from email.message import Message
from http.server import BaseHTTPRequestHandler, HTTPServer
from socketserver import TCPServer, ThreadingMixIn
from typing import Any, Protocol, cast
from urllib.parse import parse_qs

from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import gzip_accepted

from jobsight.errors import ConfigError
from jobsight.exposition import Renderer
from jobsight.webconfig import WebConfig

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


# prometheus_client gzips at level 9, a few ms per scrape of a large exposition; level 1 costs a
# fraction of that for nearly the same size on text this repetitive.
GZIP_LEVEL = 1
# HTTP/1.1 keep-alive: Prometheus keeps its scrape connection open between scrapes (its client
# drops idle connections after 5 minutes), so each scrape saves a TCP handshake and a thread start.
# A connection holds a handler thread while idle, so only KEEPALIVE_CONNECTIONS connections at a
# time may stay open (a few Prometheus replicas and a curl or two fit); any more get one response
# with "Connection: close", which is how every connection was served before keep-alive.
KEEPALIVE_CONNECTIONS = 16
# An idle keep-alive connection is closed after this long: longer than any usual scrape interval
# (so Prometheus reuses it), short enough that abandoned connections give their thread back.
KEEPALIVE_IDLE_TIMEOUT_S = 120.0
# stop() waits this long for request threads to finish a response in progress.
STOP_GRACE_S = 5.0

_ALLOW = "OPTIONS, GET, HEAD"
Headers = list[tuple[str, str]]
Response = tuple[int, Headers, bytes]


class _HTTPServer(ThreadingMixIn, HTTPServer):
    """One thread per connection, as before; tracks connections so keep-alive stays bounded and
    stop() can close idle ones instead of leaving their threads blocked in a read."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        address: tuple[str, int],
        route: Callable[[str, str, Message], Response],
        keepalive_connections: int,
        web: WebConfig | None = None,
    ) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.route = route
        self.web = web
        self.keepalive_connections = keepalive_connections
        self.closing = False
        self._changed = threading.Condition()
        self._connections: dict[socket.socket, bool] = {}  # connection -> may it stay open
        super().__init__(address, _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind also resolves the host's FQDN (a DNS query at startup) for a
        # SERVER_NAME nothing here uses.
        TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)

    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        context = self.web.ssl_context() if self.web is not None else None
        if context is not None:
            # The handshake runs in the connection's own thread (_Handler.setup), so a client that
            # stalls in it never blocks accept().
            connection = context.wrap_socket(connection, server_side=True, do_handshake_on_connect=False)
        return connection, address

    def handle_error(self, request: Any, client_address: Any) -> None:
        # socketserver prints these to stderr; a scraper hanging up mid-response is routine.
        if isinstance(sys.exc_info()[1], ConnectionError | ssl.SSLError | TimeoutError):
            log.debug("client %s went away", client_address)
        else:
            log.exception("error serving %s", client_address)

    def open_connection(self, connection: socket.socket) -> bool:
        """Track ``connection``; True if it may be kept alive between requests."""
        with self._changed:
            keep = not self.closing and sum(self._connections.values()) < self.keepalive_connections
            self._connections[connection] = keep
            return keep

    def close_connection(self, connection: socket.socket) -> None:
        with self._changed:
            self._connections.pop(connection, None)
            self._changed.notify_all()

    def close_all(self, grace_s: float) -> bool:
        """Stop keep-alive, wake connections waiting for a next request, and wait up to
        ``grace_s`` for their threads to finish. True if every connection closed in time."""
        with self._changed:
            self.closing = True
            for connection in self._connections:
                # SHUT_RD ends a read waiting for the next request (it sees EOF) but lets a
                # response being written complete; the handler then closes the connection.
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RD)
            return self._changed.wait_for(lambda: not self._connections, timeout=grace_s)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # StreamRequestHandler puts this timeout on the socket: an idle keep-alive connection, or a
    # client that stops sending half-way through its request, ends after it.
    timeout = KEEPALIVE_IDLE_TIMEOUT_S

    def setup(self) -> None:
        if isinstance(self.request, ssl.SSLSocket):
            self.request.settimeout(self.timeout)
            self.request.do_handshake()  # a failed handshake ends here, logged by handle_error
        super().setup()
        # Headers and body are two writes: without TCP_NODELAY, Nagle's algorithm plus the
        # client's delayed ACK can hold the body back ~40 ms on a reused connection.
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._server = cast(_HTTPServer, self.server)
        self._keep_alive = self._server.open_connection(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self._server.close_connection(self.connection)

    def do_GET(self) -> None:
        self._respond(send_body=True)

    def do_HEAD(self) -> None:
        self._respond(send_body=False)

    def do_OPTIONS(self) -> None:
        self._respond(send_body=True)

    def do_POST(self) -> None:
        self._respond(send_body=True)

    do_PUT = do_DELETE = do_PATCH = do_POST

    def _respond(self, send_body: bool) -> None:
        web = self._server.web
        try:
            if web is not None and not web.authorized(self.headers.get("Authorization")):
                status, body = 401, b"Unauthorized\n"
                headers = [("WWW-Authenticate", 'Basic realm="jobsight"'),
                           ("Content-Type", "text/plain; charset=utf-8")]
            else:
                status, headers, body = self._server.route(self.command, self.path, self.headers)
            if web is not None and web.headers:
                headers = [*headers, *web.headers.items()]
        except Exception:
            log.exception("error answering %s %s", self.command, self.path)
            status, headers = 500, [("Content-Type", "text/plain; charset=utf-8")]
            body = b"internal error, see the exporter's log\n"
        # A request body is never read: close rather than parse it as the next request. HTTP/1.0
        # clients get one response per connection, as they expect by default.
        has_body = self.headers.get("Content-Length", "0").strip() not in ("", "0") or (
            "Transfer-Encoding" in self.headers
        )
        keep = (
            self._keep_alive
            and not self._server.closing
            and not has_body
            and self.request_version == "HTTP/1.1"
            and status < 500
        )
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        if not keep:
            self.send_header("Connection", "close")  # also sets self.close_connection
        self.end_headers()
        if send_body and body:
            self.wfile.write(body)

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

    Bind to port 0 to get a free port; :attr:`address` then holds the real one. Connections are
    kept alive (HTTP/1.1) for up to ``keepalive_connections`` clients at a time.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        listen: ListenAddress,
        health: HealthCheck = _always_healthy,
        keepalive_connections: int = KEEPALIVE_CONNECTIONS,
        web: WebConfig | None = None,
    ) -> None:
        self.registry = registry
        self.web = web
        self.health = health
        # Renders what prometheus_client would, byte for byte, several times faster: it keeps the
        # formatted name{labels} of each series between scrapes (jobsight/exposition.py).
        self.renderer = Renderer()
        try:
            self._server = _HTTPServer((listen.host, listen.port), self._route, keepalive_connections, web)
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
        if not self._server.close_all(STOP_GRACE_S):
            log.warning("metrics server stopped with requests still running after %.0f s", STOP_GRACE_S)
        self._server.server_close()

    def _route(self, method: str, target: str, headers: Message) -> Response:
        path, _, query = target.partition("?")
        if path == "/metrics":
            if method == "OPTIONS":
                return 200, [("Allow", _ALLOW)], b""
            if method not in ("GET", "HEAD"):
                return 405, [("Allow", _ALLOW), ("Content-Type", "text/plain; charset=utf-8")], (
                    f"# HTTP 405 Method Not Allowed: {method}; use OPTIONS, GET or HEAD\n".encode()
                )
            return self._metrics(query, headers)
        if method not in ("GET", "HEAD"):
            return 405, [("Allow", "GET, HEAD"), ("Content-Type", "text/plain; charset=utf-8")], (
                b"method not allowed\n"
            )
        if path == "/healthz":
            ok, message = self.health()
            text_plain = [("Content-Type", "text/plain; charset=utf-8")]
            return 200 if ok else 503, text_plain, message.encode() + b"\n"
        if path == "/":
            return 200, [("Content-Type", "text/html; charset=utf-8")], (
                b'<html><body><a href="/metrics">/metrics</a> <a href="/healthz">/healthz</a>'
                b"</body></html>\n"
            )
        return 404, [("Content-Type", "text/plain; charset=utf-8")], b"not found: try /metrics or /healthz\n"

    def _metrics(self, query: str, headers: Message) -> Response:
        # The format is what prometheus_client's make_wsgi_app negotiates: OpenMetrics when the
        # Accept header asks for it (Prometheus does, by default), text 0.0.4 otherwise.
        # node_exporter answers text even when OpenMetrics is preferred, and with this renderer
        # the two cost about the same, but switching would change what Prometheus stores from an
        # exporter already in use: in text, counters' _created samples become separate gauge
        # families (new series on every counter), exemplars and units are dropped, and the
        # OpenMetrics "# EOF" that lets Prometheus reject a truncated body is gone. So keep
        # prometheus_client's choice, and one function (Renderer.encoder_for) makes it.
        encoder, content_type = self.renderer.encoder_for(headers.get("Accept"))
        target: Collector = self.registry
        params = parse_qs(query)
        if "name[]" in params:  # prometheus_client's filter, e.g. /metrics?name[]=up
            target = self.registry.restricted_registry(params["name[]"])
        body = encoder(target)
        out_headers: Headers = [("Content-Type", content_type)]
        if gzip_accepted(headers.get("Accept-Encoding", "")):
            body = gzip.compress(body, compresslevel=GZIP_LEVEL)
            out_headers.append(("Content-Encoding", "gzip"))
        return 200, out_headers, body


def serve_parts(parts: list[ExporterParts], listen: ListenAddress, web: WebConfig | None = None) -> int:
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
        server = MetricsServer(registry, listen, health=health, web=web)
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
    scheme = "https" if server.web is not None and server.web.tls else "http"
    log.info("serving metrics on %s://%s/metrics", scheme, server.address)
    while not stop.wait(1.0):
        pass
    server.stop()
    if on_stop is not None:
        on_stop()
    return 0
