"""Property-based tests from the app's own OpenAPI schema (schemathesis): whatever the generated
request, no 5xx, and every response matches the documented schema. Examples are bounded so the
suite stays fast; Prometheus and the log store are the real ones of the session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance

from api.app import create_app
from tests.api.conftest import ADMIN, auth, base_settings, register_demo
from tests.api.promdata import RunningPrometheus
from tests.api.scenario import Scenario


@pytest.fixture(scope="module")
def api_client(
    prometheus: RunningPrometheus,
    log_store_dir: Path,
    scenario: Scenario,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[TestClient]:
    tmp = tmp_path_factory.mktemp("schemathesis")
    app = create_app(
        base_settings(tmp, prometheus.url, log_store_dir, {"tensorboard": {"allowed_roots": [str(tmp)]}}),
        environ={},
    )
    with TestClient(app) as client:  # runs the lifespan: schema migration, worker
        register_demo(client, scenario)
        yield client


def test_api_conforms_to_its_schema(api_client: TestClient) -> None:
    # Driven by hand rather than through schemathesis' pytest plugin and transports: the schema
    # comes from a fixture (the app needs the session's Prometheus), and requests are sent with
    # the app's TestClient, then judged by schemathesis' checks.
    api_schema = schemathesis.openapi.from_dict(api_client.get("/openapi.json").json())
    checked = []
    for result in api_schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]

        @given(case=operation.as_strategy())
        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: schemathesis.Case[Any]) -> None:
            kwargs = case.as_transport_kwargs(base_url="http://testserver", headers=auth(ADMIN))
            response = api_client.request(
                kwargs["method"],
                kwargs["url"],
                params=kwargs.get("params"),
                headers=kwargs.get("headers"),
                json=kwargs.get("json"),
                content=kwargs.get("data"),
            )
            case.validate_response(
                response, checks=[not_a_server_error, response_schema_conformance, status_code_conformance]
            )

        check()
        checked.append(operation.label)
    assert "PUT /v1/jobs/{job_id}" in checked and "POST /v1/alerts/webhook" in checked
    assert len(checked) >= 18
    # The examples really went through the app (its own request counter saw them).
    exposition = api_client.get("/metrics").text
    total = sum(
        float(line.rsplit(" ", 1)[1])
        for line in exposition.splitlines()
        if line.startswith("jobsight_api_requests_total{")
    )
    assert total >= 10 * len(checked), total
