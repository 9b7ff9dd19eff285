"""jobs: per-job accounting, which node_exporter cannot do.

Which processes belong to which job (DESIGN.md "Trust"): the kernel's answer first. Each scrape
the scheduler job cgroups (Slurm job directories, Kubernetes pod directories; see
:mod:`exporters.node.cgroups`) list their PIDs, and only those processes are read, so the cost
of a scrape follows the number of job processes, not of processes on the host. Every other PID
is looked at (:meth:`ProcessScanner.scan`) only when it can matter: with
``--collector.jobs.trust-environment`` (off by default), a process in no scheduler cgroup may
name its job in ``JOBSIGHT_JOB_ID``/``SLURM_JOB_ID``; and where no cgroup hierarchy is mounted,
each process's ``/proc/<pid>/cgroup`` is the only way to find its job. A process in a scheduler
cgroup always gets that cgroup's job, whatever its environment says.

- ``jobsight_job_cpu_seconds_total{job_id}``: the cgroup's ``usage_usec`` when the job has a
  cgroup directory (exact, and counts every process that ever ran in it), else utime+stime of the
  job's processes;
- ``jobsight_job_memory_rss_bytes{job_id}``: the sum of the resident memory of the job's live
  processes (VmRSS, or ``statm``'s resident pages for jobs whose cgroup counts CPU and I/O, when
  nothing else of a process is needed; shared pages count once per process, as in ``ps``);
- ``jobsight_job_memory_cgroup_bytes{job_id}``: the cgroup's ``memory.current`` (anon + page
  cache: what ``memory.max`` and the OOM killer judge), only for jobs with a cgroup directory;
- ``jobsight_job_io_read_bytes_total``/``_write_bytes_total{job_id}``: the cgroup's ``io.stat``
  rbytes/wbytes, else ``read_bytes``/``write_bytes`` of ``/proc/<pid>/io`` (storage I/O, not page
  cache hits), left out when any live process of the job is not ours to read;
- ``jobsight_job_processes{job_id}``: live processes of the job.

Counter semantics for process sums: a sum over live processes would fall when a process exits,
which ``rate()`` reads as a counter reset. So the last values seen of each exited process are
kept, per job, and added to the sum for as long as the job has live processes; the counter then
only falls when the job is gone and its series ends. What a process used after the last scrape it
was seen in, and processes that lived less than one scrape interval, are not counted (cgroups
count them; that is why they win where present).

Freshness: job cgroup directories are looked for every ``recheck_after`` seconds (10 s), so a
new job appears within that time; a new process of a known job is seen at the next scrape. In
the walk over all PIDs, a PID without a job is re-read on the same schedule (see
:mod:`exporters.node.processes`); a job found there through ``/proc/<pid>/cgroup`` before the
walk finds its directory switches from the process sum to the cgroup's CPU counter then, so it
can jump once in the first seconds of a job.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from exporters.node._files import join
from exporters.node.cgroups import CgroupUsage, JobCgroupFinder
from exporters.node.processes import ProcessSample, ProcessScanner
from jobsight.identity import ProcessJobResolver


@dataclass
class _Retired:
    """What exited processes of one job had used when last seen."""

    cpu: float = 0.0
    read: float = 0.0
    write: float = 0.0


@dataclass
class _JobTotals:
    cpu: float = 0.0
    rss: float = 0.0
    rss_known: bool = False
    read: float = 0.0
    write: float = 0.0
    io_complete: bool = True
    processes: int = 0
    retired: _Retired = field(default_factory=_Retired)


class JobsCollector:
    def __init__(
        self,
        procfs: str = "/proc",
        sysfs: str = "/sys",
        resolver: ProcessJobResolver | None = None,
        cgroup_max_depth: int = 5,
        clock: Callable[[], float] = time.monotonic,
        recheck_after: float = 10.0,
        trust_environment: bool = False,
    ) -> None:
        """``trust_environment`` builds the default resolver; a ``resolver`` given carries its own
        setting, which also decides whether every PID is walked."""
        self.scanner = ProcessScanner(
            procfs, resolver or ProcessJobResolver(procfs, trust_environment=trust_environment),
            clock=clock, recheck_after=recheck_after,
        )
        self.cgroups = JobCgroupFinder(join(sysfs, "fs", "cgroup"), cgroup_max_depth, recheck_after, clock)
        self._lock = threading.Lock()
        self._last: dict[tuple[int, int], ProcessSample] = {}
        self._retired: dict[str, _Retired] = {}

    def collect(self) -> Iterator[Metric]:
        # Scrapes can overlap (two Prometheus servers of an HA pair); the accounting state must
        # move from one scrape to the next in one order, or an exited process is retired twice.
        with self._lock:
            cgroups = self.cgroups.usage()
            in_cgroups = {pid: job_id for job_id, cg in cgroups.items() for pid in cg.pids}
            counted = {job_id for job_id, cg in cgroups.items()
                       if None not in (cg.cpu_seconds, cg.read_bytes, cg.write_bytes)}
            samples = self.scanner.sample(in_cgroups, rss_only=counted)
            if self.scanner.resolver.trust_environment or not self.cgroups.present():
                samples += self.scanner.scan(known=in_cgroups.keys())
            totals = self._account(samples)
            families = list(self._families(totals, cgroups))
        yield from families

    def _account(self, samples: list[ProcessSample]) -> dict[str, _JobTotals]:
        current = {(s.pid, s.start): s for s in samples}
        live_jobs = {s.job_id for s in samples}
        for key, gone in self._last.items():
            if key in current or gone.job_id not in live_jobs:
                continue
            retired = self._retired.setdefault(gone.job_id, _Retired())
            retired.cpu += gone.cpu_seconds
            retired.read += gone.read_bytes or 0.0
            retired.write += gone.write_bytes or 0.0
        # A job without live processes is over: its counters end with its series.
        self._retired = {job: r for job, r in self._retired.items() if job in live_jobs}
        self._last = current

        totals: dict[str, _JobTotals] = {}
        for s in samples:
            t = totals.get(s.job_id)
            if t is None:
                t = totals[s.job_id] = _JobTotals(retired=self._retired.get(s.job_id, _Retired()))
            t.processes += 1
            t.cpu += s.cpu_seconds
            if s.rss_bytes is not None:
                t.rss += s.rss_bytes
                t.rss_known = True
            if s.read_bytes is None or s.write_bytes is None:
                t.io_complete = False
            else:
                t.read += s.read_bytes
                t.write += s.write_bytes
        return totals

    @staticmethod
    def _families(totals: dict[str, _JobTotals], cgroups: dict[str, CgroupUsage]) -> Iterator[Metric]:
        labels = ["job_id"]
        cpu = CounterMetricFamily(
            "jobsight_job_cpu_seconds_total", "CPU time used by the job's processes, in seconds.",
            labels=labels,
        )
        rss = GaugeMetricFamily(
            "jobsight_job_memory_rss_bytes", "Resident memory of the job's live processes, in bytes.",
            labels=labels,
        )
        cg_mem = GaugeMetricFamily(
            "jobsight_job_memory_cgroup_bytes",
            "memory.current of the job's cgroup (anon and page cache), in bytes.",
            labels=labels,
        )
        read = CounterMetricFamily(
            "jobsight_job_io_read_bytes_total", "Bytes the job's processes read from storage.", labels=labels
        )
        write = CounterMetricFamily(
            "jobsight_job_io_write_bytes_total", "Bytes the job's processes wrote to storage.", labels=labels
        )
        procs = GaugeMetricFamily(
            "jobsight_job_processes", "Live processes that belong to the job.", labels=labels
        )
        for job_id in sorted(set(totals) | set(cgroups)):
            t = totals.get(job_id)
            cg = cgroups.get(job_id)
            if cg is not None and cg.cpu_seconds is not None:
                cpu.add_metric([job_id], cg.cpu_seconds)
            elif t is not None:
                cpu.add_metric([job_id], t.retired.cpu + t.cpu)
            if t is not None and t.rss_known:
                rss.add_metric([job_id], t.rss)
            if cg is not None and cg.memory_bytes is not None:
                cg_mem.add_metric([job_id], cg.memory_bytes)
            if cg is not None and cg.read_bytes is not None and cg.write_bytes is not None:
                read.add_metric([job_id], cg.read_bytes)
                write.add_metric([job_id], cg.write_bytes)
            elif t is not None and t.io_complete:
                read.add_metric([job_id], t.retired.read + t.read)
                write.add_metric([job_id], t.retired.write + t.write)
            procs.add_metric([job_id], float(max(t.processes if t else 0, cg.processes if cg else 0)))
        yield from (cpu, rss, cg_mem, read, write, procs)
