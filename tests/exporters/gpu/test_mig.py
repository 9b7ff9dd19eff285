"""MIG instances broken out as dcgm-exporter does (issue 10, defect 9): per-instance memory and
GPM with ``GPU_I_ID``/``GPU_I_PROFILE``, jobs per instance from ``<index>.<gi>`` and ``MIG-…``
map files, and no permission error every second from a MIG parent's process list."""

from __future__ import annotations

import time
from pathlib import Path

import pynvml
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from exporters.gpu import fields as f
from exporters.gpu.attribution import JobAttributor
from exporters.gpu.collector import GpuCollector
from exporters.gpu.nvml import NvmlBackend
from exporters.gpu.sampler import Sampler
from exporters.gpu.xid import XidLedger
from jobsight.identity import JobMapDir, ProcessJobResolver
from tests.exporters.gpu.fake_nvml import GIB, FakeDevice, FakeMig, FakeNvml, two_gpus

UUID0 = "GPU-00000000-1111-2222-3333-444444444444"
MIG_A = "MIG-aaaaaaaa-1111-2222-3333-444444444444"
MIG_B = "MIG-bbbbbbbb-1111-2222-3333-444444444444"


class StepClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def mig_gpus() -> list[FakeDevice]:
    devices = two_gpus()
    devices[0].mig = [
        FakeMig(gi_id=1, uuid=MIG_A, profile="3g.40gb", total=40 * GIB, used=12 * GIB,
                processes=[(300, 11 * GIB)]),
        FakeMig(gi_id=2, uuid=MIG_B, profile="1g.10gb", total=10 * GIB, used=1 * GIB, gpm={1: 20.0}),
    ]
    return devices


def test_instances_are_read_with_their_own_memory_gpm_and_processes() -> None:
    fake = FakeNvml(mig_gpus())
    backend = NvmlBackend(nvml=fake, clock=StepClock())
    backend.open()
    first = backend.read(0)
    assert [(i.instance.gi_id, i.instance.profile, i.instance.uuid) for i in first.instances] == [
        (1, "3g.40gb", MIG_A), (2, "1g.10gb", MIG_B)]
    big = first.instances[0]
    assert big.values[f.FB_USED] == 12 * 1024 and big.values[f.MEMORY_TOTAL_BYTES] == 40 * GIB
    assert [(p.pid, p.used_bytes) for p in big.processes] == [(300, 11 * GIB)]
    # The MIG parent: no device utilisation (NVML: not supported on MIG), physical values kept.
    assert f.GPU_UTIL not in first.values and first.values[f.POWER_USAGE] > 0
    second = backend.read(0)
    assert second.instances[0].values[f.PROF_GR_ENGINE_ACTIVE] == pytest.approx(0.70)
    assert second.instances[1].values[f.PROF_GR_ENGINE_ACTIVE] == pytest.approx(0.20)
    assert second.errors == ()
    # Not a MIG GPU: no instances.
    assert backend.read(1).instances == ()
    backend.close()
    assert fake.gpm_samples_live == 0


def test_a_mig_parent_is_not_asked_for_its_processes() -> None:
    """Without root the parent's list answers NO_PERMISSION; its instances list their own."""
    fake = FakeNvml(mig_gpus(), root=False)
    backend = NvmlBackend(nvml=fake, clock=StepClock())
    backend.open()
    for _ in range(3):
        assert backend.read(0).errors == ()
    # Two instances, three reads: only the instances' own lists were asked for.
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses_v3"] == 2 * 3


def test_no_permission_is_counted_once_not_every_read() -> None:
    devices = two_gpus()
    devices[0].failing["nvmlDeviceGetComputeRunningProcesses_v3"] = pynvml.NVMLError_NoPermission
    fake = FakeNvml(devices)
    backend = NvmlBackend(nvml=fake)
    backend.open()
    errors = [backend.read(0).errors for _ in range(3)]
    assert errors == [("nvml_error",), (), ()]
    assert fake.calls["nvmlDeviceGetComputeRunningProcesses_v3"] == 1


