"""stat: boot time, context switches, interrupts, forks and process counts from ``<procfs>/stat``."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import Metric

from exporters.node._families import single
from exporters.node._files import join, read_text

# /proc/stat key → (metric, help, kind)
_FIELDS = {
    "intr": ("node_intr_total", "Total number of interrupts serviced.", "counter"),
    "ctxt": ("node_context_switches_total", "Total number of context switches.", "counter"),
    "processes": ("node_forks_total", "Total number of forks.", "counter"),
    "btime": ("node_boot_time_seconds", "Node boot time, in unixtime.", "gauge"),
    "procs_running": ("node_procs_running", "Number of processes in runnable state.", "gauge"),
    "procs_blocked": (
        "node_procs_blocked", "Number of processes blocked waiting for I/O to complete.", "gauge"
    ),
}


class StatCollector:
    def __init__(self, procfs: str = "/proc") -> None:
        self.path = join(procfs, "stat")

    def collect(self) -> Iterator[Metric]:
        values: dict[str, float] = {}
        for line in read_text(self.path).splitlines():
            key, _, rest = line.partition(" ")
            if key in _FIELDS:
                # intr has one total followed by per-IRQ counts; the others are one number.
                values[key] = float(int(rest.split()[0]))
        missing = [k for k in _FIELDS if k not in values]
        if missing:
            raise ValueError(f"{self.path}: missing {', '.join(missing)}")
        for key, (name, help_text, kind) in _FIELDS.items():
            yield single(name, help_text, values[key], kind)
