from __future__ import annotations

import http.client
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.openmetrics import exposition as openmetrics

from jobsight.errors import ConfigError
from jobsight.serving import Collector, CollectorSet, ListenAddress, MetricsServer, parse_listen_address

generate_openmetrics: Callable[[CollectorRegistry], bytes] = openmetrics.generate_latest  # untyped upstream


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (":9400", ListenAddress("0.0.0.0", 9400)),
        ("127.0.0.1:0", ListenAddress("127.0.0.1", 0)),
        ("[::1]:9401", ListenAddress("::1", 9401)),
        ("localhost:8000", ListenAddress("localhost", 8000)),
    ],
)
def test_parse_listen_address(text: str, expected: ListenAddress) -> None:
    assert parse_listen_address(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"), [("9400", "HOST:PORT"), (":http", "not a number"), (":70000", "outside")]
)
def test_parse_listen_address_errors(text: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_listen_address(text)


class _Good:
    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("demo_value", "A value.", labels=["k"])
        family.add_metric(["a"], 1.5)
        yield family


class _HalfBroken:
    """Yields one family, then fails: the yielded family must not reach the exposition."""

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("half_value", "Never shown.", value=1)
        raise OSError("sensor went away")


def test_collector_set_isolates_failures_and_reports_self_metrics() -> None:
    # start/end readings of each collector in turn: good takes 0.25 s, bad 0.5 s
    readings = iter([10.0, 10.25, 20.0, 20.5])
    collectors: dict[str, Collector] = {"good": _Good(), "bad": _HalfBroken()}
    collector_set = CollectorSet(collectors, prefix="node", clock=lambda: next(readings))
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in collector_set.collect()
        for sample in family.samples
    }
    assert samples[("demo_value", (("k", "a"),))] == 1.5
    assert not any(name == "half_value" for name, _ in samples)
    assert samples[("node_scrape_collector_success", (("collector", "good"),))] == 1.0
    assert samples[("node_scrape_collector_success", (("collector", "bad"),))] == 0.0
    assert samples[("node_scrape_collector_duration_seconds", (("collector", "good"),))] == 0.25
    assert samples[("node_scrape_collector_duration_seconds", (("collector", "bad"),))] == 0.5


def test_metrics_server_serves_metrics_and_health_over_http() -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CollectorSet({"good": _Good()}))
    healthy = {"ok": True}
    server = MetricsServer(
        registry, ListenAddress("127.0.0.1", 0), health=lambda: (healthy["ok"], "state " + str(healthy["ok"]))
    ).start()
    base = f"http://127.0.0.1:{server.address.port}"
    try:
        metrics = httpx.get(f"{base}/metrics", timeout=5)
        assert metrics.status_code == 200
        assert 'demo_value{k="a"} 1.5' in metrics.text
        assert 'jobsight_scrape_collector_success{collector="good"} 1.0' in metrics.text
        zipped = httpx.get(f"{base}/metrics", headers={"Accept-Encoding": "gzip"}, timeout=5)
        assert zipped.headers["Content-Encoding"] == "gzip" and 'demo_value{k="a"} 1.5' in zipped.text
        plain = httpx.get(f"{base}/metrics", headers={"Accept-Encoding": "identity"}, timeout=5)
        assert "Content-Encoding" not in plain.headers and 'demo_value{k="a"} 1.5' in plain.text
        assert httpx.get(f"{base}/healthz", timeout=5).status_code == 200
        healthy["ok"] = False
        down = httpx.get(f"{base}/healthz", timeout=5)
        assert down.status_code == 503 and "state False" in down.text
        assert httpx.get(f"{base}/nope", timeout=5).status_code == 404
    finally:
        server.stop()


def test_metrics_server_reports_a_taken_port() -> None:
    first = MetricsServer(CollectorRegistry(auto_describe=False), ListenAddress("127.0.0.1", 0))
    try:
        with pytest.raises(ConfigError, match="cannot listen"):
            MetricsServer(CollectorRegistry(auto_describe=False), ListenAddress("127.0.0.1", first.address.port))  # noqa: E501
    finally:
        first.stop()


def test_collector_failure_is_logged_once_until_it_recovers(caplog: pytest.LogCaptureFixture) -> None:
    class Flaky:
        broken = True

        def collect(self) -> Iterator[Metric]:
            if self.broken:
                raise OSError("no PSI on this kernel")
            yield GaugeMetricFamily("flaky_value", "A value.", value=1)

    caplog.set_level(logging.INFO, logger="jobsight.serving")
    flaky = Flaky()
    collector_set = CollectorSet({"flaky": flaky})
    for _ in range(3):
        list(collector_set.collect())
    assert sum("collector flaky failed" in r.getMessage() for r in caplog.records) == 1
    flaky.broken = False
    list(collector_set.collect())
    assert any("collector flaky recovered" in r.getMessage() for r in caplog.records)
    flaky.broken = True
    list(collector_set.collect())
    assert sum("collector flaky failed" in r.getMessage() for r in caplog.records) == 2


