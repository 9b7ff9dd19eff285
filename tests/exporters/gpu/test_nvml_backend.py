"""The NVML backend driven by a fake pynvml that raises the real NVMLError classes."""

from __future__ import annotations

import pynvml
import pytest

from exporters.gpu import fields as f
from exporters.gpu.model import XidEvent
from exporters.gpu.nvml import NvmlBackend
from jobsight.errors import BackendUnavailable, DeviceLost
from tests.exporters.gpu.fake_nvml import GIB, MIB, FakeNvml, two_gpus
from tests.support import nvml_loads


def open_backend(fake: FakeNvml) -> NvmlBackend:
    backend = NvmlBackend(nvml=fake)
    backend.open()
    return backend


def test_identity_and_info_come_from_nvml() -> None:
    backend = open_backend(FakeNvml(two_gpus()))
    idents = backend.devices()
    assert [(i.index, i.uuid, i.pci_bus_id, i.device) for i in idents] == [
        (0, "GPU-00000000-1111-2222-3333-444444444444", "00000000:18:00.0", "nvidia0"),
        (1, "GPU-55555555-6666-7777-8888-999999999999", "00000000:2A:00.0", "nvidia1"),
    ]
    assert idents[0].model_name == "NVIDIA H100 80GB HBM3"
    info = backend.info()
    assert (info.backend, info.driver_version, info.cuda_version) == ("nvml", "570.133.20", "12.8")


def test_read_converts_units_to_dcgm() -> None:
    fake = FakeNvml(two_gpus())
    backend = open_backend(fake)
    values = backend.read(0).values
    assert values[f.GPU_UTIL] == 87
    assert values[f.MEM_COPY_UTIL] == 40
    assert values[f.ENC_UTIL] == 3 and values[f.DEC_UTIL] == 4
    assert values[f.SM_CLOCK] == 1980 and values[f.MEM_CLOCK] == 2619
    assert values[f.POWER_USAGE] == pytest.approx(612.345)  # mW -> W
    assert values[f.FB_USED] == 60 * 1024  # bytes -> MiB
    assert values[f.FB_RESERVED] == 529
    assert values[f.FB_FREE] == 80 * 1024 - 60 * 1024 - 529
    assert values[f.MEMORY_TOTAL_BYTES] == 80 * GIB
    assert values[f.CLOCKS_EVENT_REASONS] == 0x4
    assert values[f.MEMORY_TEMP] == 70
    assert values[f.TOTAL_ENERGY] == 123_456_789
    assert values[f.ECC_DBE_VOL] == 1 and values[f.ECC_SBE_AGG] == 50
    assert values[f.UNCORRECTABLE_REMAPPED_ROWS] == 1 and values[f.ROW_REMAP_FAILURE] == 0
    assert values[f.POWER_VIOLATION] == 1_000_000 and values[f.THERMAL_VIOLATION] == 2_000_000
    assert f.NVLINK_BANDWIDTH_TOTAL not in values  # a rate: nothing to compare with yet
    assert values[f.NVLINK_TX_BYTES] == 1000 * 1024 and values[f.NVLINK_RX_BYTES] == 3000 * 1024
    assert values[f.ROW_REMAP_PENDING] == 0 and values[f.GPU_RECOVERY_ACTION] == 0
    assert values[f.CLOCK_THROTTLE_REASONS] == 0x4
    # One batched field-values call per read, not one call per field.
    assert fake.calls["nvmlDeviceGetFieldValues"] == 1


def test_gpm_needs_two_samples_and_scales_to_dcgm_units() -> None:
    fake = FakeNvml(two_gpus())
    backend = open_backend(fake)
    first = backend.read(0).values
    assert f.PROF_SM_ACTIVE not in first  # nothing to compare with yet: absent, not 0
    second = backend.read(0).values
    assert second[f.PROF_GR_ENGINE_ACTIVE] == pytest.approx(0.90)
    assert second[f.PROF_PIPE_TENSOR_ACTIVE] == pytest.approx(0.50)
    assert second[f.PROF_PCIE_TX_BYTES] == pytest.approx(1000 * MIB)
    assert second[f.PROF_NVLINK_RX_BYTES] == pytest.approx(3000 * MIB)
    assert fake.gpm_samples_live == 1  # the previous sample is freed, the newest kept
    backend.close()
    assert fake.gpm_samples_live == 0


def test_device_without_gpm_has_no_profiling_fields() -> None:
    devices = two_gpus()
    devices[1].gpm = None
    backend = open_backend(FakeNvml(devices))
    for _ in range(2):
        values = backend.read(1).values
    assert not [name for name in values if name.startswith("DCGM_FI_PROF_")]
    assert f.GPU_UTIL in values


def test_not_supported_is_absent_and_not_asked_again() -> None:
    devices = two_gpus()
    devices[0].unsupported.add("nvmlDeviceGetEncoderUtilization")
    del devices[0].fields[82]  # memory temperature: NOT_SUPPORTED in the field batch
    fake = FakeNvml(devices)
    backend = open_backend(fake)
    for _ in range(3):
        reading = backend.read(0)
        assert f.ENC_UTIL not in reading.values
        assert f.MEMORY_TEMP not in reading.values
        assert f.DEC_UTIL in reading.values
        assert reading.errors == ()  # unsupported is a fact, not an error
    assert fake.calls["nvmlDeviceGetEncoderUtilization"] == 1
    # The unsupported field is dropped from later batches.
    requested_first = 20
    assert fake.calls["fields_requested"] == requested_first + 2 * (requested_first - 1)
    # The other GPU still has both.
    assert f.ENC_UTIL in backend.read(1).values


