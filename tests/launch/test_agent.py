"""`jobsight agent`: the GPU, RDMA and node collectors of one host on one port, as a process."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.exporters.gpu.test_collector import PROMTOOL_ALLOW
from tests.support import (
    FIXTURES,
    Proc,
    free_port,
    jobsight_command,
    nvml_loads,
    promtool_check_metrics,
    wait_for_http,
)

RDMA_SYSFS = FIXTURES / "rdma" / "good" / "sys"


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_agent_serves_gpu_rdma_and_node_collectors_on_one_port(spawn: Callable[..., Proc]) -> None:
    port = free_port()
    proc = spawn(
        jobsight_command(
            "agent", "--web.listen-address", f"127.0.0.1:{port}", "--simulate", "4", "--hostname", "nodeA",
            "--path.sysfs", str(RDMA_SYSFS), "--no-collector.filesystem",
        ),
        name="agent",
    )
    wait_for_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
    text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
    samples = _samples(text)
    names = {name for name, _ in samples}
    gpus = {dict(labels)["gpu"] for name, labels in samples if name == "DCGM_FI_DEV_GPU_UTIL"}
    assert gpus == {"0", "1", "2", "3"}
    hosts = {dict(labels)["Hostname"] for name, labels in samples if name == "DCGM_FI_DEV_GPU_UTIL"}
    assert hosts == {"nodeA"}
    assert "node_infiniband_port_data_received_bytes_total" in names
    assert "node_cpu_seconds_total" in names
    # each exporter keeps its own self metrics
    assert samples[("jobsight_scrape_collector_success", (("collector", "gpu"),))] == 1.0
    assert samples[("jobsight_scrape_collector_success", (("collector", "rdma"),))] == 1.0
    assert samples[("node_scrape_collector_success", (("collector", "cpu"),))] == 1.0
    assert ("node_scrape_collector_success", (("collector", "filesystem"),)) not in samples
    promtool_check_metrics(text, allow=[*PROMTOOL_ALLOW, "node_memory_"])


def test_agent_publishes_the_configured_inventory(spawn: Callable[..., Proc]) -> None:
    """What the node should have, for GPUMissing and RDMALinkDegraded: 8 GPUs (4 enumerated) and
    400 Gb/s on the mlx5 ports (the fixture's mlx5_0 trained at 200), 100 Gb/s on hfi1_0."""
    port = free_port()
    proc = spawn(
        jobsight_command(
            "agent", "--web.listen-address", f"127.0.0.1:{port}", "--simulate", "4", "--hostname", "nodeA",
            "--path.sysfs", str(RDMA_SYSFS), "--no-collector.node", "--collector.gpu.expected-count", "8",
            "--collector.infiniband.expected-rate", "^mlx5_=400",
            "--collector.infiniband.expected-rate", "100",
        ),
        name="agent",
    )
    wait_for_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
    samples = _samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
    assert samples[("jobsight_node_expected_gpus", (("Hostname", "nodeA"),))] == 8.0
    expected = {dict(labels)["device"] + "/" + dict(labels)["port"]: value for (name, labels), value
                in samples.items() if name == "jobsight_rdma_port_expected_rate_bytes_per_second"}
    rates = {dict(labels)["device"] + "/" + dict(labels)["port"]: value for (name, labels), value
             in samples.items() if name == "node_infiniband_rate_bytes_per_second"}
    assert set(expected) == set(rates)  # every port, by the first rule matching its device
    assert expected["mlx5_0/1"] == 400 * 125_000_000 > rates["mlx5_0/1"]
    assert expected["hfi1_0/1"] == 100 * 125_000_000


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--collector.gpu.expected-count", "80000", "--collector.gpu.expected-count: 80000 is outside 0-1024"),
    ("--collector.infiniband.expected-rate", "mlx5=fast", "'fast' is not a rate in Gb/s"),
    ("--collector.infiniband.expected-rate", "mlx5[=400", "is not a valid regular expression"),
])
def test_agent_refuses_a_bad_inventory(
    spawn: Callable[..., Proc], flag: str, value: str, message: str
) -> None:
    listen = f"127.0.0.1:{free_port()}"
    proc = spawn(jobsight_command("agent", "--simulate", "1", "--no-collector.node",
                                  "--web.listen-address", listen, flag, value), name="agent")
    assert proc.popen.wait(timeout=60) != 0
    assert message in proc.output()


def test_agent_collectors_can_be_switched_off(spawn: Callable[..., Proc]) -> None:
    port = free_port()
    proc = spawn(
        jobsight_command(
            "agent", "--web.listen-address", f"127.0.0.1:{port}", "--no-collector.gpu", "--no-collector.node",
            "--path.sysfs", str(RDMA_SYSFS),
        ),
        name="agent",
    )
    wait_for_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
    names = {name for name, _ in _samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)}
    assert "node_infiniband_port_data_received_bytes_total" in names
    assert not any(name.startswith(("DCGM_", "jobsight_gpu_", "node_cpu", "node_scrape")) for name in names)


def test_agent_with_every_collector_off_is_a_usage_error(spawn: Callable[..., Proc]) -> None:
    proc = spawn(
        jobsight_command(
            "agent", "--no-collector.gpu", "--no-collector.node", "--no-collector.rdma", "--no-collector.otlp"
        ),
        name="agent",
    )
    assert proc.popen.wait(timeout=60) == 2
    assert "every collector is switched off" in proc.output()


@pytest.mark.skipif(nvml_loads(), reason="NVML works on this machine")
def test_agent_without_nvml_serves_node_and_rdma_and_waits_for_the_driver(spawn: Callable[..., Proc]) -> None:
    """No NVIDIA driver here (a CPU-only node, or a GPU node before the driver loads): node and
    RDMA metrics are served, the GPU part says so and waits; only SIGTERM ends the agent."""
    port = free_port()
    proc = spawn(
        jobsight_command(
            "agent", "--web.listen-address", f"127.0.0.1:{port}", "--path.sysfs", str(RDMA_SYSFS),
            "--hostname", "cpu1", "--no-collector.filesystem", "--collector.gpu.expected-count", "8",
        ),
        name="agent",
    )
    wait_for_http(f"http://127.0.0.1:{port}/healthz", proc=proc)
    for _ in range(3):
        samples = _samples(httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text)
        names = {name for name, _ in samples}
        assert "node_cpu_seconds_total" in names
        assert "node_infiniband_port_data_received_bytes_total" in names
        assert samples[("jobsight_gpu_backend_up", (("Hostname", "cpu1"),))] == 0.0
        # The inventory is published while no GPU is: GPUMissing then fires with 0 of 8.
        assert samples[("jobsight_node_expected_gpus", (("Hostname", "cpu1"),))] == 8.0
        assert samples[("jobsight_scrape_collector_success", (("collector", "gpu"),))] == 1.0
        assert not any(name.startswith("DCGM_") for name in names)
    assert "NVML" in proc.output() and "tried again in the background" in proc.output()
    assert proc.alive()
    assert proc.stop() == 0  # SIGTERM is the way out, and it is a clean one
