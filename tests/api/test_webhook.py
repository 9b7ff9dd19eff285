"""The Alertmanager webhook at the HTTP boundary: its own token, payload validation, tolerance of
extra fields, and mapping alerts to jobs by job_id label or by host/GPU and time."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from fastapi.testclient import TestClient

from tests.api.conftest import ADMIN, TEAM_A, TEAM_B, WEBHOOK, auth, register_demo
from tests.api.scenario import Scenario


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")


def payload(*alerts: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "version": "4",
        "groupKey": '{}:{alertname="x"}',
        "truncatedAlerts": 0,
        "status": "firing",
        "receiver": "jobsight",
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://am:9093",
        "alerts": list(alerts),
        **extra,
    }


def alert(labels: dict[str, str], starts: float, status: str = "firing", **extra: Any) -> dict[str, Any]:
    return {
        "status": status,
        "labels": labels,
        "annotations": {"summary": "s"},
        "startsAt": iso(starts),
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else iso(starts + 60),
        "generatorURL": "http://prom/graph",
        "fingerprint": f"fp-{sorted(labels.items())}"[:60],
        **extra,
    }


def test_webhook_token_is_separate(client: TestClient) -> None:
    body = payload()
    assert client.post("/v1/alerts/webhook", json=body).status_code == 401
    assert client.post("/v1/alerts/webhook", json=body, headers=auth(ADMIN)).status_code == 401
    assert (
        client.post("/v1/alerts/webhook", json=body, headers=auth("wrong-webhook-token-xyz")).status_code
        == 401
    )
    assert client.post("/v1/alerts/webhook", json=body, headers=auth(WEBHOOK)).status_code == 200
    # The webhook token opens nothing else.
    assert client.get("/v1/jobs", headers=auth(WEBHOOK)).status_code == 401


def test_bad_payloads_are_422_and_store_nothing(client: TestClient) -> None:
    for bad in (
        {"version": "3", "status": "firing", "alerts": []},
        {"version": "4", "status": "firing"},
        payload({"status": "firing", "labels": {}}),
        payload({"status": "weird", "labels": {}, "startsAt": "2026-01-01T00:00:00Z"}),
        payload(alert({"alertname": "A"}, 1e9), alert({"alertname": "B"}, 1e9, startsAt="yesterday")),
    ):
        response = client.post("/v1/alerts/webhook", json=bad, headers=auth(WEBHOOK))
        assert response.status_code == 422, bad
    assert (
        client.post(
            "/v1/alerts/webhook",
            content=b"{not json",
            headers={**auth(WEBHOOK), "content-type": "application/json"},
        ).status_code
        == 422
    )
    assert client.get("/v1/alerts", headers=auth(ADMIN)).json()["alerts"] == []


def test_alerts_map_to_jobs(client: TestClient, scenario: Scenario) -> None:
    register_demo(client, scenario)
    body = payload(
        alert({"alertname": "JobStalled", "job_id": "ok-job", "severity": "warning"}, scenario.base + 60),
        # Host and GPU, while demo-fail ran there: the registry and jobsight_gpu_job_info agree.
        alert(
            {"alertname": "GPUXidError", "Hostname": "node2", "gpu": "3", "xid": "79"},
            scenario.xid_at,
            someFutureField={"x": 1},
        ),
        # Host only: every job on that host at that time.
        alert({"alertname": "NodeMemoryPressure", "Hostname": "node3"}, scenario.base + 120),
        # A host after every job there ended: stored, mapped to nothing.
        alert({"alertname": "NodeDown", "Hostname": "node1"}, scenario.ok_end + 3600),
        # Not a valid job id: stored, unmapped, with a warning.
        alert({"alertname": "JobFailed", "job_id": 'x"} or 1'}, scenario.base),
        notification_reason="new_alert",
    )
    response = client.post("/v1/alerts/webhook", json=body, headers=auth(WEBHOOK))
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["stored"] == 5 and any("invalid job_id" in w for w in result["warnings"])
    mapped = sorted(result["mapped"].values())
    assert mapped == [[], [], ["demo-fail"], ["ok-job"], ["ok-job"]]
    demo = client.get("/v1/jobs/demo-fail/alerts", headers=auth(TEAM_A)).json()["alerts"]
    assert [a["alertname"] for a in demo] == ["GPUXidError"]
    assert [
        a["alertname"] for a in client.get("/v1/jobs/ok-job/alerts", headers=auth(TEAM_B)).json()["alerts"]
    ] == ["NodeMemoryPressure", "JobStalled"]
    # Resolution updates the same alert instead of adding one.
    resolved = payload(
        alert(
            {"alertname": "GPUXidError", "Hostname": "node2", "gpu": "3", "xid": "79"},
            scenario.xid_at,
            status="resolved",
        ),
        status="resolved",
    )
    assert client.post("/v1/alerts/webhook", json=resolved, headers=auth(WEBHOOK)).status_code == 200
    (again,) = client.get("/v1/jobs/demo-fail/alerts", headers=auth(TEAM_A)).json()["alerts"]
    assert again["status"] == "resolved" and again["ends_at"] is not None
    everything = client.get("/v1/alerts", headers=auth(ADMIN), params={"limit": 2}).json()
    assert len(everything["alerts"]) == 2 and everything["next_cursor"] is not None
    rest = client.get("/v1/alerts", headers=auth(ADMIN), params={"cursor": everything["next_cursor"]}).json()
    assert len(rest["alerts"]) == 3
