"""Failure notifications: once per failure, retried on delivery errors, recorded, and delivered
through real apprise to a local receiver (json://) and to a file."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.notify import AppriseNotifier, DeliveryError
from tests.api.conftest import SCHEDULER, TEAM_A, WEBHOOK, auth, register_demo
from tests.api.scenario import Scenario
from tests.support import RecordingHTTPServer, free_port, wait_until


class FlakyNotifier:
    """Fails the first ``failures`` deliveries, then accepts; remembers what it was given."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[tuple[list[str], str, str]] = []

    def send(self, urls: Sequence[str], title: str, body: str) -> None:
        self.calls.append((list(urls), title, body))
        if len(self.calls) <= self.failures:
            raise DeliveryError("receiver refused")


def notifications(client: TestClient, job_id: str) -> list[dict[str, Any]]:
    response = client.get(f"/v1/jobs/{job_id}/notifications", headers=auth(TEAM_A))
    assert response.status_code == 200
    return list(response.json()["notifications"])


NOTIFY = {"notify": {"team-a": ["json://127.0.0.1:9/unused"]}, "notify_retry_seconds": 0.05}


def test_one_notification_per_failure_retried_until_delivered(
    make_client: Callable[..., TestClient], scenario: Scenario
) -> None:
    notifier = FlakyNotifier(failures=2)
    client = make_client(settings=NOTIFY, notifier=notifier)
    register_demo(client, scenario)
    sent = wait_until(
        lambda: [n for n in notifications(client, "demo-fail") if n["status"] == "sent"],
        timeout=30,
        message="the notification to be sent",
    )
    (note,) = sent
    assert note["attempts"] == 3 and note["targets"] == 1 and note["failure_seq"] == 1
    assert len(notifier.calls) == 3
    urls, title, body = notifier.calls[-1]
    assert urls == ["json://127.0.0.1:9/unused"]
    assert title.startswith("jobsight: job demo-fail failed: XID 79 on node2 GPU 3")
    for text in (
        "Job demo-fail (llama-pretrain) of user alice failed.",
        "1. XID 79 on node2 GPU 3",
        "ranks 2, 3 missing from the timeout set",
        "Exit code: 1",
        "Dashboard: http://grafana.example:3000/d/jobsight-job/jobsight-job?var-job_id=demo-fail",
        "Logs: http://api.example:8000/v1/jobs/demo-fail/logs",
    ):
        assert text in body, text
    assert note["body"] == body
    # The same failure reported again is not notified again.
    register_demo(client, scenario)
    assert len(notifications(client, "demo-fail")) == 1
    # The succeeded job never notifies.
    assert client.get("/v1/jobs/ok-job/notifications", headers=auth("admin-token-0123456789")).json() == {
        "notifications": []
    }


def test_delivery_gives_up_after_the_limit_and_says_why(
    make_client: Callable[..., TestClient], scenario: Scenario
) -> None:
    notifier = FlakyNotifier(failures=100)
    client = make_client(settings={**NOTIFY, "notify_max_attempts": 3}, notifier=notifier)
    register_demo(client, scenario)
    (note,) = wait_until(
        lambda: [n for n in notifications(client, "demo-fail") if n["status"] == "failed"],
        timeout=30,
        message="delivery to be given up",
    )
    assert note["attempts"] == 3 and note["last_error"] == "receiver refused" and len(notifier.calls) == 3


def test_tenant_without_targets_is_recorded_as_skipped(client: TestClient, scenario: Scenario) -> None:
    register_demo(client, scenario)
    (note,) = notifications(client, "demo-fail")
    assert note["status"] == "skipped" and note["targets"] == 0


def test_job_failed_alert_marks_the_job_and_notifies(
    make_client: Callable[..., TestClient], scenario: Scenario
) -> None:
    notifier = FlakyNotifier(failures=0)
    client = make_client(settings=NOTIFY, notifier=notifier)
    body = {
        "name": "llama",
        "user": "alice",
        "started_at": scenario.demo_start,
        "status": "running",
        "nodes": ["node1", "node2"],
    }
    assert (
        client.put(
            "/v1/jobs/demo-fail", json={**body, "tenant": "team-a"}, headers=auth(SCHEDULER)
        ).status_code
        == 201
    )
    payload = {
        "version": "4",
        "status": "firing",
        "receiver": "jobsight",
        "groupKey": "{}:{}",
        "alerts": [
            {
                "status": "firing",
                "labels": {
                    "alertname": "JobFailed",
                    "job_id": "demo-fail",
                    "tenant": "team-a",
                    "severity": "critical",
                },
                "annotations": {"summary": "job demo-fail failed"},
                "startsAt": datetime.fromtimestamp(scenario.demo_end, tz=UTC).isoformat(),
                "endsAt": "0001-01-01T00:00:00Z",
                "fingerprint": "aa",
            }
        ],
    }
    assert client.post("/v1/alerts/webhook", json=payload, headers=auth(WEBHOOK)).status_code == 200
    job = client.get("/v1/jobs/demo-fail", headers=auth(TEAM_A)).json()
    assert job["status"] == "failed" and job["reason"] == "alert JobFailed: job demo-fail failed"
    assert datetime.fromisoformat(job["ended_at"]).timestamp() == scenario.demo_end
    wait_until(
        lambda: notifications(client, "demo-fail")[0]["status"] == "sent",
        timeout=30,
        message="the notification",
    )
    # Alertmanager repeats the alert: still one notification.
    assert client.post("/v1/alerts/webhook", json=payload, headers=auth(WEBHOOK)).status_code == 200
    assert len(notifications(client, "demo-fail")) == 1 and len(notifier.calls) == 1


