"""The NVML backend: the one module that imports ``pynvml`` (nvidia-ml-py).

NVML errors are translated here and nowhere else:

- NOT_SUPPORTED (or a function this driver/binding lacks): that value is absent for that GPU, and
  the call is not made again for it (cached per GPU);
- GPU_IS_LOST, UNKNOWN, RESET_REQUIRED, a driver gone or swapped underneath: the GPU is down
  (:class:`~jobsight.errors.DeviceLost`); its handle is dropped and fetched again on the next read,
  so a GPU that comes back is picked up;
- any other error on one value (NO_PERMISSION, ...): that value is absent this time and the error
  is counted;
- library missing, driver not loaded, library/driver version mismatch at start:
  :class:`~jobsight.errors.BackendUnavailable` with one clear message (the CLI exits 3).

The module is injected (``nvml=``), so tests drive this code with a hand-written fake that
raises the real ``pynvml.NVMLError_*`` classes.
"""

from __future__ import annotations

import ctypes
import logging
import threading
from collections.abc import Callable
from typing import Any

from exporters.gpu import fields as f
from exporters.gpu.model import BackendInfo, DeviceReading, GpuIdentity, ProcessUsage, XidEvent
from jobsight.errors import BackendUnavailable, DeviceLost

log = logging.getLogger(__name__)

MIB = 1024 * 1024
_ALL_LINKS = 0xFFFFFFFF  # scopeId meaning "summed over every NVLink link"

# Field id → metric name, read in one nvmlDeviceGetFieldValues batch per GPU.
_FIELD_IDS: tuple[tuple[int | tuple[int, int], str], ...] = (
    (82, f.MEMORY_TEMP),  # NVML_FI_DEV_MEMORY_TEMP
    (83, f.TOTAL_ENERGY),  # NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION, mJ
    (94, f.PCIE_REPLAY),  # NVML_FI_DEV_PCIE_REPLAY_COUNTER
    (3, f.ECC_SBE_VOL),
    (4, f.ECC_DBE_VOL),
    (5, f.ECC_SBE_AGG),
    (6, f.ECC_DBE_AGG),
    (142, f.CORRECTABLE_REMAPPED_ROWS),  # NVML_FI_DEV_REMAPPED_COR
    (143, f.UNCORRECTABLE_REMAPPED_ROWS),  # NVML_FI_DEV_REMAPPED_UNC
    (145, f.ROW_REMAP_FAILURE),  # NVML_FI_DEV_REMAPPED_FAILURE
    (74, f.POWER_VIOLATION),  # NVML_FI_DEV_PERF_POLICY_POWER, ns
    (75, f.THERMAL_VIOLATION),  # NVML_FI_DEV_PERF_POLICY_THERMAL, ns
    ((138, _ALL_LINKS), "nvlink_tx_kib"),  # NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX
    ((139, _ALL_LINKS), "nvlink_rx_kib"),  # NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX
)

# GPM metric id → (metric name, scale). GPM reports percentages 0-100 and MiB/s; DCGM publishes
# ratios 0-1 and bytes/s.
_GPM_METRICS: tuple[tuple[int, str, float], ...] = (
    (1, f.PROF_GR_ENGINE_ACTIVE, 0.01),  # NVML_GPM_METRIC_GRAPHICS_UTIL
    (2, f.PROF_SM_ACTIVE, 0.01),  # SM_UTIL
    (3, f.PROF_SM_OCCUPANCY, 0.01),  # SM_OCCUPANCY
    (5, f.PROF_PIPE_TENSOR_ACTIVE, 0.01),  # ANY_TENSOR_UTIL
    (10, f.PROF_DRAM_ACTIVE, 0.01),  # DRAM_BW_UTIL
    (20, f.PROF_PCIE_TX_BYTES, float(MIB)),  # PCIE_TX_PER_SEC
    (21, f.PROF_PCIE_RX_BYTES, float(MIB)),  # PCIE_RX_PER_SEC
    (61, f.PROF_NVLINK_TX_BYTES, float(MIB)),  # NVLINK_TOTAL_TX_PER_SEC
    (60, f.PROF_NVLINK_RX_BYTES, float(MIB)),  # NVLINK_TOTAL_RX_PER_SEC
)

