"""Tracing (in-memory and over OTLP/HTTP to a local receiver), /metrics, and settings."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from api.settings import load_settings
from jobsight.errors import ConfigError
from tests.api.conftest import METRICS, TEAM_A, auth, register_demo
from tests.api.scenario import Scenario
from tests.support import (
    RecordedRequest,
    RecordingHTTPServer,
    Reply,
    jobsight_command,
    promtool_check_metrics,
    wait_until,
)


def test_requests_and_prometheus_calls_are_traced(
    make_client: Callable[..., TestClient], scenario: Scenario
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    client = make_client(tracer_provider=provider)
    register_demo(client, scenario)
    exporter.clear()
    assert (
        client.get(
            "/v1/jobs/demo-fail/metrics",
            params={"name": "gpu_util"},
            headers={
                **auth(TEAM_A),
                "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            },
        ).status_code
        == 200
    )
    spans = exporter.get_finished_spans()
    (server,) = [s for s in spans if s.kind == SpanKind.SERVER]
    assert server.name == "GET /v1/jobs/{job_id}/metrics"
    assert server.attributes is not None and server.attributes["http.response.status_code"] == 200
    # The caller's trace is continued, and the outgoing Prometheus call is a child span of it.
    assert f"{server.context.trace_id:032x}" == "0af7651916cd43dd8448eb211c80319c"
    clients = [s for s in spans if s.kind == SpanKind.CLIENT]
    assert clients and all(s.context.trace_id == server.context.trace_id for s in clients)
    assert clients[0].attributes is not None and clients[0].attributes["http.response.status_code"] == 200


@pytest.fixture
def otlp_receiver() -> Iterator[RecordingHTTPServer]:
    def accept(request: RecordedRequest) -> Reply:
        return Reply(content_type="application/x-protobuf")

    with RecordingHTTPServer(accept, methods=("POST",)) as server:
        yield server


def _otlp_paths(receiver: RecordingHTTPServer) -> list[str]:
    return [request.path for request in receiver.snapshot()]


def test_spans_are_exported_over_otlp_only_when_configured(
    make_client: Callable[..., TestClient],
    otlp_receiver: RecordingHTTPServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    quiet = make_client()
    quiet.get("/healthz")
    quiet.__exit__(None, None, None)
    assert _otlp_paths(otlp_receiver) == []
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", otlp_receiver.url)
    import os

    traced = make_client(environ=dict(os.environ))
    traced.get("/healthz")
    traced.__exit__(None, None, None)  # shutdown flushes the batch
    wait_until(
        lambda: "/v1/traces" in _otlp_paths(otlp_receiver), timeout=30, message="spans at the OTLP receiver"
    )


def test_metrics_exposition(client: TestClient, scenario: Scenario) -> None:
    register_demo(client, scenario)
    client.get("/v1/jobs/nope", headers=auth(TEAM_A))
    client.get("/random/path/that/does/not/exist")
    public = client.get("/metrics").text
    # Without the metrics token no job id, tenant or status is shown.
    assert "jobsight_job_status" not in public and "demo-fail" not in public and "team-a" not in public
    assert client.get("/metrics", headers=auth(TEAM_A)).status_code == 403
    assert client.get("/metrics", headers=auth("not-a-known-token-at-all")).status_code == 401
    text = client.get("/metrics", headers=auth(METRICS)).text
    assert 'jobsight_job_status{job_id="demo-fail",status="failed",tenant="team-a"} 1.0' in text
    assert 'jobsight_job_status{job_id="ok-job",status="succeeded",tenant="team-b"} 1.0' in text
    assert 'jobsight_api_requests_total{code="404",method="GET",route="/v1/jobs/{job_id}"} 1.0' in text
    assert 'route="unmatched"' in text and "/random/path" not in text
    promtool_check_metrics(text)


def test_settings_from_yaml_and_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "api.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": "127.0.0.1:9000",
                "prometheus_url": "http://prom:9090",
                "tokens": [{"token": "t" * 20, "tenant": "a"}],
                "tensorboard": {"max_instances": 2},
                "notify": {"a": ["json://x"]},
            }
        )
    )
    monkeypatch.setenv("JOBSIGHT_API_PROMETHEUS_URL", "http://other:9090")
    monkeypatch.setenv("JOBSIGHT_API_TENSORBOARD__IDLE_SECONDS", "60")
    settings = load_settings(config, listen="0.0.0.0:8080")
    assert settings.listen == "0.0.0.0:8080"  # flag over file
    assert settings.prometheus_url == "http://other:9090"  # environment over file
    assert settings.tensorboard.max_instances == 2 and settings.tensorboard.idle_seconds == 60
    assert settings.tokens[0].tenant == "a" and settings.notify == {"a": ["json://x"]}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"store_url": "mysql://x"}, "store_url"),
        ({"tokens": [{"token": "short", "tenant": "a"}]}, "tokens.0.token"),
        (
            {"tokens": [{"token": "x" * 20, "tenant": "a"}, {"token": "x" * 20, "tenant": "b"}]},
            "listed twice",
        ),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_bad_settings_name_the_field(tmp_path: Path, content: dict[str, Any], message: str) -> None:
    config = tmp_path / "api.yaml"
    config.write_text(yaml.safe_dump(content))
    with pytest.raises(ConfigError) as info:
        load_settings(config)
    assert message in str(info.value) and str(config) in str(info.value)


def test_cli_exits_2_on_a_bad_config(tmp_path: Path) -> None:
    config = tmp_path / "api.yaml"
    config.write_text("prometheus_url: [not, a, url]\n")
    result = subprocess.run(
        jobsight_command("api", "--config", str(config)), capture_output=True, timeout=120
    )
    assert result.returncode == 2
    assert b"prometheus_url" in result.stderr
    missing = subprocess.run(
        jobsight_command("api", "--config", str(tmp_path / "nope.yaml")), capture_output=True, timeout=120
    )
    assert missing.returncode == 2 and b"cannot read config" in missing.stderr
