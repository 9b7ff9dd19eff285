"""Waiting for the NVIDIA driver (issue 10, defect 6) and the labels dcgm-exporter users expect
(defect 8): the driver-version label, the host label's name, the opt-in ``hpc_job`` copies."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pynvml
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporters.gpu.attribution import JobAttributor
from exporters.gpu.collector import GpuCollector
from exporters.gpu.model import GpuBackend
from exporters.gpu.nvml import NvmlBackend
from exporters.gpu.sampler import Sampler
from exporters.gpu.waiting import DriverWait, Running
from exporters.gpu.xid import XidLedger
from jobsight.errors import BackendUnavailable
from jobsight.identity import JobMapDir, ProcessJobResolver
from tests.exporters.gpu.fake_nvml import FakeNvml, two_gpus
from tests.support import Proc, free_port, jobsight_command, nvml_loads, wait_for_http, wait_until

UUID0 = "GPU-00000000-1111-2222-3333-444444444444"


def families(registry: CollectorRegistry) -> dict[str, list[dict[str, str]]]:
    out: dict[str, list[dict[str, str]]] = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for sample in family.samples:
            out.setdefault(sample.name, []).append(dict(sample.labels))
    return out


def start_on(backend: GpuBackend, **collector_args: object) -> Running:
    ledger = XidLedger()
    attributor = JobAttributor(None, ProcessJobResolver("/nonexistent"), time.monotonic)
    sampler = Sampler(backend, attributor, ledger)
    for view in sampler.views():
        sampler.collect_once(view.identity.index)
    collector = GpuCollector(sampler, ledger, backend.info(), "node1", **collector_args)  # type: ignore[arg-type]
    return Running(collector, sampler.health, sampler.close)


# -- defect 6 ---------------------------------------------------------------------------------------

def test_waits_for_nvml_then_serves_the_gpus() -> None:
    fake = FakeNvml(two_gpus(), init_error=pynvml.NVMLError_DriverNotLoaded())
    backend = NvmlBackend(nvml=fake)
    with pytest.raises(BackendUnavailable) as first:
        backend.open()
    wait = DriverWait(backend, start_on, first.value, "node1", first_retry_s=0.01, max_retry_s=0.05)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(wait)
    try:
        assert registry.get_sample_value("jobsight_gpu_backend_up", {"Hostname": "node1"}) == 0
        assert not [name for name in families(registry) if name.startswith("DCGM_")]
        ok, message = wait.health()
        assert ok and "driver is not loaded" in message
        wait_until(lambda: fake.calls["nvmlInit"] >= 3, timeout=10, message="NVML tried again")
        assert not wait.running
        fake.init_error = None  # the driver is loaded now
        wait_until(lambda: wait.running, timeout=10, message="GPU collector started")
        assert registry.get_sample_value("jobsight_gpu_backend_up", {"Hostname": "node1"}) == 1
        utils = families(registry)["DCGM_FI_DEV_GPU_UTIL"]
        assert sorted(labels["gpu"] for labels in utils) == ["0", "1"]
    finally:
        wait.close()
    assert fake.init_count == 0  # closed: NVML shut down


def test_close_while_waiting_stops_the_retries() -> None:
    fake = FakeNvml(two_gpus(), init_error=pynvml.NVMLError_LibraryNotFound())
    backend = NvmlBackend(nvml=fake)
    wait = DriverWait(backend, start_on, BackendUnavailable("NVML: not found"), "node1", first_retry_s=0.01)
    wait_until(lambda: fake.calls["nvmlInit"] >= 1, timeout=10, message="a retry")
    wait.close()
    calls = fake.calls["nvmlInit"]
    fake.init_error = None
    # The retry thread is joined by close(): no later init can happen.
    assert fake.calls["nvmlInit"] == calls and not wait.running


@pytest.mark.skipif(nvml_loads(), reason="NVML works on this machine")
def test_exporter_waits_for_the_driver_when_asked(spawn: Callable[..., Proc]) -> None:
    port = free_port()
    proc = spawn(jobsight_command("exporter", "gpu", "--web.listen-address", f"127.0.0.1:{port}",
                                  "--wait-for-driver", "--hostname", "n1"), name="gpu-wait")
    wait_for_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert 'jobsight_gpu_backend_up{Hostname="n1"} 0.0' in text
    assert "NVML" in proc.output()
    assert proc.alive()
    assert proc.stop() == 0  # SIGTERM: a clean stop
    # (without --wait-for-driver the exporter still exits 3: test_cli_process.py)


# -- defect 8 ---------------------------------------------------------------------------------------

def test_dcgm_series_carry_the_driver_version_label_and_own_series_do_not() -> None:
    registry = CollectorRegistry(auto_describe=False)
    running = start_on(open_nvml())
    registry.register(running.collector)
    found = families(registry)
    for name in ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_XID_ERRORS"):
        assert {labels["DCGM_FI_DRIVER_VERSION"] for labels in found[name]} == {"570.133.20"}, name
    for name in ("jobsight_gpu_up", "jobsight_gpu_memory_total_bytes"):
        assert all("DCGM_FI_DRIVER_VERSION" not in labels for labels in found[name]), name
    assert set(found["DCGM_FI_DEV_GPU_UTIL"][0]) == {
        "gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname", "DCGM_FI_DRIVER_VERSION"}


def test_the_host_label_can_be_spelt_as_dcgm_exporter_4_8_3() -> None:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(start_on(open_nvml(), host_label="hostname").collector)
    text = generate_latest(registry).decode()
    assert 'hostname="node1"' in text and "Hostname=" not in text
    assert registry.get_sample_value("jobsight_gpu_backend_up", {"hostname": "node1"}) == 1
    with pytest.raises(ValueError, match="host label"):
        GpuCollector(Sampler(open_nvml(), JobAttributor(None, ProcessJobResolver("/x"), time.monotonic),
                             XidLedger()), XidLedger(), open_nvml().info(), "n", host_label="HOST")


def test_hpc_job_copies_are_opt_in(tmp_path: Path) -> None:
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "0").write_text("4711\n")
    backend = open_nvml()
    ledger = XidLedger()
    attributor = JobAttributor(JobMapDir(jobs), ProcessJobResolver("/nonexistent"), time.monotonic,
                               map_ttl_s=0)
    sampler = Sampler(backend, attributor, ledger)
    for index in (0, 1):
        sampler.collect_once(index)
    plain, opted = CollectorRegistry(auto_describe=False), CollectorRegistry(auto_describe=False)
    plain.register(GpuCollector(sampler, ledger, backend.info(), "node1"))
    opted.register(GpuCollector(sampler, ledger, backend.info(), "node1", hpc_job=True))
    assert "hpc_job" not in generate_latest(plain).decode()
    utils = families(opted)["DCGM_FI_DEV_GPU_UTIL"]
    assert sorted((labels["gpu"], labels.get("hpc_job")) for labels in utils) == [("0", "4711"), ("1", None)]
    # The join metric is there either way; jobsight_* series never get the copies.
    assert all("hpc_job" not in labels for labels in families(opted)["jobsight_gpu_up"])


def open_nvml() -> NvmlBackend:
    backend = NvmlBackend(nvml=FakeNvml(two_gpus()))
    backend.open()
    return backend
