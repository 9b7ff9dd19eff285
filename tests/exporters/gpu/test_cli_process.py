"""`jobsight exporter gpu` as a real process, scraped over HTTP."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from exporters.gpu.fields import FIELDS
from exporters.gpu.scenario import XidFault, load_scenario, write_scenario
from tests.exporters.gpu.test_collector import PROMTOOL_ALLOW
from tests.support import (
    FIXTURES,
    Proc,
    free_port,
    jobsight_command,
    nvml_loads,
    promtool_check_metrics,
    wait_for_http,
    wait_until,
)

SCENARIOS = FIXTURES / "gpu" / "scenarios"
Spawn = Callable[..., Proc]


def samples(text: str) -> list[Sample]:
    return [s for family in text_string_to_metric_families(text) for s in family.samples]


def by_name(text: str, name: str) -> list[Sample]:
    return [s for s in samples(text) if s.name == name]


def start(spawn: Spawn, *flags: str) -> tuple[Proc, str]:
    port = free_port()
    argv = jobsight_command("exporter", "gpu", "--web.listen-address", f"127.0.0.1:{port}",
                            "--collector.gpu.interval", "0.2", "--collector.gpu.stale-after", "5", *flags)
    proc = spawn(argv, name="gpu-exporter")
    base = f"http://127.0.0.1:{port}"
    wait_for_http(f"{base}/healthz", proc=proc)
    return proc, base


def scrape(base: str) -> str:
    response = httpx.get(f"{base}/metrics", timeout=10)
    assert response.status_code == 200
    return response.text


def test_simulate_8_serves_every_metric_for_8_gpus(spawn: Spawn) -> None:
    _, base = start(spawn, "--simulate", "8", "--hostname", "node1")
    text = scrape(base)
    for spec in FIELDS:
        series = by_name(text, f"{spec.name}_total" if spec.kind == "counter" else spec.name)
        assert sorted(s.labels["gpu"] for s in series) == [str(i) for i in range(8)], spec.name
    for name in ("jobsight_gpu_up", "jobsight_gpu_info", "DCGM_FI_DEV_XID_ERRORS", "jobsight_gpu_job_info"):
        assert len(by_name(text, name)) == 8, name
    assert {s.value for s in by_name(text, "jobsight_gpu_up")} == {1.0}
    first = by_name(text, "DCGM_FI_DEV_GPU_UTIL")[0]
    assert set(first.labels) == {"gpu", "UUID", "pci_bus_id", "device", "modelName", "Hostname",
                                 "DCGM_FI_DRIVER_VERSION"}
    assert first.labels["DCGM_FI_DRIVER_VERSION"] == "550.90.07"  # the scenario's driver
    assert first.labels["Hostname"] == "node1" and first.labels["device"] == "nvidia0"
    assert {s.labels["backend"] for s in by_name(text, "jobsight_gpu_info")} == {"simulated"}
    assert {s.labels["job_id"] for s in by_name(text, "jobsight_gpu_job_info")} == {"sim-1000", "sim-1001"}
    assert by_name(text, "jobsight_scrape_collector_success")[0].labels == {"collector": "gpu"}
    assert by_name(text, "jobsight_scrape_collector_success")[0].value == 1
    promtool_check_metrics(text, allow=PROMTOOL_ALLOW)
    health = httpx.get(f"{base}/healthz", timeout=5)
    assert health.status_code == 200 and "8/8 GPUs up" in health.text


def test_scenario_losing_one_gpu_keeps_serving_the_other_7(spawn: Spawn) -> None:
    _, base = start(spawn, "--scenario", str(SCENARIOS / "lost-gpu.yaml"))

    def with_xid() -> str | None:
        text = scrape(base)
        return text if "jobsight_gpu_xid_errors_total{" in text else None

    text = wait_until(with_xid, timeout=20, message="XID 79 counted")
    up = {s.labels["gpu"]: s.value for s in by_name(text, "jobsight_gpu_up")}
    assert up == {**{str(i): 1.0 for i in range(8)}, "5": 0.0}
    util_gpus = sorted(s.labels["gpu"] for s in by_name(text, "DCGM_FI_DEV_GPU_UTIL"))
    assert util_gpus == ["0", "1", "2", "3", "4", "6", "7"]
    assert {s.labels["Hostname"] for s in by_name(text, "jobsight_gpu_up")} == {"node1"}  # from the scenario
    xids = by_name(text, "jobsight_gpu_xid_errors_total")
    assert [(s.labels["gpu"], s.labels["xid"], s.value) for s in xids] == [("5", "79", 1.0)]
    # Still serving on the next scrape.
    assert len(by_name(scrape(base), "DCGM_FI_DEV_GPU_UTIL")) == 7


def test_xid_injected_at_runtime_by_rewriting_the_scenario(spawn: Spawn, tmp_path: Path) -> None:
    path = tmp_path / "node2.yaml"
    path.write_text("hostname: node2\ngpus: 8\n")
    _, base = start(spawn, "--scenario", str(path))
    assert by_name(scrape(base), "jobsight_gpu_xid_errors_total") == []

    write_scenario(path, load_scenario(path).with_faults(XidFault(gpu=3, xid=79)))

    def counted() -> list[Sample]:
        return by_name(scrape(base), "jobsight_gpu_xid_errors_total")

    xids = wait_until(counted, timeout=20, message="injected XID to be counted")
    assert [(s.labels["Hostname"], s.labels["gpu"], s.labels["xid"], s.value) for s in xids] == [
        ("node2", "3", "79", 1.0)
    ]
    last = {s.labels["gpu"]: s.value for s in by_name(scrape(base), "DCGM_FI_DEV_XID_ERRORS")}
    assert last["3"] == 79 and last["2"] == 0

    # A bad edit is reported and the exporter keeps the last good scenario.
    path.write_text("hostname: node2\ngpus: 8\nfaults: [{kind: xid, gpu: 42, xid: 79}]\n")
    wait_until(lambda: by_name(scrape(base), "jobsight_gpu_scenario_last_reload_ok")[0].value == 0,
               timeout=20, message="the bad edit to be noticed")
    assert len(by_name(scrape(base), "DCGM_FI_DEV_GPU_UTIL")) == 8


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--simulate", "0"], "--simulate: give 1-64 GPUs"),
        (["--scenario", str(SCENARIOS / "bad-field.yaml")], "unknown field 'DCGM_FI_DEV_NOT_A_FIELD'"),
        (["--scenario", "/nonexistent/scenario.yaml"], "cannot read config"),
        (["--simulate", "2", "--collector.gpu.interval", "0"], "--collector.gpu.interval"),
        (["--simulate", "2", "--web.listen-address", "nowhere"], "listen address 'nowhere'"),
        (["--simulate", "2", "--scenario", str(SCENARIOS / "lost-gpu.yaml")], "not allowed with argument"),
        (["--simulate", "two"], "invalid int value"),
    ],
)
def test_bad_flags_and_scenarios_exit_2(flags: list[str], message: str) -> None:
    result = subprocess.run(jobsight_command("exporter", "gpu", *flags), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr


@pytest.mark.skipif(nvml_loads(), reason="NVML works on this machine")
def test_no_nvml_exits_3_with_one_clear_line() -> None:
    port = free_port()
    result = subprocess.run(jobsight_command("exporter", "gpu", "--web.listen-address", f"127.0.0.1:{port}"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 3
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "NVML" in lines[0] and "--simulate" in lines[0], result.stderr


def test_help_lists_the_flags() -> None:
    result = subprocess.run(jobsight_command("exporter", "gpu", "--help"), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0
    for flag in ("--web.listen-address", "--simulate", "--scenario", "--job-map-dir", "--hostname",
                 "--path.procfs", "--collector.gpu.interval"):
        assert flag in result.stdout


def test_promtool_is_installed() -> None:
    assert shutil.which("promtool"), "make test installs prometheus (promtool)"


def test_real_prometheus_scrapes_and_joins_jobs(spawn: Spawn, tmp_path: Path) -> None:
    """Prometheus (which negotiates OpenMetrics) ingests every series, and the conventions'
    GPU → job join works on them."""
    prometheus = shutil.which("prometheus")
    assert prometheus, "make test installs prometheus"
    _, base = start(spawn, "--simulate", "8", "--hostname", "node1")
    prom_port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s}\n"
        "scrape_configs:\n"
        "  - job_name: gpu\n"
        "    honor_labels: true\n"
        f"    static_configs: [{{targets: ['{base.removeprefix('http://')}'], "
        "labels: {Hostname: node1}}]\n"
    )
    proc = spawn([prometheus, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
                  f"--web.listen-address=127.0.0.1:{prom_port}"], name="prometheus")
    api = f"http://127.0.0.1:{prom_port}"
    wait_for_http(f"{api}/-/ready", proc=proc)

    def query(expr: str) -> list[Any]:
        body = httpx.get(f"{api}/api/v1/query", params={"query": expr}, timeout=10).json()
        assert body["status"] == "success", body
        result: list[Any] = body["data"]["result"]
        return result

    wait_until(lambda: len(query("DCGM_FI_DEV_GPU_UTIL")) == 8, timeout=30,
               message="8 GPU series in Prometheus")
    assert query('up{job="gpu"}')[0]["value"][1] == "1"
    joined = query('DCGM_FI_DEV_GPU_UTIL * on(Hostname, gpu) group_left(job_id) '
                   'jobsight_gpu_job_info{job_id="sim-1000"}')
    assert sorted(r["metric"]["gpu"] for r in joined) == ["0", "1", "2", "3"]
    assert all(r["metric"]["job_id"] == "sim-1000" for r in joined)
    assert len(query("jobsight_gpu_up == 1")) == 8
    # rate() works on the untyped DCGM counters: busy GPUs use energy.
    wait_until(lambda: len(query("rate(DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION[1m]) > 0")) == 8, timeout=30,
               message="an energy rate for 8 GPUs")
    meta = wait_until(lambda: (m := httpx.get(f"{api}/api/v1/metadata", timeout=10).json()["data"])
                      and "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION" in m and m, timeout=30, message="metadata")
    assert meta["DCGM_FI_DEV_GPU_UTIL"][0]["type"] == "gauge"
    assert meta["DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION"][0]["type"] == "unknown"


def test_port_in_use_exits_2() -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        argv = jobsight_command("exporter", "gpu", "--simulate", "2", "--web.listen-address",
                                f"127.0.0.1:{port}")
        result = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
