"""The OTLP receiver over real HTTP: bodies from the real OpenTelemetry SDK (its OTLP/HTTP
exporter inside jobsight.training, and its own protobuf encoder for JSON bodies), malformed bodies,
floods of label values and of jobs, expiry, and what /metrics then shows."""

from __future__ import annotations

import gzip
import json
import math

import httpx
import pytest
from google.protobuf import json_format
from google.rpc.status_pb2 import Status
from opentelemetry.exporter.otlp.proto.common.metrics_encoder import encode_metrics
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.metrics.v1.metrics_pb2 import Metric, NumberDataPoint, ResourceMetrics, ScopeMetrics
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.resources import Resource
from prometheus_client import generate_latest

from jobsight import training
from tests.collectors.otlp.conftest import Agent, make_agent
from tests.support import promtool_check_metrics

PROTOBUF = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}


def _kv(key: str, value: str | int) -> KeyValue:
    any_value = AnyValue(string_value=value) if isinstance(value, str) else AnyValue(int_value=value)
    return KeyValue(key=key, value=any_value)


def gauge_request(
    job_id: str,
    rank: int | str,
    points: dict[str, float],
    metric: str = training.PHASE_ENTERED,
) -> ExportMetricsServiceRequest:
    """One resource (job, rank) with one gauge whose points carry a ``phase`` attribute each."""
    gauge = Metric(name=metric)
    for phase, value in points.items():
        gauge.gauge.data_points.append(NumberDataPoint(as_double=value, attributes=[_kv("phase", phase)]))
    resource = ResourceMetrics(scope_metrics=[ScopeMetrics(metrics=[gauge])])
    resource.resource.attributes.extend([_kv(training.ATTR_JOB_ID, job_id), _kv(training.ATTR_RANK, rank)])
    return ExportMetricsServiceRequest(resource_metrics=[resource])


def post(agent: Agent, body: bytes, headers: dict[str, str]) -> httpx.Response:
    return httpx.post(agent.receiver.url, content=body, headers=headers, timeout=10)


