"""The seam between GPU backends (NVML, simulated) and the Prometheus collector.

A backend answers with typed records. A value it cannot read is simply missing from
:attr:`DeviceReading.values` (never 0 or NaN), so the collector leaves that series out. A device
that stopped answering raises :class:`~jobsight.errors.DeviceLost` from :meth:`GpuBackend.read`;
the sampler marks it down and asks again on the next cycle.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

Clock = Callable[[], float]


@dataclass(frozen=True)
class GpuIdentity:
    """Static facts that label every series of one GPU (dcgm-exporter's label set)."""

    index: int
    uuid: str
    pci_bus_id: str
    model_name: str

    @property
    def device(self) -> str:
        return f"nvidia{self.index}"


@dataclass(frozen=True)
class BackendInfo:
    """Facts about the backend as a whole, published on ``jobsight_gpu_info``."""

    backend: str  # "nvml" or "simulated"
    driver_version: str
    cuda_version: str


@dataclass(frozen=True)
class ProcessUsage:
    """One process on a GPU (NVML running compute processes).

    ``job_id`` is set only by a backend that already knows the job (the simulated backend, from
    its scenario); real processes are resolved through job identity by PID.
    """

    pid: int
    used_bytes: int | None
    job_id: str | None = None


@dataclass(frozen=True)
class MigInstance:
    """A MIG device of a GPU: its GPU instance (``GPU_I_ID``, dcgm-exporter's label), compute
    instance, profile (``GPU_I_PROFILE``, e.g. ``3g.40gb``) and ``MIG-…`` UUID."""

    gi_id: int
    ci_id: int
    profile: str
    uuid: str


@dataclass(frozen=True)
class InstanceReading:
    """One read of one MIG instance: the values NVML gives per instance (memory, GPM) and the
    processes on it."""

    instance: MigInstance
    values: Mapping[str, float]
    processes: tuple[ProcessUsage, ...] = ()


@dataclass(frozen=True)
class DeviceReading:
    """One read of one GPU: metric name → value for every value that could be read, the
    processes on it, and the reasons of the non-fatal errors met while reading (counted in
    ``jobsight_gpu_collect_errors_total``)."""

    values: Mapping[str, float]
    processes: tuple[ProcessUsage, ...] = ()
    errors: tuple[str, ...] = ()
    # Set when the backend learnt the GPU's identity only now (it was lost at start).
    identity: GpuIdentity | None = None
    # The GPU's MIG instances when MIG mode is on (their values and processes are per instance;
    # ``values`` and ``processes`` above are then the physical GPU's own).
    instances: tuple[InstanceReading, ...] = ()


@dataclass(frozen=True)
class XidEvent:
    """A critical XID reported for the GPU with ``index``."""

    index: int
    xid: int


@dataclass
class DeviceState:
    """What the sampler last learnt about one GPU."""

    identity: GpuIdentity
    reading: DeviceReading | None = None
    up: bool = False
    read_at: float | None = None  # clock time of the last completed read (success or lost)
    duration_s: float | None = None
    errors: dict[str, int] = field(default_factory=dict)


class GpuBackend(Protocol):
    """What the collector needs from a GPU backend. Implementations: ``NvmlBackend``
    (exporters/gpu/nvml.py) and ``SimulatedBackend`` (exporters/gpu/simulated.py)."""

    def open(self) -> None:
        """Initialise; raise BackendUnavailable when the backend cannot be used at all."""

    def info(self) -> BackendInfo: ...

    def devices(self) -> list[GpuIdentity]:
        """The GPUs found at start; the list does not change while running."""

    def read(self, index: int) -> DeviceReading:
        """Read every supported value of one GPU; raise DeviceLost when it does not answer."""

    def wait_xid_events(self, index: int, timeout_s: float) -> list[XidEvent]:
        """Block up to ``timeout_s`` for critical XID events of GPU ``index``; [] on timeout; raise
        DeviceLost when that GPU's event stream broke (it is set up again when the GPU answers).
        One thread per GPU calls this, so a lost GPU cannot starve the XIDs of the others."""

    def close(self) -> None:
        """Release the backend; wakes up a thread blocked in wait_xid_events."""
