"""Configuration files ``jobsight up`` generates: Prometheus' scrape config, the ports it uses.

Every agent target carries the target label ``Hostname`` with ``honor_labels: true``: GPU series
already carry ``Hostname`` (dcgm-exporter style) and keep it; node and RDMA series get it from the
target, so all three join to jobs by host (``jobsight_gpu_job_info``).
"""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True)
class AgentTarget:
    hostname: str
    address: str  # host:port


@dataclass(frozen=True)
class Ports:
    prometheus: int = 9090
    alertmanager: int = 9093
    api: int = 8000
    collector: int = 9404
    agents: tuple[int, ...] = (9400, 9410)
    # Each agent's OTLP receiver (training steps from jobsight.training); the first at OTLP's own
    # port, where a training script on this machine sends by default.
    otlp: tuple[int, ...] = (4318, 4328)

    @classmethod
    def free(cls, agents: int) -> Ports:
        """Ports the kernel says are free now (for tests and for running beside another stack)."""
        taken: list[socket.socket] = []
        try:
            numbers = []
            for _ in range(4 + 2 * agents):
                sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                sock.bind(("127.0.0.1", 0))
                taken.append(sock)
                numbers.append(int(sock.getsockname()[1]))
        finally:
            for sock in taken:
                sock.close()
        return cls(
            numbers[0], numbers[1], numbers[2], numbers[3], tuple(numbers[4 : 4 + agents]),
            tuple(numbers[4 + agents :]),
        )


@dataclass
class PrometheusConfig:
    agents: Sequence[AgentTarget]
    collector: str
    api: str
    alertmanager: str
    rule_files: Sequence[Path]
    # The API shows per-job series (jobsight_job_status, which the JobFailed rule reads) only to
    # a scrape that presents this token.
    api_metrics_token: str | None = None
    scrape_interval: str = "5s"
    evaluation_interval: str = "5s"
    # Where a cluster-wide store (VictoriaMetrics, Thanos Receive, Mimir) takes a copy of every
    # sample; the local Prometheus keeps its own TSDB and rules either way.
    remote_write: Sequence[str] = ()
    extra: dict[str, Any] = field(default_factory=dict)

    def render(self) -> str:
        document: dict[str, Any] = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "evaluation_interval": self.evaluation_interval,
                "scrape_timeout": self.scrape_interval,
            },
            "rule_files": [str(path) for path in self.rule_files],
            "alerting": {"alertmanagers": [{"static_configs": [{"targets": [self.alertmanager]}]}]},
            "scrape_configs": [
                {
                    "job_name": "jobsight-agent",
                    "honor_labels": True,
                    "static_configs": [
                        {"targets": [agent.address], "labels": {"Hostname": agent.hostname}}
                        for agent in self.agents
                    ],
                },
                {"job_name": "jobsight-logs", "static_configs": [{"targets": [self.collector]}]},
                {
                    "job_name": "jobsight-api",
                    "static_configs": [{"targets": [self.api]}],
                    **({"authorization": {"type": "Bearer", "credentials": self.api_metrics_token}}
                       if self.api_metrics_token else {}),
                },
                {"job_name": "alertmanager", "static_configs": [{"targets": [self.alertmanager]}]},
            ],
            **({"remote_write": [{"url": url} for url in self.remote_write]} if self.remote_write else {}),
            **self.extra,
        }
        return yaml.safe_dump(document, sort_keys=False)