def test_steps_from_the_tracker_arrive_as_jobsight_train_series(agent: Agent) -> None:
    environ = {"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "CUDA_VISIBLE_DEVICES": "4,5"}
    tracker = training.start(
        job_id="4711", endpoint=agent.receiver.url, export_interval_s=3600, environ=environ
    )
    try:
        for step in range(5):
            tracker.step(samples=8, tokens=1024, loss=2.0 - step / 10)
        assert tracker.flush(10.0)
    finally:
        tracker.close()
    rank = {"job_id": "4711", "rank": "3", "Hostname": "node-a"}
    assert agent.value("jobsight_train_steps_total", **rank) == 5
    assert agent.value("jobsight_train_samples_total", **rank) == 40
    assert agent.value("jobsight_train_tokens_total", **rank) == 5 * 1024
    assert agent.value("jobsight_train_loss", **rank) == pytest.approx(1.6)
    # Four intervals between five steps.
    assert agent.value("jobsight_train_step_seconds_count", **rank) == 4
    assert agent.value("jobsight_train_step_seconds_bucket", **rank, le="+Inf") == 4
    # The tracker's bucket bounds, cumulative up to +Inf (the values themselves depend on timing).
    assert agent.value("jobsight_train_step_seconds_bucket", **rank, le="600.0") == 4
    assert agent.value("jobsight_train_step_seconds_bucket", **rank, le="0.005") is not None
    last = agent.value("jobsight_train_last_step_timestamp_seconds", **rank)
    assert last is not None and last > 1.7e9
    # The GPU is CUDA_VISIBLE_DEVICES' entry for local rank 1.
    assert agent.value("jobsight_train_rank_info", **rank, local_rank="1", world_size="4", gpu="5") == 1
    assert agent.value("jobsight_train_export_failures_total", **rank) == 0
    assert (
        agent.value("jobsight_otlp_requests_total", code="200") == agent.receiver.request_counts()["200"] >= 1
    )
    promtool_check_metrics(generate_latest(agent.registry).decode(), allow=("Hostname",))


def test_the_current_phase_is_shown_while_open_and_gone_after(agent: Agent) -> None:
    tracker = training.start(job_id="j-phase", rank=0, endpoint=agent.receiver.url, export_interval_s=3600)
    rank = {"job_id": "j-phase", "rank": "0", "Hostname": "node-a"}
    try:
        with tracker.phase("compute"):
            assert tracker.flush(10.0)
            entered = agent.value("jobsight_train_phase_entered_timestamp_seconds", **rank, phase="compute")
            assert entered is not None and entered > 1.7e9
        with tracker.phase("data"):
            pass
        assert tracker.flush(10.0)
    finally:
        tracker.close()
    assert agent.value("jobsight_train_phase_entered_timestamp_seconds", **rank, phase="compute") is None
    assert agent.value("jobsight_train_phase_seconds_count", **rank, phase="compute") == 1
    assert agent.value("jobsight_train_phase_seconds_count", **rank, phase="data") == 1


def _sdk_request(job_id: str) -> ExportMetricsServiceRequest:
    """What the SDK's own encoder makes of a tracker-shaped set of instruments."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(
        metric_readers=[reader],
        resource=Resource.create({training.ATTR_JOB_ID: job_id, training.ATTR_RANK: 1}),
        shutdown_on_exit=False,
    )
    meter = provider.get_meter("test")
    meter.create_counter(training.STEPS).add(7)
    meter.create_histogram(training.STEP_DURATION, explicit_bucket_boundaries_advisory=[0.1, 1.0]).record(0.5)
    data = reader.get_metrics_data()
    provider.shutdown()
    assert data is not None
    return encode_metrics(data)


def test_json_bodies_are_decoded(agent: Agent) -> None:
    request = _sdk_request("json-job")
    # OTLP/JSON is protobuf's JSON mapping with integer enums (the OTLP specification).
    body = json_format.MessageToJson(request, use_integers_for_enums=True)
    assert '"asInt": "7"' in body or '"asInt": 7' in body  # int64 as a string, as OTLP/JSON allows
    response = post(agent, body.encode(), JSON)
    assert response.status_code == 200, response.text
    assert response.headers["Content-Type"] == "application/json"
    assert json.loads(response.content) == {}  # nothing rejected
    rank = {"job_id": "json-job", "rank": "1", "Hostname": "node-a"}
    assert agent.value("jobsight_train_steps_total", **rank) == 7
    assert agent.value("jobsight_train_step_seconds_bucket", **rank, le="1.0") == 1
    assert agent.value("jobsight_train_step_seconds_bucket", **rank, le="0.1") == 0
    assert agent.value("jobsight_train_step_seconds_sum", **rank) == 0.5


def test_the_otlp_specification_json_example_shape_is_accepted(agent: Agent) -> None:
    # Hand-written in the shape of the OTLP/JSON examples: camelCase names, string int64s,
    # integer enums, an unknown field (receivers must ignore those).
    body = {
        "resourceMetrics": [
            {
                "resource": {
                    "attributes": [
                        {"key": "jobsight.job_id", "value": {"stringValue": "spec-job"}},
                        {"key": "jobsight.rank", "value": {"intValue": "2"}},
                    ]
                },
                "scopeMetrics": [
                    {
                        "scope": {"name": "x"},
                        "metrics": [
                            {
                                "name": "jobsight.train.steps",
                                "unit": "1",
                                "sum": {
                                    "aggregationTemporality": 2,
                                    "isMonotonic": True,
                                    "dataPoints": [{"asInt": "12", "timeUnixNano": "1700000000000000000"}],
                                },
                                "someFutureField": {"a": 1},
                            }
                        ],
                    }
                ],
            }
        ]
    }
    response = post(agent, json.dumps(body).encode(), {"Content-Type": "application/json; charset=utf-8"})
    assert response.status_code == 200, response.text
    assert agent.value("jobsight_train_steps_total", job_id="spec-job", rank="2", Hostname="node-a") == 12


def test_gzip_protobuf_bodies_are_decoded(agent: Agent) -> None:
    body = gzip.compress(_sdk_request("gz-job").SerializeToString())
    response = post(agent, body, {**PROTOBUF, "Content-Encoding": "gzip"})
    assert response.status_code == 200
    ExportMetricsServiceResponse.FromString(response.content)
    assert agent.value("jobsight_train_steps_total", job_id="gz-job", rank="1", Hostname="node-a") == 7


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b"\xff\xff\xff\xff not protobuf", PROTOBUF),
        (b'{"resourceMetrics": [', JSON),
        (b'{"resourceMetrics": "no"}', JSON),
        (b"\xc3\x28", JSON),
        (b"not gzip at all", {**PROTOBUF, "Content-Encoding": "gzip"}),
    ],
)
def test_malformed_bodies_get_400_and_leave_other_jobs_alone(
    agent: Agent, body: bytes, headers: dict[str, str]
) -> None:
    assert post(agent, _sdk_request("good-job").SerializeToString(), PROTOBUF).status_code == 200
    before = generate_latest(agent.registry)
    response = post(agent, body, headers)
    assert response.status_code == 400
    if headers["Content-Type"] == PROTOBUF["Content-Type"]:
        assert Status.FromString(response.content).message
    else:
        assert json.loads(response.content)["message"]
    assert agent.value("jobsight_train_steps_total", job_id="good-job", rank="1", Hostname="node-a") == 7
    # The request counter moves; no training series does.
    train_lines = [
        line for line in generate_latest(agent.registry).splitlines() if b"jobsight_train_" in line
    ]
    assert train_lines == [line for line in before.splitlines() if b"jobsight_train_" in line]
    assert agent.value("jobsight_otlp_requests_total", code="400") == 1


def test_other_content_types_paths_and_oversized_bodies_are_refused() -> None:
    agent = make_agent(max_body_bytes=1000)
    try:
        assert post(agent, b"x", {"Content-Type": "text/plain"}).status_code == 415
        assert post(agent, b"x", {**PROTOBUF, "Content-Encoding": "br"}).status_code == 415
        assert (
            httpx.post(
                agent.receiver.url.replace("/v1/metrics", "/v1/traces"), content=b"", headers=PROTOBUF
            ).status_code
            == 404
        )
        assert post(agent, b"\0" * 1001, PROTOBUF).status_code == 413
        big = gzip.compress(b"\0" * 5000)  # small on the wire, too large once inflated
        assert post(agent, big, {**PROTOBUF, "Content-Encoding": "gzip"}).status_code == 400
        assert httpx.get(agent.receiver.url).status_code == 405
    finally:
        agent.receiver.stop()


def test_a_flood_of_label_values_is_capped_per_job_and_counted() -> None:
    agent = make_agent(max_series_per_job=10)
    try:
        assert (
            post(agent, gauge_request("calm", 0, {"compute": 1.0}).SerializeToString(), PROTOBUF).status_code
            == 200
        )
        flood = gauge_request("noisy", 0, {f"p{i}": float(i) for i in range(500)})
        response = post(agent, flood.SerializeToString(), PROTOBUF)
        assert response.status_code == 200
        partial = ExportMetricsServiceResponse.FromString(response.content).partial_success
        # One series is the rank's info; nine phases fit under the cap of ten.
        assert partial.rejected_data_points == 491
        assert "series_cap" in partial.error_message
        exposition = generate_latest(agent.registry).decode()
        noisy = [
            line
            for line in exposition.splitlines()
            if line.startswith("jobsight_train_") and 'job_id="noisy"' in line
        ]
        assert len(noisy) == 10
        assert agent.value("jobsight_otlp_series_dropped_total", job_id="noisy") == 491
        assert agent.value("jobsight_otlp_data_points_rejected_total", reason="series_cap") == 491
        # Another job on the same agent is untouched, and can still add series of its own.
        calm = {"job_id": "calm", "rank": "0", "Hostname": "node-a"}
        assert agent.value("jobsight_train_phase_entered_timestamp_seconds", **calm, phase="compute") == 1.0
        assert (
            post(agent, gauge_request("calm", 1, {"data": 2.0}).SerializeToString(), PROTOBUF).status_code
            == 200
        )
        assert (
            agent.value(
                "jobsight_train_phase_entered_timestamp_seconds",
                job_id="calm",
                rank="1",
                Hostname="node-a",
                phase="data",
            )
            == 2.0
        )
    finally:
        agent.receiver.stop()


def test_a_flood_of_jobs_is_capped() -> None:
    agent = make_agent(max_jobs=3)
    try:
        for i in range(10):
            post(agent, gauge_request(f"job{i}", 0, {"compute": 1.0}).SerializeToString(), PROTOBUF)
        assert agent.value("jobsight_otlp_jobs") == 3
        assert agent.value("jobsight_otlp_data_points_rejected_total", reason="too_many_jobs") == 7
        assert (
            agent.value(
                "jobsight_train_rank_info",
                job_id="job9",
                rank="0",
                Hostname="node-a",
                local_rank="",
                world_size="",
                gpu="",
            )
            is None
        )
    finally:
        agent.receiver.stop()


@pytest.mark.parametrize(
    ("job_id", "rank", "phase", "reason"),
    [
        ('4711"} or vector(1) #', 0, "compute", "job_id"),
        ("", 0, "compute", "job_id"),
        ("4711", "-1", "compute", "rank"),
        ("4711", "zero", "compute", "rank"),
        ("4711", 0, 'x"}', "phase"),
        ("4711", 0, "a" * 40, "phase"),
    ],
)
def test_invalid_label_values_are_refused(
    agent: Agent, job_id: str, rank: int | str, phase: str, reason: str
) -> None:
    response = post(agent, gauge_request(job_id, rank, {phase: 1.0}).SerializeToString(), PROTOBUF)
    assert response.status_code == 200
    assert ExportMetricsServiceResponse.FromString(response.content).partial_success.rejected_data_points == 1
    assert agent.value("jobsight_otlp_data_points_rejected_total", reason=reason) == 1
    assert "jobsight_train_phase_entered_timestamp_seconds{" not in generate_latest(agent.registry).decode()


def test_unknown_metrics_wrong_types_and_non_finite_values_are_refused(agent: Agent) -> None:
    unknown = gauge_request("j", 0, {"compute": 1.0}, metric="some.other.metric")
    wrong_type = gauge_request("j", 0, {"compute": 1.0}, metric=training.STEPS)  # a gauge, not a sum
    nan = gauge_request("j", 0, {"compute": math.nan})
    for request in (unknown, wrong_type, nan):
        assert post(agent, request.SerializeToString(), PROTOBUF).status_code == 200
    for reason in ("unknown_metric", "type", "value"):
        assert agent.value("jobsight_otlp_data_points_rejected_total", reason=reason) == 1
    assert "NaN" not in generate_latest(agent.registry).decode()


def test_ranks_that_stop_exporting_expire(agent: Agent) -> None:
    post(agent, gauge_request("old", 0, {"compute": 1.0}).SerializeToString(), PROTOBUF)
    agent.clock.now += 30
    post(agent, gauge_request("old", 1, {"compute": 1.0}).SerializeToString(), PROTOBUF)
    agent.clock.now += 40  # rank 0 silent for 70 s, rank 1 for 40 s; expiry is 60 s
    assert (
        agent.value(
            "jobsight_train_rank_info",
            job_id="old",
            rank="0",
            Hostname="node-a",
            local_rank="",
            world_size="",
            gpu="",
        )
        is None
    )
    assert (
        agent.value(
            "jobsight_train_rank_info",
            job_id="old",
            rank="1",
            Hostname="node-a",
            local_rank="",
            world_size="",
            gpu="",
        )
        == 1
    )
    agent.clock.now += 30
    assert agent.value("jobsight_otlp_jobs") == 0
