"""Job start and failure annotations in Grafana, through grafana-client, against an in-test HTTP
server speaking Grafana's annotation API (the contract at the HTTP boundary; the `grafana`-marked
test in tests/dashboards runs annotate_job against a real Grafana)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi.testclient import TestClient

from tests.api.conftest import ADMIN, auth, register_demo
from tests.api.scenario import Scenario
from tests.api.test_notifications import NOTIFY, FlakyNotifier, notifications
from tests.dashboards.fake_grafana import FakeGrafana
from tests.support import free_port, wait_until

GRAFANA_TOKEN = "glsa_test-token-0123456789"


def test_job_start_and_failure_are_annotated_once(
    make_client: Callable[..., TestClient], scenario: Scenario
) -> None:
    with FakeGrafana(GRAFANA_TOKEN) as grafana:
        settings = {**NOTIFY, "grafana_url": grafana.url, "grafana_token": GRAFANA_TOKEN}
        client = make_client(settings=settings, notifier=FlakyNotifier(failures=0))
        register_demo(client, scenario)
        wait_until(
            lambda: [n for n in notifications(client, "demo-fail") if n["status"] == "sent"],
            timeout=30,
            message="the failure notification",
        )

        def by_tag(tag: str) -> list[dict[str, Any]]:
            return [a for a in grafana.annotations if tag in a["tags"]]

        started = wait_until(
            lambda: len(by_tag("started")) == 2 and by_tag("started"),
            timeout=30,
            message="two job-start annotations",
        )
        failed = wait_until(lambda: by_tag("failed"), timeout=30, message="the failure annotation")
        assert {tuple(a["tags"]) for a in started} == {
            ("jobsight", "job_id:demo-fail", "started"),
            ("jobsight", "job_id:ok-job", "started"),
        }
        (annotation,) = failed
        assert annotation["tags"] == ["jobsight", "job_id:demo-fail", "failed"]
        assert "demo-fail" in str(annotation["text"]) and "failed" in str(annotation["text"])
        # Grafana annotations are in epoch milliseconds, at the job's start and end
        assert {a["time"] for a in started} == {int(scenario.demo_start * 1000), int(scenario.base * 1000)}
        assert annotation["time"] == int(scenario.demo_end * 1000)

        # an update of a registered job is not a new start
        again = client.put(
            "/v1/jobs/ok-job",
            json={"name": "finetune", "tenant": "team-b", "status": "succeeded"},
            headers=auth(ADMIN),
        )
        assert again.status_code == 200, again.text
        assert len(by_tag("started")) == 2


def test_grafana_down_costs_neither_registration_nor_notification(
    make_client: Callable[..., TestClient], scenario: Scenario
) -> None:
    settings = {**NOTIFY, "grafana_url": f"http://127.0.0.1:{free_port()}", "grafana_token": GRAFANA_TOKEN}
    notifier = FlakyNotifier(failures=0)
    client = make_client(settings=settings, notifier=notifier)
    register_demo(client, scenario)
    sent = wait_until(
        lambda: [n for n in notifications(client, "demo-fail") if n["status"] == "sent"],
        timeout=30,
        message="the failure notification despite Grafana being down",
    )
    assert len(sent) == 1 and len(notifier.calls) == 1
