"""loadavg: ``node_load1``, ``node_load5``, ``node_load15`` from ``<procfs>/loadavg``."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import Metric

from exporters.node._families import single
from exporters.node._files import join, read_text


class LoadavgCollector:
    def __init__(self, procfs: str = "/proc") -> None:
        self.path = join(procfs, "loadavg")

    def collect(self) -> Iterator[Metric]:
        fields = read_text(self.path).split()
        if len(fields) < 3:
            raise ValueError(f"{self.path}: expected at least 3 fields, got {len(fields)}")
        values = [float(v) for v in fields[:3]]
        for minutes, value in zip((1, 5, 15), values, strict=True):
            yield single(f"node_load{minutes}", f"{minutes}m load average.", value)
