"""A hand-written stand-in for the ``pynvml`` module, for driving the NVML backend without a GPU.

It behaves like nvidia-ml-py (13.x) on top of a driver of a given branch, and is checked against
the installed module in ``test_fake_nvml.py``:

- errors are the real ``pynvml.NVMLError_*`` classes and constants come from the real module;
- every function first looks up its C symbol the way ``pynvml._nvmlGetFunctionPointer`` does: a
  symbol the driver branch lacks raises ``NVMLError(NVML_ERROR_FUNCTION_NOT_FOUND)``, which the
  real module turns into ``NVMLError_FunctionNotFound``;
- the unversioned functions that nvidia-ml-py wraps in ``throwOnVersionMismatch`` (the process
  lists) are wrapped with that same real decorator, so a driver without the ``_v3`` symbol raises
  ``NVMLLibraryMismatchError``, which is *not* an ``NVMLError``;
- event sets are per set: a wait reports GPU_IS_LOST while any GPU registered in that set is lost;
- MIG: a GPU with ``mig`` set has MIG mode on and MIG device handles for its instances; device
  utilisation on the parent is NOT_SUPPORTED and its process list needs root (NO_PERMISSION).

Driver branches are :class:`DriverProfile` values (``R470``, ``R535``, ``R570``); the default is
``R570``, a driver with every symbol and field the backend asks for.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, TypeVar, cast

import pynvml as real

MIB = 1024 * 1024
GIB = 1024 * MIB

_F = TypeVar("_F", bound=Callable[..., Any])


def _version_checked(fn: _F) -> _F:
    """nvidia-ml-py's own ``throwOnVersionMismatch`` decorator (untyped there)."""
    return cast(_F, real.throwOnVersionMismatch(fn))

# The C symbols the backend's calls end up looking up (see pynvml.py for each wrapper).
GPM_SYMBOLS = frozenset({
    "nvmlGpmQueryDeviceSupport", "nvmlGpmSampleAlloc", "nvmlGpmSampleFree", "nvmlGpmSampleGet",
    "nvmlGpmMigSampleGet", "nvmlGpmMetricsGet",
})


@dataclass(frozen=True)
class DriverProfile:
    """What one driver branch's libnvidia-ml.so offers: the symbols it lacks and the highest
    field id it knows (larger ids answer INVALID_ARGUMENT per field)."""

    name: str
    driver_version: str
    cuda_version: int
    missing_symbols: frozenset[str] = frozenset()
    max_field_id: int = real.NVML_FI_MAX - 1


# R470 (CUDA 11.4, A100 era): no _v3 process list (R510+), no memory info _v2 (R510+), no GPM
# (R520+), no "clocks event reasons" (the R535 rename; only the throttle-reasons symbol).
R470 = DriverProfile(
    "R470", "470.256.02", 11040,
    missing_symbols=frozenset({
        "nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetMemoryInfo_v2",
        "nvmlDeviceGetCurrentClocksEventReasons", "nvmlDeviceGetGpuFabricInfo", *GPM_SYMBOLS,
    }),
    max_field_id=165,
)
# R535 (CUDA 12.2): every symbol the backend uses; no GPU recovery action field (230, R565+).
R535 = DriverProfile("R535", "535.230.02", 12020, max_field_id=229)
R570 = DriverProfile("R570", "570.133.20", 12080)


