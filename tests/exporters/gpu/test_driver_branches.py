"""The NVML backend on drivers it has never seen: R470 and R535 branches, a version mismatch from
nvidia-ml-py's versioned wrappers, a lost GPU's event set, a driver reload, letting go of the GPUs
for a reset (issue 10, defects 1-5)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pynvml
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from exporters.gpu import fields as f
from exporters.gpu.attribution import JobAttributor
from exporters.gpu.cli import install_release_signal
from exporters.gpu.collector import GpuCollector
from exporters.gpu.model import XidEvent
from exporters.gpu.nvml import NvmlBackend
from exporters.gpu.sampler import Sampler
from exporters.gpu.xid import XidLedger
from jobsight.errors import DeviceLost
from jobsight.identity import ProcessJobResolver
from tests.exporters.gpu.fake_nvml import GIB, MIB, R470, R535, FakeNvml, two_gpus
from tests.support import wait_until


class StepClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def no_jobs() -> JobAttributor:
    return JobAttributor(None, ProcessJobResolver("/nonexistent"), time.monotonic)


def open_backend(fake: FakeNvml, clock: StepClock | None = None) -> NvmlBackend:
    backend = NvmlBackend(nvml=fake, clock=clock or StepClock())
    backend.open()
    return backend


# -- defect 1: a version mismatch or missing symbol drops one value, never the GPU ----------------

def test_r470_reads_every_gpu_with_the_v2_process_list() -> None:
    devices = two_gpus()
    devices[0].processes = [(100, 30 * GIB)]
    fake = FakeNvml(devices, profile=R470)
    backend = open_backend(fake)
    for _ in range(2):
        reading = backend.read(0)
        assert [(p.pid, p.used_bytes) for p in reading.processes] == [(100, 30 * GIB)]
        assert reading.values[f.GPU_UTIL] == 87
        assert reading.errors == ()
    # _v3 is missing on R470: asked once, then straight to _v2.
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses_v3"] == 0  # the symbol lookup fails first
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses_v2"] == 2
    # No memory info _v2 either: v1 (reserved counted as used), FB_RESERVED absent, not 0.
    assert f.FB_RESERVED not in reading.values
    assert reading.values[f.FB_USED] == (60 * GIB + 529 * MIB) / MIB
    # No GPM before R520: no profiling series, and no error.
    assert not [name for name in reading.values if name.startswith("DCGM_FI_PROF_")]
    # R470 knows no recovery-action field: absent.
    assert f.GPU_RECOVERY_ACTION not in reading.values
    assert (backend.info().driver_version, backend.info().cuda_version) == ("470.256.02", "11.4")


def test_r470_gpus_are_up_in_the_exposition() -> None:
    fake = FakeNvml(two_gpus(), profile=R470)
    backend = open_backend(fake)
    ledger = XidLedger()
    sampler = Sampler(backend, no_jobs(), ledger)
    for index in (0, 1):
        sampler.collect_once(index)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GpuCollector(sampler, ledger, backend.info(), "node1"))
    ups = [registry.get_sample_value("jobsight_gpu_up", {
        "gpu": str(v.identity.index), "UUID": v.identity.uuid, "pci_bus_id": v.identity.pci_bus_id,
        "device": v.identity.device, "modelName": v.identity.model_name, "Hostname": "node1"})
        for v in sampler.views()]
    assert ups == [1.0, 1.0]


def test_a_version_mismatch_on_any_call_drops_only_that_value() -> None:
    devices = two_gpus()
    devices[0].failing["nvmlDeviceGetPowerUsage"] = pynvml.NVMLLibraryMismatchError
    fake = FakeNvml(devices)
    backend = open_backend(fake)
    for _ in range(3):
        reading = backend.read(0)
        assert f.POWER_USAGE not in reading.values
        assert reading.values[f.GPU_UTIL] == 87
    assert fake.calls["nvmlDeviceGetPowerUsage"] == 1  # cached as unsupported
    assert f.POWER_USAGE in backend.read(1).values


def test_r535_has_everything_but_the_recovery_action() -> None:
    fake = FakeNvml(two_gpus(), profile=R535)
    backend = open_backend(fake)
    values = backend.read(0).values
    assert f.GPU_RECOVERY_ACTION not in values  # field 230 is R565+
    assert values[f.ROW_REMAP_PENDING] == 0
    assert values[f.FB_RESERVED] == 529
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses_v3"] == 1
    # The unknown field is dropped from later batches, not asked for every second.
    backend.read(0)
    assert fake.calls["fields_requested"] == 20 + 19


# -- defect 2: throttle reasons before R535, under both DCGM names --------------------------------

def test_throttle_reasons_fall_back_to_the_pre_r535_call() -> None:
    devices = two_gpus()
    devices[0].reasons = 0x40 | 0x4  # HW thermal slowdown + SW power cap
    fake = FakeNvml(devices, profile=R470)
    backend = open_backend(fake)
    values = backend.read(0).values
    assert values[f.CLOCKS_EVENT_REASONS] == 0x44
    assert values[f.CLOCK_THROTTLE_REASONS] == 0x44
    assert fake.calls["nvmlDeviceGetCurrentClocksThrottleReasons"] == 1
    backend.read(0)
    assert fake.calls["nvmlDeviceGetCurrentClocksThrottleReasons"] == 2
    assert fake.calls["nvmlDeviceGetCurrentClocksEventReasons"] == 0


def test_current_drivers_serve_the_old_throttle_name_too() -> None:
    fake = FakeNvml(two_gpus())
    values = open_backend(fake).read(1).values
    assert values[f.CLOCKS_EVENT_REASONS] == values[f.CLOCK_THROTTLE_REASONS] == 0x4
    assert fake.calls["nvmlDeviceGetCurrentClocksThrottleReasons"] == 0


# -- defect 3: DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL is DCGM's rate -----------------------------------

def test_nvlink_bandwidth_is_the_per_second_change_as_dcgm_computes_it() -> None:
    devices = two_gpus()
    clock = StepClock()
    backend = open_backend(FakeNvml(devices), clock)
    first = backend.read(0).values
    assert f.NVLINK_BANDWIDTH_TOTAL not in first  # nothing to compare with yet
    devices[0].fields[138] += 3_000_000  # KiB
    devices[0].fields[139] += 1_000_333
    clock.now += 2.0
    second = backend.read(0).values
    # (4_000_333 KiB / 2 s) / 1000, truncated as DCGM's int64 cast does.
    assert second[f.NVLINK_BANDWIDTH_TOTAL] == 2000
    assert second[f.NVLINK_TX_BYTES] == (1000 + 3_000_000) * 1024
    assert second[f.NVLINK_RX_BYTES] == (3000 + 1_000_333) * 1024
    clock.now += 1.0
    assert backend.read(0).values[f.NVLINK_BANDWIDTH_TOTAL] == 0  # no traffic since


def test_nvlink_rate_uses_the_fields_own_timestamps() -> None:
    devices = two_gpus()
    clock = StepClock()
    backend = open_backend(FakeNvml(devices), clock)
    devices[0].field_timestamp_us = 5_000_000_000
    backend.read(0)
    devices[0].field_timestamp_us += 4_000_000  # 4 s between the driver's samples
    devices[0].fields[138] += 8_000_000
    clock.now += 1.0  # the reader woke up 1 s later: not what the counters measured
    assert backend.read(0).values[f.NVLINK_BANDWIDTH_TOTAL] == 2000


def test_nvlink_counters_at_zero_are_a_zero_rate_and_a_reset_is_absent() -> None:
    devices = two_gpus()
    devices[0].fields[138] = devices[0].fields[139] = 0
    clock = StepClock()
    backend = open_backend(FakeNvml(devices), clock)
    assert backend.read(0).values[f.NVLINK_BANDWIDTH_TOTAL] == 0
    devices[0].fields[138] = 5000
    clock.now += 1
    assert backend.read(0).values[f.NVLINK_BANDWIDTH_TOTAL] == 5
    devices[0].fields[138] = 10  # driver reload: the counters restart
    clock.now += 1
    assert f.NVLINK_BANDWIDTH_TOTAL not in backend.read(0).values


# -- defect 4: one event set per GPU ---------------------------------------------------------------

def test_xids_of_healthy_gpus_are_counted_while_one_is_lost() -> None:
    devices = two_gpus()
    fake = FakeNvml(devices)
    backend = open_backend(fake)
    devices[1].lost = True
    fake.xid_queue.extend([(0, 13), (0, 31)])
    with pytest.raises(DeviceLost):
        backend.wait_xid_events(1, 0.0)
    assert backend.wait_xid_events(0, 0.0) == [XidEvent(0, 13), XidEvent(0, 31)]
    # The lost GPU's stream is not retried in a tight loop: nothing to wait on until it answers.
    assert backend.wait_xid_events(1, 0.0) == []
    with pytest.raises(DeviceLost):
        backend.read(1)
    devices[1].lost = False
    backend.read(1)  # answers again: a new event set is registered for it
    fake.xid_queue.append((1, 79))
    assert backend.wait_xid_events(1, 0.0) == [XidEvent(1, 79)]
    assert fake.registered == [0, 1, 1]


def test_the_sampler_keeps_counting_xids_of_the_survivors() -> None:
    devices = two_gpus()
    fake = FakeNvml(devices)
    backend = open_backend(fake)
    ledger = XidLedger()
    sampler = Sampler(backend, no_jobs(), ledger, interval_s=0.01)
    devices[1].lost = True
    fake.xid_queue.extend([(0, 48), (1, 79)])
    assert sampler.poll_xids_once(1, 0) == 0
    assert sampler.poll_xids_once(0, 0) == 1
    assert ledger.view().counts == {(0, 48): 1}
    assert "xid_events" not in sampler.views()[1].errors  # a lost GPU is counted by its reads


# -- defect 5: NVML initialised again; handles released ---------------------------------------------

def test_nvml_is_initialised_again_with_backoff_when_every_gpu_fails() -> None:
    devices = two_gpus()
    fake = FakeNvml(devices, profile=R535)
    clock = StepClock()
    backend = NvmlBackend(nvml=fake, clock=clock, reinit_first_s=5, reinit_max_s=20)
    backend.open()
    assert backend.read(0).values[f.GPU_UTIL] == 87
    fake.reload_driver()
    for index in (0, 1):
        with pytest.raises(DeviceLost):
            backend.read(index)
    clock.now += 4  # inside the backoff: no new init yet
    with pytest.raises(DeviceLost):
        backend.read(0)
    assert fake.calls["nvmlInit"] == 1
    clock.now += 1
    reading = backend.read(0)
    assert reading.values[f.GPU_UTIL] == 87
    assert fake.calls["nvmlInit"] == 2 and fake.calls["nvmlShutdown"] == 1
    assert fake.init_count == 1  # every init is matched by a shutdown
    assert backend.read(1).values[f.GPU_UTIL] == 87
    # XID events work again on the new NVML session.
    fake.xid_queue.append((1, 94))
    assert backend.wait_xid_events(1, 0) == [XidEvent(1, 94)]


def test_failed_reinit_backs_off_and_the_driver_version_is_read_again() -> None:
    devices = two_gpus()
    fake = FakeNvml(devices, profile=R535)
    clock = StepClock()
    backend = NvmlBackend(nvml=fake, clock=clock, reinit_first_s=5, reinit_max_s=20)
    backend.open()
    fake.reload_driver()
    fake.init_error = pynvml.NVMLError_DriverNotLoaded()
    for _ in range(2):
        with pytest.raises(DeviceLost):
            backend.read(0)
        with pytest.raises(DeviceLost):
            backend.read(1)
    inits: list[int] = []
    for step in (5, 5, 10, 20, 20):  # 5 s, then doubling up to the cap
        clock.now += step - 0.5
        with pytest.raises(DeviceLost):
            backend.read(0)
        before = fake.calls["nvmlInit"]
        clock.now += 0.5
        with pytest.raises(DeviceLost):
            backend.read(0)
        inits.append(fake.calls["nvmlInit"] - before)
    assert inits == [1, 1, 1, 1, 1]
    fake.init_error = None
    fake.profile = R470  # a driver of another branch was loaded
    clock.now += 20
    backend.read(0)
    assert backend.info().driver_version == "470.256.02"


def test_release_lets_go_of_the_gpus_and_comes_back_after_the_hold() -> None:
    fake = FakeNvml(two_gpus())
    clock = StepClock()
    backend = open_backend(fake, clock)
    backend.read(0)
    backend.read(0)  # a GPM sample is held
    backend.release(60)
    assert fake.init_count == 0 and not fake.initialised
    # The GPM sample is kept aside (another reader may still hold it) and freed at close.
    assert fake.gpm_samples_live == 1
    with pytest.raises(DeviceLost, match="released"):
        backend.read(0)
    assert backend.wait_xid_events(0, 0) == []
    clock.now += 60
    assert backend.read(0).values[f.GPU_UTIL] == 87
    assert fake.init_count == 1
    backend.close()
    assert fake.init_count == 0 and fake.gpm_samples_live == 0


def test_sigusr1_releases_nvml(tmp_path: Path) -> None:
    fake = FakeNvml(two_gpus())
    backend = open_backend(fake)
    restore = install_release_signal(backend, hold_s=30)
    try:
        os.kill(os.getpid(), signal.SIGUSR1)
        wait_until(lambda: fake.init_count == 0, timeout=10, message="NVML released")
    finally:
        restore()
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL
    with pytest.raises(DeviceLost, match="released"):
        backend.read(0)


def test_close_releases_handles_event_sets_and_nvml() -> None:
    fake = FakeNvml(two_gpus())
    backend = open_backend(fake)
    backend.read(0)
    backend.read(0)
    backend.close()
    assert fake.init_count == 0
    assert fake.event_set_freed and len(fake.event_sets) == 2
    assert fake.gpm_samples_live == 0


def test_the_driver_version_label_follows_a_driver_reload() -> None:
    fake = FakeNvml(two_gpus(), profile=R535)
    clock = StepClock()
    backend = NvmlBackend(nvml=fake, clock=clock, reinit_first_s=5)
    backend.open()
    ledger = XidLedger()
    sampler = Sampler(backend, no_jobs(), ledger)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GpuCollector(sampler, ledger, backend.info, "node1"))

    def driver_labels() -> set[str]:
        for index in (0, 1):
            sampler.collect_once(index)
        text = generate_latest(registry).decode()
        return {line.split('DCGM_FI_DRIVER_VERSION="')[1].split('"')[0]
                for line in text.splitlines() if line.startswith("DCGM_FI_DEV_GPU_UTIL{")}

    assert driver_labels() == {"535.230.02"}
    fake.reload_driver(R470)
    driver_labels()  # every GPU down: the backoff starts
    clock.now += 5
    assert driver_labels() == {"470.256.02"}


# -- what the alert rules read besides (GPUPcieLinkDegraded, GPUNVLinkErrors, GPUFabricManagerDown) --

@pytest.mark.parametrize(("fabric", "expected"), [((3, 0), 3), ((3, 999), 4), ((2, 0), 2), ((1, 0), 1),
                                                  ((0, 0), 0), (None, None)])
def test_fabric_manager_status_as_dcgm_maps_it(fabric: tuple[int, int] | None, expected: int | None) -> None:
    devices = two_gpus()
    devices[0].fabric = fabric
    values = open_backend(FakeNvml(devices)).read(0).values
    assert values.get(f.FABRIC_MANAGER_STATUS) == expected


def test_no_fabric_call_on_r470_is_absent_not_dcgms_nvml_too_old() -> None:
    values = open_backend(FakeNvml(two_gpus(), profile=R470)).read(0).values
    assert f.FABRIC_MANAGER_STATUS not in values


def test_pcie_link_and_nvlink_error_counters() -> None:
    devices = two_gpus()
    devices[1].pcie = (3, 8, 5, 16)  # trained at Gen3 x8 in a Gen5 x16 slot
    backend = open_backend(FakeNvml(devices))
    values = backend.read(1).values
    assert (values[f.PCIE_LINK_GEN], values[f.PCIE_LINK_WIDTH]) == (3, 8)
    assert (values[f.PCIE_MAX_LINK_GEN], values[f.PCIE_MAX_LINK_WIDTH]) == (5, 16)
    assert values[f.NVLINK_REPLAY_ERRORS] == 3 and values[f.NVLINK_RECOVERY_ERRORS] == 0
    del devices[0].fields[59]  # a GPU without the legacy NVLink counters: absent, not 0
    assert f.NVLINK_RECOVERY_ERRORS not in backend.read(0).values
