"""Which live processes belong to which job, and what they have used.

Two ways in, cheapest first:

- :meth:`ProcessScanner.sample`: the PIDs of scheduler job cgroups (read from their
  ``cgroup.procs`` by :mod:`exporters.node.cgroups`), whose job is known. Only those PIDs are
  read (``statm`` where the job's cgroup counts CPU and I/O, else ``stat``, ``status`` and
  ``io``), so the cost follows the number of job processes, not the number of processes on the
  host.
- :meth:`ProcessScanner.scan`: every other PID in ``<procfs>``, for what the cgroup walk cannot
  see: processes that name their job in their environment (only with
  ``--collector.jobs.trust-environment``), or every scheduler job where no cgroup hierarchy is
  mounted under ``<sysfs>/fs/cgroup``. The job of a PID is looked up once per (pid, start time)
  through the resolver (``cgroup`` first, ``environ`` only where trusted); kernel threads are
  skipped on their ``stat`` flags without a lookup. A PID without a job costs one ``stat`` read
  when first seen and then only every ``recheck_after`` seconds (the kernel builds ``stat`` on each
  read, ~10 µs): that re-read is what notices the PID being reused by a new process, which may
  belong to a job. New PIDs are always looked at at once.

A process started with its job in a new environment (``Popen(env=...)``, ``env JOBSIGHT_JOB_ID=…
cmd``) is forked first and gets that environment only at exec, with the same PID and start time;
seen in between, it has no job yet. So in :meth:`~ProcessScanner.scan` a process younger than
``young_for`` seconds that has no job is asked again on every scrape (bypassing the resolver's
per-start-time cache); after that its answer is final.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass

from exporters.node._files import join, read_bytes
from jobsight.identity import PF_KTHREAD, ProcessJobResolver

USER_HZ = 100.0  # /proc/<pid>/stat times are in USER_HZ, always 100 in the kernel ABI
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")  # the unit of /proc/<pid>/statm
YOUNG_FOR = 60.0


@dataclass(frozen=True)
class ProcessSample:
    pid: int
    start: int  # field 22 of stat, clock ticks after boot: with pid, identifies one process
    job_id: str
    cpu_seconds: float  # utime + stime of the whole thread group
    rss_bytes: float | None  # VmRSS; None for zombies and kernel threads
    read_bytes: float | None  # /proc/<pid>/io, None when not ours to read
    write_bytes: float | None


def parse_stat(raw: bytes) -> tuple[int, float] | None:
    """(start time, cpu seconds) from /proc/<pid>/stat; the command name (field 2) may hold spaces
    and parentheses, so fields are counted after the last ')'."""
    parsed = parse_stat_flags(raw)
    return parsed[:2] if parsed is not None else None


def parse_stat_flags(raw: bytes) -> tuple[int, float, int] | None:
    """:func:`parse_stat` and the kernel's task flags (field 9)."""
    rest = raw[raw.rfind(b")") + 2 :].split()
    if len(rest) < 20:
        return None
    return int(rest[19]), (int(rest[11]) + int(rest[12])) / USER_HZ, int(rest[6])


def parse_vmrss(raw: bytes) -> float | None:
    start = raw.find(b"\nVmRSS:")
    if start < 0:
        return None
    fields = raw[start + 7 : raw.find(b"\n", start + 7)].split()
    return float(int(fields[0]) * 1024) if fields else None  # the kernel writes kB (KiB)


def parse_statm_rss(raw: bytes, page_size: int = PAGE_SIZE) -> float | None:
    """Resident pages (field 2 of /proc/<pid>/statm) in bytes: the same count as VmRSS."""
    fields = raw.split()
    return float(int(fields[1]) * page_size) if len(fields) > 1 else None


def parse_io(raw: bytes) -> tuple[float, float] | None:
    values: dict[bytes, int] = {}
    for line in raw.splitlines():
        key, sep, value = line.partition(b":")
        if sep and key in (b"read_bytes", b"write_bytes"):
            values[key] = int(value)
    if b"read_bytes" not in values or b"write_bytes" not in values:
        return None
    return float(values[b"read_bytes"]), float(values[b"write_bytes"])


