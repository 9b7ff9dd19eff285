"""jobsight's node exporter side by side with Debian's node_exporter, on this host's /proc and /sys.

Both serve the same collectors (cpu, diskstats, filesystem, loadavg, meminfo, netdev, pressure,
stat, uname, vmstat) over HTTP; scrapes alternate between them with Prometheus's headers
(text format, gzip), so both see the same machine at the same moments. A third server, ours with
the per-job collector added, is measured too, for what that costs (node_exporter has no such
collector, so it is not part of the ratio).

Reported: median and p99 scrape time seen by the client, and CPU seconds per scrape of each
server process (utime+stime from /proc/<pid>/stat before and after), as ratios ours/theirs.
Then, in this process, where our CPU per scrape goes: the collectors, the text exposition
(prometheus_client), and gzip at prometheus_client's level 9 next to level 1; and the per-job
collector on a generated /proc with ``--pids`` processes (a tenth of them in 10 jobs), to see how
it scales (files on disk are cheaper to read than the kernel's /proc, so this is a lower bound).

    .venv/bin/python benchmarks/node_exporters.py [--scrapes 300]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # run as a script from anywhere: import the checkout

from benchmarks.common import ScrapeTarget, cpu_seconds, free_port, percentile, timed_get  # noqa: E402

SHARED = ("cpu", "diskstats", "filesystem", "loadavg", "meminfo", "netdev", "pressure", "stat", "uname",
          "vmstat")
# Upstream node_exporter's default; Debian's build excludes more (/run, /mnt, /media). Both get this.
MOUNT_POINTS_EXCLUDE = (
    r"^/(dev|proc|run/credentials/.+|sys|var/lib/docker/.+|var/lib/containers/storage/.+)($|/)"
)
HEADERS = {"Accept": "text/plain;version=0.0.4;q=0.5,*/*;q=0.1", "Accept-Encoding": "gzip"}


@dataclass
class Server(ScrapeTarget):
    times: list[float] = field(default_factory=list)
    cpu_start: float = 0.0
    cpu_end: float = 0.0
    samples: int = 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrapes", type=int, default=300, help="scrapes per server (default 300)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--pids", type=int, default=3000, help="PIDs in the generated /proc (default 3000)")
    args = parser.parse_args()

    binary = shutil.which("prometheus-node-exporter")
    if binary is None:
        print("prometheus-node-exporter is not installed (Debian package prometheus-node-exporter)")
        return 1
    theirs = Server("node_exporter 1.5", [
        binary, "--collector.disable-defaults", *(f"--collector.{n}" for n in SHARED),
        "--collector.netdev.device-exclude=^$",
        f"--collector.filesystem.mount-points-exclude={MOUNT_POINTS_EXCLUDE}",
    ], free_port())
    jobsight = [sys.executable, "-m", "jobsight", "exporter", "node"]
    ours = Server("jobsight", [*jobsight, "--no-collector.jobs"], free_port())
    ours_jobs = Server("jobsight + jobs", jobsight, free_port())
    servers = [ours, theirs, ours_jobs]
    for server in servers:
        server.argv.append(f"--web.listen-address=127.0.0.1:{server.port}")
        server.proc = subprocess.Popen(server.argv, cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        with httpx.Client(timeout=30) as client:
            for server in servers:
                server.wait_ready(client, HEADERS)
                for _ in range(args.warmup):
                    client.get(server.url, headers=HEADERS)
            for server in servers:
                assert server.proc is not None
                server.cpu_start = cpu_seconds(server.proc.pid)
            for _ in range(args.scrapes):
                for server in servers:
                    response, wall = timed_get(client, server.url, HEADERS)
                    server.times.append(wall)
                    response.raise_for_status()
                    server.samples = sum(1 for line in response.text.splitlines() if line and line[0] != "#")
            for server in servers:
                assert server.proc is not None
                server.cpu_end = cpu_seconds(server.proc.pid)
    finally:
        for server in servers:
            server.stop()

    def row(label: str, fn: str) -> str:
        values = {}
        for server in servers:
            if fn == "median":
                values[server.name] = statistics.median(server.times) * 1000
            elif fn == "p99":
                values[server.name] = percentile(server.times, 0.99) * 1000
            else:
                values[server.name] = (server.cpu_end - server.cpu_start) / args.scrapes * 1000
        ratio = values[ours.name] / values[theirs.name]
        return (f"| {label} | {values[ours.name]:.2f} | {values[theirs.name]:.2f} | **{ratio:.2f}** "
                f"| {values[ours_jobs.name]:.2f} |")

    print(f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; machine: {os.cpu_count()} cores, "
          f"{platform.machine()}, Linux {platform.release()}; python {platform.python_version()}")
    print(f"command: .venv/bin/python benchmarks/node_exporters.py --scrapes {args.scrapes}")
    print(f"samples per scrape: jobsight {ours.samples}, node_exporter {theirs.samples} "
          f"(incl. its go_/process_ metrics), jobsight + jobs {ours_jobs.samples}; "
          f"processes on the host: {sum(1 for p in os.listdir('/proc') if p.isdigit())}")
    print()
    print("| per scrape | jobsight (ms) | node_exporter (ms) | ratio ours/theirs | jobsight + jobs (ms) |")
    print("| --- | --- | --- | --- | --- |")
    print(row("median scrape time", "median"))
    print(row("p99 scrape time", "p99"))
    print(row("server CPU", "cpu"))
    print()
    breakdown(args.scrapes)
    print()
    jobs_scaling(args.pids)
    return 0


def jobs_scaling(pids: int) -> None:
    """CPU per scrape of the jobs collector on a generated procfs with ``pids`` processes."""
    import tempfile

    from exporters.node.jobs import JobsCollector

    with tempfile.TemporaryDirectory() as tmp:
        proc = Path(tmp) / "proc"
        for pid in range(1000, 1000 + pids):
            base = proc / str(pid)
            base.mkdir(parents=True)
            index = pid - 1000
            job = (index // 10) % 10 if index % 10 == 0 else None
            (base / "stat").write_text(
                f"{pid} (python train.py) S 1 {pid} {pid} 0 -1 4194560 1 0 0 0 {pid} 7 0 0 20 0 1 0 "
                f"{pid * 3} 1000000 2000 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"
            )
            (base / "status").write_text("Name:\tpython\nState:\tS (sleeping)\nVmRSS:\t  1024 kB\n")
            (base / "io").write_text("rchar: 1\nwchar: 1\nread_bytes: 4096\nwrite_bytes: 512\n")
            (base / "cgroup").write_text("0::/user.slice/user-1000.slice/session-1.scope\n")
            env = f"PATH=/usr/bin\0JOBSIGHT_JOB_ID=job-{job}\0" if job is not None else "PATH=/usr/bin\0"
            (base / "environ").write_text(env)
        collector = JobsCollector(str(proc), tmp)
        start = time.process_time()
        list(collector.collect())
        first = (time.process_time() - start) * 1000
        rounds = 20
        start = time.process_time()
        for _ in range(rounds):
            found = list(collector.collect())
        steady = (time.process_time() - start) / rounds * 1000
        jobs = len(next(f for f in found if f.name == "jobsight_job_processes").samples)
        in_jobs = sum(int(s.value) for f in found if f.name == "jobsight_job_processes" for s in f.samples)
    print(f"| jobs collector, generated /proc: {pids} PIDs, {in_jobs} in {jobs} jobs | CPU ms per scrape |")
    print("| --- | --- |")
    print(f"| first scrape (every PID resolved: stat, environ) | {first:.1f} |")
    print(f"| later scrapes (job PIDs read; others re-read every 10 s) | {steady:.1f} |")


def breakdown(iterations: int) -> None:
    """CPU per scrape of the parts of our serving path, measured in this process."""
    import gzip

    from prometheus_client import CollectorRegistry, generate_latest

    from exporters.node import cli
    from jobsight.serving import CollectorSet

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    parts = cli.build(parser.parse_args(["--no-collector.jobs"]))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CollectorSet(parts.collectors, prefix="node"))
    text = generate_latest(registry)

    def cpu_ms(fn: Callable[[], object]) -> float:
        fn()
        start = time.process_time()
        for _ in range(iterations):
            fn()
        return (time.process_time() - start) / iterations * 1000

    collectors = cpu_ms(lambda: [list(c.collect()) for c in parts.collectors.values()])
    exposition = cpu_ms(lambda: generate_latest(registry))
    gzip9 = cpu_ms(lambda: gzip.compress(text, compresslevel=9))
    gzip1 = cpu_ms(lambda: gzip.compress(text, compresslevel=1))
    print("| our CPU per scrape, in-process | ms |")
    print("| --- | --- |")
    print(f"| collectors (reading and parsing /proc, /sys) | {collectors:.2f} |")
    print(f"| collectors + text exposition (generate_latest) | {exposition:.2f} |")
    print(f"| gzip of the {len(text)} byte exposition, level 9 (prometheus_client's) | {gzip9:.2f} |")
    print(f"| same, level 1 | {gzip1:.2f} |")


if __name__ == "__main__":
    raise SystemExit(main())
