from __future__ import annotations

import logging
from collections.abc import Iterator

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric

from jobsight.errors import ConfigError
from jobsight.serving import Collector, CollectorSet, ListenAddress, MetricsServer, parse_listen_address


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
