"""pressure: PSI totals from ``<procfs>/pressure/{cpu,io,memory}`` as node_exporter 1.5 names them:
"waiting" is the ``some`` line, "stalled" the ``full`` line, in seconds (the kernel counts µs).
Kernels without PSI (< 4.20, or ``psi=0``) have no such files: the collector then fails (success 0),
as node_exporter's does, and publishes nothing rather than zeros."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import Metric

from exporters.node._families import single
from exporters.node._files import join, read_text

# (resource, line, metric, help) — cpu's "full" line (kernel >= 5.13) is not published by 1.5.
_METRICS = (
    ("cpu", "some", "node_pressure_cpu_waiting_seconds_total",
     "Total time in seconds that processes have waited for CPU time"),
    ("io", "some", "node_pressure_io_waiting_seconds_total",
     "Total time in seconds that processes have waited due to IO congestion"),
    ("io", "full", "node_pressure_io_stalled_seconds_total",
     "Total time in seconds no process could make progress due to IO congestion"),
    ("memory", "some", "node_pressure_memory_waiting_seconds_total",
     "Total time in seconds that processes have waited for memory"),
    ("memory", "full", "node_pressure_memory_stalled_seconds_total",
     "Total time in seconds no process could make progress due to memory congestion"),
)


def parse_psi(text: str) -> dict[str, int]:
    """``some``/``full`` → ``total`` (µs) from a PSI file."""
    totals: dict[str, int] = {}
    for line in text.splitlines():
        kind, _, rest = line.partition(" ")
        for item in rest.split():
            key, sep, value = item.partition("=")
            if sep and key == "total":
                totals[kind] = int(value)
    return totals


class PressureCollector:
    def __init__(self, procfs: str = "/proc") -> None:
        self.procfs = procfs

    def collect(self) -> Iterator[Metric]:
        parsed = {
            res: parse_psi(read_text(join(self.procfs, "pressure", res))) for res in ("cpu", "io", "memory")
        }
        for resource, kind, name, help_text in _METRICS:
            total = parsed[resource].get(kind)
            if total is None:
                raise ValueError(f"pressure/{resource}: no {kind!r} line with total=")
            # Two divisions, not one by 1e6: node_exporter's order, so the floats are identical.
            yield single(name, help_text, float(total) / 1000.0 / 1000.0, "counter")