_XID_CRITICAL = 0x8  # nvmlEventTypeXidCriticalError

# Errors after which the GPU (or the driver under it) is not answering: mark it down.
_DEVICE_DOWN = (
    "NVMLError_GpuIsLost",
    "NVMLError_Unknown",
    "NVMLError_ResetRequired",
    "NVMLError_Uninitialized",
    "NVMLError_DriverNotLoaded",
    "NVMLError_LibRmVersionMismatch",
)
_UNSUPPORTED = ("NVMLError_NotSupported", "NVMLError_FunctionNotFound")

_SIMULATE_HINT = "Use --simulate N or --scenario FILE to run a simulated fleet"
_INIT_MESSAGES = {
    "NVMLError_LibraryNotFound": "the NVML library (libnvidia-ml.so.1) was not found: no NVIDIA driver on "
    f"this machine. {_SIMULATE_HINT}",
    "NVMLError_DriverNotLoaded": f"the NVIDIA kernel driver is not loaded. {_SIMULATE_HINT}",
    "NVMLError_LibRmVersionMismatch": "the NVML library and the NVIDIA kernel driver have different versions "
    "(driver upgraded without a reboot?); reboot or reload the driver",
    "NVMLError_NoPermission": "no permission to use NVML (check access to /dev/nvidia*)",
}


def _handle_key(handle: Any) -> int:
    """An identity for an NVML device handle that needs no NVML call (the device may be lost)."""
    try:
        return int(ctypes.cast(handle, ctypes.c_void_p).value or 0)
    except (TypeError, ctypes.ArgumentError):
        return id(handle)


