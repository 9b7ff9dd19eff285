"""`jobsight agent` as a process: its OTLP receiver takes a tracker's steps and /metrics shows them;
a taken OTLP port leaves the rest of the agent serving."""

from __future__ import annotations

from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

from jobsight import training
from tests.support import Proc, free_port, jobsight_command, wait_for_http


def _agent(spawn: Callable[..., Proc], otlp_port: int) -> tuple[Proc, str]:
    port = free_port()
    proc = spawn(
        jobsight_command(
            "agent",
            "--web.listen-address",
            f"127.0.0.1:{port}",
            "--hostname",
            "nodeX",
            "--no-collector.gpu",
            "--no-collector.node",
            "--no-collector.rdma",
            "--otlp.listen-address",
            f"127.0.0.1:{otlp_port}",
        ),
        name="agent",
    )
    base = f"http://127.0.0.1:{port}"
    wait_for_http(f"{base}/healthz", proc=proc)
    return proc, base


def test_the_agent_publishes_the_steps_a_tracker_sends(spawn: Callable[..., Proc]) -> None:
    otlp_port = free_port()
    _, base = _agent(spawn, otlp_port)
    assert f"otlp: receiving on http://127.0.0.1:{otlp_port}/v1/metrics" in httpx.get(f"{base}/healthz").text
    tracker = training.start(
        job_id="agent-job",
        rank=1,
        endpoint=f"http://127.0.0.1:{otlp_port}/v1/metrics",
        export_interval_s=3600,
    )
    try:
        for _ in range(3):
            tracker.step(samples=4)
        assert tracker.flush(10.0)
    finally:
        tracker.close()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(httpx.get(f"{base}/metrics", timeout=10).text)
        for s in family.samples
    }
    rank = (("Hostname", "nodeX"), ("job_id", "agent-job"), ("rank", "1"))
    assert samples[("jobsight_train_steps_total", rank)] == 3
    assert samples[("jobsight_train_samples_total", rank)] == 12
    assert samples[("jobsight_scrape_collector_success", (("collector", "otlp"),))] == 1


def test_a_taken_otlp_port_leaves_the_agent_serving(spawn: Callable[..., Proc]) -> None:
    otlp_port = free_port()
    _agent(spawn, otlp_port)
    second, base = _agent(spawn, otlp_port)
    health = httpx.get(f"{base}/healthz").text
    assert "otlp: off: cannot listen for OTLP" in health
    assert second.alive()
    assert "training steps are not received" in second.output()
