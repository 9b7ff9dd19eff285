"""Per-job accounting against the real /proc, with real processes started with JOBSIGHT_JOB_ID."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx

from exporters.node.jobs import JobsCollector
from tests.exporters.node.helpers import samples, scrape
from tests.support import (
    REPO_ROOT,
    Proc,
    free_port,
    jobsight_command,
    promtool_check_metrics,
    wait_for_http,
    wait_until,
)

# Burns CPU in this process and in one forked child, which inherits the environment (and so the
# job) the way a launcher's workers do.
BURN_WITH_CHILD = "import os\nos.fork()\nwhile True:\n    pass\n"
BURN = "while True:\n    pass\n"
IDLE = "import time\nwhile True:\n    time.sleep(1)\n"

OTHER_COLLECTORS = ("cpu", "diskstats", "filesystem", "loadavg", "meminfo", "netdev", "pressure", "stat",
                    "uname", "vmstat")


def _job_env(job_id: str) -> dict[str, str]:
    return {**os.environ, "JOBSIGHT_JOB_ID": job_id}


def _value(text: str, name: str, job_id: str) -> float | None:
    return samples(text).get((name, (("job_id", job_id),)))


def test_exporter_accounts_cpu_memory_and_processes_of_a_live_job(spawn: Callable[..., Proc]) -> None:
    job_id = f"pytest-{uuid.uuid4().hex[:12]}"
    spawn([sys.executable, "-c", BURN_WITH_CHILD], name="burner", env=_job_env(job_id))
    port = free_port()
    exporter = spawn(
        jobsight_command("exporter", "node", f"--web.listen-address=127.0.0.1:{port}",
                         "--collector.jobs.trust-environment",
                         *(f"--no-collector.{name}" for name in OTHER_COLLECTORS)),
        name="node-exporter", cwd=REPO_ROOT,
    )
    url = f"http://127.0.0.1:{port}/metrics"
    wait_for_http(url, proc=exporter)

    def job_seen() -> str | None:
        text = httpx.get(url, timeout=5).text
        processes = _value(text, "jobsight_job_processes", job_id)
        return text if processes is not None and processes >= 2 else None

    first = wait_until(job_seen, timeout=30, message=f"job {job_id} with 2 processes")
    promtool_check_metrics(first)
    cpu_first = _value(first, "jobsight_job_cpu_seconds_total", job_id)
    assert cpu_first is not None
    rss = _value(first, "jobsight_job_memory_rss_bytes", job_id)
    assert rss is not None and rss > 0
    # We run as the processes' owner, so their /proc/<pid>/io is readable and the job has I/O series.
    assert _value(first, "jobsight_job_io_read_bytes_total", job_id) is not None
    assert _value(first, "jobsight_job_io_write_bytes_total", job_id) is not None
    # Only the job collector is on, and it succeeded.
    assert 'node_scrape_collector_success{collector="jobs"} 1.0' in first
    assert "node_cpu_seconds_total" not in first

    def cpu_grew() -> bool:
        value = _value(httpx.get(url, timeout=5).text, "jobsight_job_cpu_seconds_total", job_id)
        return value is not None and value > cpu_first + 0.2

    wait_until(cpu_grew, timeout=60, message="the job's CPU seconds to grow while it burns CPU")


def test_cpu_counter_does_not_fall_when_a_process_of_the_job_exits(
    spawn: Callable[..., Proc], tmp_path: Path
) -> None:
    job_id = f"pytest-{uuid.uuid4().hex[:12]}"
    spawn([sys.executable, "-c", IDLE], name="idle", env=_job_env(job_id))
    burner = spawn([sys.executable, "-c", BURN], name="burner", env=_job_env(job_id))
    # An empty sysfs: no cgroup job directories, so the process sums are what is tested.
    collector = JobsCollector("/proc", str(tmp_path), trust_environment=True)
    key_cpu = ("jobsight_job_cpu_seconds_total", (("job_id", job_id),))
    key_procs = ("jobsight_job_processes", (("job_id", job_id),))

    def burned() -> dict[tuple[str, tuple[tuple[str, str], ...]], float] | None:
        found = samples(scrape({"jobs": collector}))
        return found if found.get(key_cpu, 0.0) > 0.3 and found.get(key_procs) == 2 else None

    before = wait_until(burned, timeout=60, message="the burner to use 0.3 s of CPU")
    burner.stop()
    after = samples(scrape({"jobs": collector}))
    assert after[key_procs] == 1
    assert after[key_cpu] >= before[key_cpu], "the counter fell when a process exited"
    # The exited burner's CPU is still in the total, not just the idle process's share.
    assert after[key_cpu] > 0.3


def test_job_series_end_when_its_last_process_exits(spawn: Callable[..., Proc], tmp_path: Path) -> None:
    job_id = f"pytest-{uuid.uuid4().hex[:12]}"
    idle = spawn([sys.executable, "-c", IDLE], name="idle", env=_job_env(job_id))
    collector = JobsCollector("/proc", str(tmp_path), trust_environment=True)
    key = ("jobsight_job_processes", (("job_id", job_id),))
    wait_until(lambda: samples(scrape({"jobs": collector})).get(key) == 1, timeout=30,
               message="the job to appear")
    idle.stop()
    assert not any(labels == (("job_id", job_id),) for _, labels in samples(scrape({"jobs": collector})))
