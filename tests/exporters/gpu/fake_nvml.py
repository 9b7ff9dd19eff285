"""A hand-written stand-in for the ``pynvml`` module, for driving the NVML backend without a GPU.

It raises the real ``pynvml.NVMLError_*`` classes and exposes the real constants, so the backend's
error translation is tested against what nvidia-ml-py actually raises. Device state is plain
data that a test changes between reads (a GPU lost, a field unsupported, an XID queued).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pynvml as real

MIB = 1024 * 1024
GIB = 1024 * MIB


@dataclass
class FakeDevice:
    index: int
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    bus_id: str = "00000000:18:00.0"
    util_gpu: int = 87
    util_mem: int = 40
    sm_clock: int = 1980
    mem_clock: int = 2619
    temp: int = 64
    power_mw: int = 612_345
    total: int = 80 * GIB
    reserved: int = 529 * MIB
    used: int = 60 * GIB
    reasons: int = 0x4
    # field id -> value; a field id missing here answers NOT_SUPPORTED; see field_errors.
    fields: dict[int, float] = field(default_factory=lambda: {
        82: 70, 83: 123_456_789, 94: 2, 3: 5, 4: 1, 5: 50, 6: 3, 142: 7, 143: 1, 145: 0,
        74: 1_000_000, 75: 2_000_000, 138: 1000, 139: 3000,
    })
    field_errors: dict[int, int] = field(default_factory=dict)
    # GPM metric id -> percent or MiB/s; None means the device has no GPM.
    gpm: dict[int, float] | None = field(default_factory=lambda: {
        1: 90.0, 2: 80.0, 3: 40.0, 5: 50.0, 10: 60.0, 20: 1000.0, 21: 2000.0, 60: 3000.0, 61: 4000.0,
    })
    processes: list[tuple[int, int | None]] = field(default_factory=list)
    unsupported: set[str] = field(default_factory=set)  # function names answering NOT_SUPPORTED
    failing: dict[str, type[Exception]] = field(default_factory=dict)  # function name -> error class
    lost: bool = False


class FakeHandle:
    def __init__(self, index: int) -> None:
        self.index = index


class FakeGpmMetricsGet:
    def __init__(self) -> None:
        self.version = 0
        self.numMetrics = 0
        self.sample1: Any = None
        self.sample2: Any = None
        self.metrics = [SimpleNamespace(metricId=0, nvmlReturn=0, value=0.0) for _ in range(32)]


class FakeNvml:
    """Only the functions the backend calls; constants and error classes come from real pynvml."""

    c_nvmlGpmMetricsGet_t = FakeGpmMetricsGet

    def __init__(self, devices: list[FakeDevice], init_error: Exception | None = None) -> None:
        self.devices = devices
        self.init_error = init_error
        self.handles = [FakeHandle(d.index) for d in devices]
        self.calls: collections.Counter[str] = collections.Counter()
        self.xid_queue: collections.deque[tuple[int, int]] = collections.deque()
        self.initialised = False
        self.event_set_freed = False
        self.gpm_samples_live = 0
        self.registered: list[int] = []

    def __getattr__(self, name: str) -> Any:
        # Constants (NVML_*, nvmlMemory_v2) and error classes (NVMLError*) of the real module.
        if name.startswith(("NVML", "nvmlMemory_v")):
            return getattr(real, name)
        raise AttributeError(name)

    # -- library ---------------------------------------------------------------------------
    def nvmlInit(self) -> None:
        self.calls["nvmlInit"] += 1
        if self.init_error is not None:
            raise self.init_error
        self.initialised = True

    def nvmlShutdown(self) -> None:
        self.initialised = False

    def nvmlSystemGetDriverVersion(self) -> str:
        return "550.90.07"

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        return 12040

    def nvmlDeviceGetCount(self) -> int:
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        self.calls["nvmlDeviceGetHandleByIndex"] += 1
        if self.devices[index].lost:
            raise real.NVMLError_GpuIsLost()
        return self.handles[index]

    # -- per device ------------------------------------------------------------------------
    def _dev(self, handle: FakeHandle, fn: str) -> FakeDevice:
        assert self.initialised, f"{fn} called before nvmlInit"
        self.calls[fn] += 1
        device = self.devices[handle.index]
        if device.lost:
            raise real.NVMLError_GpuIsLost()
        if fn in device.unsupported:
            raise real.NVMLError_NotSupported()
        if fn in device.failing:
            raise device.failing[fn]()
        return device

    def nvmlDeviceGetUUID(self, handle: FakeHandle) -> str:
        return self._dev(handle, "nvmlDeviceGetUUID").uuid

    def nvmlDeviceGetName(self, handle: FakeHandle) -> str:
        return self._dev(handle, "nvmlDeviceGetName").name

    def nvmlDeviceGetPciInfo(self, handle: FakeHandle) -> Any:
        return SimpleNamespace(busId=self._dev(handle, "nvmlDeviceGetPciInfo").bus_id.encode())

    def nvmlDeviceGetIndex(self, handle: FakeHandle) -> int:
        return self._dev(handle, "nvmlDeviceGetIndex").index

    def nvmlDeviceGetUtilizationRates(self, handle: FakeHandle) -> Any:
        d = self._dev(handle, "nvmlDeviceGetUtilizationRates")
        return SimpleNamespace(gpu=d.util_gpu, memory=d.util_mem)

    def nvmlDeviceGetEncoderUtilization(self, handle: FakeHandle) -> list[int]:
        self._dev(handle, "nvmlDeviceGetEncoderUtilization")
        return [3, 167000]

    def nvmlDeviceGetDecoderUtilization(self, handle: FakeHandle) -> list[int]:
        self._dev(handle, "nvmlDeviceGetDecoderUtilization")
        return [4, 167000]

    def nvmlDeviceGetClockInfo(self, handle: FakeHandle, clock: int) -> int:
        d = self._dev(handle, "nvmlDeviceGetClockInfo")
        return d.sm_clock if clock == real.NVML_CLOCK_SM else d.mem_clock

    def nvmlDeviceGetTemperature(self, handle: FakeHandle, sensor: int) -> int:
        assert sensor == real.NVML_TEMPERATURE_GPU
        return self._dev(handle, "nvmlDeviceGetTemperature").temp

    def nvmlDeviceGetPowerUsage(self, handle: FakeHandle) -> int:
        return self._dev(handle, "nvmlDeviceGetPowerUsage").power_mw

    def nvmlDeviceGetMemoryInfo(self, handle: FakeHandle, version: int | None = None) -> Any:
        d = self._dev(handle, "nvmlDeviceGetMemoryInfo")
        free = d.total - d.used - d.reserved
        if version is None:
            return SimpleNamespace(total=d.total, free=free, used=d.used)
        return SimpleNamespace(total=d.total, reserved=d.reserved, free=free, used=d.used)

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: FakeHandle) -> int:
        return self._dev(handle, "nvmlDeviceGetCurrentClocksEventReasons").reasons

    def nvmlDeviceGetFieldValues(self, handle: FakeHandle, field_ids: list[Any]) -> list[Any]:
        d = self._dev(handle, "nvmlDeviceGetFieldValues")
        self.calls["fields_requested"] += len(field_ids)
        out = []
        for item in field_ids:
            fid, scope = item if isinstance(item, tuple) else (item, 0)
            if fid in d.field_errors:
                code, value = d.field_errors[fid], 0.0
            elif fid in d.fields:
                code, value = real.NVML_SUCCESS, d.fields[fid]
            else:
                code, value = real.NVML_ERROR_NOT_SUPPORTED, 0.0
            out.append(SimpleNamespace(
                fieldId=fid, scopeId=scope, nvmlReturn=code,
                valueType=real.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG,
                value=SimpleNamespace(ullVal=int(value), dVal=float(value)),
            ))
        return out

    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeHandle) -> list[Any]:
        d = self._dev(handle, "nvmlDeviceGetComputeRunningProcesses")
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in d.processes]

    # -- GPM -------------------------------------------------------------------------------
    def nvmlGpmQueryDeviceSupport(self, handle: FakeHandle) -> Any:
        d = self._dev(handle, "nvmlGpmQueryDeviceSupport")
        return SimpleNamespace(isSupportedDevice=int(d.gpm is not None))

    def nvmlGpmSampleAlloc(self) -> Any:
        self.gpm_samples_live += 1
        return SimpleNamespace(handle=None)

    def nvmlGpmSampleFree(self, sample: Any) -> None:
        self.gpm_samples_live -= 1

    def nvmlGpmSampleGet(self, handle: FakeHandle, sample: Any) -> Any:
        self._dev(handle, "nvmlGpmSampleGet")
        sample.handle = handle
        return sample

    def nvmlGpmMetricsGet(self, request: FakeGpmMetricsGet) -> FakeGpmMetricsGet:
        assert request.version == real.NVML_GPM_METRICS_GET_VERSION
        d = self._dev(request.sample2.handle, "nvmlGpmMetricsGet")
        assert d.gpm is not None
        for metric in request.metrics[: request.numMetrics]:
            if metric.metricId in d.gpm:
                metric.nvmlReturn, metric.value = real.NVML_SUCCESS, d.gpm[metric.metricId]
            else:
                metric.nvmlReturn = real.NVML_ERROR_NOT_SUPPORTED
        return request

    # -- events ----------------------------------------------------------------------------
    def nvmlEventSetCreate(self) -> object:
        return object()

    def nvmlDeviceRegisterEvents(self, handle: FakeHandle, types: int, event_set: object) -> None:
        assert types & 0x8, "XID critical events must be registered"
        self._dev(handle, "nvmlDeviceRegisterEvents")
        self.registered.append(handle.index)

    def nvmlEventSetWait_v2(self, event_set: object, timeout_ms: int) -> Any:
        if not self.xid_queue:
            raise real.NVMLError_Timeout()
        index, xid = self.xid_queue.popleft()
        return SimpleNamespace(device=self.handles[index], eventType=0x8, eventData=xid,
                               gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF)

    def nvmlEventSetFree(self, event_set: object) -> None:
        self.event_set_freed = True


def two_gpus() -> list[FakeDevice]:
    return [
        FakeDevice(0, "GPU-00000000-1111-2222-3333-444444444444", bus_id="00000000:18:00.0"),
        FakeDevice(1, "GPU-55555555-6666-7777-8888-999999999999", bus_id="00000000:2A:00.0"),
    ]