class NvmlBackend:
    def __init__(self, nvml: Any = None, gpm: bool = True) -> None:
        self._module = nvml
        self._nvml: Any = None
        self._use_gpm = gpm
        self._lock = threading.Lock()
        self._opened = False
        self._idents: list[GpuIdentity] = []
        self._handles: list[Any] = []
        self._unsupported: dict[int, set[str]] = {}
        self._logged: set[tuple[int, str, str]] = set()
        self._gpm_prev: dict[int, Any] = {}
        self._info = BackendInfo("nvml", "", "")
        self._event_set: Any = None
        self._event_index: dict[int, int] = {}
        self._closed = threading.Event()
        self._shut_down = False

    # -- lifecycle ------------------------------------------------------------------------------

    def open(self) -> None:
        """Initialise NVML and find the GPUs, once; safe to call from several threads."""
        with self._lock:
            if self._opened:
                return
            if self._shut_down:
                # A reader thread that was stuck in a call until after close(): do not bring NVML
                # back up behind the exporter's back.
                raise DeviceLost("the NVML backend is closed")
            nvml = self._load()
            try:
                nvml.nvmlInit()
            except nvml.NVMLError as exc:
                name = type(exc).__name__
                raise BackendUnavailable(
                    f"NVML: {_INIT_MESSAGES.get(name, f'initialisation failed: {exc}')}"
                ) from exc
            self._nvml = nvml
            self._info = BackendInfo("nvml", self._driver_version(), self._cuda_version())
            count = nvml.nvmlDeviceGetCount()
            for index in range(count):
                handle, ident = self._discover(index)
                if handle is None:
                    log.warning("GPU %d does not answer at start; it is reported down until it does", index)
                self._handles.append(handle)
                self._idents.append(ident)
                self._unsupported[index] = set()
            self._register_events()
            self._opened = True

    def _load(self) -> Any:
        if self._module is not None:
            return self._module
        try:
            import pynvml
        except ImportError as exc:
            raise BackendUnavailable("NVML: the nvidia-ml-py package (pynvml) is not installed") from exc
        return pynvml

    def close(self) -> None:
        with self._lock:
            self._closed.set()
            self._shut_down = True
            if not self._opened:
                return
            nvml = self._nvml
            for sample in self._gpm_prev.values():
                self._quietly(nvml.nvmlGpmSampleFree, sample)
            self._gpm_prev.clear()
            if self._event_set is not None:
                self._quietly(nvml.nvmlEventSetFree, self._event_set)
                self._event_set = None
            self._quietly(nvml.nvmlShutdown)
            self._opened = False

    def _quietly(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except self._nvml.NVMLError as exc:
            log.debug("NVML cleanup call %s failed: %s", getattr(fn, "__name__", fn), exc)

    # -- GpuBackend -----------------------------------------------------------------------------

    def info(self) -> BackendInfo:
        self.open()
        return self._info

    def devices(self) -> list[GpuIdentity]:
        self.open()
        return list(self._idents)

    def read(self, index: int) -> DeviceReading:
        self.open()
        nvml = self._nvml
        handle, identified = self._handle(index)
        values: dict[str, float] = {}
        errors: list[str] = []

        def call(name: str, fn_name: str, *args: Any) -> Any:
            if name in self._unsupported[index]:
                return None
            fn = getattr(nvml, fn_name, None)
            if fn is None:  # an older nvidia-ml-py without this function
                self._unsupported[index].add(name)
                return None
            try:
                return fn(*args)
            except nvml.NVMLError as exc:
                self._on_error(index, name, exc, errors)
                return None

        util = call("utilization", "nvmlDeviceGetUtilizationRates", handle)
        if util is not None:
            values[f.GPU_UTIL] = util.gpu
            values[f.MEM_COPY_UTIL] = util.memory
        enc = call("encoder", "nvmlDeviceGetEncoderUtilization", handle)
        if enc is not None:
            values[f.ENC_UTIL] = enc[0]
        dec = call("decoder", "nvmlDeviceGetDecoderUtilization", handle)
        if dec is not None:
            values[f.DEC_UTIL] = dec[0]
        for metric, clock_id in ((f.SM_CLOCK, nvml.NVML_CLOCK_SM), (f.MEM_CLOCK, nvml.NVML_CLOCK_MEM)):
            mhz = call(metric, "nvmlDeviceGetClockInfo", handle, clock_id)
            if mhz is not None:
                values[metric] = mhz
        temp = call("temperature", "nvmlDeviceGetTemperature", handle, nvml.NVML_TEMPERATURE_GPU)
        if temp is not None:
            values[f.GPU_TEMP] = temp
        milliwatts = call("power", "nvmlDeviceGetPowerUsage", handle)
        if milliwatts is not None:
            values[f.POWER_USAGE] = milliwatts / 1000.0
        self._memory(index, handle, call, values)
        reasons = call("clock_events", "nvmlDeviceGetCurrentClocksEventReasons", handle)
        if reasons is not None:
            values[f.CLOCKS_EVENT_REASONS] = reasons
        self._fields(index, handle, values, errors)
        if self._use_gpm:
            self._gpm(index, handle, call, values)
        procs = call("processes", "nvmlDeviceGetComputeRunningProcesses", handle)
        processes = tuple(
            ProcessUsage(int(p.pid), None if p.usedGpuMemory is None else int(p.usedGpuMemory))
            for p in (procs or ())
        )
        return DeviceReading(values=values, processes=processes, errors=tuple(errors),
                             identity=self._idents[index] if identified else None)

    def wait_xid_events(self, timeout_s: float) -> list[XidEvent]:
        self.open()
        nvml = self._nvml
        if self._event_set is None:
            self._closed.wait(timeout_s)
            return []
        events: list[XidEvent] = []
        wait_ms = max(0, int(timeout_s * 1000))
        while True:
            try:
                data = nvml.nvmlEventSetWait_v2(self._event_set, wait_ms)
            except nvml.NVMLError_Timeout:
                return events
            # Any other NVMLError propagates: the sampler counts it and retries later.
            if data.eventType & _XID_CRITICAL:
                index = self._event_index.get(_handle_key(data.device))
                if index is None:
                    index = self._index_of(data.device)
                if index is not None:
                    events.append(XidEvent(index, int(data.eventData)))
            wait_ms = 0  # drain what is already queued, then return

    # -- helpers --------------------------------------------------------------------------------

    def _discover(self, index: int) -> tuple[Any, GpuIdentity]:
        """Handle and identity of GPU ``index``; (None, an identity with only the index) when it
        does not answer, so it is still listed and reported down."""
        nvml = self._nvml
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            uuid = nvml.nvmlDeviceGetUUID(handle)
            name = nvml.nvmlDeviceGetName(handle)
            bus = nvml.nvmlDeviceGetPciInfo(handle).busId
        except nvml.NVMLError as exc:
            log.debug("GPU %d cannot be identified: %s", index, exc)
            return None, GpuIdentity(index, "", "", "")
        return handle, GpuIdentity(index, _text(uuid), _text(bus), _text(name))

    def _handle(self, index: int) -> tuple[Any, bool]:
        """The GPU's handle, fetched again after it was lost; True when the GPU was identified
        only now (it was already lost at start)."""
        handle = self._handles[index]
        if handle is not None:
            return handle, False
        if not self._idents[index].uuid:
            handle, ident = self._discover(index)
            if handle is None:
                raise DeviceLost(f"GPU {index}: still cannot be identified")
            self._idents[index] = ident
            self._handles[index] = handle
            self._register_device_events(index, handle)
            log.warning("GPU %d identified as %s", index, ident.uuid)
            return handle, True
        nvml = self._nvml
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
        except nvml.NVMLError as exc:
            raise DeviceLost(f"GPU {index}: {exc}") from exc
        self._handles[index] = handle
        return handle, False

    def _on_error(self, index: int, name: str, exc: Exception, errors: list[str]) -> None:
        kind = type(exc).__name__
        if kind in _UNSUPPORTED:
            self._unsupported[index].add(name)
            log.debug("GPU %d: %s not supported", index, name)
            return
        if kind in _DEVICE_DOWN:
            self._handles[index] = None
            self._gpm_prev.pop(index, None)
            raise DeviceLost(f"GPU {index}: {name}: {exc}") from exc
        errors.append("nvml_error")
        key = (index, name, kind)
        if key not in self._logged:
            self._logged.add(key)
            log.warning("GPU %d: reading %s failed: %s (logged once)", index, name, exc)

    def _memory(self, index: int, handle: Any, call: Callable[..., Any], values: dict[str, float]) -> None:
        version = getattr(self._nvml, "nvmlMemory_v2", None)
        mem = call("memory_v2", "nvmlDeviceGetMemoryInfo", handle, version) if version else None
        if mem is not None:
            values[f.FB_RESERVED] = mem.reserved / MIB
        else:
            mem = call("memory", "nvmlDeviceGetMemoryInfo", handle)
        if mem is not None:
            values[f.FB_FREE] = mem.free / MIB
            values[f.FB_USED] = mem.used / MIB
            values[f.MEMORY_TOTAL_BYTES] = mem.total

    def _fields(self, index: int, handle: Any, values: dict[str, float], errors: list[str]) -> None:
        nvml = self._nvml
        wanted = [(fid, name) for fid, name in _FIELD_IDS if f"field:{name}" not in self._unsupported[index]]
        if not wanted or "field_values" in self._unsupported[index]:
            return
        try:
            results = nvml.nvmlDeviceGetFieldValues(handle, [fid for fid, _ in wanted])
        except nvml.NVMLError as exc:
            self._on_error(index, "field_values", exc, errors)
            return
        raw: dict[str, float] = {}
        for (_, name), result in zip(wanted, results, strict=False):
            code = int(result.nvmlReturn)
            if code == nvml.NVML_SUCCESS:
                raw[name] = _field_value(nvml, result)
                continue
            self._on_error(index, f"field:{name}", nvml.NVMLError(code), errors)
        if "nvlink_tx_kib" in raw and "nvlink_rx_kib" in raw:
            values[f.NVLINK_BANDWIDTH_TOTAL] = raw.pop("nvlink_tx_kib") + raw.pop("nvlink_rx_kib")
        raw.pop("nvlink_tx_kib", None)
        raw.pop("nvlink_rx_kib", None)
        values.update(raw)

    def _gpm(self, index: int, handle: Any, call: Callable[..., Any], values: dict[str, float]) -> None:
        """Profiling ratios from two GPM samples: the previous read's and this one's."""
        nvml = self._nvml
        if "gpm" in self._unsupported[index]:
            return
        support = call("gpm", "nvmlGpmQueryDeviceSupport", handle)
        if support is None or not support.isSupportedDevice:
            self._unsupported[index].add("gpm")
            return
        sample = call("gpm_sample_alloc", "nvmlGpmSampleAlloc")
        if sample is None:
            return
        if call("gpm_sample", "nvmlGpmSampleGet", handle, sample) is None:
            self._quietly(nvml.nvmlGpmSampleFree, sample)
            return
        previous = self._gpm_prev.get(index)
        self._gpm_prev[index] = sample
        if previous is None:
            return  # the first read has nothing to compare with
        request = nvml.c_nvmlGpmMetricsGet_t()
        request.version = nvml.NVML_GPM_METRICS_GET_VERSION
        request.numMetrics = len(_GPM_METRICS)
        request.sample1 = previous
        request.sample2 = sample
        for i, (metric_id, _, _) in enumerate(_GPM_METRICS):
            request.metrics[i].metricId = metric_id
        result = call("gpm_metrics", "nvmlGpmMetricsGet", request)
        self._quietly(nvml.nvmlGpmSampleFree, previous)
        if result is None:
            return
        for i, (_, name, scale) in enumerate(_GPM_METRICS):
            metric = result.metrics[i]
            if int(metric.nvmlReturn) == nvml.NVML_SUCCESS:
                values[name] = float(metric.value) * scale

    def _register_events(self) -> None:
        nvml = self._nvml
        try:
            self._event_set = nvml.nvmlEventSetCreate()
        except nvml.NVMLError as exc:
            log.warning("NVML events unavailable, XIDs will not be counted: %s", exc)
            self._event_set = None
            return
        for index, handle in enumerate(self._handles):
            if handle is not None:
                self._register_device_events(index, handle)

    def _register_device_events(self, index: int, handle: Any) -> None:
        nvml = self._nvml
        if self._event_set is None:
            return
        try:
            nvml.nvmlDeviceRegisterEvents(handle, _XID_CRITICAL, self._event_set)
            self._event_index[_handle_key(handle)] = index
        except nvml.NVMLError as exc:
            log.warning("GPU %d: XID events not available: %s", index, exc)

    def _index_of(self, handle: Any) -> int | None:
        try:
            return int(self._nvml.nvmlDeviceGetIndex(handle))
        except self._nvml.NVMLError:
            return None

    def _driver_version(self) -> str:
        try:
            return _text(self._nvml.nvmlSystemGetDriverVersion())
        except self._nvml.NVMLError:
            return ""

    def _cuda_version(self) -> str:
        try:
            version = int(self._nvml.nvmlSystemGetCudaDriverVersion())
        except self._nvml.NVMLError:
            return ""
        return f"{version // 1000}.{version % 1000 // 10}"


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _field_value(nvml: Any, result: Any) -> float:
    kind = int(result.valueType)
    value = result.value
    member = {
        nvml.NVML_VALUE_TYPE_DOUBLE: "dVal",
        nvml.NVML_VALUE_TYPE_UNSIGNED_INT: "uiVal",
        nvml.NVML_VALUE_TYPE_UNSIGNED_LONG: "ulVal",
        nvml.NVML_VALUE_TYPE_UNSIGNED_LONG_LONG: "ullVal",
        nvml.NVML_VALUE_TYPE_SIGNED_LONG_LONG: "sllVal",
        nvml.NVML_VALUE_TYPE_SIGNED_INT: "siVal",
        getattr(nvml, "NVML_VALUE_TYPE_UNSIGNED_SHORT", 6): "usVal",
    }.get(kind, "ullVal")
    return float(getattr(value, member))
