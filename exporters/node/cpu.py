"""cpu: ``node_cpu_seconds_total{cpu,mode}`` and ``node_cpu_guest_seconds_total{cpu,mode}`` from
``<procfs>/stat``, plus thermal throttle counts and isolated CPUs from
``<sysfs>/devices/system/cpu``, as node_exporter's cpu collector computes them."""

from __future__ import annotations

import glob
import os
import threading
import time
from collections.abc import Callable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from exporters.node._families import Family
from exporters.node._files import join, read_text

# The kernel reports /proc/stat in USER_HZ, which is 100 on every Linux ABI regardless of
# CONFIG_HZ; procfs (and so node_exporter) divides by this constant, not by sysconf.
USER_HZ = 100.0

_MODES = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")


class CpuCollector:
    def __init__(
        self,
        procfs: str = "/proc",
        sysfs: str = "/sys",
        guest: bool = True,
        clock: Callable[[], float] = time.monotonic,
        topology_ttl: float = 60.0,
    ) -> None:
        self.path = join(procfs, "stat")
        self.cpu_dir = join(sysfs, "devices", "system", "cpu")
        # CPU topology (package, core) and which CPUs have thermal_throttle counters only change
        # with CPU hotplug; re-reading them every scrape cost ~4 syscalls per CPU (a few ms on
        # a 128-core host), so they are re-read every ``topology_ttl`` seconds.
        self.clock = clock
        self.topology_ttl = topology_ttl
        self._topology: list[tuple[str, int, int]] = []
        self._topology_at: float | None = None
        self._lock = threading.Lock()
        self.guest = guest
        # node_exporter keeps the last value per (cpu, mode) and ignores a value that went
        # backwards (iowait and idle can, on some kernels), so rate() never sees a reset.
        self._last: dict[tuple[str, str], float] = {}

    def collect(self) -> Iterator[Metric]:
        # Overlapping scrapes share the last-value and topology caches.
        with self._lock:
            families = list(self._collect())
        yield from families

    def _collect(self) -> Iterator[Metric]:
        seconds = Family("node_cpu_seconds_total", "Seconds the CPUs spent in each mode.", "counter")
        guest = Family(
            "node_cpu_guest_seconds_total", "Seconds the CPUs spent in guests (VMs) for each mode.", "counter"
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
                seconds.add({"cpu": cpu, "mode": mode}, value)
            if self.guest and len(values) >= 10:
                guest.add({"cpu": cpu, "mode": "user"}, values[8])
                guest.add({"cpu": cpu, "mode": "nice"}, values[9])
        # CPUs that went offline are forgotten so that a CPU coming back starts afresh.
        for key in [k for k in self._last if k not in seen]:
            del self._last[key]
        yield seconds
        if self.guest:
            yield guest
        yield from self._throttles()
        yield from self._isolated()

    def _throttles(self) -> Iterator[Metric]:
        """Thermal throttle counters, read once per core and once per package: hyperthreads
        share their core's counter (node_exporter's ``updateThermalThrottle``)."""
        packages: dict[int, int] = {}
        cores: dict[int, dict[int, int]] = {}
        for cpu, package, core in self._throttle_topology():
            package_cores = cores.setdefault(package, {})
            if core not in package_cores:
                count = _read_uint(join(cpu, "thermal_throttle", "core_throttle_count"))
                if count is not None:
                    package_cores[core] = count
            if package not in packages:
                count = _read_uint(join(cpu, "thermal_throttle", "package_throttle_count"))
                if count is not None:
                    packages[package] = count
        if any(cores.values()):
            core_family = CounterMetricFamily(
                "node_cpu_core_throttles_total", "Number of times this CPU core has been throttled.",
                labels=["package", "core"],
            )
            for package in sorted(cores):
                for core in sorted(cores[package]):
                    core_family.add_metric([str(package), str(core)], float(cores[package][core]))
            yield core_family
        if packages:
            package_family = CounterMetricFamily(
                "node_cpu_package_throttles_total", "Number of times this CPU package has been throttled.",
                labels=["package"],
            )
            for package in sorted(packages):
                package_family.add_metric([str(package)], float(packages[package]))
            yield package_family

    def _throttle_topology(self) -> list[tuple[str, int, int]]:
        """(cpu dir, package, core) of the CPUs that have thermal_throttle counters."""
        now = self.clock()
        if self._topology_at is not None and now - self._topology_at < self.topology_ttl:
            return self._topology
        found: list[tuple[str, int, int]] = []
        # Lexicographic, as Go's filepath.Glob returns them: the first CPU of a core wins.
        for cpu in sorted(glob.glob(join(self.cpu_dir, "cpu[0-9]*"))):
            if not os.path.isdir(join(cpu, "thermal_throttle")):
                continue  # VMs and many AMD CPUs have none
            package = _read_uint(join(cpu, "topology", "physical_package_id"))
            core = _read_uint(join(cpu, "topology", "core_id"))
            if package is not None and core is not None:
                found.append((cpu, package, core))
        self._topology, self._topology_at = found, now
        return found

    def _isolated(self) -> Iterator[Metric]:
        try:
            text = read_text(join(self.cpu_dir, "isolated")).strip()
        except OSError:
            return  # kernels without the file have no isolated CPUs to report
        try:
            cpus = parse_cpu_list(text)
        except ValueError:
            return  # a garbage list drops this series only, not the CPU times
        if not cpus:
            return
        family = GaugeMetricFamily(
            "node_cpu_isolated",
            "Whether each core is isolated, information from /sys/devices/system/cpu/isolated.",
            labels=["cpu"],
        )
        for cpu in cpus:
            family.add_metric([str(cpu)], 1.0)
        yield family


def parse_cpu_list(text: str) -> list[int]:
    """The kernel's cpu list format: ``0-3,8,10-11``."""
    cpus: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        first, sep, last = part.partition("-")
        cpus.extend(range(int(first), int(last) + 1) if sep else [int(first)])
    return cpus


def _read_uint(path: str) -> int | None:
    try:
        return int(read_text(path).strip())
    except (OSError, ValueError):
        return None
