"""A simulated GPU backend driven by a :class:`~exporters.gpu.scenario.Scenario`.

Values are plausible for H100-class GPUs and move over time; they depend only on the scenario
(its seed), the injected wall clock and the order of reads, so tests can step the clock and get
the same numbers every time. Everything it publishes carries ``backend="simulated"`` on
``jobsight_gpu_info``.
"""

from __future__ import annotations

import hashlib
import math
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TypeVar

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from exporters.gpu import fields as f
from exporters.gpu.model import BackendInfo, Clock, DeviceReading, GpuIdentity, ProcessUsage, XidEvent
from exporters.gpu.scenario import (
    EccFault,
    FieldUnsupportedFault,
    GpuLostFault,
    GpuSpec,
    Scenario,
    ScenarioFile,
    ScenarioSource,
    ThrottleFault,
    TimePoint,
    XidFault,
)
from jobsight.errors import DeviceLost

MIB = 1024 * 1024
GIB = 1024 * MIB
# Bus ids of the eight GPUs of a typical HGX H100 board; more GPUs get made-up ones.
_HGX_BUSES = (0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB)
_IDLE_POWER_W = 70.0
_RESERVED_MIB = 529.0  # what an H100 80GB reports as reserved
_FAKE_PID_BASE = 4_000_000  # above the default pid_max, so never a real process on this host
_POWER_BITS = f.CLOCK_EVENT_BITS["sw_power_cap"] | f.CLOCK_EVENT_BITS["hw_power_brake_slowdown"]
_THERMAL_BITS = f.CLOCK_EVENT_BITS["hw_thermal_slowdown"] | f.CLOCK_EVENT_BITS["sw_thermal_slowdown"]
FaultT = TypeVar("FaultT")
_NVLINK_BYTES_PER_S = 120e9  # TX + RX of a busy GPU


def _on(scenario: Scenario, kind: type[FaultT], index: int) -> list[FaultT]:
    """The scenario's faults of one kind on GPU ``index``."""
    return [fault for fault in scenario.faults if isinstance(fault, kind) and fault.gpu == index]


@dataclass
class _Counters:
    """Per-GPU cumulative values, advanced by the time between two reads."""

    last_t: float | None = None
    energy_mj: float = 0.0
    nvlink_kib: float = 0.0
    power_violation_ns: float = 0.0
    thermal_violation_ns: float = 0.0
    pcie_replays: float = 0.0