class ProcessScanner:
    """Samples the live processes that belong to a job."""

    def __init__(
        self,
        procfs: str,
        resolver: ProcessJobResolver,
        clock: Callable[[], float] = time.monotonic,
        recheck_after: float = 10.0,
        young_for: float = YOUNG_FOR,
        page_size: int = PAGE_SIZE,
    ) -> None:
        self.procfs = procfs.rstrip("/") or "/"
        self.page_size = page_size
        self.resolver = resolver
        self.clock = clock
        self.recheck_after = recheck_after
        self.young_for = young_for
        # pid → (start, job id, when its stat was last read), for the PIDs scan() has seen
        self._jobs: dict[int, tuple[int, str | None, float]] = {}

    def _base(self, pid: int) -> str:
        return (self.procfs + "/" if self.procfs != "/" else "/") + str(pid)

    def sample(self, jobs: Mapping[int, str], rss_only: Collection[str] = frozenset()) -> list[ProcessSample]:
        """One sample per PID of ``jobs`` (pid → job id, known from its job cgroup) that is alive.
        For the jobs in ``rss_only`` (their cgroup counts CPU and I/O itself) only the resident
        memory is read, from ``statm``: one small file instead of ``stat``, ``status`` and
        ``io``, which the kernel builds by walking every thread of the process."""
        samples: list[ProcessSample] = []
        for pid, job_id in jobs.items():
            base = self._base(pid)
            if job_id in rss_only:
                try:
                    rss = parse_statm_rss(read_bytes(base + "/statm"), self.page_size)
                except (OSError, ValueError):
                    continue  # exited since cgroup.procs was read
                # No start time or CPU: nothing is summed over this job's processes.
                samples.append(ProcessSample(pid, 0, job_id, 0.0, rss, None, None))
                continue
            try:
                parsed = parse_stat(read_bytes(base + "/stat"))
            except (OSError, ValueError):
                continue  # exited since cgroup.procs was read
            if parsed is not None:
                samples.append(self._sample(base, pid, parsed[0], job_id, parsed[1]))
        return samples

    def scan(self, known: Collection[int] = frozenset()) -> list[ProcessSample]:
        """Samples of every process in procfs that belongs to a job, except the PIDs in ``known``
        (already sampled through their cgroup)."""
        samples: list[ProcessSample] = []
        live: set[int] = set()
        now = self.clock()
        uptime = self._uptime()
        for name in os.listdir(self.procfs):
            if not name.isdigit():
                continue
            pid = int(name)
            if pid in known:
                continue
            cached = self._jobs.get(pid)
            young = False
            if cached is not None and cached[1] is None:
                young = uptime is not None and uptime - cached[0] / USER_HZ < self.young_for
                if not young and now - cached[2] < self.recheck_after:
                    live.add(pid)  # no job, checked lately: skip the stat read
                    continue
            base = self._base(pid)
            try:
                parsed = parse_stat_flags(read_bytes(base + "/stat"))
            except (OSError, ValueError):
                continue  # exited between listdir and open, or a garbage stat: skip this PID only
            if parsed is None:
                continue
            start, cpu, flags = parsed
            live.add(pid)
            job_id: str | None
            if flags & PF_KTHREAD:
                job_id = None  # a kernel thread: no cgroup or environment worth reading
                young = False
            elif cached is not None and cached[0] == start:
                job_id = cached[1]
                if job_id is None and young:
                    ref = self.resolver.job_of(pid, start, fresh=True)
                    job_id = ref.job_id if ref is not None else None
            else:
                ref = self.resolver.job_of(pid, start)
                job_id = ref.job_id if ref is not None else None
            self._jobs[pid] = (start, job_id, now)
            if job_id is None:
                continue
            samples.append(self._sample(base, pid, start, job_id, cpu))
        for pid in [p for p in self._jobs if p not in live]:
            del self._jobs[pid]
        self.resolver.forget_except(live)
        return samples

    def _uptime(self) -> float | None:
        """Seconds since boot, the clock of the start times; None if unreadable (no process is
        then treated as young)."""
        try:
            return float(read_bytes(join(self.procfs, "uptime")).split()[0])
        except (OSError, ValueError, IndexError):
            return None

    @staticmethod
    def _sample(base: str, pid: int, start: int, job_id: str, cpu: float) -> ProcessSample:
        try:
            rss = parse_vmrss(read_bytes(base + "/status"))
        except (OSError, ValueError):
            rss = None
        try:
            io = parse_io(read_bytes(base + "/io"))
        except (OSError, ValueError):
            io = None  # /proc/<pid>/io needs ptrace access: other users' processes are unreadable
        return ProcessSample(
            pid, start, job_id, cpu, rss, io[0] if io else None, io[1] if io else None
        )
