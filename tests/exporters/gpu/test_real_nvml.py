"""Against real NVML on a GPU machine (skipped elsewhere by the `gpu` marker).

Run by ``benchmarks/gpu_device_check.sh`` on a lent GPU machine: every value the exporter reads
is compared with ``nvidia-smi --query-gpu`` for the same GPU, and the exporter process serves for
60 s without a read error."""

from __future__ import annotations

import shutil
import subprocess
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
from tests.exporters.gpu.test_cli_process import by_name
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


# nvidia-smi field -> (our metric, tolerance as (absolute, relative)); values move between the two
# reads (utilisation, power and clocks follow the load), so each gets a tolerance of its own.
SMI_COMPARE = {
    "utilization.gpu": (f.GPU_UTIL, (25.0, 0.0)),
    "temperature.gpu": (f.GPU_TEMP, (3.0, 0.0)),
    "power.draw": (f.POWER_USAGE, (30.0, 0.15)),
    "clocks.sm": (f.SM_CLOCK, (300.0, 0.25)),
    "clocks.mem": (f.MEM_CLOCK, (200.0, 0.10)),
    "memory.total": ("total_mib", (2.0, 0.0)),
    "memory.used": (f.FB_USED, (512.0, 0.05)),
}


def _smi(index: int) -> dict[str, float | None]:
    fields = ",".join(SMI_COMPARE)
    argv = ["nvidia-smi", f"--query-gpu={fields}", "--format=csv,noheader,nounits", "-i", str(index)]
    out = subprocess.run(argv, check=True, capture_output=True, text=True, timeout=60).stdout.strip()
    values: dict[str, float | None] = {}
    for name, raw in zip(SMI_COMPARE, (part.strip() for part in out.split(",")), strict=True):
        try:
            values[name] = float(raw)
        except ValueError:  # "[N/A]", "[Not Supported]"
            values[name] = None
    return values


@pytest.mark.skipif(shutil.which("nvidia-smi") is None, reason="nvidia-smi is not installed")
def test_values_match_nvidia_smi() -> None:
    backend = NvmlBackend()
    backend.open()
    try:
        mismatches: list[str] = []
        for ident in backend.devices():
            if not ident.uuid:
                continue
            ours = dict(backend.read(ident.index).values)
            ours["total_mib"] = ours[f.MEMORY_TOTAL_BYTES] / 2**20
            theirs = _smi(ident.index)
            for smi_name, (metric, (absolute, relative)) in SMI_COMPARE.items():
                expected = theirs[smi_name]
                got = ours.get(metric)
                if expected is None:
                    continue  # nvidia-smi has no value either
                if got is None:
                    mismatches.append(f"GPU {ident.index}: {metric} absent, nvidia-smi {smi_name}={expected}")
                    continue
                if metric == f.FB_USED and abs(got + ours.get(f.FB_RESERVED, 0.0) - expected) <= absolute:
                    continue  # nvidia-smi counts reserved memory as used on some branches
                if abs(got - expected) > max(absolute, relative * abs(expected)):
                    mismatches.append(f"GPU {ident.index}: {metric}={got} vs nvidia-smi {smi_name}="
                                      f"{expected}")
        assert not mismatches, "\n".join(mismatches)
    finally:
        backend.close()


def test_exporter_serves_60_s_without_a_read_error(spawn: Callable[..., Proc]) -> None:
    port = free_port()
    proc = spawn(jobsight_command("exporter", "gpu", "--web.listen-address", f"127.0.0.1:{port}"),
                 name="gpu-exporter-soak")
    base = f"http://127.0.0.1:{port}"
    wait_for_http(f"{base}/healthz", proc=proc)
    deadline = time.monotonic() + 60
    scrapes = 0
    while time.monotonic() < deadline:
        text = httpx.get(f"{base}/metrics", timeout=10).text
        scrapes += 1
        ups = by_name(text, "jobsight_gpu_up")
        assert ups and all(s.value == 1 for s in ups), [(s.labels["gpu"], s.value) for s in ups]
        errors = [(s.labels["gpu"], s.labels["reason"], s.value)
                  for s in by_name(text, "jobsight_gpu_collect_errors_total")]
        assert not errors, errors
        assert proc.alive()
        time.sleep(2)  # pacing, not waiting for a condition: a scrape every 2 s for the minute
    assert scrapes >= 20
    assert proc.stop() == 0
