"""The NVML backend: the one module that imports ``pynvml`` (nvidia-ml-py).

NVML errors are translated here and nowhere else:

- NOT_SUPPORTED, a C symbol this driver lacks (``NVMLError_FunctionNotFound``), or nvidia-ml-py's
  ``NVMLLibraryMismatchError`` (raised by its unversioned wrappers when the driver lacks the
  versioned symbol; it is *not* an ``NVMLError``): that value is absent for that GPU, and the call
  is not made again for it (cached per GPU). Where NVML has older variants of a call (``_v3`` →
  ``_v2`` process lists, clocks event → throttle reasons) the next one is tried first, as
  nvidia-ml-py's own fallbacks and DCGM do;
- GPU_IS_LOST, UNKNOWN, RESET_REQUIRED, a driver gone or swapped underneath: the GPU is down
  (:class:`~jobsight.errors.DeviceLost`); its handle is dropped and fetched again on the next read,
  so a GPU that comes back is picked up. When *every* GPU is down, NVML itself is shut down and
  initialised again, with backoff (a driver reload or a library/driver mismatch leaves every
  handle dead until then);
- any other error on one value (NO_PERMISSION, ...): that value is absent this time and the error
  is counted (a permission error on the process list only once: it will not change);
- library missing, driver not loaded, library/driver version mismatch at start:
  :class:`~jobsight.errors.BackendUnavailable` with one clear message.

XID events: one NVML event set per GPU, so that a lost GPU (whose set then answers GPU_IS_LOST to
every wait) cannot starve the XID counting of the others.

The module is injected (``nvml=``), so tests drive this code with a fake that behaves like
nvidia-ml-py (tests/exporters/gpu/fake_nvml.py, checked against the installed module).
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from exporters.gpu import fields as f
from exporters.gpu.model import (
    BackendInfo,
    Clock,
    DeviceReading,
    GpuIdentity,
    InstanceReading,
    MigInstance,
    ProcessUsage,
    XidEvent,
)
from jobsight.errors import BackendUnavailable, DeviceLost

log = logging.getLogger(__name__)

MIB = 1024 * 1024
KIB = 1024
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
    (144, f.ROW_REMAP_PENDING),  # NVML_FI_DEV_REMAPPED_PENDING (nvmlDeviceGetRemappedRows isPending)
    (145, f.ROW_REMAP_FAILURE),  # NVML_FI_DEV_REMAPPED_FAILURE
    (38, f.NVLINK_CRC_FLIT_ERRORS),  # NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL, all lanes
    (45, f.NVLINK_CRC_DATA_ERRORS),  # NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL
    (52, f.NVLINK_REPLAY_ERRORS),  # NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL
    (59, f.NVLINK_RECOVERY_ERRORS),  # NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL
    (74, f.POWER_VIOLATION),  # NVML_FI_DEV_PERF_POLICY_POWER, ns
    (75, f.THERMAL_VIOLATION),  # NVML_FI_DEV_PERF_POLICY_THERMAL, ns
    (230, f.GPU_RECOVERY_ACTION),  # NVML_FI_DEV_GET_GPU_RECOVERY_ACTION (R565+)
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
# A field id this driver does not know comes back per field; what it answers is not documented
# (NOT_SUPPORTED or INVALID_ARGUMENT), so both mean "this GPU has no such field".
_FIELD_UNSUPPORTED = (*_UNSUPPORTED, "NVMLError_InvalidArgument")
# Errors on one value that will not change by asking again (counted once, then not asked again).
_PERMANENT = ("NVMLError_NoPermission",)

_PCIE_CALLS = (
    (f.PCIE_LINK_GEN, "nvmlDeviceGetCurrPcieLinkGeneration"),
    (f.PCIE_LINK_WIDTH, "nvmlDeviceGetCurrPcieLinkWidth"),
    (f.PCIE_MAX_LINK_GEN, "nvmlDeviceGetMaxPcieLinkGeneration"),
    (f.PCIE_MAX_LINK_WIDTH, "nvmlDeviceGetMaxPcieLinkWidth"),
)
# NVML's fabric state (nvmlGpuFabricState_t) -> DCGM's dcgmFabricManagerStatus_t; "completed" is
# success (3) or failure (4) by the status NVML gives with it (DcgmCacheManager GetFMStatusFromStruct).
_FABRIC_STATE = {0: 0.0, 1: 1.0, 2: 2.0}
_FABRIC_COMPLETED = 3

# How often a GPU's MIG mode and instances are looked up again (an administrator can change them
# while the exporter runs: nvidia-smi mig -cgi / -dgi).
_MIG_REFRESH_S = 60.0
_PROCESS_CALLS = ("nvmlDeviceGetComputeRunningProcesses_v3", "nvmlDeviceGetComputeRunningProcesses_v2")

_REINIT_FIRST_S = 5.0
_REINIT_MAX_S = 300.0

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


@dataclass
class _Mig:
    handle: Any
    instance: MigInstance


@dataclass
class _EventSlot:
    """One GPU's own NVML event set, registered for its current handle."""

    event_set: Any
    handle_key: int
    generation: int


