"""cgroup v2 job directories (``<sysfs>/fs/cgroup/**/job_<id>``, as Slurm's cgroup/v2 plugin
makes them under ``slurmstepd.scope``): the kernel's own per-job totals, which — unlike sums over
live processes — also count processes that came and went between two scrapes."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from exporters.node._files import join, read_bytes
from jobsight.identity import is_valid_job_id

_JOB_DIR = re.compile(r"^job_(?P<job_id>.+)$")


@dataclass(frozen=True)
class CgroupUsage:
    job_id: str
    path: str
    cpu_seconds: float | None  # cpu.stat usage_usec
    memory_bytes: float | None  # memory.current: anon + page cache, what memory.max limits
    read_bytes: float | None  # io.stat rbytes over all devices
    write_bytes: float | None
    processes: int  # distinct PIDs in cgroup.procs of the job and its sub-cgroups


class JobCgroupFinder:
    """:func:`find_job_cgroups`, re-walked every ``ttl`` seconds rather than every scrape: new job
    directories show up within ``ttl``; a directory that disappears is noticed at once."""

    def __init__(self, cgroup_root: str, max_depth: int = 5, ttl: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cgroup_root = cgroup_root
        self.max_depth = max_depth
        self.ttl = ttl
        self.clock = clock
        self._found: dict[str, str] = {}
        self._at: float | None = None

    def usage(self) -> dict[str, CgroupUsage]:
        now = self.clock()
        if self._at is None or now - self._at >= self.ttl:
            self._found = find_job_cgroups(self.cgroup_root, self.max_depth)
            self._at = now
        found: dict[str, CgroupUsage] = {}
        for job_id, path in self._found.items():
            if not os.path.isdir(path):
                self._at = None  # the job ended: walk again next scrape
                continue
            found[job_id] = read_cgroup(job_id, path)
        return found


def find_job_cgroups(cgroup_root: str, max_depth: int = 5) -> dict[str, str]:
    """job id → directory, for ``job_<id>`` directories up to ``max_depth`` below the root. Job
    directories are not descended into (their step cgroups are not jobs); the depth bound keeps a
    host with thousands of container cgroups cheap to walk."""
    found: dict[str, str] = {}
    stack = [(cgroup_root, 0)]
    while stack:
        path, depth = stack.pop()
        try:
            entries = list(os.scandir(path))
        except OSError:
            continue
        for entry in entries:
            try:
                if not entry.is_dir(follow_symlinks=False):
                    continue
            except OSError:
                continue
            match = _JOB_DIR.match(entry.name)
            if match and is_valid_job_id(match.group("job_id")):
                found.setdefault(match.group("job_id"), entry.path)
            elif depth + 1 < max_depth:
                stack.append((entry.path, depth + 1))
    return found


def _usage_usec(raw: bytes | None) -> int | None:
    if raw is None:
        return None
    for line in raw.splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[0] == b"usage_usec" and parts[1].isdigit():
            return int(parts[1])
    return None


def _io_bytes(raw: bytes | None) -> tuple[float, float] | None:
    """rbytes and wbytes of ``io.stat`` ("8:0 rbytes=1 wbytes=2 rios=3 ..." per device) summed
    over devices; an empty file means no I/O yet; garbage means unknown."""
    if raw is None:
        return None
    read = write = 0.0
    for line in raw.splitlines():
        for item in line.split()[1:]:
            key, _, value = item.partition(b"=")
            if key in (b"rbytes", b"wbytes"):
                if not value.isdigit():
                    return None
                if key == b"rbytes":
                    read += int(value)
                else:
                    write += int(value)
    return read, write


def _optional(path: str) -> bytes | None:
    try:
        return read_bytes(path)
    except OSError:
        return None  # controller not enabled for this cgroup: that value is unknown, not 0


def read_cgroup(job_id: str, path: str) -> CgroupUsage:
    """What the kernel accounts to one job directory. A file that is missing (controller not
    enabled) or garbage leaves that value unknown (None) — never 0, never a failed scrape."""
    usage = _usage_usec(_optional(join(path, "cpu.stat")))
    mem_raw = _optional(join(path, "memory.current"))
    memory = float(int(mem_raw.strip())) if mem_raw is not None and mem_raw.strip().isdigit() else None
    io = _io_bytes(_optional(join(path, "io.stat")))
    read, write = io if io is not None else (None, None)
    pids: set[bytes] = set()
    for dirpath, _dirs, files in os.walk(path):
        if "cgroup.procs" in files:
            raw = _optional(join(dirpath, "cgroup.procs"))
            if raw is not None:
                pids.update(p for p in raw.split() if p.isdigit())
    return CgroupUsage(
        job_id, path, usage / 1e6 if usage is not None else None, memory, read, write, len(pids)
    )