class _Fixed:
    """Same families on every scrape, so a response can be compared with prometheus_client's."""

    def collect(self) -> Iterator[Metric]:
        counter = CounterMetricFamily("demo_requests", 'Requests "served".', labels=["code"], created=1.0)
        counter.add_metric(["200"], 7.0, created=1700000000.5)
        yield counter
        gauge = GaugeMetricFamily("demo_temp", "Temperature.", labels=["gpu", "job"])
        gauge.add_metric(["0", 'a"b\\c\nd'], -0.0)
        gauge.add_metric(["1", "ü"], math.inf)
        yield gauge


PROMETHEUS_ACCEPT = (
    "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,"
    "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"
)


@pytest.fixture
def fixed_server() -> Iterator[MetricsServer]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed())
    server = MetricsServer(registry, ListenAddress("127.0.0.1", 0)).start()
    yield server
    server.stop()


def _get(conn: http.client.HTTPConnection, path: str, headers: dict[str, str] | None = None,
         method: str = "GET") -> tuple[http.client.HTTPResponse, bytes]:
    conn.request(method, path, headers=headers or {})
    response = conn.getresponse()
    return response, response.read()


def test_metrics_are_prometheus_clients_bytes_in_the_negotiated_format(fixed_server: MetricsServer) -> None:
    registry = fixed_server.registry
    with httpx.Client(base_url=f"http://127.0.0.1:{fixed_server.address.port}", timeout=5) as client:
        om = client.get("/metrics", headers={"Accept": PROMETHEUS_ACCEPT, "Accept-Encoding": "gzip"})
        assert om.headers["Content-Encoding"] == "gzip"
        assert om.headers["Content-Type"] == choose_encoder(PROMETHEUS_ACCEPT)[1]
        assert om.headers["Content-Type"].startswith("application/openmetrics-text; version=1.0.0")
        assert om.content == generate_openmetrics(registry)  # httpx gunzipped it
        text = client.get("/metrics", headers={"Accept": "text/plain", "Accept-Encoding": "identity"})
        assert text.headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
        assert text.content == generate_latest(registry)
        assert client.get("/metrics").content == generate_latest(registry)  # no Accept: text
        only = client.get("/metrics", params={"name[]": "demo_temp"})
        assert only.content == generate_latest(registry.restricted_registry(["demo_temp"]))
        assert b"demo_requests" not in only.content


def test_connections_are_kept_alive_between_scrapes(fixed_server: MetricsServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", fixed_server.address.port, timeout=5)
    try:
        first, body = _get(conn, "/metrics")
        sock = conn.sock
        assert first.version == 11 and first.getheader("Connection") is None
        assert body == generate_latest(fixed_server.registry)
        for path in ("/metrics", "/healthz", "/nope", "/metrics"):
            _get(conn, path)
            assert conn.sock is sock  # http.client would have reconnected after a close
        head, head_body = _get(conn, "/metrics", method="HEAD")
        assert head.status == 200 and head_body == b"" and int(head.getheader("Content-Length", "0")) > 0
        options, _ = _get(conn, "/metrics", method="OPTIONS")
        assert options.status == 200 and "GET" in options.getheader("Allow", "")
        assert conn.sock is sock
        # A request with a body is answered, then the connection closed (the body is never read).
        conn.request("POST", "/metrics", body=b"x=1")
        post = conn.getresponse()
        post.read()
        assert post.status == 405 and post.getheader("Connection") == "close"
    finally:
        conn.close()


def test_keepalive_connections_are_bounded() -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed())
    server = MetricsServer(registry, ListenAddress("127.0.0.1", 0), keepalive_connections=1).start()
    first = http.client.HTTPConnection("127.0.0.1", server.address.port, timeout=5)
    second = http.client.HTTPConnection("127.0.0.1", server.address.port, timeout=5)
    try:
        assert _get(first, "/metrics")[0].getheader("Connection") is None
        response, body = _get(second, "/metrics")
        assert response.getheader("Connection") == "close" and body == generate_latest(registry)
        # HTTP/1.0 clients get one response per connection.
        legacy = http.client.HTTPConnection("127.0.0.1", server.address.port, timeout=5)
        legacy._http_vsn, legacy._http_vsn_str = 10, "HTTP/1.0"  # type: ignore[attr-defined]
        assert _get(legacy, "/healthz")[0].getheader("Connection") == "close"
        legacy.close()
    finally:
        first.close()
        second.close()
        server.stop()


def test_stop_closes_idle_keepalive_connections(fixed_server: MetricsServer) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", fixed_server.address.port, timeout=5)
    # Other tests' servers may still be winding down their own request threads: watch only the
    # threads this connection started.
    before = set(threading.enumerate())
    try:
        _get(conn, "/metrics")
        assert conn.sock is not None
        sock = conn.sock
        ours = [t for t in threading.enumerate() if t not in before and "process_request_thread" in t.name]
        assert ours, "the keep-alive connection should be served by its own request thread"
        started = time.monotonic()
        fixed_server.stop()
        # far below the 120 s idle timeout: stop() closed the idle connection instead of waiting
        assert time.monotonic() - started < 30
        sock.settimeout(2)
        assert sock.recv(1) == b""  # the server closed it, instead of idling until the timeout
        # ...and its request thread is gone (stop() waited for it).
        for thread in ours:
            thread.join(timeout=10)
            assert not thread.is_alive(), thread.name
    finally:
        conn.close()