def test_instances_are_looked_up_again_when_they_change() -> None:
    devices = mig_gpus()
    fake = FakeNvml(devices)
    clock = StepClock()
    backend = NvmlBackend(nvml=fake, clock=clock)
    backend.open()
    backend.read(0)
    backend.read(0)
    assert devices[0].mig is not None
    devices[0].mig = devices[0].mig[:1]  # nvidia-smi mig -dgi of instance 2
    clock.now += 61
    assert [i.instance.gi_id for i in backend.read(0).instances] == [1]
    assert fake.gpm_samples_live == 2  # the physical GPU's and instance 1's, not instance 2's


def collect(job_map: Path, hpc_job: bool = False) -> CollectorRegistry:
    fake = FakeNvml(mig_gpus())
    backend = NvmlBackend(nvml=fake, clock=StepClock())
    backend.open()
    ledger = XidLedger()
    attributor = JobAttributor(JobMapDir(job_map), ProcessJobResolver("/nonexistent"), time.monotonic,
                               map_ttl_s=0)
    sampler = Sampler(backend, attributor, ledger)
    for _ in range(2):
        for index in (0, 1):
            sampler.collect_once(index)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GpuCollector(sampler, ledger, backend.info(), "node1", hpc_job=hpc_job))
    return registry


def test_instance_series_and_jobs_carry_gpu_i_labels(tmp_path: Path) -> None:
    (tmp_path / "0.1").write_text("4711\n")  # dcgm-exporter's <gpu>.<gpu instance> name
    (tmp_path / MIG_B).write_text("4712 1000\n")  # jobstats' MIG-UUID name
    registry = collect(tmp_path)
    gpu0 = {"gpu": "0", "UUID": UUID0, "pci_bus_id": "00000000:18:00.0", "device": "nvidia0",
            "modelName": "NVIDIA H100 80GB HBM3", "Hostname": "node1"}
    big = {**gpu0, "GPU_I_PROFILE": "3g.40gb", "GPU_I_ID": "1"}
    small = {**gpu0, "GPU_I_PROFILE": "1g.10gb", "GPU_I_ID": "2"}
    driver = {"DCGM_FI_DRIVER_VERSION": "570.133.20"}
    assert registry.get_sample_value("DCGM_FI_DEV_FB_USED", {**big, **driver}) == 12 * 1024
    assert registry.get_sample_value("DCGM_FI_DEV_FB_USED", {**small, **driver}) == 1024
    engine = registry.get_sample_value("DCGM_FI_PROF_GR_ENGINE_ACTIVE", {**small, **driver})
    assert engine == pytest.approx(0.2)
    assert registry.get_sample_value("jobsight_gpu_memory_total_bytes", big) == 40 * GIB
    # Physical values stay on the GPU's own series, once (not repeated per instance).
    assert registry.get_sample_value("DCGM_FI_DEV_POWER_USAGE", {**gpu0, **driver}) is not None
    assert registry.get_sample_value("DCGM_FI_DEV_POWER_USAGE", {**big, **driver}) is None
    job = {"Hostname": "node1", "gpu": "0", "UUID": UUID0}
    assert registry.get_sample_value("jobsight_gpu_job_info", {
        **job, "GPU_I_PROFILE": "3g.40gb", "GPU_I_ID": "1", "job_id": "4711"}) == 1
    assert registry.get_sample_value("jobsight_gpu_job_info", {
        **job, "GPU_I_PROFILE": "1g.10gb", "GPU_I_ID": "2", "job_id": "4712"}) == 1
    assert registry.get_sample_value("jobsight_gpu_job_memory_used_bytes", {
        **job, "GPU_I_PROFILE": "3g.40gb", "GPU_I_ID": "1", "job_id": "4711"}) == 11 * GIB
    text = generate_latest(registry).decode()
    assert text.count("jobsight_gpu_job_info{") == 2  # no job on the parent or on GPU 1


def test_hpc_job_copies_per_instance(tmp_path: Path) -> None:
    (tmp_path / "0.2").write_text("4712\n")
    registry = collect(tmp_path, hpc_job=True)
    text = generate_latest(registry).decode()
    lines = [line for line in text.splitlines() if line.startswith("DCGM_FI_DEV_FB_USED{")]
    assert sum('hpc_job="4712"' in line for line in lines) == 1
    assert all('GPU_I_ID="2"' in line for line in lines if "hpc_job" in line)
