"""End to end over real sockets: `jobsight api` as a process, a real Alertmanager posting its
webhook, a real Prometheus behind the summary; the demo failure reaches the tenant's file target
naming XID 79 on node2 GPU 3. Also: clean stop on SIGTERM and the /metrics exposition."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import yaml

from tests.api.conftest import ADMIN, METRICS, SCHEDULER, TEAM_A, WEBHOOK, auth
from tests.api.promdata import RunningPrometheus
from tests.api.scenario import Scenario
from tests.support import (
    Proc,
    free_port,
    jobsight_command,
    promtool_check_metrics,
    require_binary,
    start_alertmanager,
    wait_for_http,
    wait_until,
)


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, tz=UTC).isoformat().replace("+00:00", "Z")


@pytest.mark.e2e
def test_alertmanager_webhook_to_failure_notification(
    spawn: Callable[..., Proc],
    tmp_path: Path,
    prometheus: RunningPrometheus,
    log_store_dir: Path,
    scenario: Scenario,
) -> None:
    api_port, am_port = free_port(), free_port()
    outbox = tmp_path / "outbox.jsonl"
    config = tmp_path / "api.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "store_url": f"sqlite:///{tmp_path / 'api.db'}",
                "prometheus_url": prometheus.url,
                "log_store": str(log_store_dir),
                "grafana_url": "http://grafana.local:3000",
                "alertmanager_url": f"http://127.0.0.1:{am_port}",
                "tokens": [
                    {"token": ADMIN, "tenant": "ops", "role": "admin"},
                    {"token": TEAM_A, "tenant": "team-a"},
                    {"token": SCHEDULER, "tenant": "slurm", "role": "scheduler"},
                ],
                "webhook_token": WEBHOOK,
                "metrics_token": METRICS,
                "notify": {"team-a": [f"file://{outbox}"]},
            }
        )
    )
    api = spawn(
        jobsight_command("api", "--config", str(config), "--listen", f"127.0.0.1:{api_port}"), name="api"
    )
    base = f"http://127.0.0.1:{api_port}"
    wait_for_http(f"{base}/healthz", proc=api)
    assert httpx.get(f"{base}/readyz").status_code == 200

    am_config = tmp_path / "alertmanager.yml"
    am_config.write_text(
        yaml.safe_dump(
            {
                "route": {
                    "receiver": "jobsight",
                    "group_by": ["..."],
                    "group_wait": "1s",
                    "group_interval": "1s",
                    "repeat_interval": "1h",
                },
                "receivers": [
                    {
                        "name": "jobsight",
                        "webhook_configs": [
                            {
                                "url": f"{base}/v1/alerts/webhook",
                                "send_resolved": True,
                                "http_config": {"authorization": {"type": "Bearer", "credentials": WEBHOOK}},
                            }
                        ],
                    }
                ],
            }
        )
    )
    am_url = start_alertmanager(
        spawn, require_binary("prometheus-alertmanager"), am_config, tmp_path / "am", am_port
    )

    job = {
        "name": "llama-pretrain",
        "user": "alice",
        "nodes": ["node1", "node2"],
        "gpus": [{"host": h, "gpu": g} for h in ("node1", "node2") for g in range(4)],
        "started_at": iso(scenario.demo_start),
        "status": "running",
    }
    registered = httpx.put(
        f"{base}/v1/jobs/demo-fail", json={**job, "tenant": "team-a"}, headers=auth(SCHEDULER)
    )
    assert registered.status_code == 201

    # The GPU alert names a host and GPU, not a job: the API maps it to the job running there.
    xid_alert = {
        "labels": {
            "alertname": "GPUXidError",
            "Hostname": "node2",
            "gpu": "3",
            "xid": "79",
            "UUID": "GPU-node2-0003",
            "severity": "critical",
        },
        "annotations": {"summary": "XID 79 on node2 GPU 3"},
        "startsAt": iso(scenario.xid_at),
    }
    assert httpx.post(f"{am_url}/api/v2/alerts", json=[xid_alert]).status_code == 200

    def job_alerts() -> list[dict[str, object]]:
        response = httpx.get(f"{base}/v1/jobs/demo-fail/alerts", headers=auth(TEAM_A))
        return list(response.json()["alerts"])

    (stored,) = wait_until(job_alerts, timeout=60, message="Alertmanager's webhook to reach the API")
    assert stored["alertname"] == "GPUXidError" and stored["status"] == "firing"
    assert stored["job_ids"] == ["demo-fail"]
    assert stored["labels"]["Hostname"] == "node2"  # type: ignore[index]

    failed = {
        "labels": {
            "alertname": "JobFailed",
            "job_id": "demo-fail",
            "tenant": "team-a",
            "severity": "critical",
        },
        "annotations": {"summary": "job demo-fail exited with 1"},
        "startsAt": iso(scenario.demo_end),
    }
    assert httpx.post(f"{am_url}/api/v2/alerts", json=[failed]).status_code == 200
    wait_until(
        lambda: outbox.exists() and outbox.read_text().strip(),
        timeout=60,
        message="the failure notification in the outbox",
    )
    (line,) = outbox.read_text().splitlines()
    note = json.loads(line)
    assert note["title"].startswith("jobsight: job demo-fail failed: XID 79 on node2 GPU 3")
    assert "1. XID 79 on node2 GPU 3" in note["body"]
    assert "var-job_id=demo-fail" in note["body"] and "/v1/jobs/demo-fail/logs" in note["body"]
    summary = httpx.get(f"{base}/v1/jobs/demo-fail/summary", headers=auth(TEAM_A), timeout=30).json()
    alert_evidence = [e for e in summary["diagnosis"]["causes"][0]["evidence"] if e["source"] == "alert"]
    assert alert_evidence and alert_evidence[0]["kind"] == "gpu_xid"

    exposition = httpx.get(f"{base}/metrics", headers=auth(METRICS)).text
    assert 'jobsight_job_status{job_id="demo-fail",status="failed",tenant="team-a"} 1.0' in exposition
    assert (
        'jobsight_api_requests_total{code="200",method="GET",route="/v1/jobs/{job_id}/alerts"}' in exposition
    )
    promtool_check_metrics(exposition)

    api.kill(signal.SIGTERM)
    assert api.popen.wait(timeout=30) == 0, api.output()
