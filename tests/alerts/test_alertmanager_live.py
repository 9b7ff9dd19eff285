"""A real Alertmanager, started from the rendered configuration, delivers alerts to the webhook with
the bearer token, groups them, and applies the inhibition rules."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from alerts.config import (
    AlertmanagerSettings,
    TenantReceiver,
    render_alertmanager_config,
    write_alertmanager_config,
)
from tests.alerts.webhook_server import RecordingServer
from tests.support import Proc, require_binary, start_alertmanager, wait_until

ALERTMANAGER = "/usr/bin/prometheus-alertmanager"
TOKEN = "s3cret-token"


@pytest.fixture
def alertmanager(tmp_path: Path, spawn: Callable[..., Proc]) -> Iterator[tuple[str, RecordingServer]]:
    require_binary(ALERTMANAGER)
    with RecordingServer() as server:
        yield _start_alertmanager(tmp_path, spawn, server), server


def _start_alertmanager(
    tmp_path: Path,
    spawn: Callable[..., Proc],
    server: RecordingServer,
    tenants: dict[str, TenantReceiver] | None = None,
) -> str:
    """Alertmanager on a free port, configured by the renderer to deliver to ``server``."""
    settings = AlertmanagerSettings(group_wait="1s", group_interval="1s", tenants=tenants or {})
    config = render_alertmanager_config(
        f"http://127.0.0.1:{server.port}/v1/alerts/webhook", TOKEN, settings=settings
    )
    config_path = write_alertmanager_config(tmp_path / "alertmanager.yml", config)
    return start_alertmanager(spawn, ALERTMANAGER, config_path, tmp_path / "data")


def _post_alerts(base: str, alerts: list[dict[str, Any]]) -> None:
    now = datetime.now(UTC).isoformat()
    payload = [
        {"labels": a, "annotations": {"summary": f"{a['alertname']} test"}, "startsAt": now} for a in alerts
    ]
    response = httpx.post(f"{base}/api/v2/alerts", json=payload, timeout=10)
    assert response.status_code == 200, response.text


def _delivered(server: RecordingServer) -> list[dict[str, Any]]:
    """Every alert of every webhook delivery so far."""
    return [alert for request in server.snapshot() for alert in request.json()["alerts"]]


def _am_alert(base: str, **labels: str) -> dict[str, Any] | None:
    response = httpx.get(f"{base}/api/v2/alerts", timeout=10)
    response.raise_for_status()
    for alert in response.json():
        if all(alert["labels"].get(k) == v for k, v in labels.items()):
            return dict(alert)
    return None


def test_alert_is_delivered_to_the_webhook_with_the_bearer_token(
    alertmanager: tuple[str, RecordingServer],
) -> None:
    base, server = alertmanager
    labels = {
        "alertname": "GPUXidError",
        "severity": "critical",
        "Hostname": "node2",
        "gpu": "3",
        "UUID": "GPU-3",
        "xid": "79",
    }
    _post_alerts(base, [labels])

    wait_until(lambda: server.snapshot(), timeout=30, message="a webhook delivery")
    request = server.snapshot()[0]
    assert request.path == "/v1/alerts/webhook"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    body = request.json()
    assert body["version"] == "4"
    assert body["status"] == "firing"
    assert body["receiver"] == "jobsight-api"
    assert body["groupLabels"] == {"alertname": "GPUXidError", "Hostname": "node2"}
    assert [a["labels"] for a in body["alerts"]] == [labels]


def test_node_down_inhibits_that_nodes_gpu_alerts_only(alertmanager: tuple[str, RecordingServer]) -> None:
    base, server = alertmanager
    _post_alerts(base, [{"alertname": "NodeDown", "severity": "critical", "Hostname": "node1"}])
    wait_until(lambda: _am_alert(base, alertname="NodeDown"), timeout=30, message="NodeDown in Alertmanager")

    _post_alerts(
        base,
        [
            {
                "alertname": "GPULost",
                "severity": "critical",
                "Hostname": "node1",
                "gpu": "0",
                "UUID": "GPU-0",
            },
            {
                "alertname": "RDMAPortNotActive",
                "severity": "critical",
                "Hostname": "node1",
                "device": "mlx5_0",
                "port": "1",
            },
        ],
    )
    # The control: the same alert on another node is delivered.
    _post_alerts(
        base,
        [{"alertname": "GPULost", "severity": "critical", "Hostname": "node3", "gpu": "0", "UUID": "GPU-24"}],
    )

    def inhibited(**labels: str) -> bool:
        alert = _am_alert(base, **labels)
        return bool(alert and alert["status"]["state"] == "suppressed" and alert["status"]["inhibitedBy"])

    wait_until(
        lambda: inhibited(alertname="GPULost", Hostname="node1"),
        timeout=30,
        message="GPULost on node1 to be inhibited",
    )
    wait_until(
        lambda: inhibited(alertname="RDMAPortNotActive", Hostname="node1"),
        timeout=30,
        message="RDMAPortNotActive on node1 to be inhibited",
    )
    wait_until(
        lambda: any(
            a["labels"]["alertname"] == "GPULost" and a["labels"]["Hostname"] == "node3"
            for a in _delivered(server)
        ),
        timeout=30,
        message="GPULost on node3 to be delivered",
    )
    delivered = {(a["labels"]["alertname"], a["labels"]["Hostname"]) for a in _delivered(server)}
    assert ("NodeDown", "node1") in delivered
    assert ("GPULost", "node1") not in delivered
    assert ("RDMAPortNotActive", "node1") not in delivered
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in server.snapshot())


def test_critical_inhibits_the_warning_of_the_same_alert_on_the_same_gpu(
    alertmanager: tuple[str, RecordingServer],
) -> None:
    base, server = alertmanager
    common = {"alertname": "GPUXidError", "Hostname": "node4", "gpu": "1", "UUID": "GPU-1"}
    _post_alerts(base, [{**common, "severity": "critical", "xid": "79"}])
    wait_until(lambda: _am_alert(base, alertname="GPUXidError", xid="79"), timeout=30, message="critical XID")
    _post_alerts(
        base,
        [
            {**common, "severity": "warning", "xid": "13"},
            # Another GPU's warning is not inhibited.
            {**common, "gpu": "2", "UUID": "GPU-2", "severity": "warning", "xid": "13"},
        ],
    )
    wait_until(
        lambda: (a := _am_alert(base, xid="13", gpu="1")) and a["status"]["state"] == "suppressed",
        timeout=30,
        message="warning XID on gpu 1 to be inhibited",
    )
    wait_until(
        lambda: any(a["labels"].get("xid") == "13" and a["labels"]["gpu"] == "2" for a in _delivered(server)),
        timeout=30,
        message="warning XID on gpu 2 to be delivered",
    )
    assert not any(a["labels"].get("xid") == "13" and a["labels"]["gpu"] == "1" for a in _delivered(server))


def test_a_port_without_physical_link_pages_once_not_twice(
    alertmanager: tuple[str, RecordingServer],
) -> None:
    # Issue 16, defect 10: one cable fault fired both port alerts.
    base, server = alertmanager
    port = {"Hostname": "node6", "device": "mlx5_1", "port": "1", "severity": "critical"}
    _post_alerts(base, [{**port, "alertname": "RDMAPhysicalLinkDown"}])
    wait_until(lambda: _am_alert(base, alertname="RDMAPhysicalLinkDown"), timeout=30, message="physical down")
    _post_alerts(
        base,
        [
            {**port, "alertname": "RDMAPortNotActive"},
            # The other port of the card is a fault of its own.
            {**port, "port": "2", "alertname": "RDMAPortNotActive"},
        ],
    )
    wait_until(
        lambda: (a := _am_alert(base, alertname="RDMAPortNotActive", port="1"))
        and a["status"]["state"] == "suppressed",
        timeout=30,
        message="RDMAPortNotActive on port 1 to be inhibited",
    )
    def port_not_active(port: str) -> bool:
        return any(
            a["labels"]["alertname"] == "RDMAPortNotActive" and a["labels"]["port"] == port
            for a in _delivered(server)
        )

    wait_until(
        lambda: port_not_active("2"),
        timeout=30,
        message="RDMAPortNotActive on port 2 to be delivered",
    )
    assert not port_not_active("1")


def test_a_tenants_alerts_also_reach_its_own_receiver(tmp_path: Path, spawn: Callable[..., Proc]) -> None:
    require_binary(ALERTMANAGER)
    with RecordingServer() as api, RecordingServer() as acme:
        tenants = {"acme": TenantReceiver(f"http://127.0.0.1:{acme.port}/hook", bearer_token="acme-token")}
        base = _start_alertmanager(tmp_path, spawn, api, tenants)
        _post_alerts(
            base,
            [
                {"alertname": "JobFailed", "severity": "warning", "job_id": "4711", "tenant": "acme"},
                {"alertname": "JobFailed", "severity": "warning", "job_id": "4712", "tenant": "other"},
            ],
        )
        wait_until(lambda: len(_delivered(api)) >= 2, timeout=30, message="both JobFailed alerts at the API")
        wait_until(lambda: acme.snapshot(), timeout=30, message="acme's JobFailed at acme's receiver")
        assert {a["labels"]["job_id"] for a in _delivered(api)} == {"4711", "4712"}
        assert [a["labels"]["job_id"] for a in _delivered(acme)] == ["4711"]
        assert acme.snapshot()[0].headers["authorization"] == "Bearer acme-token"
        assert acme.snapshot()[0].json()["receiver"] == "tenant-acme"
