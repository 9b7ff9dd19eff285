"""The chain the demo relies on, with real parts: an exporter-shaped HTTP endpoint, Prometheus
loading jobsight's rules, Alertmanager with the rendered configuration, and a webhook receiver. An
injected XID 79 and lost GPU arrive at the webhook as GPUXidError (critical) and GPULost, carrying
the target's Hostname label."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import yaml

from alerts.config import (
    AlertmanagerSettings,
    render_alertmanager_config,
    render_rules,
    write_alertmanager_config,
)
from tests.alerts.webhook_server import RecordingServer
from tests.support import (
    Proc,
    RecordedRequest,
    RecordingHTTPServer,
    Reply,
    free_port,
    require_binary,
    start_alertmanager,
    wait_for_http,
    wait_until,
)

GPU = 'gpu="3",UUID="GPU-3",pci_bus_id="00000000:5D:00.0",device="nvidia3",modelName="H100"'


class FaultyGpuExporter(RecordingHTTPServer):
    """/metrics of one GPU in the GPU exporter's names; :meth:`inject` makes it report XID 79
    (a new xid series and its last-seen time, as the exporter creates them on the first event) and
    lose the GPU."""

    def __init__(self) -> None:
        self.faulted = threading.Event()
        self.faulted_at = 0.0
        super().__init__(self._metrics, methods=("GET",), record=False)

    def _metrics(self, request: RecordedRequest) -> Reply:
        lines = [
            "# TYPE jobsight_gpu_up gauge",
            f"jobsight_gpu_up{{{GPU}}} {0 if self.faulted.is_set() else 1}",
            "# TYPE jobsight_gpu_xid_errors_total counter",
        ]
        if self.faulted.is_set():
            lines.append(f'jobsight_gpu_xid_errors_total{{{GPU},xid="79"}} 1')
            lines.append("# TYPE jobsight_gpu_xid_last_seen_timestamp_seconds gauge")
            lines.append(f'jobsight_gpu_xid_last_seen_timestamp_seconds{{{GPU},xid="79"}} {self.faulted_at}')
        body = ("\n".join(lines) + "\n").encode()
        return Reply(body=body, content_type="text/plain; version=0.0.4")


def test_injected_xid_reaches_the_webhook_through_prometheus_and_alertmanager(
    tmp_path: Path, spawn: Callable[..., Proc]
) -> None:
    require_binary("prometheus")
    require_binary("/usr/bin/prometheus-alertmanager")
    with RecordingServer() as webhook, FaultyGpuExporter() as exporter:
        am_port = free_port()
        am_config = write_alertmanager_config(
            tmp_path / "alertmanager.yml",
            render_alertmanager_config(
                f"http://127.0.0.1:{webhook.port}/v1/alerts/webhook",
                "tok",
                settings=AlertmanagerSettings(group_wait="1s", group_interval="1s"),
            ),
        )
        start_alertmanager(spawn, "/usr/bin/prometheus-alertmanager", am_config, tmp_path / "am", am_port)

        rules = render_rules(tmp_path / "rules")
        prometheus_config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in rules],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
            "scrape_configs": [
                {
                    "job_name": "gpu",
                    "honor_labels": True,
                    "static_configs": [
                        {"targets": [f"127.0.0.1:{exporter.port}"], "labels": {"Hostname": "node2"}}
                    ],
                }
            ],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(prometheus_config))
        prom_port = free_port()
        prom = spawn(
            [
                "prometheus",
                f"--config.file={tmp_path / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{prom_port}",
            ],
            name="prometheus",
        )
        wait_for_http(f"http://127.0.0.1:{prom_port}/-/ready", proc=prom)
        # Healthy first: the GPU is scraped and nothing fires.
        wait_until(
            lambda: _rule_evaluated(prom_port), timeout=30, message="a healthy scrape and rule evaluation"
        )
        assert webhook.snapshot() == []

        exporter.faulted_at = time.time()
        exporter.faulted.set()

        def delivered() -> set[tuple[str, str]]:
            return {
                (alert["labels"]["alertname"], alert["labels"]["severity"])
                for request in webhook.snapshot()
                for alert in request.json()["alerts"]
                if alert["status"] == "firing"
            }

        wait_until(
            lambda: {("GPUXidError", "critical"), ("GPULost", "critical")} <= delivered(),
            timeout=60,
            message="GPUXidError and GPULost at the webhook",
        )
        xid = next(
            a
            for r in webhook.snapshot()
            for a in r.json()["alerts"]
            if a["labels"]["alertname"] == "GPUXidError"
        )
        assert {k: xid["labels"][k] for k in ("Hostname", "gpu", "UUID", "xid")} == {
            "Hostname": "node2",
            "gpu": "3",
            "UUID": "GPU-3",
            "xid": "79",
        }
        assert xid["annotations"]["runbook_url"].endswith("/docs/runbooks/GPUXidError.md")


def _rule_evaluated(port: int) -> bool:
    """The GPU is scraped as up and the GPU rule group has been evaluated at least once (before
    that, Prometheus reports the zero time 0001-01-01)."""
    up = httpx.get(
        f"http://127.0.0.1:{port}/api/v1/query", params={"query": "jobsight_gpu_up == 1"}, timeout=5
    )
    groups = httpx.get(f"http://127.0.0.1:{port}/api/v1/rules", timeout=5).json()["data"]["groups"]
    evaluated = any(
        not g["lastEvaluation"].startswith("0001-") for g in groups if g["name"] == "jobsight-gpu"
    )
    return bool(up.json()["data"]["result"]) and evaluated
