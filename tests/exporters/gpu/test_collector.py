"""Sampler + collector: the exposition a scrape sees, job identity against fixture trees, a lost
GPU, a hung NVML call, XIDs, and promtool."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from exporters.gpu.attribution import JobAttributor
from exporters.gpu.collector import GpuCollector, PodLabelsSource
from exporters.gpu.model import BackendInfo, DeviceReading, GpuBackend, GpuIdentity, XidEvent
from exporters.gpu.nvml import NvmlBackend
from exporters.gpu.sampler import Sampler
from exporters.gpu.scenario import FixedScenario, GpuLostFault, XidFault, default_scenario
from exporters.gpu.simulated import SimulatedBackend
from exporters.gpu.xid import XidLedger
from jobsight.identity import JobMapDir, ProcessJobResolver
from tests.exporters.gpu.fake_nvml import GIB, FakeNvml, two_gpus
from tests.support import FIXTURES, promtool_check_metrics, wait_until

GPU_FIXTURES = FIXTURES / "gpu"
UUID0 = "GPU-00000000-1111-2222-3333-444444444444"
UUID1 = "GPU-55555555-6666-7777-8888-999999999999"
DRIVER = {"DCGM_FI_DRIVER_VERSION": "570.133.20"}  # on every DCGM series, as dcgm-exporter's default counters

# promtool lint findings allowed, and why: dcgm-exporter's label names are camelCase (`modelName`)
# and upper case (`UUID`, `Hostname`), which the dashboards and rules people already run select
# on; promtool's "label names should be written in 'snake_case'" would have us break them. And
# DCGM's own name DCGM_FI_DEV_PCIE_REPLAY_COUNTER contains the word "counter". Nothing else is
# allowed: DCGM counters are untyped (see exporters/gpu/fields.py), so the "counter metrics should
# have _total suffix" lint never fires.
PROMTOOL_ALLOW = (
    "label names should be written in 'snake_case' not 'camelCase'",
    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER metric name should not include type 'counter'",
)


@dataclass
class Parts:
    sampler: Sampler
    registry: CollectorRegistry
    ledger: XidLedger

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)

    def text(self) -> str:
        return generate_latest(self.registry).decode()


def build(backend: GpuBackend, job_map: Path | None = None, proc: Path = GPU_FIXTURES / "proc",
          stale_after_s: float = 10.0, interval_s: float = 1.0,
          pod_labels: PodLabelsSource | None = None) -> Parts:
    backend.open()
    ledger = XidLedger()
    # trust_environment: the fixture's PID 2101 names its job only in JOBSIGHT_JOB_ID.
    attributor = JobAttributor(JobMapDir(job_map) if job_map else None,
                               ProcessJobResolver(proc, trust_environment=True),
                               clock=time.monotonic, map_ttl_s=0.0)
    sampler = Sampler(backend, attributor, ledger, interval_s=interval_s, stale_after_s=stale_after_s)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(GpuCollector(sampler, ledger, backend.info(), "node1", pod_labels=pod_labels))
    return Parts(sampler, registry, ledger)


def read_all(parts: Parts) -> None:
    for view in parts.sampler.views():
        parts.sampler.collect_once(view.identity.index)


def test_nvml_values_carry_dcgm_labels() -> None:
    parts = build(NvmlBackend(nvml=FakeNvml(two_gpus())))
    read_all(parts)
    labels = {"gpu": "0", "UUID": UUID0, "pci_bus_id": "00000000:18:00.0", "device": "nvidia0",
              "modelName": "NVIDIA H100 80GB HBM3", "Hostname": "node1"}
    assert parts.value("DCGM_FI_DEV_GPU_UTIL", **labels, **DRIVER) == 87
    assert parts.value("DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION", **labels, **DRIVER) == 123_456_789
    assert parts.value("jobsight_gpu_up", **labels) == 1
    assert parts.value("jobsight_gpu_info", **labels, driver_version="570.133.20", cuda_version="12.8",
                       backend="nvml") == 1
    assert parts.value("DCGM_FI_DEV_XID_ERRORS", **labels, **DRIVER) == 0
    assert parts.value("jobsight_gpu_backend_up", Hostname="node1") == 1
    text = parts.text()
    assert "# TYPE DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION untyped" in text
    assert "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION_total" not in text
    assert "nan" not in text.lower()


def test_jobs_from_processes_resolved_through_proc() -> None:
    devices = two_gpus()
    # GPU 0: a process with JOBSIGHT_JOB_ID=train-42, one in Slurm job 4711, one with no job.
    devices[0].processes = [(2101, 10 * GIB), (2102, 20 * GIB), (2301, 1 * GIB)]
    # GPU 1: a Kubernetes pod's process whose memory NVML cannot tell.
    devices[1].processes = [(2201, None)]
    parts = build(NvmlBackend(nvml=FakeNvml(devices)))
    read_all(parts)
    job = {"Hostname": "node1", "gpu": "0", "UUID": UUID0}
    assert parts.value("jobsight_gpu_job_info", **job, job_id="train-42") == 1
    assert parts.value("jobsight_gpu_job_info", **job, job_id="4711") == 1
    assert parts.value("jobsight_gpu_job_memory_used_bytes", **job, job_id="train-42") == 10 * GIB
    assert parts.value("jobsight_gpu_job_memory_used_bytes", **job, job_id="4711") == 20 * GIB
    # GPU 1's process is in a pod's cgroup: the pod UID is never a job id, and no agent file names
    # the pod's training job here (docs/kubernetes.md), so the GPU holds no job.
    pod = "6f1c2a3b-4d5e-6f70-8192-a3b4c5d6e7f8"
    assert parts.value("jobsight_gpu_job_info", Hostname="node1", gpu="1", UUID=UUID1, job_id=pod) is None
    assert parts.text().count("jobsight_gpu_job_info{") == 2


def test_job_map_dir_wins_over_processes() -> None:
    devices = two_gpus()
    devices[0].processes = [(2101, 10 * GIB)]  # train-42 by its environment...
    devices[1].processes = [(2102, 5 * GIB), (2301, 1 * GIB)]
    parts = build(NvmlBackend(nvml=FakeNvml(devices)), job_map=GPU_FIXTURES / "jobmap")
    read_all(parts)
    # ...but GPU 0 has no map file, so the process decides; GPU 1's UUID file names job 9002
    # (it wins over the index file "1" naming 9001) and takes all the GPU's process memory.
    assert parts.value("jobsight_gpu_job_info", Hostname="node1", gpu="0", UUID=UUID0, job_id="train-42") == 1
    assert parts.value("jobsight_gpu_job_info", Hostname="node1", gpu="1", UUID=UUID1, job_id="9002") == 1
    assert parts.value("jobsight_gpu_job_memory_used_bytes", Hostname="node1", gpu="1", UUID=UUID1,
                       job_id="9002") == 6 * GIB
    assert "4711" not in parts.text()
    # The file with an invalid job id is counted, not published.
    assert parts.value("jobsight_gpu_collect_errors_total", Hostname="node1", gpu="", reason="job_map") == 2


def test_pod_labels_only_on_the_series_of_the_pods_job() -> None:
    # The kubelet says GPU 0's pod is team-a:llama's and GPU 1's pod is team-b:other's; the
    # sampler's last attribution (processes: train-42 and 4711 on GPU 0) is older than that read.
    # A pod's labels belong to its job: they go on that job's series only, never on another's.
    devices = two_gpus()
    devices[0].processes = [(2101, 10 * GIB), (2102, 20 * GIB)]
    pod = {"namespace": "team-a", "pod": "llama-worker-0", "container": "pytorch"}
    labels = {UUID0: ("train-42", pod), UUID1: ("team-b:other", {**pod, "namespace": "team-b"})}
    parts = build(NvmlBackend(nvml=FakeNvml(devices)), pod_labels=lambda: labels)
    read_all(parts)
    job = {"Hostname": "node1", "gpu": "0", "UUID": UUID0}
    assert parts.value("jobsight_gpu_job_info", **job, job_id="train-42", **pod) == 1
    assert parts.value("jobsight_gpu_job_info", **job, job_id="4711") == 1
    assert 'job_id="4711",namespace' not in parts.text()
    assert "team-b" not in parts.text()  # GPU 1 holds no job in the sampler's view: no series


def test_lost_gpu_is_down_and_the_other_keeps_serving() -> None:
    devices = two_gpus()
    parts = build(NvmlBackend(nvml=FakeNvml(devices)))
    read_all(parts)
    devices[1].lost = True
    read_all(parts)
    gpu1 = {"gpu": "1", "UUID": UUID1, "pci_bus_id": "00000000:2A:00.0", "device": "nvidia1",
            "modelName": "NVIDIA H100 80GB HBM3", "Hostname": "node1"}
    assert parts.value("jobsight_gpu_up", **gpu1) == 0
    assert parts.value("DCGM_FI_DEV_GPU_UTIL", **gpu1, **DRIVER) is None
    assert parts.value("jobsight_gpu_info", **gpu1, driver_version="570.133.20", cuda_version="12.8",
                       backend="nvml") == 1
    assert parts.value("jobsight_gpu_collect_errors_total", Hostname="node1", gpu="1", reason="gpu_lost") == 1
    assert parts.value("DCGM_FI_DEV_GPU_UTIL", **{**gpu1, "gpu": "0", "UUID": UUID0,
                       "pci_bus_id": "00000000:18:00.0", "device": "nvidia0"}, **DRIVER) == 87
    devices[1].lost = False
    read_all(parts)
    assert parts.value("jobsight_gpu_up", **gpu1) == 1
    assert parts.value("DCGM_FI_DEV_GPU_UTIL", **gpu1, **DRIVER) == 87


def test_xid_events_feed_the_counter_and_the_last_value_gauge() -> None:
    fake = FakeNvml(two_gpus())
    parts = build(NvmlBackend(nvml=fake))
    read_all(parts)
    fake.xid_queue.extend([(1, 79), (1, 48), (1, 79)])
    assert parts.sampler.poll_xids_once(1, 0.0) == 3
    labels = {"gpu": "1", "UUID": UUID1, "pci_bus_id": "00000000:2A:00.0", "device": "nvidia1",
              "modelName": "NVIDIA H100 80GB HBM3", "Hostname": "node1"}
    assert parts.value("jobsight_gpu_xid_errors_total", **labels, xid="79") == 2
    assert parts.value("jobsight_gpu_xid_errors_total", **labels, xid="48") == 1
    assert parts.value("DCGM_FI_DEV_XID_ERRORS", **labels, **DRIVER) == 79
    seen = parts.value("jobsight_gpu_xid_last_seen_timestamp_seconds", **labels, xid="48")
    assert seen is not None and abs(seen - time.time()) < 600
    # XID 79 is followed by the GPU falling off the bus: the XID series stay.
    fake.devices[1].lost = True
    read_all(parts)
    assert parts.value("jobsight_gpu_xid_errors_total", **labels, xid="79") == 2


class HangingBackend:
    """Wraps a backend; reads of ``hang_index`` block until released, like a wedged driver call."""

    def __init__(self, inner: GpuBackend, hang_index: int) -> None:
        self.inner = inner
        self.hang_index = hang_index
        self.hanging = threading.Event()
        self.release = threading.Event()

    def open(self) -> None:
        self.inner.open()

    def info(self) -> BackendInfo:
        return self.inner.info()

    def devices(self) -> list[GpuIdentity]:
        return self.inner.devices()

    def read(self, index: int) -> DeviceReading:
        if index == self.hang_index and self.hanging.is_set():
            self.release.wait(30)
        return self.inner.read(index)

    def wait_xid_events(self, index: int, timeout_s: float) -> list[XidEvent]:
        return self.inner.wait_xid_events(index, timeout_s)

    def close(self) -> None:
        self.release.set()
        self.inner.close()


@pytest.fixture
def hanging() -> Iterator[tuple[HangingBackend, Parts]]:
    backend = HangingBackend(NvmlBackend(nvml=FakeNvml(two_gpus())), hang_index=1)
    parts = build(backend, interval_s=0.05, stale_after_s=0.5)
    parts.sampler.start(wait_first_s=5)
    yield backend, parts
    parts.sampler.close()


def test_hung_call_on_one_gpu_does_not_hang_the_scrape(hanging: tuple[HangingBackend, Parts]) -> None:
    backend, parts = hanging
    labels = {"pci_bus_id": "00000000:2A:00.0", "modelName": "NVIDIA H100 80GB HBM3", "Hostname": "node1"}
    gpu0 = {**labels, "gpu": "0", "UUID": UUID0, "device": "nvidia0", "pci_bus_id": "00000000:18:00.0"}
    gpu1 = {**labels, "gpu": "1", "UUID": UUID1, "device": "nvidia1"}
    wait_until(lambda: parts.value("jobsight_gpu_up", **gpu1) == 1, timeout=10, message="GPU 1 up")
    backend.hanging.set()
    # Each scrape returns (it never calls the backend); after the staleness bound GPU 1 is down
    # while GPU 0 keeps fresh values.
    wait_until(lambda: parts.value("jobsight_gpu_up", **gpu1) == 0, timeout=10, message="GPU 1 stale")
    assert parts.value("jobsight_gpu_up", **gpu0) == 1
    assert parts.value("DCGM_FI_DEV_GPU_UTIL", **gpu1, **DRIVER) is None
    ok, message = parts.sampler.health()
    assert not ok and "GPU 1" in message
    backend.hanging.clear()
    backend.release.set()
    wait_until(lambda: parts.value("jobsight_gpu_up", **gpu1) == 1, timeout=10, message="GPU 1 back")
    assert parts.sampler.health()[0]


def test_gpu_lost_at_start_gets_its_labels_when_it_answers() -> None:
    devices = two_gpus()
    devices[1].lost = True
    parts = build(NvmlBackend(nvml=FakeNvml(devices)))
    read_all(parts)
    blank = {"gpu": "1", "UUID": "", "pci_bus_id": "", "device": "nvidia1", "modelName": "",
             "Hostname": "node1"}
    assert parts.value("jobsight_gpu_up", **blank) == 0
    devices[1].lost = False
    read_all(parts)
    named = {**blank, "UUID": UUID1, "pci_bus_id": "00000000:2A:00.0", "modelName": "NVIDIA H100 80GB HBM3"}
    assert parts.value("jobsight_gpu_up", **named) == 1
    assert parts.value("jobsight_gpu_up", **blank) is None


def test_no_up_series_before_the_first_read() -> None:
    parts = build(NvmlBackend(nvml=FakeNvml(two_gpus())))
    assert "jobsight_gpu_up{" not in parts.text()
    assert "jobsight_gpu_info{" in parts.text()


def test_simulated_exposition_passes_promtool() -> None:
    scenario = default_scenario(8).with_faults(XidFault(gpu=3, xid=79), GpuLostFault(gpu=5))
    parts = build(SimulatedBackend(FixedScenario(scenario), hostname="node1"))
    read_all(parts)
    parts.sampler.poll_xids_once(3, 0)
    text = parts.text()
    allowed = promtool_check_metrics(text, allow=PROMTOOL_ALLOW)
    assert allowed and all(any(word in line for word in PROMTOOL_ALLOW) for line in allowed)
    assert 'jobsight_gpu_xid_errors_total{' in text and 'xid="79"' in text
    assert parts.value("jobsight_gpu_info", gpu="0", UUID=parts.sampler.views()[0].identity.uuid,
                       pci_bus_id="00000000:18:00.0", device="nvidia0", modelName="NVIDIA H100 80GB HBM3",
                       Hostname="node1", driver_version="550.90.07", cuda_version="12.4",
                       backend="simulated") == 1
