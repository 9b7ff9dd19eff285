"""Against real NVML on a GPU machine (skipped elsewhere by the `gpu` marker)."""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from exporters.gpu import fields as f
from exporters.gpu.attribution import JobAttributor
from exporters.gpu.collector import GpuCollector
from exporters.gpu.nvml import NvmlBackend
from exporters.gpu.sampler import Sampler
from exporters.gpu.xid import XidLedger
from jobsight.identity import ProcessJobResolver
from tests.exporters.gpu.test_collector import PROMTOOL_ALLOW
from tests.support import Proc, free_port, jobsight_command, promtool_check_metrics, wait_for_http

pytestmark = pytest.mark.gpu


def test_real_backend_reads_sane_values() -> None:
    backend = NvmlBackend()
    backend.open()
    try:
        idents = backend.devices()
        assert idents, "NVML reports no GPU"
        info = backend.info()
        assert info.backend == "nvml" and info.driver_version and info.cuda_version
        for ident in idents:
            assert ident.uuid.startswith(("GPU-", "MIG-")) and ident.pci_bus_id
            backend.read(ident.index)
            time.sleep(0.2)  # GPM needs two samples some time apart
            values = backend.read(ident.index).values
            assert 0 <= values[f.GPU_UTIL] <= 100
            assert 0 < values[f.POWER_USAGE] < 2000
            assert 0 < values[f.GPU_TEMP] < 120
            total_mib = values[f.MEMORY_TOTAL_BYTES] / 2**20
            assert total_mib > 1024
            used_free = values[f.FB_USED] + values[f.FB_FREE] + values.get(f.FB_RESERVED, 0)
            assert used_free == pytest.approx(total_mib, rel=0.02)
            assert values[f.SM_CLOCK] > 0
            for name in f.PROFILING_FIELDS:
                if name in values and "BYTES" not in name:
                    assert 0 <= values[name] <= 1, name
        assert backend.wait_xid_events(idents[0].index, 0.1) == []
    finally:
        backend.close()


def test_collector_on_real_backend_passes_promtool() -> None:
    backend = NvmlBackend()
    backend.open()
    ledger = XidLedger()
    sampler = Sampler(backend, JobAttributor(None, ProcessJobResolver("/proc"), time.monotonic), ledger,
                      interval_s=0.5, stale_after_s=10)
    sampler.start(wait_first_s=10)
    try:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(GpuCollector(sampler, ledger, backend.info(), "gpu-test"))
        text = generate_latest(registry).decode()
        promtool_check_metrics(text, allow=PROMTOOL_ALLOW)
        ups = [line for line in text.splitlines() if line.startswith("jobsight_gpu_up{")]
        assert ups and all(line.endswith(" 1.0") for line in ups), ups
        assert "DCGM_FI_DEV_GPU_UTIL{" in text and 'backend="nvml"' in text
    finally:
        sampler.close()


def test_exporter_process_on_real_nvml(spawn: Callable[..., Proc]) -> None:
    port = free_port()
    proc = spawn(jobsight_command("exporter", "gpu", "--web.listen-address", f"127.0.0.1:{port}"))
    wait_for_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    assert 'backend="nvml"' in text and "DCGM_FI_DEV_POWER_USAGE{" in text