@dataclass
class FakeMig:
    """One MIG device (a GPU instance with one compute instance)."""

    gi_id: int
    uuid: str
    profile: str = "1g.10gb"
    ci_id: int = 0
    total: int = 10 * GIB
    used: int = 2 * GIB
    processes: list[tuple[int, int | None]] = field(default_factory=list)
    gpm: dict[int, float] | None = field(default_factory=lambda: {1: 70.0, 2: 60.0, 5: 40.0, 10: 30.0})


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
        82: 70, 83: 123_456_789, 94: 2, 3: 5, 4: 1, 5: 50, 6: 3, 142: 7, 143: 1, 144: 0, 145: 0,
        74: 1_000_000, 75: 2_000_000, 138: 1000, 139: 3000, 230: 0, 38: 0, 45: 0, 52: 3, 59: 0,
    })
    field_errors: dict[int, int] = field(default_factory=dict)
    field_timestamp_us: int = 0  # nvmlFieldValue_t.timestamp; 0 = "not set"
    # GPM metric id -> percent or MiB/s; None means the device has no GPM.
    gpm: dict[int, float] | None = field(default_factory=lambda: {
        1: 90.0, 2: 80.0, 3: 40.0, 5: 50.0, 10: 60.0, 20: 1000.0, 21: 2000.0, 60: 3000.0, 61: 4000.0,
    })
    processes: list[tuple[int, int | None]] = field(default_factory=list)
    unsupported: set[str] = field(default_factory=set)  # function names answering NOT_SUPPORTED
    failing: dict[str, type[Exception]] = field(default_factory=dict)  # function name -> error class
    lost: bool = False
    mig: list[FakeMig] | None = None  # None: MIG mode off
    pcie: tuple[int, int, int, int] = (5, 16, 5, 16)  # current gen, current width, max gen, max width
    fabric: tuple[int, int] | None = (3, 0)  # (state, status); None: no fabric (NOT_SUPPORTED)


class FakeHandle:
    def __init__(self, index: int) -> None:
        self.index = index


class FakeMigHandle:
    def __init__(self, parent: int, slot: int) -> None:
        self.index = parent
        self.slot = slot


