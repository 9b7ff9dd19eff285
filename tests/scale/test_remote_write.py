"""``jobsight up --remote-write URL``: the Prometheus config it generates sends every sample to a
cluster store; checked by promtool and against a real VictoriaMetrics receiving the writes."""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

import httpx
import yaml

from launch.stack import register
from launch.stackconfig import AgentTarget, PrometheusConfig
from tests.scale.vm import run_victoria_metrics
from tests.support import Proc, free_port, require_binary, wait_for_http, wait_until


def config(remote_write: tuple[str, ...]) -> PrometheusConfig:
    # Nothing listens on the targets: Prometheus still writes their `up` series (0).
    return PrometheusConfig(
        agents=[AgentTarget("node1", f"127.0.0.1:{free_port()}")], collector=f"127.0.0.1:{free_port()}",
        api=f"127.0.0.1:{free_port()}", alertmanager=f"127.0.0.1:{free_port()}", rule_files=[],
        scrape_interval="1s", evaluation_interval="1s", remote_write=remote_write,
    )


def test_without_remote_write_the_config_has_none() -> None:
    assert "remote_write" not in yaml.safe_load(config(()).render())


def test_prometheus_remote_writes_to_victoria_metrics(tmp_path: Path) -> None:
    with run_victoria_metrics(tmp_path / "vm") as vm:
        rendered = config((f"{vm.url}/api/v1/write",)).render()
        assert yaml.safe_load(rendered)["remote_write"] == [{"url": f"{vm.url}/api/v1/write"}]
        path = tmp_path / "prometheus.yml"
        path.write_text(rendered)
        check = subprocess.run([require_binary("promtool"), "check", "config", str(path)],
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
        port = free_port()
        prometheus = Proc([require_binary("prometheus"), f"--config.file={path}",
                           f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                           f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
                          tmp_path / "prometheus.log")
        try:
            wait_for_http(f"http://127.0.0.1:{port}/-/ready", timeout=60, proc=prometheus)

            def received() -> list[dict[str, object]]:
                vm.flush()
                query = 'up{job="jobsight-agent", Hostname="node1"}'
                body = httpx.get(f"{vm.url}/api/v1/query", timeout=10,
                                 params={"query": query, "time": f"{time.time():.3f}"}).json()
                return list(body["data"]["result"])

            (sample,) = wait_until(received, timeout=60, interval=0.5,
                                   message="VictoriaMetrics to receive Prometheus' remote_write")
            assert sample["value"][1] == "0"  # type: ignore[index]
        finally:
            prometheus.stop()


def test_jobsight_up_takes_remote_write_urls() -> None:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    args = parser.parse_args(["up", "--remote-write", "http://vm:8428/api/v1/write",
                              "--remote-write", "http://mimir:8080/api/v1/push"])
    assert args.remote_write == ["http://vm:8428/api/v1/write", "http://mimir:8080/api/v1/push"]
    assert parser.parse_args(["up"]).remote_write == []
