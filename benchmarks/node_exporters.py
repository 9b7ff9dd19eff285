"""jobsight's node exporter side by side with Debian's node_exporter, on this host and on a
generated host with many processes.

Both serve the same collectors (cpu, diskstats, filesystem, loadavg, meminfo, netdev, pressure,
stat, uname, vmstat) over HTTP; scrapes alternate between them with Prometheus's headers
(text format, gzip), so both see the same machine at the same moments. Ours with the per-job
collector added is measured too, for what that costs (node_exporter has no such collector, so the
cost of the per-job part is also given alone).

Two rounds:

1. this host's real /proc and /sys;
2. a generated /proc with ``--pids`` processes (default 20 000), a tenth of them in 10 Slurm jobs
   whose cgroup v2 job directories (``/system.slice/slurmstepd.scope/job_<id>``) list them in
   ``cgroup.procs``; every process has a ``cgroup``, ``environ``, ``stat``, ``statm``, ``status``
   and ``io`` file. The node-level files (``stat``, ``meminfo``, ...) come from the test fixtures,
   so that both exporters serve the same values. Served: node_exporter, ours without
   ``--collector.jobs``, ours with it (default: job cgroups first), and ours with
   ``--collector.jobs.trust-environment`` (which has to look at every process). Files on disk are
   cheaper to read than the kernel's /proc, so the per-process costs here are a lower bound.

Reported: median and p99 scrape time seen by the client, and CPU seconds per scrape of each
server process (utime+stime from /proc/<pid>/stat before and after), as ratios ours/theirs.
Then, in this process: where our CPU per scrape goes on this host (collectors, text exposition,
gzip), and the per-job collector alone on the generated /proc (first scrape and later ones).

    .venv/bin/python benchmarks/node_exporters.py [--scrapes 300] [--pids 20000]
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
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # run as a script from anywhere: import the checkout

from benchmarks.common import ScrapeTarget, cpu_seconds, free_port, percentile, timed_get  # noqa: E402

FIXTURES = REPO_ROOT / "tests" / "fixtures" / "node"

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
    scrapes: int = 1

    def median_ms(self) -> float:
        return statistics.median(self.times) * 1000

    def p99_ms(self) -> float:
        return percentile(self.times, 0.99) * 1000

    def cpu_ms(self) -> float:
        return (self.cpu_end - self.cpu_start) / self.scrapes * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scrapes", type=int, default=300, help="scrapes per server (default 300)")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--pids", type=int, default=20000,
                        help="processes in the generated /proc (default 20000)")
    parser.add_argument("--jobs-only", action="store_true",
                        help="only the per-job collector alone on the generated host (no servers)")
    parser.add_argument("--baseline", metavar="DIR", default=None,
                        help="also measure the per-job collector of another checkout (e.g. made with "
                             "`git archive <commit> | tar -x -C DIR`), on the same generated host")
    args = parser.parse_args()
    if args.jobs_only:
        with tempfile.TemporaryDirectory(prefix="jobsight-bench-") as tmp:
            procfs, sysfs = generate_host(Path(tmp), args.pids)
            jobs_alone(procfs, sysfs, args.pids, args.baseline)
        return 0

    binary = shutil.which("prometheus-node-exporter")
    if binary is None:
        print("prometheus-node-exporter is not installed (Debian package prometheus-node-exporter)")
        return 1

    print(f"date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; machine: {os.cpu_count()} cores, "
          f"{platform.machine()}, Linux {platform.release()}; python {platform.python_version()}; "
          f"load average {os.getloadavg()[0]:.2f}")
    print(f"command: .venv/bin/python benchmarks/node_exporters.py --scrapes {args.scrapes} "
          f"--pids {args.pids}")
    print()
    print(f"## this host ({sum(1 for p in os.listdir('/proc') if p.isdigit())} processes)")
    print()
    servers = serve_round(binary, [], args.scrapes, args.warmup)
    table(servers)
    print()
    breakdown(args.scrapes)
    print()

    with tempfile.TemporaryDirectory(prefix="jobsight-bench-") as tmp:
        procfs, sysfs = generate_host(Path(tmp), args.pids)
        flags = [f"--path.procfs={procfs}", f"--path.sysfs={sysfs}", f"--path.rootfs={FIXTURES / 'root'}",
                 f"--path.udev.data={FIXTURES / 'udev' / 'data'}"]
        print(f"## generated host: {args.pids} processes, {args.pids // 10} of them in 10 Slurm jobs")
        print()
        servers = serve_round(binary, flags, args.scrapes, args.warmup, trusting=True)
        table(servers)
        print()
        jobs_alone(procfs, sysfs, args.pids, args.baseline)
    return 0


def serve_round(binary: str, flags: list[str], scrapes: int, warmup: int,
                trusting: bool = False) -> list[Server]:
    """Start the servers (node_exporter, ours, ours + jobs[, ours + jobs trusting the
    environment]) with ``flags``, scrape them in turn, and return them with their figures."""
    theirs = Server("node_exporter", [
        binary, "--collector.disable-defaults", *(f"--collector.{n}" for n in SHARED),
        "--collector.netdev.device-exclude=^$",
        f"--collector.filesystem.mount-points-exclude={MOUNT_POINTS_EXCLUDE}", *flags,
    ], free_port())
    jobsight = [sys.executable, "-m", "launch", "exporter", "node", *flags]
    servers = [
        Server("jobsight", [*jobsight, "--no-collector.jobs"], free_port()),
        theirs,
        Server("jobsight + jobs", list(jobsight), free_port()),
    ]
    if trusting:
        servers.append(Server("jobsight + jobs, trust-environment",
                              [*jobsight, "--collector.jobs.trust-environment"], free_port()))
    for server in servers:
        server.argv.append(f"--web.listen-address=127.0.0.1:{server.port}")
        server.proc = subprocess.Popen(server.argv, cwd=REPO_ROOT, stdout=subprocess.DEVNULL,
                                       stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        with httpx.Client(timeout=60) as client:
            for server in servers:
                server.wait_ready(client, HEADERS, timeout=120)
                for _ in range(warmup):
                    client.get(server.url, headers=HEADERS)
            for server in servers:
                assert server.proc is not None
                server.cpu_start = cpu_seconds(server.proc.pid)
            for _ in range(scrapes):
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
    for server in servers:
        server.scrapes = scrapes
    return servers


def table(servers: list[Server]) -> None:
    """Per server: median and p99 scrape time and CPU per scrape, and each as a ratio to
    node_exporter's."""
    theirs = next(s for s in servers if s.name == "node_exporter")
    print("| server | samples | median scrape (ms) | ratio | p99 scrape (ms) | ratio "
          "| server CPU per scrape (ms) | ratio |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for server in servers:
        cells = [f"| {server.name} | {server.samples}"]
        for figure in (server.median_ms, server.p99_ms, server.cpu_ms):
            cells.append(f"{figure():.2f} | **{figure() / getattr(theirs, figure.__name__)():.2f}**")
        print(" | ".join(cells) + " |")


def generate_host(root: Path, pids: int) -> tuple[Path, Path]:
    """A procfs and a sysfs for a host with ``pids`` processes, a tenth of them in 10 Slurm jobs
    (cgroup v2 job directories listing them; their environment names the job too). The node-level
    files are the test fixtures', so both exporters can serve them."""
    proc, sys_root = root / "proc", root / "sys"
    # The fixtures' own processes are left out, but PID 1 (its mounts feed the filesystem
    # collectors); so is their cgroup tree, replaced by the generated one.
    shutil.copytree(FIXTURES / "proc", proc, ignore=lambda d, names: [
        n for n in names if n.isdigit() and n != "1"] if Path(d) == FIXTURES / "proc" else [])
    shutil.copytree(FIXTURES / "sys", sys_root, ignore=lambda d, names: [
        "cgroup"] if Path(d).name == "fs" else [])
    cgroup = sys_root / "fs" / "cgroup"
    (cgroup / "system.slice" / "slurmstepd.scope").mkdir(parents=True)
    (cgroup / "cgroup.procs").write_text("")
    members: dict[int, list[int]] = {}
    for pid in range(1000, 1000 + pids):
        base = proc / str(pid)
        base.mkdir()
        index = pid - 1000
        job = 5000 + (index // 10) % 10 if index % 10 == 0 else None
        (base / "stat").write_text(
            f"{pid} (python train.py) S 1 {pid} {pid} 0 -1 4194560 1 0 0 0 {pid} 7 0 0 20 0 1 0 "
            f"{pid * 3} 1000000 2000 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"
        )
        (base / "status").write_text("Name:\tpython\nState:\tS (sleeping)\nVmRSS:\t  1024 kB\n")
        (base / "statm").write_text("50000 256 100 10 0 2000 0\n")
        (base / "io").write_text("rchar: 1\nwchar: 1\nread_bytes: 4096\nwrite_bytes: 512\n")
        if job is None:
            (base / "cgroup").write_text("0::/user.slice/user-1000.slice/session-1.scope\n")
            (base / "environ").write_text("PATH=/usr/bin\0HOME=/home/u\0")
        else:
            members.setdefault(job, []).append(pid)
            (base / "cgroup").write_text(f"0::/system.slice/slurmstepd.scope/job_{job}/step_0/user/task_0\n")
            (base / "environ").write_text(f"PATH=/usr/bin\0SLURM_JOB_ID={job}\0")
    for job, job_pids in members.items():
        job_dir = cgroup / "system.slice" / "slurmstepd.scope" / f"job_{job}"
        task = job_dir / "step_0" / "user" / "task_0"
        task.mkdir(parents=True)
        (job_dir / "cgroup.procs").write_text("")
        (task / "cgroup.procs").write_text("".join(f"{pid}\n" for pid in job_pids))
        (job_dir / "cpu.stat").write_text("usage_usec 73500000\nuser_usec 70000000\nsystem_usec 3500000\n")
        (job_dir / "memory.current").write_text("4294967296\n")
        (job_dir / "io.stat").write_text("8:0 rbytes=1048576 wbytes=524288 rios=10 wios=5\n")
    return proc, sys_root


# The per-job collector alone, scrapes 15 s apart as Prometheus makes them: every scrape is past
# the 10 s after which job directories are searched again and PIDs without a job are re-read. Run
# in a child process so that a baseline checkout's code can be measured the same way.
_MEASURE = """
import itertools, sys, time
sys.path.insert(0, ".")
from exporters.node.jobs import JobsCollector
procfs, sysfs, trust = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
kwargs = {"trust_environment": True} if trust else {}
collector = JobsCollector(procfs, sysfs, clock=itertools.count(0.0, 15.0).__next__, **kwargs)
start = time.process_time()
list(collector.collect())
first = (time.process_time() - start) * 1000
start = time.process_time()
for _ in range(20):
    found = list(collector.collect())
steady = (time.process_time() - start) / 20 * 1000
counted = sum(int(s.value) for f in found if f.name == "jobsight_job_processes" for s in f.samples)
print(f"{first:.1f} | {steady:.1f} | {counted}")
"""


def jobs_alone(procfs: Path, sysfs: Path, pids: int, baseline: str | None = None) -> None:
    """CPU per scrape of the per-job collector alone on the generated host (and of a baseline
    checkout's, with its default settings)."""
    print(f"| per-job collector alone, {pids} processes, {pids // 10} in 10 jobs | first scrape (CPU ms) "
          "| later scrapes (CPU ms) | job processes counted |")
    print("| --- | --- | --- | --- |")
    runs = [("default: job cgroups' PIDs only", REPO_ROOT, "0"),
            ("--collector.jobs.trust-environment: every PID", REPO_ROOT, "1")]
    if baseline is not None:
        runs.insert(0, (f"baseline {baseline}, its defaults", Path(baseline), "0"))
    for label, checkout, trust in runs:
        out = subprocess.run([sys.executable, "-c", _MEASURE, str(procfs), str(sysfs), trust], cwd=checkout,
                             capture_output=True, text=True, check=True)
        print(f"| {label} | {out.stdout.strip()} |")


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