class FakeEventSet:
    def __init__(self) -> None:
        self.devices: list[int] = []
        self.freed = False


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
    c_nvmlGpuFabricInfo_t = real.c_nvmlGpuFabricInfo_t  # the real ctypes struct: passed by reference

    def __init__(self, devices: list[FakeDevice], init_error: Exception | None = None,
                 profile: DriverProfile = R570, root: bool = False) -> None:
        self.devices = devices
        self.init_error = init_error
        self.profile = profile
        self.root = root
        self.handles = [FakeHandle(d.index) for d in devices]
        self.calls: collections.Counter[str] = collections.Counter()
        self.xid_queue: collections.deque[tuple[int, int]] = collections.deque()
        self.initialised = False
        self.init_count = 0  # nvmlInit minus nvmlShutdown, as NVML reference-counts them
        self.event_sets: list[FakeEventSet] = []
        self.gpm_samples_live = 0
        self.registered: list[int] = []
        self.reloaded = False  # the driver was reloaded under this client: nothing answers until nvmlInit

    def reload_driver(self, profile: DriverProfile | None = None) -> None:
        """The kernel driver is unloaded and loaded again (``nvidia-smi -r`` of every GPU, a
        module reload): the handles and state this client holds are gone until it initialises
        NVML again."""
        self.reloaded = True
        if profile is not None:
            self.profile = profile

    def __getattr__(self, name: str) -> Any:
        # Constants (NVML_*, nvmlMemory_v2) and error classes (NVMLError*, NVMLLibraryMismatchError)
        # of the real module.
        if name.startswith(("NVML", "nvmlMemory_v")):
            return getattr(real, name)
        raise AttributeError(name)

    @property
    def event_set_freed(self) -> bool:
        return bool(self.event_sets) and all(s.freed for s in self.event_sets)

    def _sym(self, symbol: str) -> None:
        """pynvml._nvmlGetFunctionPointer: no library loaded, or no such symbol in this driver."""
        if not self.initialised:
            raise real.NVMLError(real.NVML_ERROR_UNINITIALIZED)
        if self.reloaded and symbol != "nvmlShutdown":
            raise real.NVMLError(real.NVML_ERROR_UNINITIALIZED)
        if symbol in self.profile.missing_symbols:
            raise real.NVMLError(real.NVML_ERROR_FUNCTION_NOT_FOUND)

    # -- library ---------------------------------------------------------------------------
    def nvmlInit(self) -> None:
        self.calls["nvmlInit"] += 1
        if self.init_error is not None:
            raise self.init_error
        self.initialised = True
        self.init_count += 1
        self.reloaded = False

    def nvmlShutdown(self) -> None:
        self._sym("nvmlShutdown")
        self.calls["nvmlShutdown"] += 1
        self.init_count -= 1
        self.initialised = self.init_count > 0

    def nvmlSystemGetDriverVersion(self) -> str:
        self._sym("nvmlSystemGetDriverVersion")
        return self.profile.driver_version

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._sym("nvmlSystemGetCudaDriverVersion")
        return self.profile.cuda_version

    def nvmlDeviceGetCount(self) -> int:
        self._sym("nvmlDeviceGetCount_v2")
        return len(self.devices)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> FakeHandle:
        self._sym("nvmlDeviceGetHandleByIndex_v2")
        self.calls["nvmlDeviceGetHandleByIndex"] += 1
        if self.devices[index].lost:
            raise real.NVMLError_GpuIsLost()
        return self.handles[index]

    # -- per device ------------------------------------------------------------------------
    def _dev(self, handle: FakeHandle | FakeMigHandle, fn: str, symbol: str | None = None) -> FakeDevice:
        self._sym(symbol or fn)
        self.calls[fn] += 1
        device = self.devices[handle.index]
        if device.lost:
            raise real.NVMLError_GpuIsLost()
        if fn in device.unsupported:
            raise real.NVMLError_NotSupported()
        if fn in device.failing:
            raise device.failing[fn]()
        return device

    def _mig(self, handle: FakeHandle | FakeMigHandle) -> FakeMig | None:
        if not isinstance(handle, FakeMigHandle):
            return None
        instances = self.devices[handle.index].mig
        assert instances is not None, "a MIG handle of a GPU whose MIG mode is off"
        return instances[handle.slot]

    def nvmlDeviceGetUUID(self, handle: FakeHandle | FakeMigHandle) -> str:
        d = self._dev(handle, "nvmlDeviceGetUUID")
        mig = self._mig(handle)
        return mig.uuid if mig else d.uuid

    def nvmlDeviceGetName(self, handle: FakeHandle | FakeMigHandle) -> str:
        d = self._dev(handle, "nvmlDeviceGetName")
        mig = self._mig(handle)
        return f"{d.name} MIG {mig.profile}" if mig else d.name

    def nvmlDeviceGetPciInfo(self, handle: FakeHandle) -> Any:
        return SimpleNamespace(busId=self._dev(handle, "nvmlDeviceGetPciInfo", "nvmlDeviceGetPciInfo_v3")
                               .bus_id.encode())

    def nvmlDeviceGetIndex(self, handle: FakeHandle) -> int:
        return self._dev(handle, "nvmlDeviceGetIndex").index

    def nvmlDeviceGetUtilizationRates(self, handle: FakeHandle) -> Any:
        d = self._dev(handle, "nvmlDeviceGetUtilizationRates")
        if d.mig is not None:
            raise real.NVMLError_NotSupported()  # "On MIG-enabled GPUs ... not currently supported"
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

    def nvmlDeviceGetMemoryInfo(self, handle: FakeHandle | FakeMigHandle, version: int | None = None) -> Any:
        # pynvml: no version -> symbol nvmlDeviceGetMemoryInfo (v1 struct), else _v2.
        d = self._dev(handle, "nvmlDeviceGetMemoryInfo",
                      "nvmlDeviceGetMemoryInfo_v2" if version else "nvmlDeviceGetMemoryInfo")
        mig = self._mig(handle)
        total, used, reserved = (mig.total, mig.used, 0) if mig else (d.total, d.used, d.reserved)
        free = total - used - reserved
        if not version:
            return SimpleNamespace(total=total, free=free, used=used + reserved)  # v1 counts reserved as used
        return SimpleNamespace(total=total, reserved=reserved, free=free, used=used)

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: FakeHandle) -> int:
        return self._dev(handle, "nvmlDeviceGetCurrentClocksEventReasons").reasons

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: FakeHandle) -> int:
        return self._dev(handle, "nvmlDeviceGetCurrentClocksThrottleReasons").reasons

    def nvmlDeviceGetFieldValues(self, handle: FakeHandle, field_ids: list[Any]) -> list[Any]:
        d = self._dev(handle, "nvmlDeviceGetFieldValues")
        self.calls["fields_requested"] += len(field_ids)
        out = []
        for item in field_ids:
            fid, scope = item if isinstance(item, tuple) else (item, 0)
            if fid > self.profile.max_field_id:
                code, value = real.NVML_ERROR_INVALID_ARGUMENT, 0.0
            elif fid in d.field_errors:
                code, value = d.field_errors[fid], 0.0
            elif fid in d.fields:
                code, value = real.NVML_SUCCESS, d.fields[fid]
            else:
                code, value = real.NVML_ERROR_NOT_SUPPORTED, 0.0
            out.append(SimpleNamespace(
                fieldId=fid, scopeId=scope, nvmlReturn=code, timestamp=d.field_timestamp_us,
                valueType=real.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG,
                value=SimpleNamespace(ullVal=int(value), dVal=float(value)),
            ))
        return out

    def _processes(self, handle: FakeHandle | FakeMigHandle, fn: str) -> list[Any]:
        d = self._dev(handle, fn)
        mig = self._mig(handle)
        if mig is not None:
            return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in mig.processes]
        if d.mig is not None and not self.root:
            raise real.NVMLError_NoPermission()  # a MIG parent lists processes for root only
        return [SimpleNamespace(pid=pid, usedGpuMemory=used) for pid, used in d.processes]

    def nvmlDeviceGetComputeRunningProcesses_v3(self, handle: FakeHandle | FakeMigHandle) -> list[Any]:
        return self._processes(handle, "nvmlDeviceGetComputeRunningProcesses_v3")

    def nvmlDeviceGetComputeRunningProcesses_v2(self, handle: FakeHandle | FakeMigHandle) -> list[Any]:
        return self._processes(handle, "nvmlDeviceGetComputeRunningProcesses_v2")

    @_version_checked
    def nvmlDeviceGetComputeRunningProcesses(self, handle: FakeHandle | FakeMigHandle) -> list[Any]:
        return self.nvmlDeviceGetComputeRunningProcesses_v3(handle)

    def nvmlDeviceGetCurrPcieLinkGeneration(self, handle: FakeHandle) -> int:
        return self._dev(handle, "nvmlDeviceGetCurrPcieLinkGeneration").pcie[0]

    def nvmlDeviceGetCurrPcieLinkWidth(self, handle: FakeHandle) -> int:
        return self._dev(handle, "nvmlDeviceGetCurrPcieLinkWidth").pcie[1]

    def nvmlDeviceGetMaxPcieLinkGeneration(self, handle: FakeHandle) -> int:
        return self._dev(handle, "nvmlDeviceGetMaxPcieLinkGeneration").pcie[2]

    def nvmlDeviceGetMaxPcieLinkWidth(self, handle: FakeHandle) -> int:
        return self._dev(handle, "nvmlDeviceGetMaxPcieLinkWidth").pcie[3]

    def nvmlDeviceGetGpuFabricInfo(self, handle: FakeHandle, info_ref: Any) -> int:
        d = self._dev(handle, "nvmlDeviceGetGpuFabricInfo")
        if d.fabric is None:
            raise real.NVMLError_NotSupported()
        info = info_ref._obj  # what ctypes.byref() points at, as the C function writes through it
        assert isinstance(info, real.c_nvmlGpuFabricInfo_t)
        info.state, info.status = d.fabric
        return int(real.NVML_SUCCESS)

    # -- MIG -------------------------------------------------------------------------------
    def nvmlDeviceGetMigMode(self, handle: FakeHandle) -> list[int]:
        d = self._dev(handle, "nvmlDeviceGetMigMode")
        mode = int(d.mig is not None)
        return [mode, mode]

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: FakeHandle) -> int:
        d = self._dev(handle, "nvmlDeviceGetMaxMigDeviceCount")
        return 7 if d.mig is not None else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: FakeHandle, slot: int) -> FakeMigHandle:
        d = self._dev(handle, "nvmlDeviceGetMigDeviceHandleByIndex")
        if d.mig is None or slot >= len(d.mig):
            raise real.NVMLError_NotFound()
        return FakeMigHandle(handle.index, slot)

    def nvmlDeviceGetGpuInstanceId(self, handle: FakeMigHandle) -> int:
        self._dev(handle, "nvmlDeviceGetGpuInstanceId")
        mig = self._mig(handle)
        if mig is None:
            raise real.NVMLError_InvalidArgument()
        return mig.gi_id

    def nvmlDeviceGetComputeInstanceId(self, handle: FakeMigHandle) -> int:
        self._dev(handle, "nvmlDeviceGetComputeInstanceId")
        mig = self._mig(handle)
        if mig is None:
            raise real.NVMLError_InvalidArgument()
        return mig.ci_id

    # -- GPM -------------------------------------------------------------------------------
    def nvmlGpmQueryDeviceSupport(self, handle: FakeHandle) -> Any:
        d = self._dev(handle, "nvmlGpmQueryDeviceSupport")
        return SimpleNamespace(isSupportedDevice=int(d.gpm is not None))

    def nvmlGpmSampleAlloc(self) -> Any:
        self._sym("nvmlGpmSampleAlloc")
        self.gpm_samples_live += 1
        return SimpleNamespace(handle=None, gi_id=None)

    def nvmlGpmSampleFree(self, sample: Any) -> None:
        self._sym("nvmlGpmSampleFree")
        self.gpm_samples_live -= 1

    def nvmlGpmSampleGet(self, handle: FakeHandle, sample: Any) -> Any:
        self._dev(handle, "nvmlGpmSampleGet")
        sample.handle, sample.gi_id = handle, None
        return sample

    def nvmlGpmMigSampleGet(self, handle: FakeHandle, gi_id: int, sample: Any) -> Any:
        d = self._dev(handle, "nvmlGpmMigSampleGet")
        if d.mig is None or not any(m.gi_id == gi_id for m in d.mig):
            raise real.NVMLError_InvalidArgument()
        sample.handle, sample.gi_id = handle, gi_id
        return sample

    def nvmlGpmMetricsGet(self, request: FakeGpmMetricsGet) -> FakeGpmMetricsGet:
        assert request.version == real.NVML_GPM_METRICS_GET_VERSION
        d = self._dev(request.sample2.handle, "nvmlGpmMetricsGet")
        assert request.sample1.gi_id == request.sample2.gi_id, "samples of two different instances"
        if request.sample2.gi_id is None:
            gpm = d.gpm
        else:
            assert d.mig is not None
            gpm = next(m.gpm for m in d.mig if m.gi_id == request.sample2.gi_id)
        assert gpm is not None
        for metric in request.metrics[: request.numMetrics]:
            if metric.metricId in gpm:
                metric.nvmlReturn, metric.value = real.NVML_SUCCESS, gpm[metric.metricId]
            else:
                metric.nvmlReturn = real.NVML_ERROR_NOT_SUPPORTED
        return request

    # -- events ----------------------------------------------------------------------------
    def nvmlEventSetCreate(self) -> FakeEventSet:
        self._sym("nvmlEventSetCreate")
        event_set = FakeEventSet()
        self.event_sets.append(event_set)
        return event_set

    def nvmlDeviceRegisterEvents(self, handle: FakeHandle, types: int, event_set: FakeEventSet) -> None:
        assert types & 0x8, "XID critical events must be registered"
        assert not event_set.freed
        self._dev(handle, "nvmlDeviceRegisterEvents")
        event_set.devices.append(handle.index)
        self.registered.append(handle.index)

    def nvmlEventSetWait_v2(self, event_set: FakeEventSet, timeout_ms: int) -> Any:
        self._sym("nvmlEventSetWait_v2")
        assert not event_set.freed, "wait on a freed event set"
        if any(self.devices[i].lost for i in event_set.devices):
            raise real.NVMLError_GpuIsLost()  # the whole set reports it, not only that GPU
        for n, (index, xid) in enumerate(self.xid_queue):
            if index in event_set.devices:
                del self.xid_queue[n]
                return SimpleNamespace(device=self.handles[index], eventType=0x8, eventData=xid,
                                       gpuInstanceId=0xFFFFFFFF, computeInstanceId=0xFFFFFFFF)
        raise real.NVMLError_Timeout()

    def nvmlEventSetFree(self, event_set: FakeEventSet) -> None:
        self._sym("nvmlEventSetFree")
        event_set.freed = True


def two_gpus() -> list[FakeDevice]:
    return [
        FakeDevice(0, "GPU-00000000-1111-2222-3333-444444444444", bus_id="00000000:18:00.0"),
        FakeDevice(1, "GPU-55555555-6666-7777-8888-999999999999", bus_id="00000000:2A:00.0"),
    ]