def test_a_hung_job_notifies_its_owner_once_naming_the_ranks(
    make_client: Callable[..., TestClient], scenario: Scenario
) -> None:
    # JobHung (alerts/rules/training.yaml) fires on a job that has not failed: it keeps running,
    # and its owner hears once, with the rule's own text naming the ranks that stopped.
    notifier = FlakyNotifier(failures=0)
    client = make_client(settings=NOTIFY, notifier=notifier)
    job = {"name": "llama", "user": "alice", "started_at": scenario.demo_start, "status": "running",
           "nodes": ["node1"], "tenant": "team-a"}
    assert client.put("/v1/jobs/hung-1", json=job, headers=auth(SCHEDULER)).status_code == 201
    description = "Ranks 7 stopped stepping at 12:00:03 while ranks 0-6 wait in sync."
    alert = {
        "status": "firing",
        "labels": {"alertname": "JobHung", "job_id": "hung-1", "severity": "critical"},
        "annotations": {"summary": "job hung-1 made no training step for 6m", "description": description},
        "startsAt": datetime.fromtimestamp(scenario.demo_end, tz=UTC).isoformat(),
        "endsAt": "0001-01-01T00:00:00Z",
        "fingerprint": "hung",
    }
    payload = {"version": "4", "status": "firing", "receiver": "jobsight", "groupKey": "{}:{}",
               "alerts": [alert]}
    assert client.post("/v1/alerts/webhook", json=payload, headers=auth(WEBHOOK)).status_code == 200
    (note,) = wait_until(
        lambda: [n for n in notifications(client, "hung-1") if n["status"] == "sent"],
        timeout=30, message="the hang notification")
    assert note["failure_seq"] < 0 and note["targets"] == 1
    (_, title, body) = notifier.calls[-1]
    assert title == "jobsight: job hung-1: job hung-1 made no training step for 6m"
    assert description in body and "JobHung since" in body
    assert client.get("/v1/jobs/hung-1", headers=auth(TEAM_A)).json()["status"] == "running"
    # Alertmanager repeats the alert: still one notification.
    assert client.post("/v1/alerts/webhook", json=payload, headers=auth(WEBHOOK)).status_code == 200
    assert len(notifications(client, "hung-1")) == 1 and len(notifier.calls) == 1


@pytest.fixture
def receiver() -> Iterator[RecordingHTTPServer]:
    with RecordingHTTPServer(methods=("POST",)) as server:
        yield server


def test_real_apprise_to_a_local_receiver_and_a_file(
    make_client: Callable[..., TestClient],
    scenario: Scenario,
    receiver: RecordingHTTPServer,
    tmp_path: Path,
) -> None:
    outbox = tmp_path / "notifications.jsonl"
    hook = f"json://127.0.0.1:{receiver.port}/hook"
    client = make_client(settings={"notify": {"team-a": [hook, f"file://{outbox}"]}})
    register_demo(client, scenario)
    wait_until(
        lambda: notifications(client, "demo-fail")[0]["status"] == "sent",
        timeout=30,
        message="delivery through apprise",
    )
    (posted,) = [request.json() for request in receiver.snapshot()]
    assert "XID 79 on node2 GPU 3" in posted["title"] and "node2" in posted["message"]
    assert "var-job_id=demo-fail" in posted["message"]
    (line,) = outbox.read_text().splitlines()
    assert "XID 79 on node2 GPU 3" in json.loads(line)["body"]


def test_apprise_failure_is_a_delivery_error(tmp_path: Path) -> None:
    notifier = AppriseNotifier(timeout=2)
    with pytest.raises(DeliveryError) as info:
        notifier.send([f"json://127.0.0.1:{free_port()}/x", "notaservice://x"], "t", "b")
    assert "not a valid apprise URL" in str(info.value) and "failed delivery" in str(info.value)
    with pytest.raises(DeliveryError):
        notifier.send([f"file://{tmp_path}/missing-dir/x.jsonl"], "t", "b")
