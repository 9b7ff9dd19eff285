"""A real Prometheus scrapes ``jobsight exporter node`` (fixture roots) the way the stack
configures it — target label ``Hostname``, ``honor_labels`` — and answers the queries the alert
rules and dashboards are built on, including the node → job join on ``Hostname``."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import yaml

from tests.exporters.node.helpers import fixture_flags
from tests.support import (
    REPO_ROOT,
    Proc,
    free_port,
    jobsight_command,
    require_binary,
    wait_for_http,
    wait_until,
)


def _value(base: str, expr: str) -> float | None:
    response = httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=10)
    response.raise_for_status()
    result = response.json()["data"]["result"]
    return float(result[0]["value"][1]) if len(result) == 1 else None


def test_prometheus_scrapes_and_joins_node_and_job_series(tmp_path: Path, spawn: Callable[..., Proc]) -> None:
    prometheus = require_binary("prometheus")
    exporter_port, prometheus_port = free_port(), free_port()
    exporter = spawn(
        jobsight_command("exporter", "node", f"--web.listen-address=127.0.0.1:{exporter_port}",
                         *fixture_flags()),
        name="node-exporter", cwd=REPO_ROOT,
    )
    wait_for_http(f"http://127.0.0.1:{exporter_port}/metrics", proc=exporter)
    config = {
        "global": {"scrape_interval": "1s"},
        "scrape_configs": [{
            "job_name": "node",
            "honor_labels": True,
            "static_configs": [{"targets": [f"127.0.0.1:{exporter_port}"], "labels": {"Hostname": "node1"}}],
        }],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    server = spawn(
        [prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
         f"--storage.tsdb.path={tmp_path / 'tsdb'}", f"--web.listen-address=127.0.0.1:{prometheus_port}"],
        name="prometheus",
    )
    base = f"http://127.0.0.1:{prometheus_port}"
    wait_for_http(f"{base}/-/ready", proc=server)
    wait_until(lambda: _value(base, 'up{job="node",Hostname="node1"}') == 1.0, timeout=60,
               message="Prometheus to scrape the node exporter")

    assert _value(base, 'node_memory_MemTotal_bytes{Hostname="node1"}') == 15666184 * 1024
    assert _value(base, 'node_vmstat_oom_kill{Hostname="node1"}') == 3
    assert _value(base, 'node_filesystem_readonly{Hostname="node1",mountpoint="/data"}') == 1
    assert _value(base, 'count(node_scrape_collector_success{Hostname="node1"} == 1)') == 11
    # A job's share of its node's memory, joined on Hostname as the dashboards do.
    share = _value(
        base,
        'jobsight_job_memory_rss_bytes{job_id="4800"} / on(Hostname) group_left node_memory_MemTotal_bytes',
    )
    assert share == 65536 / 15666184  # the Slurm job cgroup's one live process with memory
    assert _value(base, 'jobsight_job_processes{job_id="4800",Hostname="node1"}') == 3