class SimulatedBackend:
    def __init__(self, source: ScenarioSource, clock: Clock = time.time, hostname: str = "") -> None:
        self.source = source
        self.hostname = hostname
        self.clock = clock
        self.start_epoch = clock()
        initial = source.current()
        self._specs = initial.gpu_specs()
        host = initial.hostname or hostname
        self._idents = [self._identity(host, initial.seed, i, spec) for i, spec in enumerate(self._specs)]
        self._counters = [_Counters() for _ in self._specs]
        self._lock = threading.Lock()
        self._fired: set[tuple[object, ...]] = set()
        self._wake = threading.Event()
        self._closed = False

    # -- GpuBackend ---------------------------------------------------------------------------

    def open(self) -> None:
        return None

    def info(self) -> BackendInfo:
        scenario = self.source.current()
        return BackendInfo("simulated", scenario.driver_version, scenario.cuda_version)

    def devices(self) -> list[GpuIdentity]:
        return list(self._idents)

    def read(self, index: int) -> DeviceReading:
        scenario = self.source.current()
        now = self.clock()
        if any(self._active(fault.at, fault.until, now) for fault in _on(scenario, GpuLostFault, index)):
            raise DeviceLost(f"GPU {index}: GPU is lost (simulated)")
        spec = self._specs[index]
        jobs = [job for job in scenario.jobs
                if (job.gpus == "all" or index in job.gpus) and self._active(job.start, job.until, now)]
        util = self._utilization(scenario, index, now, busy=bool(jobs))
        noise = self._noise(scenario.seed, index, now)
        throttle = 0
        for throttling in _on(scenario, ThrottleFault, index):
            if self._active(throttling.at, throttling.until, now):
                for reason in throttling.reasons:
                    throttle |= f.CLOCK_EVENT_BITS[reason]
        if util < 1.0:
            throttle |= f.CLOCK_EVENT_BITS["gpu_idle"]

        total_mib = spec.memory_gib * 1024
        processes: list[ProcessUsage] = []
        used_mib = 0.0
        for n, job in enumerate(jobs):
            job_mib = job.memory_gib * 1024 if job.memory_gib is not None else total_mib * 0.8 / len(jobs)
            job_mib = min(job_mib, total_mib - _RESERVED_MIB - used_mib)
            used_mib += job_mib
            processes.append(ProcessUsage(_FAKE_PID_BASE + index * 100 + n, int(job_mib * MIB), job.job_id))
        used_mib += 0 if jobs else 1.0  # the driver's own context on an idle GPU
        power_w = min(spec.power_limit_w, _IDLE_POWER_W + util / 100 * (spec.power_limit_w - _IDLE_POWER_W)
                      * 0.92 + noise * 6)
        temp_c = 31.0 + util * 0.38 + noise * 1.5

        with self._lock:
            c = self._counters[index]
            dt = 0.0 if c.last_t is None else max(0.0, now - c.last_t)
            c.last_t = now
            c.energy_mj += power_w * dt * 1000
            c.nvlink_kib += util / 100 * _NVLINK_BYTES_PER_S * dt / 1024
            if throttle & _POWER_BITS:
                c.power_violation_ns += dt * 1e9
            if throttle & _THERMAL_BITS:
                c.thermal_violation_ns += dt * 1e9
            counters = _Counters(**vars(c))

        sbe = dbe = 0
        for ecc in _on(scenario, EccFault, index):
            if self._reached(ecc.at, now):
                sbe += ecc.sbe
                dbe += ecc.dbe
        busy = util / 100
        values: dict[str, float] = {
            f.GPU_UTIL: round(util),
            f.MEM_COPY_UTIL: round(util * 0.45),
            f.ENC_UTIL: 0,
            f.DEC_UTIL: 0,
            f.SM_CLOCK: 1980 if util >= 1 else 345,
            f.MEM_CLOCK: 2619,
            f.GPU_TEMP: round(temp_c),
            f.MEMORY_TEMP: round(temp_c + 5),
            f.POWER_USAGE: round(power_w, 3),
            f.TOTAL_ENERGY: round(counters.energy_mj),
            f.FB_FREE: round(total_mib - used_mib - _RESERVED_MIB),
            f.FB_USED: round(used_mib),
            f.FB_RESERVED: _RESERVED_MIB,
            f.PCIE_REPLAY: counters.pcie_replays,
            f.ECC_SBE_VOL: sbe,
            f.ECC_DBE_VOL: dbe,
            f.ECC_SBE_AGG: sbe,
            f.ECC_DBE_AGG: dbe,
            f.ROW_REMAP_FAILURE: 0,
            f.CORRECTABLE_REMAPPED_ROWS: 0,
            f.UNCORRECTABLE_REMAPPED_ROWS: dbe,
            f.PCIE_LINK_GEN: 5 if util >= 1 else 1,  # the link drops to Gen1 at idle to save power
            f.PCIE_LINK_WIDTH: 16,
            f.PCIE_MAX_LINK_GEN: 5,
            f.PCIE_MAX_LINK_WIDTH: 16,
            f.NVLINK_CRC_FLIT_ERRORS: 0,
            f.NVLINK_CRC_DATA_ERRORS: 0,
            f.NVLINK_REPLAY_ERRORS: 0,
            f.NVLINK_RECOVERY_ERRORS: 0,
            f.FABRIC_MANAGER_STATUS: 3,  # registered with the NVLink fabric
            f.ROW_REMAP_PENDING: 1 if dbe else 0,
            f.GPU_RECOVERY_ACTION: 1 if dbe else 0,  # a double-bit error asks for a GPU reset
            # As DCGM: the per-second change of the KiB counters / 1000 ("MB/s"), an integer.
            f.NVLINK_BANDWIDTH_TOTAL: float(int(util / 100 * _NVLINK_BYTES_PER_S / 1024 / 1000)),
            f.NVLINK_TX_BYTES: round(counters.nvlink_kib / 2) * 1024,
            f.NVLINK_RX_BYTES: round(counters.nvlink_kib / 2) * 1024,
            f.CLOCKS_EVENT_REASONS: throttle,
            f.CLOCK_THROTTLE_REASONS: throttle,
            f.POWER_VIOLATION: round(counters.power_violation_ns),
            f.THERMAL_VIOLATION: round(counters.thermal_violation_ns),
            f.PROF_GR_ENGINE_ACTIVE: round(busy * 0.97, 4),
            f.PROF_SM_ACTIVE: round(busy * 0.9, 4),
            f.PROF_SM_OCCUPANCY: round(busy * 0.42, 4),
            f.PROF_PIPE_TENSOR_ACTIVE: round(busy * 0.55, 4),
            f.PROF_DRAM_ACTIVE: round(busy * 0.6, 4),
            f.PROF_PCIE_TX_BYTES: round(busy * 3.1e9),
            f.PROF_PCIE_RX_BYTES: round(busy * 5.2e9),
            f.PROF_NVLINK_TX_BYTES: round(busy * 60e9),
            f.PROF_NVLINK_RX_BYTES: round(busy * 60e9),
            f.MEMORY_TOTAL_BYTES: spec.memory_gib * GIB,
        }
        for unsupported in _on(scenario, FieldUnsupportedFault, index):
            if self._active(unsupported.at, unsupported.until, now):
                values.pop(unsupported.field, None)
        return DeviceReading(values=values, processes=tuple(processes))

    def wait_xid_events(self, index: int, timeout_s: float) -> list[XidEvent]:
        events = self._due_xids(index)
        if events or timeout_s <= 0:
            return events
        # Poll a few times a second: a fault added by rewriting the file shows up quickly, and
        # close() wakes the wait at once.
        self._wake.wait(min(timeout_s, 0.25))
        return [] if self._closed else self._due_xids(index)

    def close(self) -> None:
        self._closed = True
        self._wake.set()

    # -- extra metrics about the scenario itself ------------------------------------------------

    def scenario_collector(self) -> _ScenarioCollector | None:
        return _ScenarioCollector(self.source) if isinstance(self.source, ScenarioFile) else None

    # -- helpers --------------------------------------------------------------------------------

    def _due_xids(self, index: int) -> list[XidEvent]:
        scenario = self.source.current()
        now = self.clock()
        events: list[XidEvent] = []
        with self._lock:
            present: set[tuple[object, ...]] = set()
            for fault in scenario.faults:
                if not isinstance(fault, XidFault):
                    continue
                key = (fault.id, fault.gpu, fault.xid, fault.count, fault.at)
                present.add(key)
                if fault.gpu != index or key in self._fired or not self._reached(fault.at, now):
                    continue
                self._fired.add(key)
                events += [XidEvent(fault.gpu, fault.xid)] * fault.count
            # Forget faults removed from the file, so adding the same one again fires again.
            self._fired &= present
        return events

    def _active(self, start: TimePoint | None, until: TimePoint | None, now: float) -> bool:
        return self._reached(start, now) and (until is None or now < until.resolve(self.start_epoch))

    def _reached(self, point: TimePoint | None, now: float) -> bool:
        return point is None or now >= point.resolve(self.start_epoch)

    def _utilization(self, scenario: Scenario, index: int, now: float, busy: bool) -> float:
        """Percent busy. A pattern naming the GPU always applies; a ``gpus: all`` pattern applies
        to GPUs holding a job; otherwise a GPU with a job runs a default sine and one without idles."""
        t = now - self.start_epoch
        named = [u for u in scenario.utilization if u.gpus != "all" and index in u.gpus]
        every = [u for u in scenario.utilization if u.gpus == "all"]
        pattern = named[-1] if named else (every[-1] if every and busy else None)
        phase = index / max(1, scenario.gpu_count)
        if pattern is None:
            return 85.0 + 10 * math.sin(2 * math.pi * (t / 120 + phase)) if busy else 0.0
        if pattern.pattern == "constant":
            return float(pattern.value or 0.0)
        cycle = (t / pattern.period + phase) % 1.0
        if pattern.pattern == "square":
            return pattern.max if cycle < 0.5 else pattern.min
        mid = (pattern.max + pattern.min) / 2
        amp = (pattern.max - pattern.min) / 2
        return mid + amp * math.sin(2 * math.pi * cycle)

    @staticmethod
    def _noise(seed: int, index: int, now: float) -> float:
        """A value in [-1, 1] that changes once a second and is the same for the same inputs."""
        return random.Random(f"{seed}:{index}:{int(now)}").uniform(-1.0, 1.0)

    @staticmethod
    def _identity(host: str, seed: int, index: int, spec: GpuSpec) -> GpuIdentity:
        # Stable per host, seed and index, so two simulated nodes never share a UUID.
        digest = hashlib.sha256(f"{host}:{seed}:{index}".encode()).hexdigest()
        uuid = spec.uuid or f"GPU-{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:32]}"
        bus = _HGX_BUSES[index] if index < len(_HGX_BUSES) else 0x100 - len(_HGX_BUSES) + index
        pci = spec.pci_bus_id or f"00000000:{bus % 0x100:02X}:00.0"
        return GpuIdentity(index, uuid, pci, spec.model)


class _ScenarioCollector:
    """``jobsight_gpu_scenario_reloads_total{result}`` and ``jobsight_gpu_scenario_last_reload_ok``:
    whether the demo's last edit of the scenario file took."""

    def __init__(self, source: ScenarioFile) -> None:
        self.source = source

    def collect(self) -> Iterator[Metric]:
        reloads = CounterMetricFamily(
            "jobsight_gpu_scenario_reloads",
            "jobsight (simulated backend): scenario file reloads by result.",
            labels=["result"],
        )
        reloads.add_metric(["ok"], float(self.source.reloads))
        reloads.add_metric(["error"], float(self.source.reload_errors))
        ok = GaugeMetricFamily(
            "jobsight_gpu_scenario_last_reload_ok",
            "jobsight (simulated backend): 1 if the scenario file in force is the one on disk.",
        )
        ok.add_metric([], 0.0 if self.source.last_error else 1.0)
        yield reloads
        yield ok