class NvmlBackend:
    def __init__(self, nvml: Any = None, gpm: bool = True, clock: Clock = time.monotonic,
                 reinit_first_s: float = _REINIT_FIRST_S, reinit_max_s: float = _REINIT_MAX_S) -> None:
        self._module = nvml
        self._nvml: Any = None
        self._mismatch: type[BaseException] | None = None
        self._use_gpm = gpm
        self._clock = clock
        self._lock = threading.Lock()
        self._events_lock = threading.Lock()
        self._opened = False
        self._live = False  # nvmlInit done and not yet shut down
        self._idents: list[GpuIdentity] = []
        self._handles: list[Any] = []
        self._fresh_ident: set[int] = set()
        self._unsupported: dict[int, set[str]] = {}
        self._logged: set[tuple[int, str, str]] = set()
        self._gpm_prev: dict[int, Any] = {}
        self._nvlink_prev: dict[int, tuple[float, float]] = {}
        self._gpm_mig_prev: dict[tuple[int, int], Any] = {}
        self._orphan_samples: list[Any] = []  # GPM samples of an NVML session shut down meanwhile
        self._migs: dict[int, list[_Mig]] = {}
        self._mig_checked_at: dict[int, float] = {}
        self._info = BackendInfo("nvml", "", "")
        self._events: dict[int, _EventSlot] = {}
        self._generation = 0
        self._down: set[int] = set()
        self._reinit_first_s = reinit_first_s
        self._reinit_max_s = reinit_max_s
        self._reinit_delay = reinit_first_s
        self._next_reinit: float | None = None
        self._released_until: float | None = None
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
            self._mismatch = getattr(nvml, "NVMLLibraryMismatchError", None)
            self._live = True
            self._info = BackendInfo("nvml", self._driver_version(), self._cuda_version())
            count = nvml.nvmlDeviceGetCount()
            for index in range(count):
                handle, ident = self._discover(index)
                if handle is None:
                    log.warning("GPU %d does not answer at start; it is reported down until it does", index)
                self._handles.append(handle)
                self._idents.append(ident)
                self._unsupported[index] = set()
            for index, handle in enumerate(self._handles):
                if handle is not None:
                    self._register_device_events(index, handle)
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
        """Release every device handle, GPM sample and event set, and shut NVML down."""
        with self._lock:
            self._closed.set()
            self._shut_down = True
            if not self._opened:
                return
            self._release_locked(final=True)
            self._opened = False

    def release(self, hold_s: float) -> None:
        """Let go of the GPUs for ``hold_s`` seconds (``nvidia-smi -r`` refuses to reset a GPU that
        a process holds open, and an NVML client holds every GPU open): shut NVML down now, report
        every GPU down meanwhile, then initialise again. Called on SIGUSR1."""
        with self._lock:
            if not self._opened or self._shut_down:
                return
            self._release_locked(final=False)
            self._released_until = self._clock() + hold_s
        log.warning("NVML released for %.0f s (SIGUSR1): GPUs can be reset now; they are reported down "
                    "until NVML is initialised again", hold_s)

    def _release_locked(self, final: bool) -> None:
        """Drop every handle and shut NVML down; at ``final`` (close, when the reader threads
        have stopped) also free the GPM samples and event sets. Before that, other reader threads
        may still hold a sample or wait on a set, and freeing those under them is not safe: the
        samples are kept aside and freed at close; the event sets belong to the session being
        shut down."""
        nvml = self._nvml
        self._orphan_samples.extend([*self._gpm_prev.values(), *self._gpm_mig_prev.values()])
        if final:
            for sample in self._orphan_samples:
                self._quietly(nvml.nvmlGpmSampleFree, sample)
            self._orphan_samples.clear()
        self._gpm_prev.clear()
        self._gpm_mig_prev.clear()
        self._nvlink_prev.clear()
        self._migs.clear()
        self._mig_checked_at.clear()
        with self._events_lock:
            if final:
                for slot in self._events.values():
                    if slot.generation == self._generation:
                        self._quietly(nvml.nvmlEventSetFree, slot.event_set)
            self._events.clear()
            self._generation += 1
        self._handles = [None] * len(self._handles)
        if self._live:
            self._quietly(nvml.nvmlShutdown)
            self._live = False

    def _quietly(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except self._nvml.NVMLError as exc:
            log.debug("NVML cleanup call %s failed: %s", getattr(fn, "__name__", fn), exc)

    def _recover(self) -> None:
        """Bring NVML back when it was released and the hold is over, or when every GPU is down
        and the backoff allows another try (after a driver reload only a new nvmlInit helps)."""
        now = self._clock()
        released = self._released_until is not None
        if released:
            if self._released_until is not None and now < self._released_until:
                return
        elif not self._idents or len(self._down) < len(self._idents):
            return
        elif self._next_reinit is None:
            self._next_reinit = now + self._reinit_delay
            return
        elif now < self._next_reinit:
            return
        with self._lock:
            if self._shut_down or (self._released_until is None and len(self._down) < len(self._idents)):
                return
            if self._released_until is None:
                log.warning("every GPU is down: initialising NVML again")
            self._reinit_locked(now)

    def _reinit_locked(self, now: float) -> None:
        nvml = self._nvml
        if self._live:
            self._release_locked(final=False)
        try:
            nvml.nvmlInit()
        except nvml.NVMLError as exc:
            self._next_reinit = now + self._reinit_delay
            log.warning("NVML initialisation failed: %s; next try in %.0f s", exc, self._reinit_delay)
            self._reinit_delay = min(self._reinit_delay * 2, self._reinit_max_s)
            self._released_until = None
            return
        self._live = True
        self._released_until = None
        self._next_reinit = None
        self._reinit_delay = self._reinit_first_s
        self._down.clear()  # the GPUs say for themselves on their next read
        self._info = BackendInfo("nvml", self._driver_version(), self._cuda_version())
        for index in range(len(self._idents)):
            self._unsupported[index] = set()
            handle, ident = self._discover(index)
            if handle is None:
                continue
            if ident != self._idents[index]:
                log.warning("GPU %d is %s after NVML was initialised again (was %s)", index, ident.uuid,
                            self._idents[index].uuid or "unidentified")
                self._idents[index] = ident
                self._fresh_ident.add(index)
            self._handles[index] = handle
            self._register_device_events(index, handle)
        log.warning("NVML initialised again (driver %s)", self._info.driver_version)

    # -- GpuBackend -----------------------------------------------------------------------------

    def info(self) -> BackendInfo:
        """Read again after NVML is initialised again (the driver may have changed); a scrape
        asks it, so after close() it answers from memory instead of opening NVML again."""
        if not self._shut_down:
            self.open()
        return self._info

    def devices(self) -> list[GpuIdentity]:
        self.open()
        return list(self._idents)

    def read(self, index: int) -> DeviceReading:
        self.open()
        self._recover()
        if self._released_until is not None:
            self._down.add(index)
            raise DeviceLost(f"GPU {index}: NVML is released for a GPU reset (SIGUSR1)")
        try:
            reading = self._read(index)
        except DeviceLost:
            self._down.add(index)
            if len(self._down) == len(self._idents) and self._next_reinit is None:
                self._next_reinit = self._clock() + self._reinit_delay  # the backoff starts now
            raise
        self._down.discard(index)
        if self._next_reinit is not None and self._released_until is None:
            # A GPU answers: NVML works; the backoff starts afresh the next time every GPU fails.
            self._next_reinit = None
            self._reinit_delay = self._reinit_first_s
        return reading

    def _read(self, index: int) -> DeviceReading:
        nvml = self._nvml
        handle, identified = self._handle(index)
        values: dict[str, float] = {}
        errors: list[str] = []
        unsupported = self._unsupported[index]
        # AttributeError: an older nvidia-ml-py without the function.
        caught: tuple[type[BaseException], ...] = (AttributeError, nvml.NVMLError)
        if self._mismatch is not None:
            caught = (*caught, self._mismatch)

        def call(name: str, fn_names: str | tuple[str, ...], *args: Any) -> Any:
            """Value ``name`` from the first of ``fn_names`` this driver and binding have."""
            if name in unsupported:
                return None
            for fn_name in (fn_names,) if isinstance(fn_names, str) else fn_names:
                variant = f"{name}:{fn_name}"
                if variant in unsupported:
                    continue
                fn = getattr(nvml, fn_name, None)
                try:
                    if fn is None:
                        raise AttributeError(fn_name)
                    return fn(*args)
                except caught as exc:
                    if isinstance(exc, nvml.NVMLError) and type(exc).__name__ != "NVMLError_FunctionNotFound":
                        self._on_error(index, name, exc, errors)
                        return None
                    # The driver (or binding) lacks this variant: try the older one.
                    unsupported.add(variant)
                    log.debug("GPU %d: %s has no %s: %s", index, name, fn_name, exc)
            unsupported.add(name)
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
        self._memory(handle, call, values)
        for metric, fn_name in _PCIE_CALLS:
            pcie = call(metric, fn_name, handle)
            if pcie is not None:
                values[metric] = pcie
        self._fabric(handle, call, values)
        # R535 renamed "throttle reasons" to "clocks event reasons"; older drivers have only the
        # old symbol. Both DCGM names carry the same bitmask (dashboards of both generations).
        reasons = call("clock_events", ("nvmlDeviceGetCurrentClocksEventReasons",
                                        "nvmlDeviceGetCurrentClocksThrottleReasons"), handle)
        if reasons is not None:
            values[f.CLOCKS_EVENT_REASONS] = reasons
            values[f.CLOCK_THROTTLE_REASONS] = reasons
        self._fields(index, handle, values, errors)
        if self._use_gpm:
            self._gpm(index, handle, call, values)
        migs = self._mig_devices(index, handle, call, errors)
        instances = tuple(self._read_instance(index, handle, mig, call) for mig in migs)
        # On a MIG-enabled GPU the processes come from its instances: the physical GPU's list
        # needs root there (NO_PERMISSION otherwise) and would repeat them.
        # _v3 (R510+), else _v2: the unversioned wrapper raises NVMLLibraryMismatchError instead.
        processes = () if migs else _processes(call("processes", _PROCESS_CALLS, handle))
        fresh = identified or index in self._fresh_ident
        self._fresh_ident.discard(index)
        return DeviceReading(values=values, processes=processes, errors=tuple(errors),
                             identity=self._idents[index] if fresh else None, instances=instances)

    # -- MIG ------------------------------------------------------------------------------------

    def _mig_devices(self, index: int, handle: Any, call: Callable[..., Any],
                     errors: list[str]) -> list[_Mig]:
        """The GPU's MIG devices, looked up again every _MIG_REFRESH_S (and after an instance
        stopped answering); [] when MIG mode is off or the GPU has none."""
        now = self._clock()
        checked = self._mig_checked_at.get(index)
        if checked is not None and now - checked < _MIG_REFRESH_S:
            return self._migs.get(index, [])
        self._mig_checked_at[index] = now
        mode = call("mig_mode", "nvmlDeviceGetMigMode", handle)
        if mode is None or not int(mode[0]):
            self._migs[index] = []
            return []
        nvml = self._nvml
        found: list[_Mig] = []
        for slot in range(int(call("mig_count", "nvmlDeviceGetMaxMigDeviceCount", handle) or 0)):
            try:
                mig = nvml.nvmlDeviceGetMigDeviceHandleByIndex(handle, slot)
                gi_id = int(nvml.nvmlDeviceGetGpuInstanceId(mig))
                ci_id = int(nvml.nvmlDeviceGetComputeInstanceId(mig))
                uuid = _text(nvml.nvmlDeviceGetUUID(mig))
                name = _text(nvml.nvmlDeviceGetName(mig))
            except nvml.NVMLError_NotFound:
                continue  # an empty slot
            except nvml.NVMLError as exc:
                self._on_error(index, "mig_devices", exc, errors)
                continue
            # NVML names a MIG device "<GPU name> MIG <profile>", e.g. "NVIDIA H100 80GB HBM3 MIG 3g.40gb".
            profile = name.rpartition(" MIG ")[2] if " MIG " in name else ""
            found.append(_Mig(mig, MigInstance(gi_id, ci_id, profile, uuid)))
        found.sort(key=lambda m: (m.instance.gi_id, m.instance.ci_id))
        self._migs[index] = found
        kept = {(index, m.instance.gi_id) for m in found}
        for key in [key for key in self._gpm_mig_prev if key[0] == index and key not in kept]:
            self._quietly(nvml.nvmlGpmSampleFree, self._gpm_mig_prev.pop(key))
        return found

    def _read_instance(self, index: int, handle: Any, mig: _Mig, call: Callable[..., Any]) -> InstanceReading:
        """Memory and processes of one MIG device (its own handle), and its GPM metrics (through
        the physical GPU's handle and the GPU instance id, nvmlGpmMigSampleGet)."""

        def mig_call(name: str, fn_names: str | tuple[str, ...], *args: Any) -> Any:
            # Cached apart from the physical GPU's answers: an instance may lack what the GPU has.
            return call(f"mig:{name}", fn_names, *args)

        values: dict[str, float] = {}
        self._memory(mig.handle, mig_call, values)
        values.pop(f.FB_RESERVED, None)  # per instance NVML reports no reservation of its own
        if self._use_gpm and "gpm" not in self._unsupported[index]:
            self._gpm_mig(index, handle, mig.instance.gi_id, mig_call, values)
        processes = _processes(mig_call("processes", _PROCESS_CALLS, mig.handle))
        if not values:
            # No memory figures: the instance was probably destroyed (nvidia-smi mig -dgi); look
            # the instances up again on the next read rather than in a minute.
            self._mig_checked_at.pop(index, None)
        return InstanceReading(mig.instance, values, processes)

    def _gpm_mig(self, index: int, handle: Any, gi_id: int, call: Callable[..., Any],
                 values: dict[str, float]) -> None:
        nvml = self._nvml
        support = call("gpm", "nvmlGpmQueryDeviceSupport", handle)
        if support is None or not support.isSupportedDevice:
            return
        sample = call("gpm_sample_alloc", "nvmlGpmSampleAlloc")
        if sample is None:
            return
        if call("gpm_mig_sample", "nvmlGpmMigSampleGet", handle, gi_id, sample) is None:
            self._quietly(nvml.nvmlGpmSampleFree, sample)
            return
        previous = self._gpm_mig_prev.get((index, gi_id))
        self._gpm_mig_prev[(index, gi_id)] = sample
        if previous is not None:
            self._gpm_metrics(previous, sample, call, values)

    def wait_xid_events(self, index: int, timeout_s: float) -> list[XidEvent]:
        """Critical XIDs of GPU ``index``, from its own event set."""
        self.open()
        nvml = self._nvml
        with self._events_lock:
            slot = self._events.get(index)
        if slot is None:  # down, released, or no events on this GPU: nothing to wait on
            self._closed.wait(timeout_s)
            return []
        events: list[XidEvent] = []
        wait_ms = max(0, int(timeout_s * 1000))
        while True:
            try:
                data = nvml.nvmlEventSetWait_v2(slot.event_set, wait_ms)
            except nvml.NVMLError_Timeout:
                return events
            except nvml.NVMLError as exc:
                # A lost GPU makes its set answer GPU_IS_LOST to every wait: drop the set; it is
                # created again when the GPU's handle is.
                self._drop_event_slot(index, slot)
                raise DeviceLost(f"GPU {index}: XID events: {exc}") from exc
            if data.eventType & _XID_CRITICAL:
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
        self._register_device_events(index, handle)
        return handle, False

    def _on_error(self, index: int, name: str, exc: Exception, errors: list[str],
                  unsupported_kinds: tuple[str, ...] = _UNSUPPORTED) -> None:
        kind = type(exc).__name__
        if kind in unsupported_kinds:
            self._unsupported[index].add(name)
            log.debug("GPU %d: %s not supported", index, name)
            return
        if kind in _DEVICE_DOWN:
            self._handles[index] = None
            self._gpm_prev.pop(index, None)
            self._nvlink_prev.pop(index, None)
            self._mig_checked_at.pop(index, None)
            raise DeviceLost(f"GPU {index}: {name}: {exc}") from exc
        errors.append("nvml_error")
        key = (index, name, kind)
        if kind in _PERMANENT:
            self._unsupported[index].add(name)
        if key not in self._logged:
            self._logged.add(key)
            log.warning("GPU %d: reading %s failed: %s (logged once)", index, name, exc)

    def _memory(self, handle: Any, call: Callable[..., Any], values: dict[str, float]) -> None:
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

    def _fabric(self, handle: Any, call: Callable[..., Any], values: dict[str, float]) -> None:
        """DCGM_FI_DEV_FABRIC_MANAGER_STATUS: the GPU's NVLink fabric registration (NVSwitch
        systems). Absent where NVML has no fabric call (DCGM says 6, "NVML too old", there)."""
        nvml = self._nvml
        info_type = getattr(nvml, "c_nvmlGpuFabricInfo_t", None)
        if info_type is None:
            return
        info = info_type()
        if call("fabric", "nvmlDeviceGetGpuFabricInfo", handle, ctypes.byref(info)) is None:
            return
        state = int(info.state)
        if state == _FABRIC_COMPLETED:
            values[f.FABRIC_MANAGER_STATUS] = 3.0 if int(info.status) == nvml.NVML_SUCCESS else 4.0
        elif state in _FABRIC_STATE:
            values[f.FABRIC_MANAGER_STATUS] = _FABRIC_STATE[state]

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
        stamp_us = 0
        for (_, name), result in zip(wanted, results, strict=False):
            code = int(result.nvmlReturn)
            if code == nvml.NVML_SUCCESS:
                raw[name] = _field_value(nvml, result)
                stamp_us = max(stamp_us, int(getattr(result, "timestamp", 0) or 0))
                continue
            self._on_error(index, f"field:{name}", nvml.NVMLError(code), errors, _FIELD_UNSUPPORTED)
        tx, rx = raw.pop("nvlink_tx_kib", None), raw.pop("nvlink_rx_kib", None)
        if tx is not None and rx is not None:
            values[f.NVLINK_TX_BYTES] = tx * KIB
            values[f.NVLINK_RX_BYTES] = rx * KIB
            rate = self._nvlink_rate(index, tx + rx, stamp_us)
            if rate is not None:
                values[f.NVLINK_BANDWIDTH_TOTAL] = rate
        values.update(raw)

    def _nvlink_rate(self, index: int, total_kib: float, stamp_us: int) -> float | None:
        """DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL as DCGM computes it (DcgmCacheManager
        ReadAndCacheNvLinkBandwidth): the change of NVML's cumulative TX+RX KiB counters between
        two reads, per second of the fields' own timestamps, divided by 1000 ("MB/s"), truncated
        to an integer; 0 while the counters are 0. Absent on the first read (nothing to compare
        with) and after a counter reset."""
        now = stamp_us / 1e6 if stamp_us else self._clock()
        previous = self._nvlink_prev.get(index)
        self._nvlink_prev[index] = (total_kib, now)
        if total_kib == 0:
            return 0.0
        if previous is None:
            return None
        delta, seconds = total_kib - previous[0], now - previous[1]
        if delta < 0 or seconds <= 0:
            return None
        return float(int(delta / seconds / 1000.0))

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
        self._gpm_metrics(previous, sample, call, values)

    def _gpm_metrics(self, previous: Any, sample: Any, call: Callable[..., Any],
                     values: dict[str, float]) -> None:
        """The DCGM profiling values between two GPM samples; frees the older one."""
        nvml = self._nvml
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

    def _register_device_events(self, index: int, handle: Any) -> None:
        """Give GPU ``index`` its own event set for ``handle`` (replacing a set registered for an
        older handle of it)."""
        nvml = self._nvml
        if "xid_events" in self._unsupported.get(index, ()):
            return
        key = _handle_key(handle)
        with self._events_lock:
            old = self._events.pop(index, None)
            if old is not None and old.generation == self._generation:
                self._quietly(nvml.nvmlEventSetFree, old.event_set)
            try:
                event_set = nvml.nvmlEventSetCreate()
            except nvml.NVMLError as exc:
                log.warning("GPU %d: NVML events unavailable, XIDs will not be counted: %s", index, exc)
                return
            try:
                nvml.nvmlDeviceRegisterEvents(handle, _XID_CRITICAL, event_set)
            except nvml.NVMLError as exc:
                self._quietly(nvml.nvmlEventSetFree, event_set)
                if type(exc).__name__ in _UNSUPPORTED:
                    self._unsupported.setdefault(index, set()).add("xid_events")
                log.warning("GPU %d: XID events not available: %s", index, exc)
                return
            self._events[index] = _EventSlot(event_set, key, self._generation)

    def _drop_event_slot(self, index: int, slot: _EventSlot) -> None:
        with self._events_lock:
            if self._events.get(index) is slot:
                del self._events[index]
                if slot.generation == self._generation:
                    self._quietly(self._nvml.nvmlEventSetFree, slot.event_set)

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


def _processes(procs: Any) -> tuple[ProcessUsage, ...]:
    return tuple(
        ProcessUsage(int(p.pid), None if p.usedGpuMemory is None else int(p.usedGpuMemory))
        for p in (procs or ())
    )


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
