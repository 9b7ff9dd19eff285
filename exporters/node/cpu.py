"""cpu: ``node_cpu_seconds_total{cpu,mode}`` and ``node_cpu_guest_seconds_total{cpu,mode}`` from
``<procfs>/stat``, as node_exporter's cpu collector computes them."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, Metric

from exporters.node._files import join, read_text

# The kernel reports /proc/stat in USER_HZ, which is 100 on every Linux ABI regardless of
# CONFIG_HZ; procfs (and so node_exporter) divides by this constant, not by sysconf.
USER_HZ = 100.0

_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


class CpuCollector:
    def __init__(self, procfs: str = "/proc", guest: bool = True) -> None:
        self.path = join(procfs, "stat")
        self.guest = guest
        # node_exporter keeps the last value per (cpu, mode) and ignores a value that went
        # backwards (iowait and idle can, on some kernels), so rate() never sees a reset.
        self._last: dict[tuple[str, str], float] = {}

    def collect(self) -> Iterator[Metric]:
        seconds = CounterMetricFamily(
            "node_cpu_seconds_total", "Seconds the CPUs spent in each mode.", labels=["cpu", "mode"]
        )
        guest = CounterMetricFamily(
            "node_cpu_guest_seconds_total",
            "Seconds the CPUs spent in guests (VMs) for each mode.",
            labels=["cpu", "mode"],
        )
        seen: set[tuple[str, str]] = set()
        for line in read_text(self.path).splitlines():
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            fields = line.split()
            cpu = fields[0][3:]
            if not cpu.isdigit():
                raise ValueError(f"{self.path}: unexpected cpu line {line[:60]!r}")
            values = [int(v) / USER_HZ for v in fields[1:]]
            for mode, value in zip(_MODES, values, strict=False):
                key = (cpu, mode)
                seen.add(key)
                last = self._last.get(key)
                if last is not None and value < last:
                    value = last
                self._last[key] = value
                seconds.add_metric([cpu, mode], value)
            if self.guest and len(values) >= 10:
                guest.add_metric([cpu, "user"], values[8])
                guest.add_metric([cpu, "nice"], values[9])
        # CPUs that went offline are forgotten so that a CPU coming back starts afresh.
        for key in [k for k in self._last if k not in seen]:
            del self._last[key]
        yield seconds
        if self.guest:
            yield guest