def test_other_error_drops_the_value_and_counts_it() -> None:
    devices = two_gpus()
    devices[0].failing["nvmlDeviceGetPowerUsage"] = pynvml.NVMLError_NoPermission
    devices[0].field_errors[83] = pynvml.NVML_ERROR_NO_PERMISSION
    backend = open_backend(FakeNvml(devices))
    reading = backend.read(0)
    assert f.POWER_USAGE not in reading.values
    assert f.TOTAL_ENERGY not in reading.values
    assert reading.errors == ("nvml_error", "nvml_error")
    assert f.GPU_UTIL in reading.values


def test_gpu_lost_mid_run_and_back() -> None:
    devices = two_gpus()
    fake = FakeNvml(devices)
    backend = open_backend(fake)
    assert backend.read(0).values[f.GPU_UTIL] == 87
    devices[0].lost = True
    with pytest.raises(DeviceLost, match="GPU 0"):
        backend.read(0)
    # The other GPU is unaffected.
    assert backend.read(1).values[f.GPU_UTIL] == 87
    # Still lost: the handle is fetched again and that fails too.
    before = fake.calls["nvmlDeviceGetHandleByIndex"]
    with pytest.raises(DeviceLost):
        backend.read(0)
    assert fake.calls["nvmlDeviceGetHandleByIndex"] == before + 1
    devices[0].lost = False
    devices[0].util_gpu = 12
    assert backend.read(0).values[f.GPU_UTIL] == 12


def test_lost_in_the_field_batch_marks_the_gpu_down() -> None:
    devices = two_gpus()
    devices[1].field_errors[94] = pynvml.NVML_ERROR_GPU_IS_LOST
    backend = open_backend(FakeNvml(devices))
    with pytest.raises(DeviceLost):
        backend.read(1)


def test_unknown_error_marks_the_gpu_down() -> None:
    devices = two_gpus()
    devices[0].failing["nvmlDeviceGetUtilizationRates"] = pynvml.NVMLError_Unknown
    backend = open_backend(FakeNvml(devices))
    with pytest.raises(DeviceLost):
        backend.read(0)


def test_gpu_lost_at_start_is_listed_with_its_index() -> None:
    devices = two_gpus()
    devices[1].lost = True
    fake = FakeNvml(devices)
    backend = open_backend(fake)
    idents = backend.devices()
    assert [i.index for i in idents] == [0, 1]
    assert idents[1].uuid == ""
    with pytest.raises(DeviceLost):
        backend.read(1)
    assert fake.registered == [0]
    devices[1].lost = False
    reading = backend.read(1)
    assert f.GPU_UTIL in reading.values
    # Identified now: the reading carries the identity, and XID events are registered for it.
    assert reading.identity is not None and reading.identity.uuid == devices[1].uuid
    assert backend.devices()[1].pci_bus_id == "00000000:2A:00.0"
    assert fake.registered == [0, 1]
    assert backend.read(1).identity is None  # only once


def test_processes_are_read_with_their_memory() -> None:
    devices = two_gpus()
    devices[0].processes = [(100, 30 * GIB), (200, None)]
    backend = open_backend(FakeNvml(devices))
    procs = backend.read(0).processes
    assert [(p.pid, p.used_bytes, p.job_id) for p in procs] == [(100, 30 * GIB, None), (200, None, None)]


def test_xid_events_are_mapped_to_the_gpu_index() -> None:
    fake = FakeNvml(two_gpus())
    backend = open_backend(fake)
    assert sorted(fake.registered) == [0, 1]
    assert len(fake.event_sets) == 2  # one event set per GPU
    assert backend.wait_xid_events(0, 0.0) == []
    fake.xid_queue.extend([(1, 79), (0, 13), (1, 79)])
    assert backend.wait_xid_events(1, 0.1) == [XidEvent(1, 79), XidEvent(1, 79)]
    assert backend.wait_xid_events(0, 0.1) == [XidEvent(0, 13)]
    backend.close()
    assert fake.event_set_freed


def test_no_read_after_close() -> None:
    fake = FakeNvml(two_gpus())
    backend = open_backend(fake)
    backend.close()
    assert not fake.initialised
    with pytest.raises(DeviceLost, match="closed"):
        backend.read(0)
    assert fake.calls["nvmlInit"] == 1


def test_init_is_lazy_and_done_once() -> None:
    fake = FakeNvml(two_gpus())
    backend = NvmlBackend(nvml=fake)
    assert fake.calls["nvmlInit"] == 0
    backend.read(0)
    backend.devices()
    backend.open()
    assert fake.calls["nvmlInit"] == 1


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (pynvml.NVMLError_LibraryNotFound, "libnvidia-ml.so.1"),
        (pynvml.NVMLError_DriverNotLoaded, "driver is not loaded"),
        (pynvml.NVMLError_LibRmVersionMismatch, "different versions"),
        (pynvml.NVMLError_Unknown, "initialisation failed"),
    ],
)
def test_unusable_nvml_is_backend_unavailable(error: type[Exception], expected: str) -> None:
    backend = NvmlBackend(nvml=FakeNvml(two_gpus(), init_error=error()))
    with pytest.raises(BackendUnavailable, match=expected) as info:
        backend.open()
    assert "\n" not in str(info.value)  # one clear line


@pytest.mark.skipif(nvml_loads(), reason="NVML works on this machine")
def test_real_pynvml_without_a_driver_is_backend_unavailable() -> None:
    with pytest.raises(BackendUnavailable, match="--simulate"):
        NvmlBackend().open()
