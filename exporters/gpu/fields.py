"""The per-GPU value metrics: name, Prometheus type, help text and where the value comes from.

Names, units and help texts follow dcgm-exporter's ``default-counters.csv`` (classic names, the
ones Grafana dashboard 12239 and existing alert rules expect). Backends key their readings by
these names; the collector publishes exactly the names present in a reading.

``kind="dcgm_counter"``: dcgm-exporter declares these ``counter`` without a ``_total`` suffix.
prometheus_client's text renderer appends ``_total`` to every counter family name, which would
break the DCGM name, so they are exposed as ``untyped`` under the exact DCGM name; ``rate()`` and
``increase()`` work the same on them. ``kind="counter"`` is one of our own ``jobsight_*``
counters: the spec names the family, the sample gets ``_total``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Kind = Literal["gauge", "dcgm_counter", "counter"]


@dataclass(frozen=True)
class FieldSpec:
    name: str
    kind: Kind
    help: str
    unit: str
    source: str  # where the NVML backend reads it (for docs/metrics/gpu.md)


def _g(name: str, help_text: str, unit: str, source: str) -> FieldSpec:
    return FieldSpec(name, "gauge", help_text, unit, source)


def _c(name: str, help_text: str, unit: str, source: str) -> FieldSpec:
    return FieldSpec(name, "dcgm_counter", help_text, unit, source)


def _own_counter(name: str, help_text: str, unit: str, source: str) -> FieldSpec:
    return FieldSpec(name, "counter", help_text, unit, source)


GPU_UTIL = "DCGM_FI_DEV_GPU_UTIL"
MEM_COPY_UTIL = "DCGM_FI_DEV_MEM_COPY_UTIL"
ENC_UTIL = "DCGM_FI_DEV_ENC_UTIL"
DEC_UTIL = "DCGM_FI_DEV_DEC_UTIL"
SM_CLOCK = "DCGM_FI_DEV_SM_CLOCK"
MEM_CLOCK = "DCGM_FI_DEV_MEM_CLOCK"
GPU_TEMP = "DCGM_FI_DEV_GPU_TEMP"
MEMORY_TEMP = "DCGM_FI_DEV_MEMORY_TEMP"
POWER_USAGE = "DCGM_FI_DEV_POWER_USAGE"
TOTAL_ENERGY = "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"
FB_FREE = "DCGM_FI_DEV_FB_FREE"
FB_USED = "DCGM_FI_DEV_FB_USED"
FB_RESERVED = "DCGM_FI_DEV_FB_RESERVED"
PCIE_REPLAY = "DCGM_FI_DEV_PCIE_REPLAY_COUNTER"
ECC_SBE_VOL = "DCGM_FI_DEV_ECC_SBE_VOL_TOTAL"
ECC_DBE_VOL = "DCGM_FI_DEV_ECC_DBE_VOL_TOTAL"
ECC_SBE_AGG = "DCGM_FI_DEV_ECC_SBE_AGG_TOTAL"
ECC_DBE_AGG = "DCGM_FI_DEV_ECC_DBE_AGG_TOTAL"
ROW_REMAP_FAILURE = "DCGM_FI_DEV_ROW_REMAP_FAILURE"
CORRECTABLE_REMAPPED_ROWS = "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS"
UNCORRECTABLE_REMAPPED_ROWS = "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS"
PCIE_LINK_GEN = "DCGM_FI_DEV_PCIE_LINK_GEN"
PCIE_LINK_WIDTH = "DCGM_FI_DEV_PCIE_LINK_WIDTH"
PCIE_MAX_LINK_GEN = "DCGM_FI_DEV_PCIE_MAX_LINK_GEN"
PCIE_MAX_LINK_WIDTH = "DCGM_FI_DEV_PCIE_MAX_LINK_WIDTH"
NVLINK_CRC_FLIT_ERRORS = "DCGM_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL"
NVLINK_CRC_DATA_ERRORS = "DCGM_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL"
NVLINK_REPLAY_ERRORS = "DCGM_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL"
NVLINK_RECOVERY_ERRORS = "DCGM_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL"
FABRIC_MANAGER_STATUS = "DCGM_FI_DEV_FABRIC_MANAGER_STATUS"
ROW_REMAP_PENDING = "DCGM_FI_DEV_ROW_REMAP_PENDING"
GPU_RECOVERY_ACTION = "DCGM_FI_DEV_GET_GPU_RECOVERY_ACTION"
NVLINK_BANDWIDTH_TOTAL = "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL"
CLOCKS_EVENT_REASONS = "DCGM_FI_DEV_CLOCKS_EVENT_REASONS"
# The name dcgm-exporter used before DCGM renamed "throttle" to "clocks event" (R535 / DCGM 3.2):
# same field, same bitmask; dashboards and rules of that generation query this one.
CLOCK_THROTTLE_REASONS = "DCGM_FI_DEV_CLOCK_THROTTLE_REASONS"
POWER_VIOLATION = "DCGM_FI_DEV_POWER_VIOLATION"
THERMAL_VIOLATION = "DCGM_FI_DEV_THERMAL_VIOLATION"
PROF_GR_ENGINE_ACTIVE = "DCGM_FI_PROF_GR_ENGINE_ACTIVE"
PROF_SM_ACTIVE = "DCGM_FI_PROF_SM_ACTIVE"
PROF_SM_OCCUPANCY = "DCGM_FI_PROF_SM_OCCUPANCY"
PROF_PIPE_TENSOR_ACTIVE = "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE"
PROF_DRAM_ACTIVE = "DCGM_FI_PROF_DRAM_ACTIVE"
PROF_PCIE_TX_BYTES = "DCGM_FI_PROF_PCIE_TX_BYTES"
PROF_PCIE_RX_BYTES = "DCGM_FI_PROF_PCIE_RX_BYTES"
PROF_NVLINK_TX_BYTES = "DCGM_FI_PROF_NVLINK_TX_BYTES"
PROF_NVLINK_RX_BYTES = "DCGM_FI_PROF_NVLINK_RX_BYTES"
MEMORY_TOTAL_BYTES = "jobsight_gpu_memory_total_bytes"
NVLINK_TX_BYTES = "jobsight_gpu_nvlink_transmitted_bytes"
NVLINK_RX_BYTES = "jobsight_gpu_nvlink_received_bytes"

# Clock-event (throttle) reason bits, as NVML's nvmlClocksEventReason* constants.
CLOCK_EVENT_BITS: dict[str, int] = {
    "gpu_idle": 0x1,
    "applications_clocks_setting": 0x2,
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sync_boost": 0x10,
    "sw_thermal_slowdown": 0x20,
    "hw_thermal_slowdown": 0x40,
    "hw_power_brake_slowdown": 0x80,
    "display_clock_setting": 0x100,
}

FIELDS: tuple[FieldSpec, ...] = (
    _g(GPU_UTIL, "GPU utilization (in %).", "percent 0-100", "nvmlDeviceGetUtilizationRates .gpu"),
    _g(MEM_COPY_UTIL, "Memory utilization (in %).", "percent 0-100", "nvmlDeviceGetUtilizationRates .memory"),
    _g(ENC_UTIL, "Encoder utilization (in %).", "percent 0-100", "nvmlDeviceGetEncoderUtilization"),
    _g(DEC_UTIL, "Decoder utilization (in %).", "percent 0-100", "nvmlDeviceGetDecoderUtilization"),
    _g(SM_CLOCK, "SM clock frequency (in MHz).", "MHz", "nvmlDeviceGetClockInfo(NVML_CLOCK_SM)"),
    _g(MEM_CLOCK, "Memory clock frequency (in MHz).", "MHz", "nvmlDeviceGetClockInfo(NVML_CLOCK_MEM)"),
    _g(GPU_TEMP, "GPU temperature (in C).", "Celsius", "nvmlDeviceGetTemperature(NVML_TEMPERATURE_GPU)"),
    _g(MEMORY_TEMP, "Memory temperature (in C).", "Celsius", "field NVML_FI_DEV_MEMORY_TEMP (82)"),
    _g(POWER_USAGE, "Power draw (in W).", "W", "nvmlDeviceGetPowerUsage (mW) / 1000"),
    _c(TOTAL_ENERGY, "Total energy consumption since boot (in mJ).", "mJ",
       "field NVML_FI_DEV_TOTAL_ENERGY_CONSUMPTION (83)"),
    _g(FB_FREE, "Framebuffer memory free (in MiB).", "MiB", "nvmlDeviceGetMemoryInfo v2 .free"),
    _g(FB_USED, "Framebuffer memory used (in MiB).", "MiB", "nvmlDeviceGetMemoryInfo v2 .used"),
    _g(FB_RESERVED, "Framebuffer memory reserved (in MiB).", "MiB", "nvmlDeviceGetMemoryInfo v2 .reserved"),
    _c(PCIE_REPLAY, "Total number of PCIe retries.", "count", "field NVML_FI_DEV_PCIE_REPLAY_COUNTER (94)"),
    _c(ECC_SBE_VOL, "Total number of single-bit volatile ECC errors.", "count",
       "field NVML_FI_DEV_ECC_SBE_VOL_TOTAL (3)"),
    _c(ECC_DBE_VOL, "Total number of double-bit volatile ECC errors.", "count",
       "field NVML_FI_DEV_ECC_DBE_VOL_TOTAL (4)"),
    _c(ECC_SBE_AGG, "Total number of single-bit persistent ECC errors.", "count",
       "field NVML_FI_DEV_ECC_SBE_AGG_TOTAL (5)"),
    _c(ECC_DBE_AGG, "Total number of double-bit persistent ECC errors.", "count",
       "field NVML_FI_DEV_ECC_DBE_AGG_TOTAL (6)"),
    _g(ROW_REMAP_FAILURE, "Whether remapping of rows has failed", "0/1",
       "field NVML_FI_DEV_REMAPPED_FAILURE (145)"),
    _c(CORRECTABLE_REMAPPED_ROWS, "Number of remapped rows for correctable errors", "count",
       "field NVML_FI_DEV_REMAPPED_COR (142)"),
    _c(UNCORRECTABLE_REMAPPED_ROWS, "Number of remapped rows for uncorrectable errors", "count",
       "field NVML_FI_DEV_REMAPPED_UNC (143)"),
    _g(PCIE_LINK_GEN, "PCIe current link generation.", "generation", "nvmlDeviceGetCurrPcieLinkGeneration"),
    _g(PCIE_LINK_WIDTH, "PCIe current link width.", "lanes", "nvmlDeviceGetCurrPcieLinkWidth"),
    _g(PCIE_MAX_LINK_GEN, "PCIe maximum link generation (of the GPU and the slot).", "generation",
       "nvmlDeviceGetMaxPcieLinkGeneration"),
    _g(PCIE_MAX_LINK_WIDTH, "PCIe maximum link width (of the GPU and the slot).", "lanes",
       "nvmlDeviceGetMaxPcieLinkWidth"),
    _c(NVLINK_CRC_FLIT_ERRORS, "Total number of NVLink flow-control CRC errors.", "count",
       "field NVML_FI_DEV_NVLINK_CRC_FLIT_ERROR_COUNT_TOTAL (38)"),
    _c(NVLINK_CRC_DATA_ERRORS, "Total number of NVLink data CRC errors.", "count",
       "field NVML_FI_DEV_NVLINK_CRC_DATA_ERROR_COUNT_TOTAL (45)"),
    _c(NVLINK_REPLAY_ERRORS, "Total number of NVLink retries.", "count",
       "field NVML_FI_DEV_NVLINK_REPLAY_ERROR_COUNT_TOTAL (52)"),
    _c(NVLINK_RECOVERY_ERRORS, "Total number of NVLink recovery errors.", "count",
       "field NVML_FI_DEV_NVLINK_RECOVERY_ERROR_COUNT_TOTAL (59)"),
    _g(FABRIC_MANAGER_STATUS, "Fabric manager status of the GPU: 0 not supported, 1 not started, "
       "2 in progress, 3 success, 4 failure.", "enum",
       "nvmlDeviceGetGpuFabricInfo state (and status when completed), mapped as DCGM does"),
    _g(ROW_REMAP_PENDING, "Whether a row remapping is pending (a GPU reset applies it)", "0/1",
       "field NVML_FI_DEV_REMAPPED_PENDING (144), nvmlDeviceGetRemappedRows isPending"),
    _g(GPU_RECOVERY_ACTION, "Recovery action the driver asks for: 0 none, 1 GPU reset, 2 node reboot, "
       "3 drain P2P, 4 drain and reset, 5 recover IMEX domain, 6 bus reset, 7 system reboot.", "enum",
       "field NVML_FI_DEV_GET_GPU_RECOVERY_ACTION (230), R565+"),
    # DCGM publishes a rate here (DcgmCacheManager ReadAndCacheNvLinkBandwidth), although
    # dcgm-exporter's CSV declares it a counter: a gauge, so nobody takes rate() of a rate.
    _g(NVLINK_BANDWIDTH_TOTAL, "Total number of NVLink bandwidth counters for all lanes.", "MB/s",
       "per-second change of fields NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX + _RX (138+139, KiB, all links) "
       "/ 1000, as DCGM computes it"),
    _g(CLOCKS_EVENT_REASONS, "Current clock event (throttle) reasons bitmask.", "bitmask",
       "nvmlDeviceGetCurrentClocksEventReasons, else nvmlDeviceGetCurrentClocksThrottleReasons (< R535)"),
    _g(CLOCK_THROTTLE_REASONS, "Current clock throttle reasons bitmask (the pre-R535 name of "
       "DCGM_FI_DEV_CLOCKS_EVENT_REASONS).", "bitmask", "same value as DCGM_FI_DEV_CLOCKS_EVENT_REASONS"),
    _c(POWER_VIOLATION, "Throttling duration due to power constraints (in ns).", "ns",
       "field NVML_FI_DEV_PERF_POLICY_POWER (74)"),
    _c(THERMAL_VIOLATION, "Throttling duration due to thermal constraints (in ns).", "ns",
       "field NVML_FI_DEV_PERF_POLICY_THERMAL (75)"),
    _g(PROF_GR_ENGINE_ACTIVE, "Ratio of time the graphics engine is active.", "ratio 0-1",
       "GPM NVML_GPM_METRIC_GRAPHICS_UTIL / 100"),
    _g(PROF_SM_ACTIVE, "The ratio of cycles an SM has at least 1 warp assigned.", "ratio 0-1",
       "GPM NVML_GPM_METRIC_SM_UTIL / 100"),
    _g(PROF_SM_OCCUPANCY, "The ratio of number of warps resident on an SM.", "ratio 0-1",
       "GPM NVML_GPM_METRIC_SM_OCCUPANCY / 100"),
    _g(PROF_PIPE_TENSOR_ACTIVE, "Ratio of cycles the tensor (HMMA) pipe is active.", "ratio 0-1",
       "GPM NVML_GPM_METRIC_ANY_TENSOR_UTIL / 100"),
    _g(PROF_DRAM_ACTIVE, "Ratio of cycles the device memory interface is active sending or receiving data.",
       "ratio 0-1", "GPM NVML_GPM_METRIC_DRAM_BW_UTIL / 100"),
    _g(PROF_PCIE_TX_BYTES, "The rate of data transmitted over the PCIe bus in bytes per second.", "bytes/s",
       "GPM NVML_GPM_METRIC_PCIE_TX_PER_SEC (MiB/s) * 2^20"),
    _g(PROF_PCIE_RX_BYTES, "The rate of data received over the PCIe bus in bytes per second.", "bytes/s",
       "GPM NVML_GPM_METRIC_PCIE_RX_PER_SEC (MiB/s) * 2^20"),
    _g(PROF_NVLINK_TX_BYTES, "The rate of data transmitted over NVLink in bytes per second.", "bytes/s",
       "GPM NVML_GPM_METRIC_NVLINK_TOTAL_TX_PER_SEC (MiB/s) * 2^20"),
    _g(PROF_NVLINK_RX_BYTES, "The rate of data received over NVLink in bytes per second.", "bytes/s",
       "GPM NVML_GPM_METRIC_NVLINK_TOTAL_RX_PER_SEC (MiB/s) * 2^20"),
    _g(MEMORY_TOTAL_BYTES, "jobsight: total framebuffer memory of the GPU.", "bytes",
       "nvmlDeviceGetMemoryInfo v2 .total"),
    _own_counter(NVLINK_TX_BYTES, "jobsight: data transmitted over all NVLink links of the GPU.", "bytes",
                 "field NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_TX (138, KiB, all links) * 1024"),
    _own_counter(NVLINK_RX_BYTES, "jobsight: data received over all NVLink links of the GPU.", "bytes",
                 "field NVML_FI_DEV_NVLINK_THROUGHPUT_DATA_RX (139, KiB, all links) * 1024"),
)

FIELDS_BY_NAME: dict[str, FieldSpec] = {spec.name: spec for spec in FIELDS}

PROFILING_FIELDS: tuple[str, ...] = tuple(s.name for s in FIELDS if s.name.startswith("DCGM_FI_PROF_"))
